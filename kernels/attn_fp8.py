"""Flash-attention forward over a chunk-wise KV cache in Triton with FP8 (E4M3) operands.

Why: attention over the growing KV cache is the largest share of the DiT rollout (2.0 s of a batch-2 video at
cuDNN's bf16 rate, kernels/NOTES.md) and FP8 operands double the tensor-core rate on Hopper. An evaluation kernel,
not wired in: ``scripts/bench_attention_fp8.py`` (benchmarks/results/h100_run6_attention.json) measured it 1.08x
cuDNN's bf16 attention summed over the rollout's 7 chunk shapes (1.13x at 32760 keys, 0.80x at 4680), but writing
each chunk's K/V into the FP8 copy with the torch ops of :meth:`Fp8KV.write` costs 0.6 ms per layer-forward, and
the W8A8 rollout with it wired into the fused block (``attention=triton_fp8``, commit a071c8b) took 3.99 s against
3.58 s with cuDNN (h100_run6.json). kernels/NOTES.md says what would have to change.

Scales: one per (chunk, head) for K and V and one per head for the chunk's queries (amax / 448), computed on the
device (no calibration, no host sync: CUDA graphs capture it). A per-token version (run5, commit 2f946d5) lost to
cuDNN (0.85x) because its scale multiplies cost two extra [BM, BN] passes per key tile; here a key tile never
straddles two chunks (each chunk's K/V sit in a segment padded to 128 keys), so the K scale folds into the scalar
score scale and the V scale into a per-segment change of the accumulator's unit. P is cast to E4M3 as p * 256
(probabilities down to 2^-17 survive; E4M3's smallest subnormal is 2^-9). Online softmax in float32
(FlashAttention-2), exp2 with log2(e) folded into the score scale, each segment's last partial tile masked.
Layouts: q [B, Lq, H, D]; the FP8 copy K [B, slots, H, D], V^T [B, H, D, slots] (the FP8 MMA needs K-major
operands, and for P @ V the reduction runs over keys), scales [B, H, segments].
"""
from __future__ import annotations

import math

import torch
import triton
import triton.language as tl
from triton.tools.tensor_descriptor import TensorDescriptor

FP8 = torch.float8_e4m3fn
FP8_MAX = 448.0
SEG_ALIGN = 128  # a chunk's segment is padded to this many key slots (a multiple of every tile BN below)
CONFIG = (64, 128, 4, 3)  # BM, BN, warps, stages: fastest per-tensor FP8 config at 32760 keys (h100_run5a_attention)


@triton.jit
def _tile(q, k, v, m_i, l_i, acc, score_scale, valid):
    """One key tile: scores, online-softmax update, (p * 256) @ V into acc (v as [BN, D], K-major)."""
    qk = tl.dot(q, tl.trans(k)) * score_scale
    if valid is not None:
        qk = tl.where(valid[None, :], qk, -float("inf"))
    m_new = tl.maximum(m_i, tl.max(qk, 1))
    p = tl.math.exp2(qk - m_new[:, None])
    alpha = tl.math.exp2(m_i - m_new)
    l_i = l_i * alpha + tl.sum(p, 1)
    acc = acc * alpha[:, None]
    acc = tl.dot((p * 256.0).to(tl.float8e4nv), v, acc)
    return m_new, l_i, acc


