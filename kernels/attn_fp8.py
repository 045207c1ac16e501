"""Flash-attention forward over a KV cache in Triton, bf16 or FP8 (E4M3) operands: an evaluation kernel.

Why: attention over the growing KV cache is the largest share of the DiT rollout (1.94 s of a batch-2 video at
cuDNN's bf16 rate, kernels/NOTES.md); FP8 operands double the tensor-core rate on Hopper. Not wired into the
rollout: ``scripts/bench_attention_fp8.py`` measures whether it beats cuDNN's bf16 attention at the rollout's
shapes and how far its output moves; it would be wired in only if it wins.

Layouts: q [B, Lq, H, D] and k [B, Lk, H, D] (the cache's layout); v as [B, Lk, H, D] for bf16, and for FP8 as
V^T [B, H, D, Lk_alloc] (the FP8 MMA needs both operands K-major: for P @ V the reduction runs over keys).
FP8 uses per-tensor scales (q, k, v) and P scaled by 256 before its E4M3 cast, so probabilities down to 2^-17
survive the cast (E4M3's smallest subnormal is 2^-9). Online softmax in float32 (FlashAttention-2), exp2 with the
log2(e) factor folded into the score scale, keys past Lk masked in one last partial tile.
"""
from __future__ import annotations

import math

import torch
import triton
import triton.language as tl
from triton.tools.tensor_descriptor import TensorDescriptor

P_SCALE = 256.0
FP8 = torch.float8_e4m3fn
FP8_MAX = 448.0


@triton.jit
def _softmax_step(q, k, v, m_i, l_i, acc, qk_scale, valid, FP8_P: tl.constexpr, P_MUL: tl.constexpr):
    """One key tile: scores, online-softmax update, P @ V accumulated into acc (v given as [BN, D])."""
    qk = tl.dot(q, tl.trans(k)) * qk_scale
    if valid is not None:
        qk = tl.where(valid[None, :], qk, -float("inf"))
    m_new = tl.maximum(m_i, tl.max(qk, 1))
    p = tl.math.exp2(qk - m_new[:, None])
    alpha = tl.math.exp2(m_i - m_new)
    l_i = l_i * alpha + tl.sum(p, 1)
    acc = acc * alpha[:, None]
    if FP8_P:
        acc = tl.dot((p * P_MUL).to(tl.float8e4nv), v, acc)
    else:
        acc = tl.dot(p.to(tl.bfloat16), v, acc)
    return m_new, l_i, acc


@triton.jit
def _load_v(v_desc, b, bh, n0, h, D: tl.constexpr, BN: tl.constexpr, VT: tl.constexpr):
    if VT:  # V^T tile [D, BN] -> [BN, D] view, keys contiguous (K-major for the FP8 MMA)
        return tl.trans(v_desc.load([bh, 0, n0]).reshape(D, BN))
    return v_desc.load([b, n0, h * D]).reshape(BN, D)


