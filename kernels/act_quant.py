"""Producer kernels: LayerNorm (+ adaLN modulation) (+ GELU) feeding one or more consumer linears.

One pass over a row of tokens writes whatever its consumers read: int8 codes for each quantized consumer (static
per-tensor scale and zero point, the dual-scale column split and smoothing folded in as per-column vectors, so the
outlier and normal groups land directly in their padded columns: no standalone gather), optional per-group row
sums of the codes (needed when weights carry zero points), a float8 E4M3 tensor for the FP8 path, or the plain
normalised activation for the bf16 path. Rounding happens where the eager model rounds (to the activation dtype
after the norm and after the modulation), so the fused path computes the eager model's numbers.
"""
from __future__ import annotations

from typing import Optional

import torch
import triton
import triton.language as tl

from kernels import _common
from kernels._common import dummy, gelu_tanh, next_pow2, quant_code, quant_div
from kernels.layout import StackedAct

FP8_MAX = 448.0
HEAD_BLOCK = 128  # outlier columns the head layout gathers per step (kernels/layout.py ActQuant)


@triton.jit
def _emit(h, rows, cols, mask, cmask, D, out_ptr, stride_oc, stride_om, cs_ptr, cz_ptr, dest_ptr, kop_ptr, rs_ptr,
          M, lo, hi, C: tl.constexpr, OUT: tl.constexpr, PER_COL: tl.constexpr, ROWSUM: tl.constexpr,
          EXACT_DIV: tl.constexpr):
    if OUT == 0:  # int8 codes for each consumer
        for c in tl.static_range(C):
            if PER_COL:
                cs = tl.load(cs_ptr + c * D + cols, mask=cmask, other=1.0)[None, :]
                cz = tl.load(cz_ptr + c * D + cols, mask=cmask, other=0.0)[None, :]
                dst = tl.load(dest_ptr + c * D + cols, mask=cmask, other=0)
            else:
                cs = tl.load(cs_ptr + c * D)
                cz = tl.load(cz_ptr + c * D)
                dst = cols
            v = quant_code(h, cs, cz, lo, hi, EXACT_DIV)
            tl.store(out_ptr + c * stride_oc + rows[:, None] * stride_om + dst[None, :], v.to(tl.int8), mask=mask)
            if ROWSUM:
                vi = tl.where(mask, v, 0.0).to(tl.int32)
                kop = tl.load(kop_ptr + c)
                r0 = tl.sum(tl.where((dst < kop)[None, :], vi, 0), axis=1)
                r1 = tl.sum(vi, axis=1) - r0
                rmask = rows < M
                tl.atomic_add(rs_ptr + (c * M + rows) * 2, r0, mask=rmask, sem="relaxed")
                tl.atomic_add(rs_ptr + (c * M + rows) * 2 + 1, r1, mask=rmask, sem="relaxed")
    elif OUT == 1:  # plain activation in the output dtype
        tl.store(out_ptr + rows[:, None] * stride_om + cols[None, :], h.to(out_ptr.dtype.element_ty), mask=mask)
    else:  # float8 e4m3 with a per-tensor scale
        v = quant_div(h, tl.load(cs_ptr), EXACT_DIV)
        v = tl.minimum(tl.maximum(v, -448.0), 448.0)
        tl.store(out_ptr + rows[:, None] * stride_om + cols[None, :], v.to(out_ptr.dtype.element_ty), mask=mask)


@triton.jit
def _emit_split(h, rows, cols, mask, D, out_ptr, stride_om, gs_ptr, gz_ptr, rs_ptr, M, lo, hi, n_out, kop,
                c: tl.constexpr, ROWSUM: tl.constexpr, EXACT_DIV: tl.constexpr):
    """Codes of consumer c in the split layout (kernels/layout.py ActQuant): h holds the activation at permuted
    positions ``cols``; positions below ``n_out`` (outliers) land at themselves, the rest at ``kop - n_out`` further,
    each run contiguous, with the group's step and zero point (the same codes as _emit's scatter through dest)."""
    seg0 = cols < n_out
    s = tl.where(seg0, tl.load(gs_ptr + 2 * c), tl.load(gs_ptr + 2 * c + 1))[None, :]
    z = tl.where(seg0, tl.load(gz_ptr + 2 * c), tl.load(gz_ptr + 2 * c + 1))[None, :]
    v = quant_code(h, s, z, lo, hi, EXACT_DIV)
    q = v.to(tl.int8)
    ptr = out_ptr + rows[:, None] * stride_om + cols[None, :]
    tl.store(ptr, q, mask=mask & seg0[None, :])
    tl.store(ptr + (kop - n_out), q, mask=mask & (cols >= n_out)[None, :])
    if ROWSUM:
        vi = tl.where(mask, v, 0.0).to(tl.int32)
        r0 = tl.sum(tl.where(seg0[None, :], vi, 0), axis=1)
        rmask = rows < M
        tl.atomic_add(rs_ptr + (c * M + rows) * 2, r0, mask=rmask, sem="relaxed")
        tl.atomic_add(rs_ptr + (c * M + rows) * 2 + 1, tl.sum(vi, axis=1) - r0, mask=rmask, sem="relaxed")


