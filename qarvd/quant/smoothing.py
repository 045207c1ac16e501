"""Channel smoothing shared by SmoothQuant, PTQ4DiT and SVDQuant: X' = X / s, W' = W diag(s).

- SmoothQuant: ``s_j = max|X_j|^a / max|W_j|^(1-a)`` with the weight max over every Linear reading the input,
  the weight max clamped at 1e-5 and ``s`` clamped at 1e-5 (as in the SmoothQuant code).
- PTQ4DiT Channel-wise Salience Balancing: ``b_j = sqrt(s(X_j) / s(W_j))`` = the same formula at ``a = 0.5``, where
  the activation salience comes from Spearman-guided Salience Calibration over the calibration samples:
  ``rho_n = spearman(s(X^(n)), s(W))``, ``eta = softmax(-rho)``, ``s(X) = sum_n eta_n s(X^(n))``.
- SVDQuant (deepcompressor ``calib/smooth.py``): ``s_j = max|X_j|^a / max|W_j|^b``, searched over the candidate
  exponent pairs of :func:`smoothing_candidates` (identity first) by the quantized output error.

Where the input comes from an affine norm that feeds nothing else (``norm3 -> cross_attn.q``), ``1/s`` can be
folded into that norm; everywhere else (adaLN-modulated inputs, the GELU output, attention outputs) the layer
divides by ``s`` at run time.
"""
from __future__ import annotations

from typing import Optional, Sequence

import torch
from torch import nn

from qarvd.quant.roles import block_index

CLAMP = 1e-5


def weight_input_absmax(weights: Sequence[torch.Tensor]) -> torch.Tensor:
    """Per input channel max |W| over the rows of every weight that reads the same input."""
    return torch.cat([w.detach().float() for w in weights]).abs().amax(dim=0)


def smoothing_factors(act_max: torch.Tensor, weight_max: torch.Tensor, alpha: float) -> torch.Tensor:
    """SmoothQuant's ``s = max|X|^a / max|W|^(1-a)`` with its two clamps, on the weights' device (activation
    statistics are gathered on the host)."""
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"smoothing alpha must be in [0, 1], got {alpha}")
    wmax = weight_max.float().clamp(min=CLAMP)
    return (act_max.float().to(wmax.device).pow(alpha) / wmax.pow(1.0 - alpha)).clamp(min=CLAMP)


def smoothing_candidates(grid: int) -> list[tuple[float, float]]:
    """SVDQuant's search space, as deepcompressor's ``SmoothCalibConfig.get_alpha_beta_pairs`` builds it for the
    SVDQuant configs (``alpha: 0.5, beta: -2, num_grids: 20``): identity ``(0, 0)`` first, then ``(a, 0)`` and
    ``(a, 1 - a)`` for ``a = k / grid``, ``k = 1 .. grid - 1``. Identity first: a tie keeps the layer unsmoothed."""
    if grid < 2:
        raise ValueError(f"the smoothing grid needs at least 2 steps (a = k / grid, k = 1 .. grid - 1), got {grid}")
    a = [k / grid for k in range(1, grid)]
    return [(0.0, 0.0)] + [(x, 0.0) for x in a] + [(x, 1.0 - x) for x in a]


def smooth_scale(act_max: torch.Tensor, weight_max: torch.Tensor, alpha: float, beta: float) -> torch.Tensor:
    """deepcompressor's ``s = max|X|^alpha / max|W|^beta`` (``get_smooth_scale``; ``(0, 0)`` = no smoothing):
    zero entries become 1 and a non-finite result falls back to no smoothing, with no clamps (unlike SmoothQuant)."""
    if not (0.0 <= alpha <= 1.0 and 0.0 <= beta <= 1.0):
        raise ValueError(f"smoothing exponents must lie in [0, 1], got ({alpha}, {beta})")
    wmax = weight_max.float()
    xmax = act_max.float().to(wmax.device)
    if alpha == 0.0 and beta == 0.0:
        return torch.ones_like(wmax)
    s = xmax.pow(alpha) / wmax.pow(beta) if alpha > 0 else wmax.pow(-beta)
    s = torch.where(s == 0, torch.ones_like(s), s)
    return s if bool(torch.isfinite(s).all()) else torch.ones_like(s)


def _ranks(x: torch.Tensor) -> torch.Tensor:
    """Ranks (1-based) with ties given their average rank, as in Spearman's correlation."""
    from scipy.stats import rankdata

    return torch.from_numpy(rankdata(x.double().cpu().numpy())).double()


def spearman(a: torch.Tensor, b: torch.Tensor) -> float:
    """Spearman rank correlation of two vectors (Pearson correlation of their average ranks)."""
    ra, rb = _ranks(a), _ranks(b)
    ra, rb = ra - ra.mean(), rb - rb.mean()
    denom = float(ra.norm() * rb.norm())
    return float((ra * rb).sum()) / denom if denom > 0 else 0.0


def ssc_salience(per_sample: torch.Tensor, weight_sal: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """PTQ4DiT's Spearman-guided Salience Calibration: (s(X), eta, rho) from per-sample saliences [N, in]."""
    rho = torch.tensor([spearman(row, weight_sal) for row in per_sample], dtype=torch.float64)
    eta = torch.softmax(-rho, dim=0)
    return (eta[:, None] * per_sample.double()).sum(0).float(), eta, rho


def foldable_norm(model: nn.Module, layer_name: str) -> Optional[str]:
    """The affine norm whose output only this layer reads (norm3 for cross_attn.q), or None."""
    b = block_index(layer_name)
    if b is None or not layer_name.endswith("cross_attn.q"):
        return None
    norm = model.blocks[b].norm3
    return f"blocks.{b}.norm3" if getattr(norm, "weight", None) is not None else None


@torch.no_grad()
def fold_into_norm(model: nn.Module, norm_name: str, s: torch.Tensor) -> None:
    """Divide an affine norm's weight and bias by ``s`` so its output is already X / s."""
    norm = model.get_submodule(norm_name)
    if getattr(norm, "weight", None) is None:
        raise ValueError(f"cannot fold smoothing into '{norm_name}': it has no affine weight")
    s = s.to(norm.weight.device).float()
    norm.weight.data = (norm.weight.float() / s).to(norm.weight.dtype)
    if norm.bias is not None:
        norm.bias.data = (norm.bias.float() / s).to(norm.bias.dtype)
