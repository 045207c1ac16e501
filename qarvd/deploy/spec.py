"""What the fake-quant core hands to deployment for one quantized linear, and what it means numerically.

A :class:`RealLayerSpec` fixes the function the real kernels must compute, i.e. the fake-quantized linear:

    xs  = x / smooth                                     (smooth optional, per input column)
    xq  = clamp(round(xs[:, cols_g] / a_scale[g]) + a_zero[g], a_qmin, a_qmax)            per group g
    y   = sum_g ((xq - a_zero[g]) * a_scale[g]) @ ((W_g - w_zero_g[:, None]) * w_scale_g[:, None]).T
          + bias + (xs @ down.T) @ up.T                  (low-rank branch optional, unquantized)

Groups: one group (all columns) or two for dual-scale layers, outlier group first. Division and rounding are
float32 ``x / s`` then ``torch.round`` (half to even), as the fake quantizers compute them.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional

import torch


@dataclass
class RealLayerSpec:
    groups: list  # [cols] or [outlier_cols, normal_cols]: int64 input-column indices, disjoint, covering 0..K-1
    weight_int: list  # per group: integer-valued [N, K_g] (any integer or float dtype) in [w_qmin, w_qmax]
    weight_scale: list  # per group: [N] float
    weight_zero: list  # per group: [N] integer-valued
    act_scale: list  # per group: float (per-tensor, static)
    act_zero: list  # per group: integer-valued float
    w_qmin: int
    w_qmax: int
    a_qmin: int
    a_qmax: int
    bias: Optional[torch.Tensor] = None  # [N]
    smooth: Optional[torch.Tensor] = None  # [K]
    lowrank: Optional[tuple] = None  # (down [r, K], up [N, r])
    meta: dict = field(default_factory=dict)  # free-form provenance (method, layer name)

    def __post_init__(self) -> None:
        g = len(self.groups)
        if g not in (1, 2):
            raise ValueError(f"a layer has 1 or 2 column groups (dual-scale), got {g}")
        for name in ("weight_int", "weight_scale", "weight_zero", "act_scale", "act_zero"):
            if len(getattr(self, name)) != g:
                raise ValueError(f"{name} needs one entry per column group ({g})")
        cols = torch.cat([c.long().flatten() for c in self.groups])
        if not torch.equal(cols.sort().values.cpu(), torch.arange(cols.numel())):
            raise ValueError("column groups must partition the input columns 0..K-1")
        if self.a_qmax - self.a_qmin > 255 or self.w_qmax - self.w_qmin > 255:
            raise ValueError("real kernels take at most 8-bit weights and activations")

    @property
    def in_features(self) -> int:
        return sum(int(c.numel()) for c in self.groups)

    @property
    def out_features(self) -> int:
        return int(self.weight_int[0].shape[0])

    @property
    def w_bits(self) -> int:
        return int(self.w_qmax - self.w_qmin).bit_length()

    def dequant_weight(self) -> torch.Tensor:
        """The fake-quantized weight [N, K] in float64 (input columns in their original order)."""
        dev = self.weight_int[0].device
        w = torch.zeros(self.out_features, self.in_features, dtype=torch.float64, device=dev)
        for cols, wi, ws, wz in zip(self.groups, self.weight_int, self.weight_scale, self.weight_zero):
            w[:, cols.long().to(dev)] = (wi.double() - wz.double().to(dev)[:, None]) * ws.double().to(dev)[:, None]
        return w

    def fake_forward(self, x: torch.Tensor) -> torch.Tensor:
        """The fake-quantized linear in float64 (quantization rounding in float32 as the quantizers do it)."""
        xs = x.float() if self.smooth is None else x.float() / self.smooth.float().to(x.device)
        y = torch.zeros(*x.shape[:-1], self.out_features, dtype=torch.float64, device=x.device)
        for cols, wi, ws, wz, s, z in zip(self.groups, self.weight_int, self.weight_scale, self.weight_zero,
                                          self.act_scale, self.act_zero):
            xq = torch.clamp(torch.round(xs[..., cols.long().to(x.device)] / float(s)) + float(z),
                             self.a_qmin, self.a_qmax)
            wd = (wi.double() - wz.double()[:, None]) * ws.double()[:, None]
            y = y + ((xq.double() - float(z)) * float(s)) @ wd.to(x.device).T
        if self.bias is not None:
            y = y + self.bias.double().to(x.device)
        if self.lowrank is not None:
            down, up = self.lowrank
            y = y + (xs.double() @ down.double().to(x.device).T) @ up.double().to(x.device).T
        return y
