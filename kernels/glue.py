"""Memory-bound glue of a Wan block, fused: q/k RMSNorm + RoPE + KV-cache write, and the gated residual update.

Eager PyTorch runs these as chains of float32 element-wise kernels (upcast, square, mean, rsqrt, cast, multiply,
stack, ...); each kernel here reads its inputs once and writes its outputs once, with the eager model's rounding
points (to the activation dtype after the norm, after the weight multiply and after the rotation), so the fused
forward computes the eager model's numbers. Every op has a torch reference with the same signature.
"""
from __future__ import annotations

from typing import Optional

import torch
import triton
import triton.language as tl

from kernels._common import dummy, next_pow2, rint
from kernels.attn_int8 import quantize_rows


@triton.jit
def _rms_rope(src_ptr, rows, even, odd, mask, w_ptr, pmask, eps, D, cos, sin,
              NORM: tl.constexpr, ROPE: tl.constexpr, act_ty: tl.constexpr):
    x0 = tl.load(src_ptr + even[None, :], mask=mask, other=0.0).to(tl.float32)
    x1 = tl.load(src_ptr + odd[None, :], mask=mask, other=0.0).to(tl.float32)
    if NORM:
        r = tl.rsqrt((tl.sum(x0 * x0, axis=1) + tl.sum(x1 * x1, axis=1)) / D + eps)[:, None]
        w0 = tl.load(w_ptr + even, mask=pmask, other=0.0).to(tl.float32)[None, :]
        w1 = tl.load(w_ptr + odd, mask=pmask, other=0.0).to(tl.float32)[None, :]
        x0 = ((x0 * r).to(act_ty).to(tl.float32) * w0).to(act_ty).to(tl.float32)
        x1 = ((x1 * r).to(act_ty).to(tl.float32) * w1).to(act_ty).to(tl.float32)
    if ROPE:
        y0 = x0 * cos - x1 * sin
        y1 = x0 * sin + x1 * cos
        x0, x1 = y0, y1
    return x0.to(act_ty), x1.to(act_ty)


@triton.jit
def _out(x, s_ptr, FP8: tl.constexpr):
    """The value to store (float32): x itself, or its E4M3 code x / s (saturated) with s read from s_ptr. Both
    branches return float32: the compiler needs one return type (the interpreter does not check)."""
    x = x.to(tl.float32)
    if FP8:
        x = tl.minimum(tl.maximum(x * (1.0 / tl.load(s_ptr)), -448.0), 448.0)
    return x


@triton.jit
def _key_int8(k0, k1, km_ptr, even, odd, pmask, BLOCK_R: tl.constexpr, NH: tl.constexpr, HALF: tl.constexpr):
    """INT8 attention's keys: codes of k - mean with one scale per (row, head) = amax / 127 (kernels/attn_int8.py);
    returns (even codes, odd codes, scales [BLOCK_R, NH]). Pair p belongs to head p // HALF."""
    c0 = k0.to(tl.float32) - tl.load(km_ptr + even, mask=pmask, other=0.0)[None, :]
    c1 = k1.to(tl.float32) - tl.load(km_ptr + odd, mask=pmask, other=0.0)[None, :]
    a = tl.max(tl.reshape(tl.maximum(tl.abs(c0), tl.abs(c1)), (BLOCK_R, NH, HALF)), 2)
    a = tl.maximum(a, 1e-30)
    inv = tl.reshape(tl.broadcast_to((127.0 / a)[:, :, None], (BLOCK_R, NH, HALF)), (BLOCK_R, NH * HALF))
    q0 = tl.minimum(tl.maximum(rint(c0 * inv), -127.0), 127.0)
    q1 = tl.minimum(tl.maximum(rint(c1 * inv), -127.0), 127.0)
    return q0, q1, a / 127.0


