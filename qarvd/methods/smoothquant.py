"""SmoothQuant (mit-han-lab/smoothquant ``smoothquant/smooth.py``): migrate activation outliers into the weights with
``s_j = max|X_j|^a / max|W_j|^(1-a)``, the weight max taken over every Linear that reads the input.

As ``smooth_lm`` does, only the layers fed by a norm are smoothed (``smooth_roles``, conf/method/smoothquant.yaml);
there the division by ``s`` costs nothing at inference (folded into the norm, or into the adaLN modulation).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

from qarvd.methods.base import Calibration, Recipe, apply_smoothing, input_groups
from qarvd.quant.linear import QuantLinear
from qarvd.quant.roles import ROLES, role_of
from qarvd.quant.smoothing import smoothing_factors, weight_input_absmax


@dataclass
class SmoothQuant(Recipe):
    smooth_strength: float
    smooth_roles: Sequence[str]
    fold_norm: bool

    def __post_init__(self) -> None:
        super().__post_init__()
        self.smooth_roles = tuple(self.smooth_roles)
        unknown = sorted(set(self.smooth_roles) - set(ROLES))
        if unknown:
            raise ValueError(f"method.smooth_roles has unknown roles {unknown}; roles: {list(ROLES)}")

    def prepare(self, cal: Calibration, layers: dict[str, QuantLinear]) -> dict:
        names = [n for n in layers if role_of(n) in self.smooth_roles]
        absmax = cal.absmax()
        folded = []
        for group, members in input_groups(names).items():
            act_max = absmax[members[0]].amax(dim=0)  # max over every calibration sample
            s = smoothing_factors(act_max, weight_input_absmax([layers[n].weight for n in members]), self.smooth_strength)
            if apply_smoothing(cal.model, layers, members, s, self.fold_norm):
                folded.append(group)
        return {"smoothed_layers": len(names), "folded_into_norm": folded, "smooth_strength": self.smooth_strength}