@triton.jit
def _attn_kernel(q_desc, k_desc, v_desc, o_ptr, qk_scale, out_scale, Lq, Lk, H, stride_ob, stride_om,
                 D: tl.constexpr, BM: tl.constexpr, BN: tl.constexpr, IS_FP8: tl.constexpr, P_MUL: tl.constexpr):
    pid_m = tl.program_id(0)
    bh = tl.program_id(1)
    b = bh // H
    h = bh % H
    q = q_desc.load([b, pid_m * BM, h * D]).reshape(BM, D)
    m_i = tl.full([BM], -float("inf"), tl.float32)
    l_i = tl.zeros([BM], tl.float32)
    acc = tl.zeros([BM, D], tl.float32)
    n_full = (Lk // BN) * BN
    for n0 in range(0, n_full, BN):
        k = k_desc.load([b, n0, h * D]).reshape(BN, D)
        v = _load_v(v_desc, b, bh, n0, h, D, BN, IS_FP8)
        m_i, l_i, acc = _softmax_step(q, k, v, m_i, l_i, acc, qk_scale, None, IS_FP8, P_MUL)
    if n_full < Lk:
        k = k_desc.load([b, n_full, h * D]).reshape(BN, D)
        v = _load_v(v_desc, b, bh, n_full, h, D, BN, IS_FP8)
        valid = n_full + tl.arange(0, BN) < Lk
        m_i, l_i, acc = _softmax_step(q, k, v, m_i, l_i, acc, qk_scale, valid, IS_FP8, P_MUL)
    out = acc * (out_scale / l_i)[:, None]
    rows = pid_m * BM + tl.arange(0, BM)
    cols = tl.arange(0, D)
    ptr = o_ptr + b * stride_ob + rows[:, None] * stride_om + h * D + cols[None, :]
    tl.store(ptr, out.to(o_ptr.dtype.element_ty), mask=rows[:, None] < Lq)


def attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, *, scales=(1.0, 1.0, 1.0), bm: int = 128,
              bn: int = 128, num_warps: int = 8, num_stages: int = 3, out_dtype=torch.bfloat16) -> torch.Tensor:
    """softmax(q k^T / sqrt(D)) v for q [B, Lq, H, D], k [B, Lk, H, D] (views with unit last stride).

    bf16: v [B, Lk, H, D]. FP8 (q.dtype float8_e4m3fn): v is V^T [B, H, D, >= Lk] and ``scales`` the per-tensor
    dequantization scales of (q, k, v). Returns [B, Lq, H, D] in ``out_dtype``.
    """
    b, lq, h, d = q.shape
    lk = k.shape[1]
    fp8 = q.dtype == FP8
    sq, sk, sv = scales if fp8 else (1.0, 1.0, 1.0)
    q3 = q.reshape(b, lq, h * d) if q.is_contiguous() else q.flatten(2)
    k3 = k[:, :lk].flatten(2)
    q_desc = TensorDescriptor(q3, list(q3.shape), list(q3.stride()), [1, bm, d])
    k_desc = TensorDescriptor(k3, [b, lk, h * d], list(k3.stride()), [1, bn, d])
    if fp8:
        vt = v.flatten(0, 1)  # [B*H, D, Lk_alloc]
        v_desc = TensorDescriptor(vt, [b * h, d, lk], list(vt.stride()), [1, d, bn])
    else:
        v3 = v.flatten(2)
        v_desc = TensorDescriptor(v3, [b, lk, h * d], list(v3.stride()), [1, bn, d])
    out = torch.empty((b, lq, h, d), dtype=out_dtype, device=q.device)
    qk_scale = sq * sk / math.sqrt(d) * math.log2(math.e)
    out_scale = sv / P_SCALE if fp8 else 1.0
    grid = (triton.cdiv(lq, bm), b * h)
    _attn_kernel[grid](q_desc, k_desc, v_desc, out, qk_scale, out_scale, lq, lk, h, out.stride(0), out.stride(1),
                       D=d, BM=bm, BN=bn, IS_FP8=fp8, P_MUL=P_SCALE if fp8 else 1.0, num_warps=num_warps,
                       num_stages=num_stages)
    return out


def to_fp8(x: torch.Tensor, scale: float | None = None) -> tuple[torch.Tensor, float]:
    """Per-tensor E4M3 quantization (scale = amax / 448 unless given): (codes, scale)."""
    if scale is None:
        scale = max(float(x.abs().amax()), 1e-12) / FP8_MAX
    return (x.float() / scale).clamp(-FP8_MAX, FP8_MAX).to(FP8), scale


def v_transposed(v8: torch.Tensor, align: int = 16) -> torch.Tensor:
    """[B, Lk, H, D] -> V^T [B, H, D, Lk_alloc] with Lk_alloc a multiple of ``align`` (TMA's 16-byte stride rule)."""
    b, lk, h, d = v8.shape
    out = torch.zeros((b, h, d, -(-lk // align) * align), dtype=v8.dtype, device=v8.device)
    out[..., :lk] = v8.permute(0, 2, 3, 1)
    return out
