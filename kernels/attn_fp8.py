"""Flash-attention forward over a KV cache in Triton with FP8 (E4M3) operands: an evaluation kernel, not wired in.

Why: attention over the growing KV cache is the largest share of the DiT rollout (2.0 s of a batch-2 video at
cuDNN's bf16 rate, kernels/NOTES.md) and FP8 operands double the tensor-core rate on Hopper. Measured
(``scripts/bench_attention_fp8.py``, benchmarks/results/h100_run5_attention.json): this version is 0.85x cuDNN's
bf16 attention at the rollout's shapes (per-element scale multiplies load the softmax pipe that FP8 leaves as the
bottleneck), so the rollout keeps cuDNN; the wiring into the fused block that was measured (0.78x for the W8A8
rollout) is in git history (commit 2f946d5), and NOTES.md says what a faster version would change.

Scales are per token and head (amax / 448), computed on the device (no calibration, no host sync, CUDA-graph safe):
``s_q[i] * s_k[j]`` multiplies the scores; V's per-token scale is folded into P before P's E4M3 cast,
``P'[i, j] = p[i, j] * s_v[j] / max_tile(s_v) * 256`` (probabilities down to 2^-17 survive: E4M3's smallest
subnormal is 2^-9), and the accumulator is kept in units of the tile's scale. Online softmax in float32
(FlashAttention-2), exp2 with log2(e) folded into the score scale, keys past Lk masked in one last partial tile.
Layouts: q, k [B, L, H, D]; V^T [B, H, D, T] (the FP8 MMA needs K-major operands, and for P @ V the reduction runs
over keys); scales [B, H, L].
"""
from __future__ import annotations

import math

import torch
import triton
import triton.language as tl
from triton.tools.tensor_descriptor import TensorDescriptor

FP8 = torch.float8_e4m3fn
FP8_MAX = 448.0
ALIGN = 16  # TMA: every stride but the last a multiple of 16 bytes -> V^T's token count padded to this
CONFIG = (64, 128, 4, 3)  # BM, BN, warps, stages: fastest FP8 config at 32760 keys, batch 2 (h100_run5_attention)


@triton.jit
def _tile(q, k, v, sq, sk, sv, m_i, l_i, acc, c_i, qk_scale, valid):
    """One key tile: scores, online-softmax update, P' @ V into acc (v as [BN, D]); c_i: acc's current unit."""
    qk = tl.dot(q, tl.trans(k)) * (sq[:, None] * sk[None, :]) * qk_scale
    if valid is not None:
        qk = tl.where(valid[None, :], qk, -float("inf"))
    m_new = tl.maximum(m_i, tl.max(qk, 1))
    p = tl.math.exp2(qk - m_new[:, None])
    alpha = tl.math.exp2(m_i - m_new)
    l_i = l_i * alpha + tl.sum(p, 1)
    c_new = tl.maximum(tl.max(sv, 0), 1e-30) / 256.0
    acc = acc * (alpha * (c_i / c_new))[:, None]
    acc = tl.dot((p * (sv / c_new)[None, :]).to(tl.float8e4nv), v, acc)
    return m_new, l_i, acc, c_new


@triton.jit
def _kv(k_desc, v_desc, sk_ptr, sv_ptr, b, h, bh, n0, Lk, T, D: tl.constexpr, BN: tl.constexpr):
    """Key tile [BN, D], V^T tile viewed as [BN, D] with keys contiguous (K-major for the FP8 MMA), their scales."""
    cols = n0 + tl.arange(0, BN)
    k = k_desc.load([b, n0, h * D]).reshape(BN, D)
    v = tl.trans(v_desc.load([bh, 0, n0]).reshape(D, BN))
    sk = tl.load(sk_ptr + bh * T + cols, mask=cols < Lk, other=0.0)
    sv = tl.load(sv_ptr + bh * T + cols, mask=cols < Lk, other=0.0)
    return k, v, sk, sv


