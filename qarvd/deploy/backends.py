"""Kernel backends: which implementation runs the quantized (or bf16) linears and the block glue.

Chosen by config (``kernel=triton_int8|torch_ref|fp8|bf16``, each a ``_target_`` in ``conf/kernel/``). A backend
names the weight format the converter produces (``int``: W8A8/W4A8 from the artifact's bits, ``fp8``, or ``bf16``:
no conversion), the dual-scale GEMM variant, the attention kernel, and provides the ops the fused block forward
(:mod:`qarvd.deploy.fast`) and the stand-alone real modules call. ``torch_ref`` computes the same functions with
torch ops (float64 GEMM of the integer codes), on any device: it is the reference the Triton backend is tested
against and the CPU path for the embedded model.
"""
from __future__ import annotations

import contextlib
from collections.abc import Sequence
from typing import Optional

import torch

from kernels import act_quant, attn_cudnn, attn_fa4, attn_int8, attn_sage, cutlass_gemm, fp8, glue, qgemm
from kernels._common import triton_ok

# Quantized self-attention of the fused block, each calibrated once by qarvd.deploy.calibrate_attention_ (other
# attention, i.e. cross-attention, as "auto"). cudnn_fp8: FP8 through cuDNN (kernels/attn_cudnn.py; torch_ref emulates
# its numerics), per-layer static scales. int8_sage: INT8 Q.K^T with per-token scales and the calibrated mean key
# subtracted, bf16 P.V (kernels/attn_int8.py; torch_ref runs its torch reference).
QUANTIZED_ATTENTION = {"cudnn_fp8": "fp8", "int8_sage": "int8"}
# fa4: FlashAttention-4 (kernels/attn_fa4.py) for the fused block's bf16 self- and cross-attention. sage2:
# SageAttention2's Hopper kernel (kernels/attn_sage.py) for the fused block's self-attention over the bf16 cache (INT8
# Q.K^T, FP8 P.V, quantized per call: no calibration; torch_ref emulates it), cross-attention as "auto"
ATTENTION = ("auto", "cudnn", "flash", "efficient", "math", "fa4", "sage2", *QUANTIZED_ATTENTION)
DUAL = ("exact", "int_ratio")
# split: dual-scale consumers read their input through the outlier-first permutation and get two contiguous runs
# (ffn.0's rows permuted to ffn.2's order); head: as split, but a gathering producer writes every column in its own
# order after the outlier run and gathers only the outliers (qarvd.deploy.modules.head_layout); scatter: per-column
# steps scattered through dest (the ablation)
DUAL_LAYOUTS = ("split", "head", "scatter")
WEIGHTS = ("artifact", "symmetric")


def sdpa_context(name: str):
    """Context restricting F.scaled_dot_product_attention to one backend ('auto' leaves PyTorch's choice)."""
    if name not in ATTENTION:
        raise ValueError(f"attention={name!r}; choose from {ATTENTION}")
    if name in ("auto", "fa4", "sage2") or name in QUANTIZED_ATTENTION:  # what SDPA still runs: PyTorch's choice
        return contextlib.nullcontext()
    from torch.nn.attention import SDPBackend, sdpa_kernel

    return sdpa_kernel([{"cudnn": SDPBackend.CUDNN_ATTENTION, "flash": SDPBackend.FLASH_ATTENTION,
                         "efficient": SDPBackend.EFFICIENT_ATTENTION, "math": SDPBackend.MATH}[name]])


def _chunk_set(chunks, quantized: Optional[str], attention: str) -> Optional[tuple[int, ...]]:
    """``kernel.attention_chunks`` checked: None, or the sorted chunk indices (a non-empty list of ints >= 0)."""
    if chunks is None:
        return None
    values = list(chunks) if isinstance(chunks, Sequence) and not isinstance(chunks, str) else None
    if not values or any(isinstance(c, bool) or not isinstance(c, int) or c < 0 for c in values):
        raise ValueError(f"kernel.attention_chunks={chunks!r}: give null (every chunk) or a non-empty list of chunk "
                         f"indices >= 0, e.g. [2,3,4,5,6]")
    if quantized is None and attention != "sage2":
        raise ValueError(f"kernel.attention_chunks={list(values)} chooses the chunks of a quantized attention "
                         f"(cudnn_fp8 | int8_sage | sage2); attention={attention!r} is not one")
    return tuple(sorted(set(values)))


