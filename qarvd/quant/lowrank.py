"""SVDQuant's 16-bit low-rank branch: W' = L2 L1 + R, only the residual R is quantized.

``L2 = U_r sqrt(S_r)`` [out, r] and ``L1 = sqrt(S_r) V_r^T`` [r, in] from the SVD of the smoothed weight, stored in
16 bits; the residual is computed against the 16-bit factors so ``R + L2 L1`` is exactly the smoothed weight the
forward reproduces. Optional refinement (as in SVDQuant/nunchaku): re-take the SVD of ``W' - Q(R)`` so the
branch absorbs the residual's quantization error; keep the best output error, stop when it rises.

The paper's rank 32 is a share of a 1536-wide layer's parameters; :func:`lowrank_rank` keeps that share on a model
of another width (rank 32 on a width-128 layer would hold about half of its parameters).
"""
from __future__ import annotations

from typing import Callable, Optional, Sequence

import torch


def lowrank_rank(in_features: int, out_features: int, reference: Sequence[int]) -> int:
    """The rank whose branch holds the parameter share that rank ``reference[1]`` holds at width ``reference[0]``.

    A rank-r branch of an [out, in] layer holds ``r (in + out) / (in out)`` of its parameters. Scaling both sides of a
    layer by k divides that share by k, so the share is kept when the rank scales with the layer's narrow side
    ``min(in, out)`` (the model width for every CausalWan linear): 32 on every Wan 1.3B layer (width 1536), 3 at
    width 128 (share within rounding of the Wan layer of the same shape). At least 1.
    """
    width, rank = (int(v) for v in reference)
    if width < 1 or rank < 1:
        raise ValueError(f"the low-rank reference (width, rank) must be positive, got {tuple(reference)}")
    return max(1, round(rank * min(int(in_features), int(out_features)) / width))


def lowrank_factors(w: torch.Tensor, rank: int, dtype: torch.dtype = torch.bfloat16) -> tuple[torch.Tensor, torch.Tensor]:
    """(L1 [r, in], L2 [out, r]) in ``dtype`` with ``L2 L1`` the best rank-``r`` approximation of ``w``."""
    if rank < 1 or rank > min(w.shape):
        raise ValueError(f"low-rank rank must be in [1, {min(w.shape)}] for a {tuple(w.shape)} weight, got {rank}")
    u, s, vh = torch.linalg.svd(w.detach().double(), full_matrices=False)
    root = s[:rank].sqrt()
    return (root[:, None] * vh[:rank]).to(dtype), (u[:, :rank] * root[None, :]).to(dtype)


def branch(down: torch.Tensor, up: torch.Tensor) -> torch.Tensor:
    """The fp32 weight ``L2 L1`` of the 16-bit branch."""
    return up.float() @ down.float()


def refine_lowrank(w: torch.Tensor, rank: int, quantize: Callable[[torch.Tensor], torch.Tensor],
                   x: Optional[torch.Tensor], iters: int, dtype: torch.dtype = torch.bfloat16,
                   x_quantized: Optional[torch.Tensor] = None) -> tuple[torch.Tensor, torch.Tensor, list[float]]:
    """Iterate ``L <- SVD_r(W - Q(W - L))`` up to ``iters`` times; returns the best (L1, L2) and the error history.

    The error is the output error ``mean((Q(x) Q(R)^T + x L^T - x W^T)^2)`` on the sample ``x`` (the weight error if
    ``x`` is None), where ``Q(x)`` is ``x_quantized`` (the quantized input the residual path sees) or ``x`` itself.
    ``quantize`` maps a residual to its quantize-dequantized version.
    """
    w = w.float()
    ref = w if x is None else x.float() @ w.T
    xq = None if x is None else (x if x_quantized is None else x_quantized).float()

    def error(down, up):
        lr = branch(down, up)
        if x is None:
            return float((quantize(w - lr) + lr - ref).pow(2).mean())
        return float((xq @ quantize(w - lr).T + x.float() @ lr.T - ref).pow(2).mean())

    down, up = lowrank_factors(w, rank, dtype)
    best, history = (down, up), [error(down, up)]
    for _ in range(int(iters)):
        q = quantize(w - branch(down, up))
        down, up = lowrank_factors(w - q, rank, dtype)
        err = error(down, up)
        rose = err >= history[-1]
        history.append(err)
        if rose:  # no longer improving: stop, keep the best so far
            break
        best = (down, up)
    return best[0], best[1], history
