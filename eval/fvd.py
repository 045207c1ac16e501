"""FVD-FP: the Fréchet distance between video features of the FP set and of the quantized set.

The paper (following ViDiT-Q / StyleGAN-V) uses the StyleGAN-V I3D TorchScript ``i3d_torchscript.pt``: every video
in [0, 1] has its shorter side resized to 224 (bilinear), is centre-cropped to 224x224, mapped to [-1, 1], and all
its frames go through the network called with ``rescale=False, resize=False, return_features=True`` (400-d logits).
The Fréchet distance uses unbiased covariances and is computed in float64 with our own matrix square root (SciPy's
``sqrtm(disp=...)`` used by the reference code is gone from current SciPy): the trace of sqrt(S1 S2) equals the sum
of the singular values of sqrt(S1) sqrt(S2), with each root from a symmetric eigendecomposition.

Any network with ``features(video [N, T, 3, H, W] in [-1, 1]) -> [N, D]`` is a backbone; the I3D is one, the
embedded model's video feature network (on its own procedural domain the I3D means little) is the other. Backbones
are chosen with ``_target_`` in ``conf/eval/fvd/``.
"""
from __future__ import annotations

import math
import os
from typing import Protocol, runtime_checkable

import numpy as np
import torch
import torch.nn.functional as F

from qarvd.utils.errors import require_file

I3D_PUBLISHED_AT = (
    "the StyleGAN-V release (universome/stylegan-v, src/metrics/frechet_video_distance.py): "
    "https://www.dropbox.com/s/ge9e5ujwgetktms/i3d_torchscript.pt"
)
I3D_KWARGS = dict(rescale=False, resize=False, return_features=True)  # raw 400-d logits, our own preprocessing


@runtime_checkable
class VideoFeatureBackbone(Protocol):
    """What FVD needs from a network: one feature vector per video."""

    def features(self, video: torch.Tensor) -> torch.Tensor:
        """``video`` [N, T, 3, H, W] in [-1, 1] -> features [N, D]."""


def i3d_preprocess(video: torch.Tensor, resolution: int = 224) -> torch.Tensor:
    """[N, T, 3, H, W] in [-1, 1] -> [N, 3, T, 224, 224] in [-1, 1] exactly as the StyleGAN-V FVD code prepares it.

    Shorter side to ``resolution`` (bilinear, align_corners=False, longer side rounded up), centre crop (offsets
    rounded down), then [0, 1] -> [-1, 1].
    """
    n, t, c, h, w = video.shape
    x = (video.float() + 1) / 2  # the reference code starts from [0, 1]
    scale = resolution / min(h, w)
    size = (resolution, math.ceil(w * scale)) if h < w else (math.ceil(h * scale), resolution)
    x = F.interpolate(x.reshape(n * t, c, h, w), size=size, mode="bilinear", align_corners=False)
    top, left = (x.shape[-2] - resolution) // 2, (x.shape[-1] - resolution) // 2
    x = x[..., top : top + resolution, left : left + resolution]
    x = (x - 0.5) * 2
    return x.reshape(n, t, c, resolution, resolution).transpose(1, 2).contiguous()


class I3DBackbone:
    """The StyleGAN-V I3D TorchScript (Kinetics-400 logits) read from a configured path; nothing downloads."""

    def __init__(self, path: str | os.PathLike | None, device: str = "cpu", resolution: int = 224) -> None:
        file = require_file(path, "eval.fvd.backbones.i3d.path", I3D_PUBLISHED_AT)
        self.device = torch.device(device)
        self.resolution = int(resolution)
        self.net = torch.jit.load(str(file), map_location=self.device).eval()

    @torch.no_grad()
    def features(self, video: torch.Tensor) -> torch.Tensor:
        x = i3d_preprocess(video, self.resolution).to(self.device)
        return self.net(x, **I3D_KWARGS).float().cpu()


def gaussian_stats(features: np.ndarray | torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
    """Mean and unbiased covariance (float64) of features [N, D]."""
    f = np.asarray(features.cpu() if isinstance(features, torch.Tensor) else features, dtype=np.float64)
    if f.ndim != 2 or f.shape[0] < 2:
        raise ValueError(f"need features [N >= 2, D] for a covariance, got shape {f.shape}")
    return f.mean(axis=0), np.cov(f, rowvar=False, ddof=1).reshape(f.shape[1], f.shape[1])


def sqrtm_psd(a: np.ndarray) -> np.ndarray:
    """Square root of a symmetric positive semi-definite matrix via ``eigh``.

    Eigenvalues below the numerical-rank tolerance (D * eps * largest, as ``np.linalg.matrix_rank`` uses) are
    round-off of a singular matrix (fewer videos than feature dimensions) and are set to 0 before the root:
    sqrt would blow 1e-13 up to 3e-7 per null direction.
    """
    a = np.asarray(a, dtype=np.float64)
    vals, vecs = np.linalg.eigh((a + a.T) / 2)
    tol = max(vals.max(initial=0.0), 0.0) * a.shape[0] * np.finfo(np.float64).eps
    return (vecs * np.sqrt(np.where(vals > tol, vals, 0.0))) @ vecs.T


def trace_sqrt_product(s1: np.ndarray, s2: np.ndarray) -> float:
    """tr sqrt(S1 S2) = tr sqrt(sqrt(S1) S2 sqrt(S1)) = the sum of the singular values of sqrt(S1) sqrt(S2).

    The symmetric product's eigenvalues are those singular values squared; reading the singular values directly
    avoids square roots of its round-off (which, for rank-deficient covariances, adds up to ~1e-3 of FVD).
    """
    return float(np.linalg.svd(sqrtm_psd(s1) @ sqrtm_psd(s2), compute_uv=False).sum())


def frechet_distance(mu1: np.ndarray, s1: np.ndarray, mu2: np.ndarray, s2: np.ndarray) -> float:
    """||mu1 - mu2||^2 + tr(S1) + tr(S2) - 2 tr sqrt(S1 S2), in float64."""
    mu1, mu2 = np.asarray(mu1, dtype=np.float64), np.asarray(mu2, dtype=np.float64)
    if mu1.shape != mu2.shape:
        raise ValueError(f"feature sizes differ: {mu1.shape} vs {mu2.shape}")
    diff = mu1 - mu2
    return float(diff @ diff + np.trace(s1) + np.trace(s2) - 2 * trace_sqrt_product(s1, s2))


def fvd_from_features(feats_fp: np.ndarray | torch.Tensor, feats_q: np.ndarray | torch.Tensor) -> float:
    """FVD between two feature sets [N, D] (the FP set and the quantized set)."""
    return frechet_distance(*gaussian_stats(feats_fp), *gaussian_stats(feats_q))