class KernelBackend:
    """Base: the ops table (Triton kernels) and the settings every backend shares."""

    name = "base"
    format = "bf16"
    norm_quant = staticmethod(act_quant.norm_quant)
    gemm = staticmethod(qgemm.qgemm)
    qk_norm_rope = staticmethod(glue.qk_norm_rope)
    residual = staticmethod(glue.residual_update)
    fp8_linear = staticmethod(fp8.fp8_linear)
    int8_attention = staticmethod(attn_int8.int8_attention)
    fa4_attention = staticmethod(attn_fa4.fa4_attention)
    sage_attention = staticmethod(attn_sage.sage_attention)

    def __init__(self, attention: str = "auto", fused: bool = True, dual_mode: str = "exact",
                 weights: str = "artifact", graphs: bool = False, dual_layout: str = "split",
                 attention_chunks=None, smooth_keys: bool = False) -> None:
        if attention not in ATTENTION:
            raise ValueError(f"attention={attention!r}; choose from {ATTENTION}")
        if dual_mode not in DUAL:
            raise ValueError(f"dual_mode={dual_mode!r}; choose from {DUAL}")
        if dual_layout not in DUAL_LAYOUTS:
            raise ValueError(f"kernel.dual_layout={dual_layout!r}; choose from {DUAL_LAYOUTS}")
        self.dual_layout = dual_layout
        if weights not in WEIGHTS:
            raise ValueError(f"weights={weights!r}; choose from {WEIGHTS}")
        self.attention, self.fused, self.dual_mode, self.weights = attention, bool(fused), dual_mode, weights
        self.graphs = bool(graphs)  # accelerate_ then replays rollout forwards as CUDA graphs (qarvd.deploy.graphs)
        # chunk-adaptive precision (qarvd.deploy.precision_schedule): the chunks that run the quantized attention,
        # bf16 attention in the others; None: every chunk
        self.attention_chunks = _chunk_set(attention_chunks, self.quantized_attention, attention)
        if not isinstance(smooth_keys, bool):
            raise ValueError(f"kernel.smooth_keys must be true or false, got {smooth_keys!r}")
        # cudnn_fp8: the calibrated mean key is subtracted before the keys are coded (softmax-invariant); int8_sage
        # always does it
        self.smooth_keys = smooth_keys

    def sdpa(self):
        return sdpa_context(self.attention)

    @property
    def quantized_attention(self):
        """'fp8' | 'int8' when the fused block's self-attention is quantized (it then needs calibrate_attention_),
        else None."""
        return QUANTIZED_ATTENTION.get(self.attention)

    @property
    def fp8_attention_on(self) -> bool:
        return self.quantized_attention == "fp8"

    def fp8_attention(self, q8, k8, v8, scalars, scales):
        """FP8 self-attention over the cache: codes in ([B, Lq, H, D] q, [B, Lk, H, D] k/v), output codes [B, Lq, H, D]
        (``scalars``: the layer's attn_cudnn.fp8_scalars, ``scales``: its [4] steps)."""
        if getattr(self, "_fp8_attn", None) is None:
            self._fp8_attn = attn_cudnn.CudnnFp8Attention(q8.device)
        return self._fp8_attn(q8, k8, v8, scalars)

    def check(self, *tensors: torch.Tensor) -> None:
        """Refuse to run Triton kernels where they cannot (never a silent fallback to another implementation)."""
        if not triton_ok(*tensors):
            raise RuntimeError(f"kernel backend {self.name!r} runs Triton kernels: it needs CUDA tensors "
                               f"(or TRITON_INTERPRET=1); use kernel=torch_ref on the CPU")

    def module_forward(self, mod, x: torch.Tensor) -> torch.Tensor:
        """A real module on its own (outside the fused block): quantize its input, run :meth:`linear`, add the
        16-bit low-rank branch where the layer has one."""
        self.check(x)
        x2 = x.reshape(-1, mod.in_features)
        y = self.linear(mod, x2)
        lr = _lowrank(mod, x2)
        if lr is not None:
            y = (y.float() + lr).to(x.dtype)
        return y.view(*x.shape[:-1], mod.out_features)

    def linear(self, mod, x2: torch.Tensor) -> torch.Tensor:
        """The module's low-bit linear of the token rows ``x2`` [M, in_features] (without the low-rank branch)."""
        raise NotImplementedError(f"backend {self.name!r} has no real modules")

    def __repr__(self) -> str:
        return (f"{type(self).__name__}(attention={self.attention!r}, fused={self.fused}, dual_mode={self.dual_mode!r}, "
                f"weights={self.weights!r}, graphs={self.graphs}, dual_layout={self.dual_layout!r}, "
                f"attention_chunks={self.attention_chunks}, smooth_keys={self.smooth_keys})")