@triton.jit
def _emit_head_body(h, rows, cols, mask, out_ptr, stride_om, gs_ptr, gz_ptr, lo, hi, kop, c: tl.constexpr,
                    EXACT_DIV: tl.constexpr):
    """Head layout, the body of consumer c: every column of h in its own order at ``kop + col`` with the normal
    group's step (the outlier columns' places are holes with zero weights: whatever lands there is multiplied by 0)."""
    v = quant_code(h, tl.load(gs_ptr + 2 * c + 1), tl.load(gz_ptr + 2 * c + 1), lo, hi, EXACT_DIV)
    tl.store(out_ptr + rows[:, None] * stride_om + (kop + cols)[None, :], v.to(tl.int8), mask=mask)


@triton.jit
def _load_x(x_ptr, rows, idx, mask, stride_xm, in_scale_ptr, act_ty: tl.constexpr, IN_SCALED: tl.constexpr):
    h = tl.load(x_ptr + rows[:, None] * stride_xm + idx[None, :], mask=mask, other=0.0).to(tl.float32)
    if IN_SCALED:  # FP8 codes (the FP8 attention's output): dequantize, round like the activation it stands for
        h = (h * tl.load(in_scale_ptr)).to(act_ty).to(tl.float32)
    return h


@triton.jit
def _activation(h, rows, idx, mask, cmask, mean, rstd, D, mod_ptr, stride_mr, S, lnw_ptr, lnb_ptr,
                act_ty: tl.constexpr, LN: tl.constexpr, MOD: tl.constexpr, SHIFT: tl.constexpr,
                SCALE: tl.constexpr, PRE_GELU: tl.constexpr):
    """The producer's activation at source columns ``idx`` from the loaded x: LayerNorm with the row's mean and
    rstd, modulation, GELU, each rounded where the eager model rounds; the same numbers at any column order."""
    if LN > 0:
        h = tl.where(mask, h - mean[:, None], 0.0) * rstd[:, None]
        if LN == 2:
            w = tl.load(lnw_ptr + idx, mask=cmask, other=0.0).to(tl.float32)
            b = tl.load(lnb_ptr + idx, mask=cmask, other=0.0).to(tl.float32)
            h = h * w[None, :] + b[None, :]
        h = h.to(act_ty).to(tl.float32)
    if MOD:
        mrow = (rows // S) * stride_mr
        shift = tl.load(mod_ptr + mrow[:, None] + SHIFT * D + idx[None, :], mask=mask, other=0.0)
        scale = tl.load(mod_ptr + mrow[:, None] + SCALE * D + idx[None, :], mask=mask, other=0.0)
        h = (h * (1.0 + scale) + shift).to(act_ty).to(tl.float32)
    if PRE_GELU:
        h = gelu_tanh(h).to(act_ty).to(tl.float32)
    return h


@triton.jit(do_not_specialize=["M", "S"])
def _norm_quant_kernel(
    x_ptr, stride_xm, M, D, mod_ptr, stride_mr, S, lnw_ptr, lnb_ptr, eps, in_scale_ptr, act_ptr,
    out_ptr, stride_oc, stride_om, cs_ptr, cz_ptr, dest_ptr, kop_ptr, rs_ptr, lo, hi,
    src_ptr, n_out0, n_out1, n_out2, kop0, kop1, kop2,
    C: tl.constexpr, LN: tl.constexpr, MOD: tl.constexpr, SHIFT: tl.constexpr, SCALE: tl.constexpr,
    PRE_GELU: tl.constexpr, OUT: tl.constexpr, PER_COL: tl.constexpr, ROWSUM: tl.constexpr,
    BLOCK_R: tl.constexpr, BLOCK_D: tl.constexpr, EXACT_DIV: tl.constexpr, IN_SCALED: tl.constexpr,
    SPLIT: tl.constexpr, GATHER: tl.constexpr, HEAD: tl.constexpr, BLOCK_H: tl.constexpr,
):
    act_ty = act_ptr.dtype.element_ty  # the model's activation dtype (x itself may hold FP8 codes)
    rows = tl.program_id(0) * BLOCK_R + tl.arange(0, BLOCK_R)
    rmask = rows < M
    mean = tl.zeros([BLOCK_R], tl.float32)
    rstd = mean
    for k0 in range(0, D, BLOCK_D):  # one iteration when LN > 0 (BLOCK_D >= D)
        cols = k0 + tl.arange(0, BLOCK_D)
        cmask = cols < D
        mask = rmask[:, None] & cmask[None, :]
        x = _load_x(x_ptr, rows, cols, mask, stride_xm, in_scale_ptr, act_ty, IN_SCALED)
        if LN > 0:
            mean = tl.sum(x, axis=1) / D
            hc = tl.where(mask, x - mean[:, None], 0.0)
            rstd = tl.rsqrt(tl.sum(hc * hc, axis=1) / D + eps)
        h = _activation(x, rows, cols, mask, cmask, mean, rstd, D, mod_ptr, stride_mr, S, lnw_ptr, lnb_ptr, act_ty,
                        LN, MOD, SHIFT, SCALE, PRE_GELU)
        if SPLIT:  # int8 codes, split layout: each consumer's activation in its permuted order, two contiguous runs
            for c in tl.static_range(C):
                hp = h
                if GATHER:  # the activation recomputed at the source columns (same numbers per element)
                    src = tl.load(src_ptr + c * D + cols, mask=cmask, other=0)
                    hp = _activation(_load_x(x_ptr, rows, src, mask, stride_xm, in_scale_ptr, act_ty, IN_SCALED),
                                     rows, src, mask, cmask, mean, rstd, D, mod_ptr, stride_mr, S, lnw_ptr, lnb_ptr,
                                     act_ty, LN, MOD, SHIFT, SCALE, PRE_GELU)
                n_out = n_out0 if c == 0 else n_out1 if c == 1 else n_out2
                kop = kop0 if c == 0 else kop1 if c == 1 else kop2
                _emit_split(hp, rows, cols, mask, D, out_ptr + c * stride_oc, stride_om, cs_ptr, cz_ptr, rs_ptr, M,
                            lo, hi, n_out, kop, c, ROWSUM, EXACT_DIV)
        elif HEAD:  # int8 codes, head layout: the body of each consumer as it comes
            for c in tl.static_range(C):
                kop = kop0 if c == 0 else kop1 if c == 1 else kop2
                _emit_head_body(h, rows, cols, mask, out_ptr + c * stride_oc, stride_om, cs_ptr, cz_ptr, lo, hi, kop,
                                c, EXACT_DIV)
        else:
            _emit(h, rows, cols, mask, cmask, D, out_ptr, stride_oc, stride_om, cs_ptr, cz_ptr, dest_ptr, kop_ptr,
                  rs_ptr, M, lo, hi, C, OUT, PER_COL, ROWSUM, EXACT_DIV)
    if HEAD:  # ... and its outlier run: the activation recomputed at the n_out outlier source columns only
        for c in tl.static_range(C):
            n_out = n_out0 if c == 0 else n_out1 if c == 1 else n_out2
            for j0 in range(0, n_out, BLOCK_H):
                idx = j0 + tl.arange(0, BLOCK_H)
                hmask = idx < n_out
                mask = rmask[:, None] & hmask[None, :]
                src = tl.load(src_ptr + c * D + idx, mask=hmask, other=0)
                hp = _activation(_load_x(x_ptr, rows, src, mask, stride_xm, in_scale_ptr, act_ty, IN_SCALED),
                                 rows, src, mask, hmask, mean, rstd, D, mod_ptr, stride_mr, S, lnw_ptr, lnb_ptr,
                                 act_ty, LN, MOD, SHIFT, SCALE, PRE_GELU)
                v = quant_code(hp, tl.load(cs_ptr + 2 * c), tl.load(cz_ptr + 2 * c), lo, hi, EXACT_DIV)
                tl.store(out_ptr + c * stride_oc + rows[:, None] * stride_om + idx[None, :], v.to(tl.int8), mask=mask)


def _per_consumer(values: tuple) -> tuple:
    """Three scalar kernel arguments (consumers 0..2; unused ones 0): host integers, so Triton specialises their
    divisibility by 16 and the split layout's shifted runs compile to aligned vector stores."""
    if len(values) > 3:
        raise ValueError(f"the split layout takes at most 3 consumers per producer, got {len(values)}")
    return tuple(int(v) for v in values) + (0,) * (3 - len(values))


def _launch_cfg(m: int, d: int, ln: bool) -> tuple[int, int, int]:
    """(BLOCK_R, BLOCK_D, num_warps): whole rows when normalising, else 2048-wide chunks (memory bound either way)."""
    block_d = next_pow2(d) if ln else min(next_pow2(d), 2048)
    block_r = max(1, min(4, 8192 // block_d))
    return block_r, block_d, 8 if block_d >= 2048 else 4


def norm_quant(
    x: torch.Tensor,
    acts: Optional[StackedAct] = None,
    *,
    ln: Optional[tuple] = None,
    mod: Optional[tuple] = None,
    pre_gelu: bool = False,
    fp8_scale: Optional[torch.Tensor] = None,
    rowsum: bool = False,
    out: Optional[torch.Tensor] = None,
    in_scale: Optional[torch.Tensor] = None,
    act_dtype: Optional[torch.dtype] = None,
):
    """Run the producer on ``x`` [M, D] (rows = tokens, frames outermost within each sample).

    ``in_scale`` (1-element float32 tensor): ``x`` holds FP8 codes of an activation of dtype ``act_dtype`` (the FP8
    attention output); the producer reads ``x * in_scale`` rounded to ``act_dtype``.

    ``ln``: (weight or None, bias or None, eps); ``mod``: (mod [R, 6, D] float32, shift index, scale index,
    tokens per frame S), row m uses mod[m // S]. Output by mode: ``acts`` given -> (codes [C, M, Kp] int8, row sums
    [C, M, 2] int32 or None); ``fp8_scale`` given -> float8_e4m3fn [M, D]; neither -> [M, D] in x's dtype.
    ``out`` optionally supplies the output buffer (pad columns of the codes are left as they are).
    """
    if x.stride(-1) != 1:
        x = x.contiguous()
    m, d = x.shape
    dev = x.device
    if in_scale is not None and act_dtype is None:
        raise ValueError("in_scale (FP8 codes in x) needs act_dtype, the dtype of the activation x stands for")
    act_dtype = act_dtype or x.dtype
    dummy_f = dummy(torch.float32, dev)
    dummy_i = dummy(torch.int32, dev)
    lnw = lnb = dummy_f
    ln_mode, eps = 0, 0.0
    if ln is not None:
        w, b, eps = ln
        ln_mode = 2 if w is not None else 1
        if w is not None:
            lnw, lnb = w, (b if b is not None else torch.zeros_like(w))
    mod_t, shift_i, scale_i, tokens = (dummy_f, 0, 0, 1) if mod is None else mod
    stride_mr = mod_t.stride(0) if mod is not None else 0
    rs = None
    split = acts is not None and acts.split
    head = acts is not None and acts.head
    if head and rowsum:
        raise ValueError("the head layout takes no row sums (weights without zero points)")
    if acts is not None:
        c = acts.count
        out = out if out is not None else torch.empty((c, m, acts.kp), dtype=torch.int8, device=dev)
        rs = torch.zeros((c, m, 2), dtype=torch.int32, device=dev) if rowsum else None
        mode, cs, cz, dest, kop, lo, hi = 0, acts.col_scale, acts.col_zero, acts.dest, acts.kop, acts.lo, acts.hi
        stride_oc, per_col = out.stride(0), not acts.uniform
        if split or head:  # the group steps and zero points instead of the per-column vectors
            cs, cz = acts.gscale, acts.gzero
    elif fp8_scale is not None:
        c, mode = 1, 2
        out = out if out is not None else torch.empty((m, d), dtype=torch.float8_e4m3fn, device=dev)
        cs, cz, dest, kop, lo, hi, stride_oc, per_col = fp8_scale, dummy_f, dummy_i, dummy_i, 0, 0, 0, False
    else:
        c, mode = 1, 1
        out = out if out is not None else torch.empty((m, d), dtype=act_dtype, device=dev)
        cs, cz, dest, kop, lo, hi, stride_oc, per_col = dummy_f, dummy_f, dummy_i, dummy_i, 0, 0, 0, False
    block_r, block_d, warps = _launch_cfg(m, d, ln is not None)
    _norm_quant_kernel[(triton.cdiv(m, block_r),)](
        x, x.stride(0), m, d, mod_t, stride_mr, tokens, lnw, lnb, float(eps),
        in_scale if in_scale is not None else dummy_f, dummy(act_dtype, dev),
        out, stride_oc, out.stride(-2), cs, cz, dest, kop, rs if rs is not None else dummy_i, lo, hi,
        acts.src if (split or head) and acts.src is not None else dummy_i,
        *_per_consumer(acts.nouts if split or head else ()), *_per_consumer(acts.kops if split or head else ()),
        C=c, LN=ln_mode, MOD=mod is not None, SHIFT=shift_i, SCALE=scale_i, PRE_GELU=pre_gelu, OUT=mode,
        PER_COL=per_col, ROWSUM=rs is not None, BLOCK_R=block_r, BLOCK_D=block_d,
        EXACT_DIV=_common.EXACT_DIVISION, IN_SCALED=in_scale is not None, SPLIT=split,
        GATHER=split and acts.src is not None, HEAD=head, BLOCK_H=HEAD_BLOCK, num_warps=warps,
    )
    return (out, rs) if acts is not None else out


# ----------------------------------------------------------------------------------------------- reference
def _round_act(h: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    return h.to(dtype).to(h.dtype)


def norm_act_ref(x: torch.Tensor, *, ln=None, mod=None, pre_gelu: bool = False, in_scale=None,
                 act_dtype=None) -> torch.Tensor:
    """The producer's float activation, as eager torch computes it (float32 math, rounded like the model)."""
    dt = act_dtype or x.dtype
    h = x.float()
    if in_scale is not None:
        h = _round_act(h * in_scale.float(), dt)
    if ln is not None:
        w, b, eps = ln
        h = torch.nn.functional.layer_norm(h, (h.shape[-1],), None if w is None else w.float(),
                                           None if b is None else b.float(), eps)
        h = _round_act(h, dt)
    if mod is not None:
        mod_t, si, ci, tokens = mod
        r = torch.arange(h.shape[0], device=h.device) // tokens
        h = _round_act(h * (1 + mod_t[r, ci]) + mod_t[r, si], dt)
    if pre_gelu:
        h = _round_act(torch.nn.functional.gelu(h, approximate="tanh"), dt)
    return h


def quantize_ref(h: torch.Tensor, acts: StackedAct, rowsum: bool = False):
    """Reference codes [C, M, Kp] (pad columns 0) and row sums [C, M, 2] for float activations h [M, K]."""
    c, m = acts.count, h.shape[0]
    out = torch.zeros((c, m, acts.kp), dtype=torch.int8, device=h.device)
    rs = torch.zeros((c, m, 2), dtype=torch.int32, device=h.device)
    if acts.head and rowsum:
        raise ValueError("the head layout takes no row sums (weights without zero points)")
    for i in range(c):
        if acts.head:  # the body: every column at kop + k with the normal step (the holes as the kernel fills them)
            body = torch.round(h.float() / acts.gscale[i, 1]) + acts.gzero[i, 1]
            kop = acts.kops[i]
            out[i][:, kop:kop + h.shape[1]] = body.clamp(acts.lo, acts.hi).to(torch.int8)
        v = torch.round(h.float() / acts.col_scale[i]) + acts.col_zero[i]
        v = v.clamp(acts.lo, acts.hi)
        dest = acts.dest[i].long()
        out[i][:, dest] = v.to(torch.int8)
        is_o = dest < int(acts.kop[i])
        rs[i, :, 0] = v[:, is_o].sum(1).to(torch.int32)
        rs[i, :, 1] = v[:, ~is_o].sum(1).to(torch.int32)
    return out, (rs if rowsum else None)


def fp8_ref(h: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    return (h.float() / scale).clamp(-FP8_MAX, FP8_MAX).to(torch.float8_e4m3fn)


def norm_quant_torch(x: torch.Tensor, acts: Optional[StackedAct] = None, *, ln=None, mod=None, pre_gelu: bool = False,
                     fp8_scale: Optional[torch.Tensor] = None, rowsum: bool = False, in_scale=None, act_dtype=None):
    """:func:`norm_quant` in torch (same signature and results; pad columns are zero here)."""
    h = norm_act_ref(x, ln=ln, mod=mod, pre_gelu=pre_gelu, in_scale=in_scale, act_dtype=act_dtype)
    if acts is not None:
        return quantize_ref(h, acts, rowsum)
    if fp8_scale is not None:
        return fp8_ref(h, fp8_scale)
    return h.to(act_dtype or x.dtype)
