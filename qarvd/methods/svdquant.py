"""SVDQuant: per-layer smoothing searched over a in {k/20} by output error, a 16-bit rank-r branch from the SVD of
the smoothed weight (optionally refined), and only the residual quantized: y = Q(X/s) Q(R)^T + (X/s) L1^T L2^T + b.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from qarvd.methods.base import Calibration, Recipe
from qarvd.models.pipeline import parse_dtype
from qarvd.quant.linear import QuantLinear
from qarvd.quant.lowrank import branch, lowrank_factors, refine_lowrank
from qarvd.quant.quantizer import ActivationHistogram, UniformQuantizer
from qarvd.quant.smoothing import smoothing_factors, weight_input_absmax


@dataclass
class SVDQuant(Recipe):
    rank: int
    lowrank_dtype: str
    strength_grid: int
    refine_iters: int
    search_calls: int
    search_tokens: int

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.rank < 1 or self.strength_grid < 1 or self.refine_iters < 0:
            raise ValueError("svdquant needs rank >= 1, strength_grid >= 1 and refine_iters >= 0")

    def prepare(self, cal: Calibration, layers: dict[str, QuantLinear]) -> dict:
        dtype = parse_dtype(self.lowrank_dtype)
        absmax = cal.absmax()
        samples = cal.sample_inputs(list(layers), self.search_calls, self.search_tokens)
        pcts = tuple(cal.calib["percentiles"])
        chosen, refine_rounds = {}, {}
        for n, layer in layers.items():
            w = layer.weight.detach().float()
            x = samples[n].to(w.device)
            wq = UniformQuantizer(cal.w_bits, cal.symmetric, per_channel=True, channels=w.shape[0]).to(w.device)
            aq = UniformQuantizer(cal.a_bits, cal.symmetric, per_channel=False).to(w.device)

            def q_weight(r: torch.Tensor) -> torch.Tensor:
                wq.init_weight(r, pcts)
                return wq(r)

            def q_act(xs: torch.Tensor) -> torch.Tensor:
                h = ActivationHistogram(int(cal.calib["hist_bins"]))
                h.observe_range(xs)
                h.observe(xs)
                h.search(aq, pcts)
                return aq(xs)

            ref = x @ w.T
            best = None
            for k in range(self.strength_grid + 1):
                a = k / self.strength_grid
                s = smoothing_factors(absmax[n].amax(dim=0), weight_input_absmax([w]), a).to(w.device)
                ws, xs = w * s, x / s
                down, up = lowrank_factors(ws, self.rank, dtype)
                lr = branch(down, up)
                err = float((q_act(xs) @ q_weight(ws - lr).T + xs @ lr.T - ref).pow(2).mean())
                if best is None or err < best[0]:
                    best = (err, a, s)
            _, a, s = best
            down, up, history = refine_lowrank(w * s, self.rank, q_weight, x / s, self.refine_iters, dtype)
            layer.set_smoothing(s)
            layer.set_lowrank(down, up)
            chosen[n], refine_rounds[n] = a, len(history) - 1
        return {"smooth_strength": chosen, "refine_rounds": refine_rounds, "rank": self.rank}