@triton.jit
def _attn_kernel(q_desc, k_desc, v_desc, sq_ptr, sk_ptr, sv_ptr, o_ptr, qk_scale, Lq, Lk, T, H, stride_ob, stride_om,
                 D: tl.constexpr, BM: tl.constexpr, BN: tl.constexpr):
    pid_m = tl.program_id(0)
    bh = tl.program_id(1)
    b = bh // H
    h = bh % H
    rows = pid_m * BM + tl.arange(0, BM)
    q = q_desc.load([b, pid_m * BM, h * D]).reshape(BM, D)
    sq = tl.load(sq_ptr + bh * Lq + rows, mask=rows < Lq, other=0.0)
    m_i = tl.full([BM], -float("inf"), tl.float32)
    l_i = tl.zeros([BM], tl.float32)
    acc = tl.zeros([BM, D], tl.float32)
    c_i = 1.0
    n_full = (Lk // BN) * BN
    for n0 in range(0, n_full, BN):
        k, v, sk, sv = _kv(k_desc, v_desc, sk_ptr, sv_ptr, b, h, bh, n0, Lk, T, D, BN)
        m_i, l_i, acc, c_i = _tile(q, k, v, sq, sk, sv, m_i, l_i, acc, c_i, qk_scale, None)
    if n_full < Lk:
        k, v, sk, sv = _kv(k_desc, v_desc, sk_ptr, sv_ptr, b, h, bh, n_full, Lk, T, D, BN)
        valid = n_full + tl.arange(0, BN) < Lk
        m_i, l_i, acc, c_i = _tile(q, k, v, sq, sk, sv, m_i, l_i, acc, c_i, qk_scale, valid)
    out = acc * (c_i / l_i)[:, None]
    cols = tl.arange(0, D)
    ptr = o_ptr + b * stride_ob + rows[:, None] * stride_om + h * D + cols[None, :]
    tl.store(ptr, out.to(o_ptr.dtype.element_ty), mask=rows[:, None] < Lq)


def _desc3(x: torch.Tensor, shape: list, block: list) -> TensorDescriptor:
    return TensorDescriptor(x, shape, list(x.stride()), block)


def attention(q8, k8, vt8, lk: int, scales, *, config=None, out_dtype=torch.bfloat16) -> torch.Tensor:
    """softmax(q k^T / sqrt(D)) v over the first ``lk`` keys from E4M3 codes: q8 [B, Lq, H, D], k8 [B, >= lk, H, D],
    V^T codes vt8 [B, H, D, T]; ``scales`` = (s_q [B, H, Lq], s_k [B, H, T], s_v [B, H, T]) float32.
    Returns [B, Lq, H, D] in ``out_dtype``."""
    bm, bn, warps, stages = config or CONFIG
    b, lq, h, d = q8.shape
    sq, sk, sv = scales
    q_desc = _desc3(q8.flatten(2), [b, lq, h * d], [1, bm, d])
    k_desc = _desc3(k8.flatten(2), [b, lk, h * d], [1, bn, d])
    v_desc = _desc3(vt8.flatten(0, 1), [b * h, d, lk], [1, d, bn])
    out = torch.empty((b, lq, h, d), dtype=out_dtype, device=q8.device)
    grid = (triton.cdiv(lq, bm), b * h)
    _attn_kernel[grid](q_desc, k_desc, v_desc, sq, sk, sv, out, math.log2(math.e) / math.sqrt(d), lq, lk,
                       sk.shape[-1], h, out.stride(0), out.stride(1), D=d, BM=bm, BN=bn, num_warps=warps,
                       num_stages=stages)
    return out


def quantize_tokens(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """x [B, L, H, D] -> (E4M3 codes [B, L, H, D], scales [B, H, L] float32): one scale per token and head."""
    s = x.float().abs().amax(-1).clamp_min(1e-12) / FP8_MAX
    return (x.float() / s[..., None]).to(FP8), s.transpose(1, 2)


class Fp8KV:
    """FP8 copy of one block's self-attention K/V cache (codes and per-token scales), written chunk by chunk."""

    def __init__(self, batch: int, tokens: int, heads: int, head_dim: int, device) -> None:
        t = -(-tokens // ALIGN) * ALIGN
        self.k = torch.zeros((batch, t, heads, head_dim), dtype=FP8, device=device)
        self.vt = torch.zeros((batch, heads, head_dim, t), dtype=FP8, device=device)
        self.sk = torch.zeros((batch, heads, t), dtype=torch.float32, device=device)
        self.sv = torch.zeros((batch, heads, t), dtype=torch.float32, device=device)

    def write(self, k: torch.Tensor, v: torch.Tensor, start: int) -> None:
        """Quantize the chunk's k, v [B, n, H, D] into positions start .. start + n."""
        end = start + k.shape[1]
        k8, sk = quantize_tokens(k)
        v8, sv = quantize_tokens(v)
        self.k[:, start:end] = k8
        self.sk[:, :, start:end] = sk
        self.vt[..., start:end] = v8.permute(0, 2, 3, 1)
        self.sv[:, :, start:end] = sv

    def attend(self, q: torch.Tensor, end: int, config=None) -> torch.Tensor:
        """Attention of q [B, Lq, H, D] (bf16) over the first ``end`` cached tokens, bf16 out."""
        q8, sq = quantize_tokens(q)
        return attention(q8, self.k, self.vt, end, (sq.contiguous(), self.sk, self.sv), config=config,
                         out_dtype=q.dtype)
