"""SmoothQuant: migrate activation outliers into the weights with s_j = max|X_j|^a / max|W_j|^(1-a)."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional, Sequence

from qarvd.methods.base import Calibration, Recipe, apply_smoothing, input_groups
from qarvd.quant.linear import QuantLinear
from qarvd.quant.roles import role_of
from qarvd.quant.smoothing import smoothing_factors, weight_input_absmax


@dataclass
class SmoothQuant(Recipe):
    smooth_strength: float
    smooth_roles: Optional[Sequence[str]]  # None: every quantized layer
    fold_norm: bool

    def prepare(self, cal: Calibration, layers: dict[str, QuantLinear]) -> dict:
        names = [n for n in layers if self.smooth_roles is None or role_of(n) in self.smooth_roles]
        absmax = cal.absmax()
        folded = []
        for group, members in input_groups(names).items():
            act_max = absmax[members[0]].amax(dim=0)  # max over every calibration sample
            s = smoothing_factors(act_max, weight_input_absmax([layers[n].weight for n in members]), self.smooth_strength)
            if apply_smoothing(cal.model, layers, members, s, self.fold_norm):
                folded.append(group)
        return {"smoothed_layers": len(names), "folded_into_norm": folded, "smooth_strength": self.smooth_strength}
