"""FP8 E4M3 W8A8 GEMM through ``torch._scaled_mm`` (cuBLASLt, row-wise scales): the comparator format.

Weights are float8 [N, K] with one scale per output channel; activations float8 with one static per-tensor scale,
written directly by the producer kernel (:func:`kernels.act_quant.norm_quant` with ``fp8_scale``).
"""
from __future__ import annotations

from typing import Optional

import torch


def fp8_linear(h8: torch.Tensor, w8: torch.Tensor, a_scale: torch.Tensor, w_scale: torch.Tensor,
               bias: Optional[torch.Tensor], out_dtype: torch.dtype = torch.bfloat16) -> torch.Tensor:
    """y = (h8 * a_scale) @ (w8 * w_scale[:, None]).T + bias, accumulated in fp32 by cuBLASLt, out in out_dtype."""
    m = h8.shape[0]
    sa = a_scale.reshape(1, 1).expand(m, 1).contiguous()
    return torch._scaled_mm(h8, w8.t(), scale_a=sa, scale_b=w_scale.reshape(1, -1), out_dtype=out_dtype,
                            bias=None if bias is None else bias.to(out_dtype), use_fast_accum=True)


def fp8_linear_ref(h8, w8, a_scale, w_scale, bias, out_dtype=torch.bfloat16) -> torch.Tensor:
    y = (h8.double() * a_scale.double()) @ (w8.double() * w_scale.double()[:, None]).T
    if bias is not None:
        y = y + bias.double()
    return y.to(out_dtype)
