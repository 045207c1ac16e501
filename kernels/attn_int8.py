"""INT8 attention over the chunk-wise KV cache (SageAttention-style): INT8 Q.K^T, bf16 P.V, in Triton.

Why: self-attention over the growing KV cache is ~2 s of the 3.3 s W8A8 rollout at cuDNN's bf16 rate
(kernels/NOTES.md), and cuDNN's FP8 attention, the only faster kernel at hand, doubles the embedded model's latent
MSE because E4M3 keys carry a 3-bit mantissa (docs/experiments/fp8_attention_ablation.md). INT8 keeps 7 bits for
every element of a row that shares one scale; SageAttention's recipe makes that range small: subtract the mean key
(softmax-invariant, since q . mean is the same for every key a query sees) and give each key row its own scale.

Numerics (:func:`int8_attention_ref` computes exactly this, up to float32 summation order):

- keys: written by the q/k glue (kernels/glue.py ``qk_norm_rope(..., key_int8=...)``) as int8 codes of
  ``k - mean`` with one scale per (token, head), ``amax / 127`` (symmetric, round half to even), the layer's mean
  key calibrated once (qarvd.deploy.calibrate_attention_); codes in the cache [B, T, H, D], scales [B, H, T] float32;
- queries: quantized by the kernel itself when it loads its block of rows, one scale per (row, head), same rule;
- scores: the exact int32 product of the codes times the key's scale (one multiply per score, as the bf16 kernel's
  softmax scale); the query row's scale times log2(e) / sqrt(D) is folded into the exp2 argument and the row max;
- P.V: the unnormalised probabilities exp2(s - rowmax) cast to V's dtype (bf16 on the GPU, as every flash kernel
  does), float32 accumulation, normalised at the end; the output in q's dtype (no FP8 output rounding).

No host sync and no data-dependent launch: a rollout forward that calls it can be captured in a CUDA graph. The
K/V tiles come through TMA descriptors over the cache ([B, T, H*D], block [1, BN, D]); the last partial tile is
masked, stale slots past ``end`` are never read into the softmax.
"""
from __future__ import annotations

import math
from typing import Iterator, Optional

import torch
import triton
import triton.language as tl
from triton.tools.tensor_descriptor import TensorDescriptor

from kernels._common import rint

QMAX = 127.0  # symmetric int8 codes in [-127, 127]
TINY = 1e-30  # floor of a row's amax: an all-zero row gets codes 0 and a finite scale
# (BM, BN, num_warps, num_stages) per head dim: compile-checked for sm_90 (kernels.attn_int8.launches); timed on the
# GPU by the attention bench, which may override it per call
CONFIGS = {128: (128, 128, 8, 3), 64: (128, 64, 4, 3)}
FALLBACK_CONFIG = (64, 32, 4, 2)  # small head dims (the embedded model, tests)


@triton.jit
def _tile(q8, k8, ks, v, m_i, l_i, acc, rs, valid, PV_IEEE: tl.constexpr):
    """One key tile: int8 scores scaled by the key scales, online softmax in base 2, P.V into acc."""
    s = tl.dot(q8, tl.trans(k8), out_dtype=tl.int32).to(tl.float32) * ks[None, :]
    if valid is not None:
        s = tl.where(valid[None, :], s, -float("inf"))
    m_new = tl.maximum(m_i, tl.max(s, 1) * rs)  # rs > 0: max(s * rs) = max(s) * rs
    p = tl.math.exp2(s * rs[:, None] - m_new[:, None])
    alpha = tl.math.exp2(m_i - m_new)
    l_i = l_i * alpha + tl.sum(p, 1)
    acc = acc * alpha[:, None]
    if PV_IEEE:  # float32 V (the CPU model): no TF32 rounding
        acc = tl.dot(p.to(v.dtype), v, acc, input_precision="ieee")
    else:
        acc = tl.dot(p.to(v.dtype), v, acc)
    return m_new, l_i, acc