def _lowrank(mod, x2: torch.Tensor):
    if not mod.meta.get("rank"):
        return None
    xs = x2.float() if not mod.meta["has_smooth"] else x2.float() / mod.smooth
    return (xs @ mod.lr_down.float().T) @ mod.lr_up.float().T


class TritonInt8Backend(KernelBackend):
    """W8A8 / W4A8 through the Triton kernels of this package."""

    name = "triton_int8"
    format = "int"

    def linear(self, mod, x2: torch.Tensor) -> torch.Tensor:
        a, rs = self.norm_quant(x2, mod.stacked_act(), rowsum=mod.group().has_wzp)
        return self.gemm(a, rs, mod.group(), x2.shape[0], out_dtype=x2.dtype)


class CutlassInt8Backend(TritonInt8Backend):
    """W8A8 with the GEMMs in CUTLASS (kernels/cutlass_gemm.py: warp-specialized wgmma, dequantizing epilogue), the
    producers and glue in Triton. Dual-scale layers run on CUTLASS in the ``int_ratio`` form; layers it cannot take
    (int4, ``exact`` dual scale, weight zero points, fp32) use the Triton GEMM; ``weights: symmetric`` makes every
    int8 layer without the exact dual form eligible."""

    name = "cutlass_int8"

    def __init__(self, *args, fuse_epilogues: bool = True, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        if not isinstance(fuse_epilogues, bool):
            raise ValueError(f"kernel.fuse_epilogues must be true or false, got {fuse_epilogues!r}")
        self.fuse_epilogues = fuse_epilogues  # false: CUTLASS stores bf16, Triton applies GELU->int8 / residual

    def gemm(self, *args, **kwargs):
        return cutlass_gemm.qgemm_cutlass(*args, fuse=self.fuse_epilogues, **kwargs)

    def __repr__(self) -> str:
        return f"{super().__repr__()[:-1]}, fuse_epilogues={self.fuse_epilogues})"


class _TorchGlue:
    """Mixin: torch implementations of the producer quantization and glue, usable on any device (no CUDA check)."""

    norm_quant = staticmethod(act_quant.norm_quant_torch)
    qk_norm_rope = staticmethod(glue.qk_norm_rope_ref)
    residual = staticmethod(glue.residual_update_ref)

    def check(self, *tensors: torch.Tensor) -> None:
        return None

    def fp8_attention(self, q8, k8, v8, scalars, scales):
        return attn_cudnn.fp8_attention_ref(q8, k8, v8, scales)

    int8_attention = staticmethod(attn_int8.int8_attention_ref)
    fa4_attention = staticmethod(attn_fa4.fa4_attention_ref)
    sage_attention = staticmethod(attn_sage.sage_attention_ref)


class TorchRefBackend(_TorchGlue, TritonInt8Backend):
    """The same real integer arithmetic in torch (float64 GEMM of the codes): reference and CPU path."""

    name = "torch_ref"
    gemm = staticmethod(qgemm.qgemm_torch)


class Fp8Backend(KernelBackend):
    """FP8 E4M3 W8A8 through torch._scaled_mm, activations quantized by the Triton producer kernels."""

    name = "fp8"
    format = "fp8"

    def linear(self, mod, x2: torch.Tensor) -> torch.Tensor:
        h = x2 if not mod.meta["has_smooth"] else (x2.float() / mod.smooth).to(x2.dtype)
        h8 = self.norm_quant(h, fp8_scale=mod.a_scale)
        return self.fp8_linear(h8, mod.weight, mod.a_scale, mod.w_scale, mod.bias if mod.meta["has_bias"] else None,
                               x2.dtype)


class Fp8RefBackend(_TorchGlue, Fp8Backend):
    """FP8 arithmetic emulated in torch (CPU tests of the FP8 conversion)."""

    name = "fp8_ref"
    fp8_linear = staticmethod(fp8.fp8_linear_ref)


class Bf16Backend(KernelBackend):
    """No quantization: cuBLAS linears with the fused Triton glue (``fused: true``) or the eager model."""

    name = "bf16"
    format = "bf16"
