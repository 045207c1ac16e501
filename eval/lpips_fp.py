"""Per-frame reference metrics against the FP video: LPIPS-FP, PSNR-FP, SSIM-FP.

LPIPS-FP is ``lpips.LPIPS(net='alex', version='0.1')`` on every frame at full resolution with inputs in [-1, 1];
a video's score is the mean over its frames and the set's score the mean over videos (paper §4.1). The lpips wheel
ships only the linear heads; its AlexNet backbone (``alexnet-owt-7be5be79.pth``, torchvision model zoo) is read
from ``$TORCH_HOME/hub/checkpoints`` and loaded here explicitly with ``weights_only=True``, instead of letting
torchvision look it up and download it when it is missing. ``pnet_rand=True`` skips it for plumbing tests.
PSNR and SSIM come from torchmetrics on [0, 1] frames (data range 1), averaged the same way.

Every metric here is a callable ``(fp [T, 3, H, W], quant [T, 3, H, W]) -> [T]`` on [-1, 1] frames.
"""
from __future__ import annotations

import os
import warnings
from pathlib import Path
from typing import Optional

import torch
from qarvd.utils.errors import require_file

ALEXNET_FILE = "alexnet-owt-7be5be79.pth"
ALEXNET_PUBLISHED_AT = "the torchvision model zoo: https://download.pytorch.org/models/alexnet-owt-7be5be79.pth"
# lpips' AlexNet slices keep torchvision's feature indices: net.slice{k}.{i}.* holds features.{i}.*
_LPIPS_SLICES = {1: range(0, 2), 2: range(2, 5), 3: range(5, 8), 4: range(8, 10), 5: range(10, 12)}


def default_alexnet_path() -> Path:
    """``$TORCH_HOME/hub/checkpoints/alexnet-owt-7be5be79.pth`` (torch.hub's cache folder)."""
    return Path(torch.hub.get_dir()) / "checkpoints" / ALEXNET_FILE


def build_lpips(alexnet_path: Optional[str | os.PathLike] = None, pnet_rand: bool = False, device: str = "cpu"):
    """LPIPS v0.1 (AlexNet) with the backbone from ``alexnet_path`` (default: torch.hub's cache), eval mode.

    A missing ``lpips`` package raises ``ImportError`` naming the fix, so that ``eval.lpips.required=false`` can
    record LPIPS-FP as unavailable (e.g. on a GPU image that lacks it) instead of losing the finished videos."""
    try:
        import lpips
    except ImportError as err:
        raise ImportError("LPIPS-FP needs the 'lpips' package: pip install lpips (it is in the project's "
                          "install_requires), or set eval.lpips.enabled=false") from err

    if not pnet_rand:
        file = require_file(alexnet_path or default_alexnet_path(), "eval.lpips.alexnet_path", ALEXNET_PUBLISHED_AT)
    with warnings.catch_warnings():  # lpips still passes torchvision's deprecated `pretrained=` argument
        warnings.simplefilter("ignore", UserWarning)
        model = lpips.LPIPS(net="alex", version="0.1", pnet_rand=True, verbose=False)
    if not pnet_rand:
        state = torch.load(file, map_location="cpu", weights_only=True)
        mapped = {
            f"slice{k}.{i}.{p}": state[f"features.{i}.{p}"]
            for k, idxs in _LPIPS_SLICES.items()
            for i in idxs
            for p in ("weight", "bias")
            if f"features.{i}.{p}" in state
        }
        model.net.load_state_dict(mapped, strict=True)
    return model.eval().requires_grad_(False).to(device)


class LPIPSMetric:
    """Per-frame LPIPS distance; frames go through the network in chunks to bound memory at full resolution."""

    def __init__(self, model, frames_per_batch: int = 16) -> None:
        self.model, self.frames_per_batch = model, max(int(frames_per_batch), 1)
        self.device = next(model.parameters()).device

    @torch.no_grad()
    def __call__(self, fp: torch.Tensor, quant: torch.Tensor) -> torch.Tensor:
        out = [
            self.model(fp[i : i + self.frames_per_batch].to(self.device), quant[i : i + self.frames_per_batch].to(self.device))
            for i in range(0, fp.shape[0], self.frames_per_batch)
        ]
        return torch.cat(out).flatten().double().cpu()


def psnr_frames(fp: torch.Tensor, quant: torch.Tensor) -> torch.Tensor:
    """Per-frame PSNR (dB) of the quantized frames against the FP frames, data range 1 on [0, 1]."""
    from torchmetrics.functional.image import peak_signal_noise_ratio  # heavy import: only when PSNR is computed

    return peak_signal_noise_ratio(_unit(quant), _unit(fp), data_range=1.0, reduction="none", dim=(1, 2, 3)).double()


def ssim_frames(fp: torch.Tensor, quant: torch.Tensor) -> torch.Tensor:
    """Per-frame SSIM (Gaussian window 11, sigma 1.5), data range 1 on [0, 1]."""
    from torchmetrics.functional.image import structural_similarity_index_measure

    return structural_similarity_index_measure(_unit(quant), _unit(fp), data_range=1.0, reduction="none").double()


def _unit(x: torch.Tensor) -> torch.Tensor:
    return ((x.double() + 1) / 2).clamp(0, 1)
