"""PTQ4DiT (adreamwu/PTQ4DiT ``models.py``): Channel-wise Salience Balancing b_j = sqrt(s(X_j) / s(W_j)) with
Spearman-guided Salience Calibration.

Samples are the calibration calls (chunk x step, per prompt): rho_n = spearman(s(X^(n)), s(W)), eta = softmax(-rho),
s(X) = sum_n eta_n s(X^(n)). Balanced: qkv, attention output projections and ffn.0 (not ffn.2). Reconstruction is the
shared one: layer-wise under the paper's protocol, per transformer block as the original runs it
(conf/method/ptq4dit_published.yaml, ``recon_granularity: block``).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

from qarvd.methods.base import Calibration, Recipe, apply_smoothing, input_groups
from qarvd.quant.linear import QuantLinear
from qarvd.quant.roles import role_of
from qarvd.quant.smoothing import smoothing_factors, ssc_salience, weight_input_absmax


@dataclass
class PTQ4DiT(Recipe):
    csb_roles: Sequence[str]
    fold_norm: bool

    def prepare(self, cal: Calibration, layers: dict[str, QuantLinear]) -> dict:
        names = [n for n in layers if role_of(n) in self.csb_roles]
        absmax = cal.absmax()
        rho_mean = {}
        for group, members in input_groups(names).items():
            s_w = weight_input_absmax([layers[n].weight for n in members])
            s_x, eta, rho = ssc_salience(absmax[members[0]], s_w)
            apply_smoothing(cal.model, layers, members, smoothing_factors(s_x, s_w, 0.5), self.fold_norm)
            rho_mean[group] = float(rho.mean())
        return {"balanced_layers": len(names), "mean_spearman_rho": rho_mean}