@triton.jit
def _attn_kernel(q_desc, k_desc, v_desc, sq_ptr, sk_ptr, sv_ptr, o_ptr, qk_scale, Lq, n_seg, seg_len, last_len,
                 seg_pad, max_seg, H, stride_ob, stride_om, D: tl.constexpr, BM: tl.constexpr, BN: tl.constexpr):
    pid_m = tl.program_id(0)
    bh = tl.program_id(1)
    b = bh // H
    h = bh % H
    q = q_desc.load([b, pid_m * BM, h * D]).reshape(BM, D)
    qs = tl.load(sq_ptr + bh) * qk_scale
    m_i = tl.full([BM], -float("inf"), tl.float32)
    l_i = tl.zeros([BM], tl.float32)
    acc = tl.zeros([BM, D], tl.float32)
    c_i = 1.0  # acc's unit: acc * c_i is the un-normalised output
    for s in range(0, n_seg):
        length = tl.where(s < n_seg - 1, seg_len, last_len)
        base = s * seg_pad
        score_scale = qs * tl.load(sk_ptr + bh * max_seg + s)
        c_new = tl.maximum(tl.load(sv_ptr + bh * max_seg + s), 1e-30) / 256.0
        acc = acc * (c_i / c_new)
        c_i = c_new
        n_full = (length // BN) * BN
        for n0 in range(0, n_full, BN):
            k = k_desc.load([b, base + n0, h * D]).reshape(BN, D)
            v = tl.trans(v_desc.load([bh, 0, base + n0]).reshape(D, BN))
            m_i, l_i, acc = _tile(q, k, v, m_i, l_i, acc, score_scale, None)
        if n_full < length:
            k = k_desc.load([b, base + n_full, h * D]).reshape(BN, D)
            v = tl.trans(v_desc.load([bh, 0, base + n_full]).reshape(D, BN))
            valid = n_full + tl.arange(0, BN) < length
            m_i, l_i, acc = _tile(q, k, v, m_i, l_i, acc, score_scale, valid)
    out = acc * (c_i / l_i)[:, None]
    rows = pid_m * BM + tl.arange(0, BM)
    cols = tl.arange(0, D)
    ptr = o_ptr + b * stride_ob + rows[:, None] * stride_om + h * D + cols[None, :]
    tl.store(ptr, out.to(o_ptr.dtype.element_ty), mask=rows[:, None] < Lq)


def _desc3(x: torch.Tensor, block: list) -> TensorDescriptor:
    return TensorDescriptor(x, list(x.shape), list(x.stride()), block)


def quantize_heads(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """x [B, L, H, D] -> (E4M3 codes [B, L, H, D], scales [B, H] float32): one scale per head over the L tokens."""
    s = x.abs().amax(dim=(1, 3)).float().clamp_min(1e-12) / FP8_MAX
    return (x.float() * (1.0 / s)[:, None, :, None]).to(FP8), s


class Fp8KV:
    """FP8 copy of one block's self-attention K/V cache, one segment per chunk, written chunk by chunk.

    Chunks must be uniform (every write starts at a multiple of the first write's length and is not longer),
    as in the chunk-wise rollout; rewriting a chunk (the denoising steps, the refresh pass) overwrites its segment.
    """

    def __init__(self, batch: int, tokens: int, heads: int, head_dim: int, device) -> None:
        self.shape, self.device = (batch, tokens, heads, head_dim), device
        self.seg_len = None

    def _allocate(self, n: int) -> None:
        b, tokens, h, d = self.shape
        self.seg_len, self.seg_pad = n, -(-n // SEG_ALIGN) * SEG_ALIGN
        self.max_seg = -(-tokens // n)
        slots = self.max_seg * self.seg_pad
        self.k = torch.zeros((b, slots, h, d), dtype=FP8, device=self.device)
        self.vt = torch.zeros((b, h, d, slots), dtype=FP8, device=self.device)
        self.sk = torch.zeros((b, h, self.max_seg), dtype=torch.float32, device=self.device)
        self.sv = torch.zeros((b, h, self.max_seg), dtype=torch.float32, device=self.device)

    def write(self, k: torch.Tensor, v: torch.Tensor, start: int) -> None:
        """Quantize the chunk's k, v [B, n, H, D] (tokens start .. start + n) into its segment."""
        n = k.shape[1]
        if self.seg_len is None:
            self._allocate(n)
        if start % self.seg_len or n > self.seg_len:
            raise NotImplementedError(f"FP8 attention needs uniform chunks of {self.seg_len} tokens; got a write of "
                                      f"{n} tokens at {start}")
        seg = start // self.seg_len
        lo = seg * self.seg_pad
        k8, sk = quantize_heads(k)
        v8, sv = quantize_heads(v)
        self.k[:, lo:lo + n] = k8
        self.vt[..., lo:lo + n] = v8.permute(0, 2, 3, 1)
        self.sk[:, :, seg] = sk
        self.sv[:, :, seg] = sv

    def attend(self, q: torch.Tensor, end: int, config=None) -> torch.Tensor:
        """Attention of q [B, Lq, H, D] over the first ``end`` cached tokens; output in q's dtype."""
        bm, bn, warps, stages = config or CONFIG
        if self.seg_pad % bn:
            raise ValueError(f"tile BN={bn} must divide the segment padding {self.seg_pad}")
        b, lq, h, d = q.shape
        n_seg = -(-end // self.seg_len)
        q8, sq = quantize_heads(q)
        q_desc = _desc3(q8.flatten(2), [1, bm, d])
        k_desc = _desc3(self.k.flatten(2), [1, bn, d])
        v_desc = _desc3(self.vt.flatten(0, 1), [1, d, bn])
        out = torch.empty((b, lq, h, d), dtype=q.dtype, device=q.device)
        grid = (triton.cdiv(lq, bm), b * h)
        _attn_kernel[grid](q_desc, k_desc, v_desc, sq, self.sk, self.sv, out, math.log2(math.e) / math.sqrt(d), lq,
                           n_seg, self.seg_len, end - (n_seg - 1) * self.seg_len, self.seg_pad, self.max_seg, h,
                           out.stride(0), out.stride(1), D=d, BM=bm, BN=bn, num_warps=warps, num_stages=stages)
        return out
