"""The video feature network of the embedded domain: a small 3D-CNN trained to read a procedural caption off a video.

On the embedded model's 32x32 procedural videos the Kinetics I3D means nothing, so Fréchet distances and caption
accuracy are measured with this network instead: its pooled features feed the Fréchet distance (``features``) and
its four classifier heads (colour, shape, direction, speed) judge whether a generated video shows its caption.
It is trained by ``scripts/train_featnet.py`` and shipped as ``qarvd/assets/featnet.safetensors`` (weights plus a
JSON ``featnet`` metadata entry holding its config and label names), and plugs into ``eval/fvd.py`` as a backbone.
"""
from __future__ import annotations

import os
from dataclasses import asdict, dataclass, field
from typing import Optional, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from qarvd.embedded.procedural import ATTRIBUTES, parse_caption

FEATNET_PUBLISHED_AT = "the qarvd package (qarvd/assets/featnet.safetensors), or rebuild with scripts/train_featnet.py"


@dataclass
class FeatNetConfig:
    """Widths of the four conv stages and the feature size; label names per classifier head."""

    widths: Sequence[int] = (32, 64, 96, 128)
    feature_dim: int = 128
    groups: int = 8  # GroupNorm groups (batch-independent, so features do not depend on batch composition)
    attributes: dict = field(default_factory=lambda: {k: list(v) for k, v in ATTRIBUTES.items()})

    def __post_init__(self) -> None:
        self.widths = tuple(int(w) for w in self.widths)
        if any(w % self.groups for w in self.widths):
            raise ValueError(f"every width in {self.widths} must be divisible by groups={self.groups}")


def _stage(cin: int, cout: int, stride: tuple, groups: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv3d(cin, cout, 3, stride=stride, padding=1), nn.GroupNorm(groups, cout), nn.SiLU())


class VideoFeatureNet(nn.Module):
    """3D-CNN: [N, T, 3, H, W] in [-1, 1] -> pooled features [N, feature_dim] -> one logit vector per attribute.

    The first stage keeps full resolution (thin strokes and colours), the next three halve time and space, then
    global average pooling and a linear projection give the feature vector used for Fréchet distances.
    """

    def __init__(self, cfg: FeatNetConfig) -> None:
        super().__init__()
        self.cfg = cfg
        w = cfg.widths
        self.stages = nn.Sequential(
            _stage(3, w[0], (1, 1, 1), cfg.groups),
            *[_stage(w[i - 1], w[i], (2, 2, 2), cfg.groups) for i in range(1, len(w))],
        )
        self.proj = nn.Linear(w[-1], cfg.feature_dim)
        self.heads = nn.ModuleDict({k: nn.Linear(cfg.feature_dim, len(v)) for k, v in cfg.attributes.items()})

    def features(self, video: torch.Tensor) -> torch.Tensor:
        if video.dim() != 5 or video.shape[2] != 3:
            raise ValueError(f"expected videos [N, T, 3, H, W], got {tuple(video.shape)}")
        x = video.to(self.proj.weight.dtype).transpose(1, 2)  # [N, 3, T, H, W]
        return self.proj(self.stages(x).mean(dim=(2, 3, 4)))

    def forward(self, video: torch.Tensor) -> dict[str, torch.Tensor]:
        f = F.silu(self.features(video))
        return {k: head(f) for k, head in self.heads.items()}

    @torch.no_grad()
    def predict(self, video: torch.Tensor) -> dict[str, torch.Tensor]:
        return {k: v.argmax(-1) for k, v in self(video).items()}


def caption_matches(pred: dict[str, torch.Tensor], captions: Sequence[str]) -> dict[str, torch.Tensor]:
    """Per video and attribute: did the prediction equal the caption's label? Plus ``all`` (every attribute right)."""
    want = [parse_caption(c) for c in captions]
    hits = {k: pred[k].cpu() == torch.tensor([w[k] for w in want]) for k in pred}
    hits["all"] = torch.stack(list(hits.values())).all(dim=0)
    return hits


def load_featnet(path: str | os.PathLike | None, device: str | torch.device = "cpu") -> VideoFeatureNet:
    """The network stored in a featnet bundle (metadata entry ``featnet`` = FeatNetConfig), loaded strictly."""
    from qarvd.models.checkpoint import CheckpointError, load_strict, read_metadata, read_state_dict
    from qarvd.utils.errors import require_file

    file = require_file(path, "featnet path (eval.fvd.backbone.path)", FEATNET_PUBLISHED_AT)
    meta = read_metadata(file).get("featnet")
    if not isinstance(meta, dict):
        raise CheckpointError(f"'{file}' has no 'featnet' metadata: not a feature-network bundle")
    net = VideoFeatureNet(FeatNetConfig(**meta))
    load_strict(net, read_state_dict(file), f"featnet bundle '{file}'")
    return net.to(device).eval().requires_grad_(False)


def featnet_metadata(net: VideoFeatureNet) -> dict:
    d = asdict(net.cfg)
    d["widths"] = list(net.cfg.widths)
    return d


class FeatNetBackbone:
    """FVD backbone for the embedded domain (``_target_: qarvd.embedded.featnet.FeatNetBackbone``), batched."""

    def __init__(self, path: str | os.PathLike | None, device: str | torch.device = "cpu", videos_per_batch: int = 64,
                 net: Optional[VideoFeatureNet] = None) -> None:
        """Load the bundle at ``path``, or wrap an in-memory ``net`` (training-time evaluation)."""
        self.net = load_featnet(path, device) if net is None else net.to(device).eval()
        self.device, self.videos_per_batch = torch.device(device), int(videos_per_batch)

    @torch.no_grad()
    def features(self, video: torch.Tensor) -> torch.Tensor:
        return torch.cat([self.net.features(v.to(self.device)).float().cpu() for v in video.split(self.videos_per_batch)])

    @torch.no_grad()
    def predict(self, video: torch.Tensor) -> dict[str, torch.Tensor]:
        parts = [self.net.predict(v.to(self.device)) for v in video.split(self.videos_per_batch)]
        return {k: torch.cat([p[k].cpu() for p in parts]) for k in parts[0]}