@triton.jit(do_not_specialize=["end"])
def _int8_attn_kernel(q_ptr, stride_qb, stride_qm, k_desc, v_desc, ks_ptr, stride_sb, stride_sh, o_ptr, stride_ob,
                      stride_om, Lq, end, H, qk_scale, D: tl.constexpr, BM: tl.constexpr, BN: tl.constexpr,
                      PV_IEEE: tl.constexpr):
    pid_m = tl.program_id(0)
    bh = tl.program_id(1)
    b = bh // H
    h = bh % H
    rows = pid_m * BM + tl.arange(0, BM)
    cols = tl.arange(0, D)
    rmask = rows < Lq
    q = tl.load(q_ptr + b * stride_qb + rows[:, None] * stride_qm + h * D + cols[None, :], mask=rmask[:, None],
                other=0.0).to(tl.float32)
    qa = tl.maximum(tl.max(tl.abs(q), 1), 1e-30)
    q8 = tl.minimum(tl.maximum(rint(q * (127.0 / qa)[:, None]), -127.0), 127.0).to(tl.int8)
    rs = (qa / 127.0) * qk_scale  # the row's dequantization step times log2(e) / sqrt(D)
    m_i = tl.full([BM], -float("inf"), tl.float32)
    l_i = tl.zeros([BM], tl.float32)
    acc = tl.zeros([BM, D], tl.float32)
    ks_row = ks_ptr + b * stride_sb + h * stride_sh
    n_full = (end // BN) * BN
    for n0 in range(0, n_full, BN):
        k8 = k_desc.load([b, n0, h * D]).reshape(BN, D)
        v = v_desc.load([b, n0, h * D]).reshape(BN, D)
        ks = tl.load(ks_row + n0 + tl.arange(0, BN))
        m_i, l_i, acc = _tile(q8, k8, ks, v, m_i, l_i, acc, rs, None, PV_IEEE)
    if n_full < end:
        k8 = k_desc.load([b, n_full, h * D]).reshape(BN, D)
        v = v_desc.load([b, n_full, h * D]).reshape(BN, D)
        keys = n_full + tl.arange(0, BN)
        valid = keys < end
        ks = tl.load(ks_row + keys, mask=valid, other=0.0)
        m_i, l_i, acc = _tile(q8, k8, ks, v, m_i, l_i, acc, rs, valid, PV_IEEE)
    out = acc / l_i[:, None]
    ptr = o_ptr + b * stride_ob + rows[:, None] * stride_om + h * D + cols[None, :]
    tl.store(ptr, out.to(o_ptr.dtype.element_ty), mask=rmask[:, None])


def config_for(head_dim: int) -> tuple:
    return CONFIGS.get(head_dim, FALLBACK_CONFIG)


def _check(q: torch.Tensor, k8: torch.Tensor, k_scale: torch.Tensor, v: torch.Tensor, end: int) -> None:
    b, _, h, d = q.shape
    if k8.dtype != torch.int8 or k_scale.dtype != torch.float32:
        raise ValueError(f"INT8 attention takes int8 key codes and float32 key scales, got {k8.dtype}, {k_scale.dtype}")
    if k8.shape != v.shape or k8.shape[0] != b or k8.shape[2:] != (h, d):
        raise ValueError(f"key codes {tuple(k8.shape)} and values {tuple(v.shape)} must be [B, T, H, D] caches of "
                         f"q's batch and heads {tuple(q.shape)}")
    if tuple(k_scale.shape) != (b, h, k8.shape[1]) or k_scale.stride(-1) != 1:
        raise ValueError(f"key scales must be a [B, H, T] = {(b, h, k8.shape[1])} tensor with unit token stride, "
                         f"got {tuple(k_scale.shape)}")
    if not 0 < end <= k8.shape[1]:
        raise ValueError(f"end={end} outside the cache's 1..{k8.shape[1]} tokens")


def int8_attention(q: torch.Tensor, k8: torch.Tensor, k_scale: torch.Tensor, v: torch.Tensor, end: int,
                   config: Optional[tuple] = None, out: Optional[torch.Tensor] = None) -> torch.Tensor:
    """softmax(q k^T / sqrt(D)) v over the first ``end`` cached tokens (see the module docstring).

    q [B, Lq, H, D] (rows of one sample contiguous per head: a view of the [B*Lq, H*D] glue output); k8 int8 and v
    [B, T, H, D] contiguous caches; k_scale [B, H, T] float32. Returns [B, Lq, H, D] in q's dtype (or ``out``)."""
    _check(q, k8, k_scale, v, end)
    b, lq, h, d = q.shape
    if q.stride(-1) != 1 or q.stride(2) != d or not (k8.is_contiguous() and v.is_contiguous()):
        raise ValueError("INT8 attention needs head-major rows in q (stride D per head) and contiguous caches")
    bm, bn, warps, stages = config or config_for(d)
    out = out if out is not None else torch.empty((b, lq, h, d), dtype=q.dtype, device=q.device)
    k_desc = TensorDescriptor(k8.flatten(2), list(k8.flatten(2).shape), list(k8.flatten(2).stride()), [1, bn, d])
    v_desc = TensorDescriptor(v.flatten(2), list(v.flatten(2).shape), list(v.flatten(2).stride()), [1, bn, d])
    grid = (triton.cdiv(lq, bm), b * h)
    _int8_attn_kernel[grid](q, q.stride(0), q.stride(1), k_desc, v_desc, k_scale, k_scale.stride(0),
                            k_scale.stride(1), out, out.stride(0), out.stride(1), lq, end, h,
                            math.log2(math.e) / math.sqrt(d), D=d, BM=bm, BN=bn, PV_IEEE=v.dtype == torch.float32,
                            num_warps=warps, num_stages=stages)
    return out


# ----------------------------------------------------------------------------------------------- reference
def quantize_rows(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Symmetric int8 codes of ``x`` [..., D] with one scale per row over the last dim: (codes as float32,
    scales [..., 1] float32), codes = rint(x * (127 / amax)), scale = amax / 127 (as the kernels compute them)."""
    xf = x.float()
    amax = xf.abs().amax(-1, keepdim=True).clamp_min(TINY)
    codes = torch.round(xf * (QMAX / amax)).clamp(-QMAX, QMAX)
    return codes, amax / QMAX


def int8_attention_ref(q: torch.Tensor, k8: torch.Tensor, k_scale: torch.Tensor, v: torch.Tensor, end: int,
                       config: Optional[tuple] = None, out: Optional[torch.Tensor] = None) -> torch.Tensor:
    """:func:`int8_attention` in torch on any device (same signature; ``config`` is ignored): the CPU path of the
    deployment and the reference of the kernel tests."""
    _check(q, k8, k_scale, v, end)
    d = q.shape[-1]
    q8, qs = quantize_rows(q)  # [B, Lq, H, D], [B, Lq, H, 1]
    acc = torch.einsum("bqhd,bkhd->bhqk", q8.double(), k8[:, :end].double()).float()  # exact integers
    s = acc * k_scale[:, :, None, :end]
    rs = (qs * (math.log2(math.e) / math.sqrt(d))).permute(0, 2, 1, 3)  # [B, H, Lq, 1]
    p = torch.exp2(s * rs - (s.amax(-1, keepdim=True) * rs))
    o = torch.einsum("bhqk,bkhd->bhqd", p.to(v.dtype).float(), v[:, :end].float()) / p.sum(-1, keepdim=True)
    o = o.permute(0, 2, 1, 3).to(q.dtype)
    if out is not None:
        out.copy_(o)
        return out
    return o


def launches(batch: int, q_tokens: int, cache_tokens: int, heads: int, head_dim: int, dtype, config=None
             ) -> Iterator[tuple[str, object]]:
    """(name, thunk) of INT8 attention's distinct Triton launches at a rollout's shapes, for the offline sm_90
    compile check (CPU tensors: only shapes, strides and dtypes reach the compiler): the q/k glue writing int8 keys
    and their scales into the cache, and the attention kernel (one compiled variant serves every cache length)."""
    from functools import partial

    from kernels import glue

    dim = heads * head_dim
    q = torch.empty(batch * q_tokens, dim, dtype=dtype).view(batch, q_tokens, heads, head_dim)
    k8 = torch.empty(batch, cache_tokens, heads, head_dim, dtype=torch.int8)
    v = torch.empty(batch, cache_tokens, heads, head_dim, dtype=dtype)
    ks = torch.empty(batch, heads, cache_tokens, dtype=torch.float32)
    w = torch.ones(dim, dtype=dtype)
    rope = torch.empty(q_tokens, head_dim // 2)
    yield "qk_norm_rope_int8_keys", partial(glue.qk_norm_rope, torch.empty(batch * q_tokens, 3 * dim, dtype=dtype),
                                            (0, dim, 2 * dim), dim, q_tokens, wq=w, wk=w, eps=1e-6, cos=rope,
                                            sin=rope, cache_k=k8, cache_v=v, start=cache_tokens - q_tokens,
                                            key_int8=(torch.zeros(dim), ks))
    yield "int8_attention", partial(int8_attention, q, k8, ks, v, cache_tokens, config)
