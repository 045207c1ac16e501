"""SVDQuant as deepcompressor implements it for diffusion models (mit-han-lab/deepcompressor: smoothing in
``app/diffusion/quant/smooth.py`` + ``calib/smooth.py``, the branch in ``app/diffusion/quant/weight.py`` +
``calib/lowrank.py``, settings in ``examples/diffusion/configs/svdquant/__default__.yaml``):

1. Smoothing per input group (self-attention q/k/v share one factor, cross-attention k/v another): a grid search
   over identity, ``(a, 0)`` and ``(a, 1 - a)`` of ``s = max|X|^a / max|W|^b`` (:func:`smoothing_candidates`), scored
   by the output error of the quantized group WITH its low-rank branch, activations AND weights quantized.
2. A 16-bit rank-r branch from the SVD of the group's smoothed stacked weight (one ``L1`` shared by the group, as
   deepcompressor's default non-exclusive branch), refined by re-taking the SVD of ``W' - Q(R)`` while the output
   error (quantized activations on the residual path) falls (``calib/lowrank.py``, early stop).
3. Only the residual is quantized: ``y = Q(X/s) Q(R)^T + (X/s) L1^T L2^T + b``.

The group's error is taken on the stacked outputs of its layers (deepcompressor scores q/k/v on the attention
output, which would need the rollout's K/V cache here).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional, Sequence

import torch

from qarvd.methods.base import Calibration, Recipe, input_groups
from qarvd.models.pipeline import parse_dtype
from qarvd.quant.linear import QuantLinear
from qarvd.quant.lowrank import branch, lowrank_factors, lowrank_rank, refine_lowrank
from qarvd.quant.quantizer import ActivationHistogram, UniformQuantizer
from qarvd.quant.roles import role_of
from qarvd.quant.smoothing import smooth_scale, smoothing_candidates, weight_input_absmax

IDENTITY = (0.0, 0.0)


@dataclass
class SearchQuantizers:
    """Quantize-dequantize with freshly initialised quantizers, as the recipe initialises them: weights per output
    channel (percentile MSE), activations per tensor (histogram percentile MSE)."""

    w_bits: int
    a_bits: int
    symmetric: bool
    percentiles: Sequence[float]
    hist_bins: int

    def weight(self, w: torch.Tensor) -> torch.Tensor:
        q = UniformQuantizer(self.w_bits, self.symmetric, per_channel=True, channels=w.shape[0]).to(w.device)
        q.init_weight(w, self.percentiles)
        return q(w)

    def act(self, x: torch.Tensor) -> torch.Tensor:
        q = UniformQuantizer(self.a_bits, self.symmetric, per_channel=False).to(x.device)
        h = ActivationHistogram(self.hist_bins)
        h.observe_range(x)
        h.observe(x)
        h.search(q, self.percentiles)
        return q(x)


@torch.no_grad()
def search_smoothing(x: torch.Tensor, w: torch.Tensor, act_max: torch.Tensor, candidates: Sequence[tuple[float, float]],
                     quant: SearchQuantizers, rank: int, dtype: torch.dtype) -> tuple[tuple[float, float], torch.Tensor, list[float]]:
    """The candidate ``(a, b)`` with the lowest ``mean((Q(X/s) Q(W s - L)^T + (X/s) L^T - X W^T)^2)`` on the sample
    ``x`` [rows, in] for the (stacked) weight ``w`` [out, in]; returns it, its factor ``s`` and every error.

    ``act_max`` is the per-channel abs-max of the input over the whole calibration set. A tie keeps the earlier
    candidate, so identity (first in :func:`smoothing_candidates`) wins unless smoothing strictly helps.
    """
    w, x = w.float(), x.float()
    w_max = weight_input_absmax([w])
    ref = x @ w.T
    best, errors = None, []
    for a, b in candidates:
        s = smooth_scale(act_max, w_max, a, b).to(w.device)
        ws, xs = w * s, x / s
        lr = branch(*lowrank_factors(ws, rank, dtype))
        err = float((quant.act(xs) @ quant.weight(ws - lr).T + xs @ lr.T - ref).pow(2).mean())
        errors.append(err)
        if best is None or err < best[0]:
            best = (err, (a, b), s)
    return best[1], best[2], errors


@dataclass
class SVDQuant(Recipe):
    rank: Optional[int]
    rank_reference: Sequence[int]
    lowrank_dtype: str
    strength_grid: int
    refine_iters: int
    search_calls: int
    search_tokens: int
    svd_roles: Sequence[str]

    def __post_init__(self) -> None:
        super().__post_init__()
        if (self.rank is not None and self.rank < 1) or self.refine_iters < 0:
            raise ValueError("svdquant needs method.rank >= 1 (or null: the width rule) and method.refine_iters >= 0")
        self.candidates = smoothing_candidates(self.strength_grid)
        self.svd_roles = tuple(self.svd_roles)

    def branch_rank(self, weight: torch.Tensor) -> int:
        """``method.rank``, or the rank that keeps rank_reference's parameter share on this [out, in] weight."""
        return int(self.rank) if self.rank is not None else lowrank_rank(weight.shape[1], weight.shape[0], self.rank_reference)

    def prepare(self, cal: Calibration, layers: dict[str, QuantLinear]) -> dict:
        dtype = parse_dtype(self.lowrank_dtype)
        groups = input_groups([n for n in layers if role_of(n) in self.svd_roles])
        absmax = cal.absmax()
        samples = cal.sample_inputs([members[0] for members in groups.values()], self.search_calls, self.search_tokens)
        quant = SearchQuantizers(cal.w_bits, cal.a_bits, cal.symmetric, tuple(cal.calib["percentiles"]), int(cal.calib["hist_bins"]))
        info: dict[str, dict] = {}
        for group, members in groups.items():
            w = torch.cat([layers[n].weight.detach().float() for n in members])
            x = samples[members[0]].to(w.device)
            rank = self.branch_rank(w)
            pair, s, errors = search_smoothing(x, w, absmax[members[0]].amax(dim=0), self.candidates, quant, rank, dtype)
            with torch.no_grad():
                down, up, history = refine_lowrank(w * s, rank, quant.weight, x / s, self.refine_iters, dtype,
                                                   x_quantized=quant.act(x / s))
            row = 0
            for n in members:
                layers[n].set_smoothing(None if pair == IDENTITY else s)
                layers[n].set_lowrank(down, up[row : row + layers[n].out_features])
                row += layers[n].out_features
            info[group] = {"layers": list(members), "exponents": list(pair), "rank": rank, "search_error": min(errors),
                           "identity_error": errors[self.candidates.index(IDENTITY)], "refine_rounds": len(history) - 1}
        return {"groups": info, "smoothed_groups": sum(g["exponents"] != list(IDENTITY) for g in info.values()),
                "lowrank_layers": sum(len(g["layers"]) for g in info.values())}
