"""FlashAttention-4 (package ``flash-attn-4``, CuTe DSL, an sm90 forward) as the fused block's bf16 attention kernel.

Why: cuDNN's bf16 attention is ~2 s of the W8A8 rollout; FA4 measured 557-671 TFLOP/s against cuDNN's 567-611 on the
rollout's self-attention shapes (one H100, issue 22), so it is a bench row next to cudnn / flash, and the strongest
bf16 attention a user could pick. Layout [B, L, H, D] as the cache stores it (k/v may be cache slices: unit stride in
D is all FA4 needs). CuTe DSL compiles each shape on its first call; later calls launch the compiled kernel without
host syncs, so a forward that ran once eagerly can be captured in a CUDA graph (qarvd.deploy.graphs does exactly that).

The package and its CuTe DSL runtime are optional and imported on first use; without them the first call raises an
ImportError naming every package to install (no silent fallback to another kernel).
"""
from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F

PACKAGES = ("flash-attn-4 nvidia-cutlass-dsl nvidia-cutlass-dsl-libs-base nvidia-cutlass-dsl-libs-core "
            "nvidia-cutlass-dsl-libs-cu13 quack-kernels apache-tvm-ffi torch-c-dlpack-ext")


def _interface():
    try:
        from flash_attn.cute import flash_attn_func  # noqa: PLC0415 - optional dependency, imported on first use
    except ImportError as e:
        raise ImportError(f"kernel.attention=fa4 needs FlashAttention-4: pip install {PACKAGES} (installed with pip "
                          f"--target, also put <target>/nvidia_cutlass_dsl/dsl_packages on PYTHONPATH)") from e
    return flash_attn_func


def available(device: Optional[torch.device] = None) -> bool:
    """True when the package imports and the GPU is Hopper or newer (FA4's sm90 / sm100 forwards)."""
    if not torch.cuda.is_available():
        return False
    try:
        _interface()
    except ImportError:
        return False
    return torch.cuda.get_device_capability(device)[0] >= 9


def fa4_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """softmax(q k^T / sqrt(D)) v of bf16/fp16 [B, Lq, H, D] q and [B, Lk, H, D] k, v; returns [B, Lq, H, D]."""
    out = _interface()(q, k, v)
    return out[0] if isinstance(out, tuple) else out  # (out, lse) in some releases, out alone in others


def fa4_attention_ref(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """:func:`fa4_attention` through PyTorch's SDPA (the torch_ref backend's stand-in on any device)."""
    return F.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2)).transpose(1, 2)