@triton.jit(do_not_specialize=["M", "L", "start"])
def _qk_kernel(
    src_ptr, stride_s, q_off, k_off, v_off, M, D, L, start,
    wq_ptr, wk_ptr, eps, cos_ptr, sin_ptr, HALF_HD,
    q_ptr, stride_q, kc_ptr, vc_ptr, stride_cb, stride_ct, sc_ptr, km_ptr, ks_ptr, stride_sb, stride_sh,
    NORM: tl.constexpr, ROPE: tl.constexpr, HAS_KV: tl.constexpr, BLOCK_R: tl.constexpr, BLOCK_P: tl.constexpr,
    FP8: tl.constexpr, KEY_I8: tl.constexpr, KEY_SUB: tl.constexpr, NH: tl.constexpr,
):
    act_ty = src_ptr.dtype.element_ty
    q_ty = q_ptr.dtype.element_ty
    k_ty = kc_ptr.dtype.element_ty
    v_ty = vc_ptr.dtype.element_ty
    rows = tl.program_id(0) * BLOCK_R + tl.arange(0, BLOCK_R)
    p = tl.arange(0, BLOCK_P)
    pmask = p < D // 2
    mask = (rows < M)[:, None] & pmask[None, :]
    even, odd = 2 * p, 2 * p + 1
    l = rows % L
    cos = tl.load(cos_ptr + l[:, None] * HALF_HD + (p % HALF_HD)[None, :], mask=mask, other=0.0)
    sin = tl.load(sin_ptr + l[:, None] * HALF_HD + (p % HALF_HD)[None, :], mask=mask, other=0.0)
    src = src_ptr + rows[:, None] * stride_s
    q0, q1 = _rms_rope(src + q_off, rows, even, odd, mask, wq_ptr, pmask, eps, D, cos, sin, NORM, ROPE, act_ty)
    dst = q_ptr + rows[:, None] * stride_q
    tl.store(dst + even[None, :], _out(q0, sc_ptr, FP8).to(q_ty), mask=mask)
    tl.store(dst + odd[None, :], _out(q1, sc_ptr, FP8).to(q_ty), mask=mask)
    if HAS_KV:
        k0, k1 = _rms_rope(src + k_off, rows, even, odd, mask, wk_ptr, pmask, eps, D, cos, sin, NORM, ROPE, act_ty)
        crow = (rows // L) * stride_cb + (start + l) * stride_ct
        if KEY_I8:
            k0, k1, ks = _key_int8(k0, k1, km_ptr, even, odd, pmask, BLOCK_R, NH, BLOCK_P // NH)
            heads = tl.arange(0, NH)
            smask = (rows < M)[:, None] & (heads < D // (2 * (BLOCK_P // NH)))[None, :]
            tl.store(ks_ptr + ((rows // L) * stride_sb + start + l)[:, None] + heads[None, :] * stride_sh, ks,
                     mask=smask)
        elif KEY_SUB:  # FP8 keys smoothed: k - mean (softmax-invariant), then coded
            k0 = k0.to(tl.float32) - tl.load(km_ptr + even, mask=pmask, other=0.0)[None, :]
            k1 = k1.to(tl.float32) - tl.load(km_ptr + odd, mask=pmask, other=0.0)[None, :]
        tl.store(kc_ptr + crow[:, None] + even[None, :], _out(k0, sc_ptr + 1, FP8).to(k_ty), mask=mask)
        tl.store(kc_ptr + crow[:, None] + odd[None, :], _out(k1, sc_ptr + 1, FP8).to(k_ty), mask=mask)
        v0 = tl.load(src + v_off + even[None, :], mask=mask, other=0.0)
        v1 = tl.load(src + v_off + odd[None, :], mask=mask, other=0.0)
        tl.store(vc_ptr + crow[:, None] + even[None, :], _out(v0, sc_ptr + 2, FP8).to(v_ty), mask=mask)
        tl.store(vc_ptr + crow[:, None] + odd[None, :], _out(v1, sc_ptr + 2, FP8).to(v_ty), mask=mask)


def qk_norm_rope(
    src: torch.Tensor, offsets: tuple, dim: int, tokens: int, *, wq=None, wk=None, eps: float = 1e-6,
    cos: Optional[torch.Tensor] = None, sin: Optional[torch.Tensor] = None,
    cache_k: Optional[torch.Tensor] = None, cache_v: Optional[torch.Tensor] = None, start: int = 0,
    fp8_scales: Optional[torch.Tensor] = None, key_int8: Optional[tuple] = None,
    fp8_key_mean: Optional[torch.Tensor] = None,
) -> torch.Tensor:
    """From the projection output ``src`` [M, *] (q at column offsets[0], k at [1], v at [2]; M = B * tokens):
    return q = rope(rmsnorm(q)) [M, dim]; when ``cache_k`` is given also write rope(rmsnorm(k)) and v into
    ``cache_k``/``cache_v`` [B, T, H, hd] at token positions ``start .. start + tokens``. ``wq=None``: no norm;
    ``cos=None``: no rotation (cross-attention q). ``fp8_scales`` (float32 [>=3]: steps of q, k, v): q is returned
    and K/V are written as float8 E4M3 codes (x / step, saturated), the caches being float8 tensors.
    ``key_int8`` = (mean key [dim] float32, key scales [B, H, T] float32): the keys are written as the int8 codes of
    k - mean (int8 ``cache_k``) with one scale per (token, head) (INT8 attention, kernels/attn_int8.py).
    ``fp8_key_mean`` (float32 [dim], with ``fp8_scales``): the FP8 key codes are those of k - mean (smoothed keys:
    q . mean is the same for every key a query sees, so the softmax does not change, and the codes' range shrinks)."""
    m = src.shape[0]
    fp8 = fp8_scales is not None
    if fp8 and cache_k is not None and cache_k.dtype != torch.float8_e4m3fn:
        raise ValueError(f"fp8_scales needs float8_e4m3fn K/V caches, got {cache_k.dtype}")
    if fp8_key_mean is not None and (not fp8 or cache_k is None):
        raise ValueError("fp8_key_mean smooths the FP8 keys written to the cache: it needs fp8_scales and cache_k")
    half = dim // 2 // (cache_k.shape[2] if cache_k is not None else 1)
    if key_int8 is not None and (fp8 or cache_k.dtype != torch.int8 or half & (half - 1)):
        raise ValueError(f"key_int8 needs an int8 key cache, no fp8_scales and a power-of-two head dim, got "
                         f"{cache_k.dtype} keys, head dim {2 * half}")
    q = torch.empty((m, dim), dtype=torch.float8_e4m3fn if fp8 else src.dtype, device=src.device)
    has_kv = cache_k is not None
    dmy = dummy(torch.float32, src.device)
    block_p = next_pow2(dim // 2)
    block_r = max(1, min(8, 4096 // block_p))
    half_hd = cos.shape[1] if cos is not None else 1
    km, ks = key_int8 if key_int8 is not None else (fp8_key_mean if fp8_key_mean is not None else dmy, dmy)
    _qk_kernel[(triton.cdiv(m, block_r),)](
        src, src.stride(0), offsets[0], offsets[1] if has_kv else 0, offsets[2] if has_kv else 0, m, dim, tokens, start,
        wq if wq is not None else dmy, wk if wk is not None else dmy, float(eps),
        cos if cos is not None else dmy, sin if sin is not None else dmy, half_hd,
        q, q.stride(0), cache_k if has_kv else q, cache_v if has_kv else q,
        cache_k.stride(0) if has_kv else 0, cache_k.stride(1) if has_kv else 0, fp8_scales if fp8 else dmy,
        km, ks, ks.stride(0) if key_int8 is not None else 0, ks.stride(1) if key_int8 is not None else 0,
        NORM=wq is not None, ROPE=cos is not None, HAS_KV=has_kv, BLOCK_R=block_r, BLOCK_P=block_p, FP8=fp8,
        KEY_I8=key_int8 is not None, KEY_SUB=fp8_key_mean is not None,
        NH=block_p // half if key_int8 is not None else 1, num_warps=4,
    )
    return q


def _rms_ref(x: torch.Tensor, w, eps: float) -> torch.Tensor:
    xf = x.float()
    return (xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + eps)).type_as(x) * w


def _rope_ref(x: torch.Tensor, cos, sin, tokens: int) -> torch.Tensor:
    m, d = x.shape
    xf = x.float().view(m, -1, cos.shape[1], 2)
    c = cos.repeat(m // tokens, 1)[:, None, :]
    s = sin.repeat(m // tokens, 1)[:, None, :]
    x0, x1 = xf[..., 0], xf[..., 1]
    return torch.stack([x0 * c - x1 * s, x0 * s + x1 * c], -1).view(m, d).type_as(x)


def fp8_code(x: torch.Tensor, step) -> torch.Tensor:
    """E4M3 code as the glue kernel computes it: x times the float32 reciprocal of the step (not x / step)."""
    return (x.float() * (1.0 / step)).clamp(-448.0, 448.0).to(torch.float8_e4m3fn)


def qk_norm_rope_ref(src, offsets, dim, tokens, *, wq=None, wk=None, eps=1e-6, cos=None, sin=None, cache_k=None,
                     cache_v=None, start=0, fp8_scales=None, key_int8=None, fp8_key_mean=None):
    """:func:`qk_norm_rope` in eager torch (the model's own formulas)."""

    def one(off, w):
        x = src[:, off:off + dim]
        if w is not None:
            x = _rms_ref(x, w, eps)
        return _rope_ref(x, cos, sin, tokens) if cos is not None else x

    if fp8_scales is not None:
        enc = lambda x, i: fp8_code(x, fp8_scales[i].float())  # noqa: E731
    else:
        enc = lambda x, i: x.to(src.dtype)  # noqa: E731
    q_out = enc(one(offsets[0], wq), 0).clone()
    if cache_k is not None:
        b = src.shape[0] // tokens
        k = one(offsets[1], wk)
        if key_int8 is not None:
            mean, scales = key_int8
            codes, sc = quantize_rows((k.float() - mean.float()).view(-1, *cache_k.shape[2:]))
            cache_k[:, start:start + tokens] = codes.to(torch.int8).view(b, tokens, *cache_k.shape[2:])
            scales[:, :, start:start + tokens] = sc.view(b, tokens, -1).transpose(1, 2)
        else:
            k = k if fp8_key_mean is None else k.float() - fp8_key_mean.float()
            cache_k[:, start:start + tokens] = enc(k, 1).view(b, tokens, *cache_k.shape[2:])
        v = src[:, offsets[2]:offsets[2] + dim]
        cache_v[:, start:start + tokens] = enc(v, 2).reshape(b, tokens, *cache_v.shape[2:])
    return q_out


@triton.jit(do_not_specialize=["M", "S"])
def _residual_kernel(x_ptr, y_ptr, g_ptr, out_ptr, M, N, stride_x, stride_y, stride_g, stride_o, S,
                     HAS_GATE: tl.constexpr, BLOCK_R: tl.constexpr, BLOCK_N: tl.constexpr):
    act_ty = out_ptr.dtype.element_ty
    rows = tl.program_id(0) * BLOCK_R + tl.arange(0, BLOCK_R)
    cols = tl.program_id(1) * BLOCK_N + tl.arange(0, BLOCK_N)
    mask = (rows < M)[:, None] & (cols < N)[None, :]
    y = tl.load(y_ptr + rows[:, None] * stride_y + cols[None, :], mask=mask, other=0.0).to(tl.float32)
    if HAS_GATE:
        g = tl.load(g_ptr + (rows // S)[:, None] * stride_g + cols[None, :], mask=mask, other=0.0)
        y = (y * g).to(act_ty).to(tl.float32)
    x = tl.load(x_ptr + rows[:, None] * stride_x + cols[None, :], mask=mask, other=0.0).to(tl.float32)
    tl.store(out_ptr + rows[:, None] * stride_o + cols[None, :], (x + y).to(act_ty), mask=mask)


def residual_update(x: torch.Tensor, y: torch.Tensor, gate: Optional[torch.Tensor] = None, tokens_per_frame: int = 1,
                    out: Optional[torch.Tensor] = None) -> torch.Tensor:
    """x + round(y * gate[m // S]) (adaLN gated residual; plain x + y without a gate), [M, N] rows = tokens."""
    if x.stride(-1) != 1 or y.stride(-1) != 1:
        raise ValueError("residual_update needs row-major x and y (unit column stride)")
    out = out if out is not None else torch.empty_like(x)
    m, n = x.shape
    grid = (triton.cdiv(m, 8), triton.cdiv(n, 512))
    _residual_kernel[grid](x, y, gate if gate is not None else x, out, m, n, x.stride(0), y.stride(0),
                           gate.stride(0) if gate is not None else 0, out.stride(0), tokens_per_frame,
                           HAS_GATE=gate is not None, BLOCK_R=8, BLOCK_N=512, num_warps=4)
    return out


def residual_update_ref(x, y, gate=None, tokens_per_frame: int = 1, out=None):
    """:func:`residual_update` in eager torch."""
    if gate is not None:
        r = torch.arange(x.shape[0], device=x.device) // tokens_per_frame
        y = (y * gate[r]).type_as(x)
    return torch.add(x, y, out=out) if out is not None else x + y
