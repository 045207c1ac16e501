"""Pieces every Triton kernel of the package shares: rounding, GELU, and where a kernel may run.

Rounding and tanh are written in plain arithmetic (no libdevice) so that the same source runs on the GPU and
under ``TRITON_INTERPRET=1`` on the CPU, where the CPU tests check it against float64 references.
"""
from __future__ import annotations

import os

import torch
import triton
import triton.language as tl

# 1.5 * 2**23: adding and subtracting it rounds a float32 of magnitude < 2**22 to the nearest integer, ties to
# even, which is exactly torch.round. Larger magnitudes are clamped away by every caller before they matter.
_RINT_MAGIC = tl.constexpr(12582912.0)


@triton.jit
def rint(x):
    """Round half to even (torch.round) for |x| < 2**22."""
    return (x + _RINT_MAGIC) - _RINT_MAGIC


# False: x * (1 / s), as deployed (IEEE division made the producer kernels 2-3x slower on the H100:
# benchmarks/results/h100_run3.json "act_quant"); the extra rounding can move a code by one where x / s lies
# within an ulp of a rounding tie, which the per-layer error bound of tests/test_deploy.py covers.
# True: x / s exactly as the fake quantizers compute it. Kernels take it as a constexpr.
EXACT_DIVISION = False


@triton.jit
def quant_div(x, s, EXACT: tl.constexpr):
    if EXACT:
        return tl.math.div_rn(x, s)
    return x * (1.0 / s)


@triton.jit
def quant_code(x, s, z, lo, hi, EXACT: tl.constexpr):
    """The integer code (as float32) of x with step s and stored zero point z, clamped to [lo, hi]: the rounding every
    producer and quantizing epilogue shares with the fake quantizers."""
    return tl.minimum(tl.maximum(rint(quant_div(x, s, EXACT)) + z, lo), hi)


@triton.jit
def gelu_tanh(x):
    """GELU, tanh approximation (nn.GELU(approximate='tanh')) in float32, as x * sigmoid(2u): one exp2 and one
    approximate division (IEEE division and exp cost the ffn.0 epilogue ~3x its plain store: kernels/NOTES.md)."""
    u = 0.7978845608028654 * (x + 0.044715 * x * x * x)
    e = tl.exp2(tl.minimum(-2.8853900817779268 * u, 126.0))  # exp(-2u), clamped against overflow
    return tl.fdiv(x, 1.0 + e, ieee_rounding=False)


def interpreting() -> bool:
    """True when Triton runs kernels in its CPU interpreter (TRITON_INTERPRET=1)."""
    return os.environ.get("TRITON_INTERPRET", "0") not in ("", "0")


def triton_ok(*tensors: torch.Tensor) -> bool:
    """Triton kernels can run on these tensors: CUDA tensors, or any tensors under the interpreter."""
    return interpreting() or all(t.is_cuda for t in tensors)


def num_sms(device: torch.device) -> int:
    if device.type == "cuda":
        return torch.cuda.get_device_properties(device).multi_processor_count
    return 4  # interpreter: a handful of persistent programs keeps the CPU tests fast but still loops tiles


def next_pow2(n: int) -> int:
    return triton.next_power_of_2(int(n))


_DUMMIES: dict = {}


def dummy(dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """A cached 1-element tensor for pointer arguments a kernel variant never reads (no allocation per launch)."""
    key = (dtype, str(device))
    if key not in _DUMMIES:
        _DUMMIES[key] = torch.zeros(1, dtype=dtype, device=device)
    return _DUMMIES[key]
