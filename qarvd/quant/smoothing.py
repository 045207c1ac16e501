"""Channel smoothing shared by SmoothQuant, PTQ4DiT and SVDQuant: X' = X / s, W' = W diag(s).

- SmoothQuant: ``s_j = max|X_j|^a / max|W_j|^(1-a)`` with the weight max over every Linear reading the input,
  the weight max clamped at 1e-5 and ``s`` clamped at 1e-5 (as in the SmoothQuant code).
- PTQ4DiT Channel-wise Salience Balancing: ``b_j = sqrt(s(X_j) / s(W_j))`` = the same formula at ``a = 0.5``, where
  the activation salience comes from Spearman-guided Salience Calibration over the calibration samples:
  ``rho_n = spearman(s(X^(n)), s(W))``, ``eta = softmax(-rho)``, ``s(X) = sum_n eta_n s(X^(n))``.

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
