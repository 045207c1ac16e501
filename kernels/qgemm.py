"""INT8 GEMM (W8A8 and W4A8) with the dequantization and the layer's consumers fused into its epilogue.

``y[m, n] = sum_g s_a[g] * s_w[g, n] * (acc_g[m, n] - zw[g, n] * rowsum_g[m] + corr[g, n]) + bias[n]`` with
``acc_g = sum_{k in group g} a[m, k] * w[n, k]`` in int32 on the tensor cores (wgmma on sm_90). Weights are
[N, K] (K-major, as the 8-bit MMA needs), read through TMA descriptors. Column groups (dual-scale) are two K
ranges of one loop nest: ``exact`` keeps two accumulators, ``int_ratio`` multiplies the outlier accumulator by an
integer per-channel ratio and continues in the same registers (one accumulator). int4 weights are unpacked
in-kernel (two nibbles per byte, zero point subtracted) and fed to the same int8 MMA.

Epilogues: store bf16/fp32 (``store``); residual update ``out = res + round(y) * gate[row // S]`` of the adaLN
blocks (``residual``); GELU(tanh) then static quantization into the next layer's padded int8 layout, with atomic
per-group row sums (``gelu_quant``, ffn.0 feeding ffn.2). Several linears reading different activations but
sharing K and N (self_attn q/k/v) run as one grouped launch, side by side along N.
"""
from __future__ import annotations

from typing import Optional

import torch
import triton
import triton.language as tl

from kernels import _common
from kernels._common import dummy, gelu_tanh, interpreting, num_sms, quant_code
from kernels.configs_sm90 import GemmConfig, lookup
from kernels.layout import PackedGroup, StackedAct

try:  # host-side TMA descriptors (Triton >= 3.4)
    from triton.tools.tensor_descriptor import TensorDescriptor
except ImportError:  # pragma: no cover - older Triton
    TensorDescriptor = None

EPILOGUES = {"store": 0, "residual": 1, "gelu_quant": 2}
DUAL_MODES = {"none": 0, "exact": 1, "int_ratio": 2}


@triton.jit
def _tile_coords(tile, num_pid_m, num_pid_n, GROUP_M: tl.constexpr):
    per_group = GROUP_M * num_pid_n
    first_m = (tile // per_group) * GROUP_M
    size_m = tl.minimum(num_pid_m - first_m, GROUP_M)
    pid_m = first_m + (tile % per_group) % size_m
    pid_n = (tile % per_group) // size_m
    return pid_m, pid_n


@triton.jit
def _group_terms(acc, g, offs_m, offs_n, M, CN, zw_ptr, corr_ptr, rs_ptr, GRP: tl.constexpr,
                 WZP: tl.constexpr, CORR: tl.constexpr):
    """acc - zw[n] * rowsum[m] + corr[n] for column group GRP (exact int32)."""
    if WZP:
        zw = tl.load(zw_ptr + GRP * CN + offs_n)
        rs = tl.load(rs_ptr + (g * M + offs_m) * 2 + GRP, mask=offs_m < M, other=0)
        acc = acc - zw[None, :] * rs[:, None]
    if CORR:
        acc = acc + tl.load(corr_ptr + GRP * CN + offs_n)[None, :]
    return acc


@triton.jit
def _halves(x, BM: tl.constexpr, BN: tl.constexpr):
    """[BM, BN] -> its left and right [BM, BN/2] column halves (the epilogue sub-tiling of Triton's matmul tutorial)."""
    return tl.split(tl.permute(tl.reshape(x, (BM, 2, BN // 2)), (0, 2, 1)))


@triton.jit
def _epilogue(acc, acc_o, ratio_ptr, g, pid_m, n0, offs_m, offs_n, M, CN,
              sa_ptr, sw_ptr, zw_ptr, corr_ptr, bias_ptr, rs_ptr, out_ptr, out_desc, stride_om, res_ptr, stride_rm,
              gate_ptr, stride_gr, S, qcs_ptr, qcz_ptr, qdest_ptr, qkop, qlo, qhi, qrs_ptr, qnout, qshift,
              DUAL: tl.constexpr, WZP: tl.constexpr, CORR: tl.constexpr, HAS_BIAS: tl.constexpr, EPI: tl.constexpr,
              HAS_GATE: tl.constexpr, Q_PERCOL: tl.constexpr, Q_ROWSUM: tl.constexpr, BM: tl.constexpr,
              EXACT_DIV: tl.constexpr, GATE2: tl.constexpr):
    """Dequantize one accumulator tile (columns offs_n, starting at n0) and run the layer's consumer on it."""
    act_ty = res_ptr.dtype.element_ty
    t = _group_terms(acc, g, offs_m, offs_n, M, CN, zw_ptr, corr_ptr, rs_ptr, 1, WZP, CORR)
    s1 = tl.load(sa_ptr + g * 2 + 1) * tl.load(sw_ptr + CN + offs_n)
    if DUAL == 0:
        y = t.to(tl.float32) * s1[None, :]
    elif DUAL == 1:
        t0 = _group_terms(acc_o, g, offs_m, offs_n, M, CN, zw_ptr, corr_ptr, rs_ptr, 0, WZP, CORR)
        s0 = tl.load(sa_ptr + g * 2) * tl.load(sw_ptr + offs_n)
        y = t0.to(tl.float32) * s0[None, :] + t.to(tl.float32) * s1[None, :]
    else:
        t0 = _group_terms(tl.zeros_like(acc), g, offs_m, offs_n, M, CN, zw_ptr, corr_ptr, rs_ptr, 0, WZP, CORR)
        y = (t + t0 * tl.load(ratio_ptr + offs_n)[None, :]).to(tl.float32) * s1[None, :]
    if HAS_BIAS:
        y = y + tl.load(bias_ptr + offs_n)[None, :]
    mmask = offs_m < M
    mask = mmask[:, None] & (offs_n < CN)[None, :]
    y = y.to(act_ty).to(tl.float32)  # the linear's output, rounded as the model rounds it
    if EPI == 0:
        if out_desc is not None:  # TMA store: no per-element addresses or masks (the descriptor clips at M)
            out_desc.store([pid_m * BM, n0], y.to(out_ptr.dtype.element_ty))
        else:
            tl.store(out_ptr + offs_m[:, None] * stride_om + offs_n[None, :], y.to(out_ptr.dtype.element_ty),
                     mask=mask)
    elif EPI == 1:
        if HAS_GATE:
            if GATE2:  # a tile spans at most two frames (BM <= S): two gate rows, selected per row
                f0 = (pid_m * BM) // S
                f1 = tl.minimum(pid_m * BM + BM - 1, M - 1) // S
                g0 = tl.load(gate_ptr + f0 * stride_gr + offs_n)
                g1 = tl.load(gate_ptr + f1 * stride_gr + offs_n)
                gate = tl.where((offs_m // S == f0)[:, None], g0[None, :], g1[None, :])
            else:
                gate = tl.load(gate_ptr + (offs_m // S)[:, None] * stride_gr + offs_n[None, :], mask=mask, other=0.0)
            y = (y * gate).to(act_ty).to(tl.float32)
        res = tl.load(res_ptr + offs_m[:, None] * stride_rm + offs_n[None, :], mask=mask, other=0.0)
        if out_desc is not None:
            out_desc.store([pid_m * BM, n0], (res.to(tl.float32) + y).to(act_ty))
        else:
            tl.store(out_ptr + offs_m[:, None] * stride_om + offs_n[None, :], (res.to(tl.float32) + y).to(act_ty),
                     mask=mask)
    else:
        h = gelu_tanh(y).to(act_ty).to(tl.float32)
        if Q_PERCOL == 1:  # per-column steps, scattered through dest
            cs = tl.load(qcs_ptr + offs_n)[None, :]
            cz = tl.load(qcz_ptr + offs_n)[None, :]
            dst = tl.load(qdest_ptr + offs_n)
            outlier = dst < qkop
        elif Q_PERCOL == 2:  # split layout in order (qcs/qcz: the two group steps / zero points): two runs
            outlier = offs_n < qnout
            cs = tl.where(outlier, tl.load(qcs_ptr), tl.load(qcs_ptr + 1))[None, :]
            cz = tl.where(outlier, tl.load(qcz_ptr), tl.load(qcz_ptr + 1))[None, :]
            dst = offs_n
        else:
            cs = tl.load(qcs_ptr)
            cz = tl.load(qcz_ptr)
            dst = offs_n
            outlier = dst < qkop
        v = quant_code(h, cs, cz, qlo, qhi, EXACT_DIV)
        if Q_PERCOL == 2:
            ptr = out_ptr + offs_m[:, None] * stride_om + offs_n[None, :]
            tl.store(ptr, v.to(tl.int8), mask=mask & outlier[None, :])
            tl.store(ptr + qshift, v.to(tl.int8), mask=mask & (offs_n >= qnout)[None, :])
        else:
            tl.store(out_ptr + offs_m[:, None] * stride_om + dst[None, :], v.to(tl.int8), mask=mask)
        if Q_ROWSUM:
            vi = tl.where(mask, v, 0.0).to(tl.int32)
            r0 = tl.sum(tl.where(outlier[None, :], vi, 0), axis=1)
            tl.atomic_add(qrs_ptr + offs_m * 2, r0, mask=mmask, sem="relaxed")
            tl.atomic_add(qrs_ptr + offs_m * 2 + 1, tl.sum(vi, axis=1) - r0, mask=mmask, sem="relaxed")


@triton.jit(do_not_specialize=["M", "S", "qkop"])
def _qgemm_kernel(
    a_desc, w_desc, M, N, Kp, C,
    kop_ptr, sa_ptr, sw_ptr, zw_ptr, corr_ptr, ratio_ptr, bias_ptr, rs_ptr,
    out_ptr, out_desc, stride_om, res_ptr, stride_rm, gate_ptr, stride_gr, S,
    qcs_ptr, qcz_ptr, qdest_ptr, qkop, qlo, qhi, qrs_ptr, qnout, qshift,
    DUAL: tl.constexpr, W4: tl.constexpr, WZP: tl.constexpr, CORR: tl.constexpr, HAS_BIAS: tl.constexpr,
    EPI: tl.constexpr, HAS_GATE: tl.constexpr, Q_PERCOL: tl.constexpr, Q_ROWSUM: tl.constexpr,
    BM: tl.constexpr, BN: tl.constexpr, BK: tl.constexpr, GROUP_M: tl.constexpr, FLATTEN: tl.constexpr,
    EXACT_DIV: tl.constexpr, SUBTILE: tl.constexpr, GATE2: tl.constexpr,
):
    CN = C * N
    num_pid_m = tl.cdiv(M, BM)
    num_pid_n = tl.cdiv(CN, BN)
    num_tiles = num_pid_m * num_pid_n
    for tile in tl.range(tl.program_id(0), num_tiles, tl.num_programs(0), flatten=FLATTEN):
        pid_m, pid_n = _tile_coords(tile, num_pid_m, num_pid_n, GROUP_M)
        g = (pid_n * BN) // N  # which stacked linear (C > 1 needs N % BN == 0)
        arow = g * M + pid_m * BM
        wrow = pid_n * BN
        offs_m = pid_m * BM + tl.arange(0, BM)
        offs_n = pid_n * BN + tl.arange(0, BN)
        kop = 0
        z4n = tl.zeros((BN,), tl.int8)
        z4o = tl.zeros((BN,), tl.int8)
        ratio = tl.full((BN,), 1, tl.int32)
        if W4:
            z4n = tl.load(zw_ptr + CN + offs_n).to(tl.int8)
            z4o = tl.load(zw_ptr + offs_n).to(tl.int8)
        if DUAL > 0:
            kop = tl.load(kop_ptr + g)
        if DUAL == 2:
            ratio = tl.load(ratio_ptr + offs_n)
        acc = tl.zeros((BM, BN), tl.int32)
        acc_o = tl.zeros((BM, BN), tl.int32)  # outlier accumulator; live only for the exact dual-scale variant
        # K segments: [0, Kp) for one group; [0, kop) outliers then [kop, Kp) normal columns for dual scale
        for seg in tl.static_range(2 if DUAL > 0 else 1):
            k_lo, k_hi, z4 = 0, Kp, z4n
            if DUAL > 0:
                if seg == 0:
                    k_lo, k_hi, z4 = 0, kop, z4o
                else:
                    k_lo, k_hi, z4 = kop, Kp, z4n
            for k in range(k_lo, k_hi, BK):
                if W4:  # byte tile [BN, BK/2]: low nibbles = first half of the 128-column block, high = second
                    p = w_desc.load([wrow, k // 2])
                    w_lo = (p & 15).to(tl.int8) - z4[:, None]
                    w_hi = (p >> 4).to(tl.int8) - z4[:, None]
                    acc = tl.dot(a_desc.load([arow, k]), w_lo.T, acc, out_dtype=tl.int32)
                    acc = tl.dot(a_desc.load([arow, k + BK // 2]), w_hi.T, acc, out_dtype=tl.int32)
                else:
                    acc = tl.dot(a_desc.load([arow, k]), w_desc.load([wrow, k]).T, acc, out_dtype=tl.int32)
            if DUAL == 1 and seg == 0:  # exact: keep the outlier sum, restart for the normal group
                acc_o = acc
                acc = tl.zeros((BM, BN), tl.int32)
            if DUAL == 2 and seg == 0:  # integer ratio: scale the outlier sum, continue in the same registers
                acc = acc * ratio[None, :]
        if SUBTILE == 2:  # two column halves, one after the other: half the live epilogue registers
            a0, a1 = _halves(acc, BM, BN)
            o0, o1 = _halves(acc_o, BM, BN)
            _epilogue(a0, o0, ratio_ptr, g, pid_m, pid_n * BN, offs_m, pid_n * BN + tl.arange(0, BN // 2), M, CN,
                      sa_ptr, sw_ptr, zw_ptr, corr_ptr, bias_ptr, rs_ptr, out_ptr, out_desc, stride_om, res_ptr,
                      stride_rm, gate_ptr, stride_gr, S, qcs_ptr, qcz_ptr, qdest_ptr, qkop, qlo, qhi, qrs_ptr,
                      qnout, qshift, DUAL, WZP, CORR, HAS_BIAS, EPI, HAS_GATE, Q_PERCOL, Q_ROWSUM, BM, EXACT_DIV, GATE2)
            n1 = pid_n * BN + BN // 2
            _epilogue(a1, o1, ratio_ptr, g, pid_m, n1, offs_m, n1 + tl.arange(0, BN // 2), M, CN, sa_ptr, sw_ptr, zw_ptr, corr_ptr, bias_ptr, rs_ptr, out_ptr, out_desc, stride_om,
                      res_ptr, stride_rm, gate_ptr, stride_gr, S, qcs_ptr, qcz_ptr, qdest_ptr, qkop, qlo, qhi, qrs_ptr,
                      qnout, qshift, DUAL, WZP, CORR, HAS_BIAS, EPI, HAS_GATE, Q_PERCOL, Q_ROWSUM, BM, EXACT_DIV, GATE2)
        else:
            _epilogue(acc, acc_o, ratio_ptr, g, pid_m, pid_n * BN, offs_m, offs_n,
                      M, CN, sa_ptr, sw_ptr, zw_ptr, corr_ptr, bias_ptr, rs_ptr, out_ptr, out_desc, stride_om,
                      res_ptr, stride_rm, gate_ptr, stride_gr, S, qcs_ptr, qcz_ptr, qdest_ptr, qkop, qlo, qhi, qrs_ptr,
                      qnout, qshift, DUAL, WZP, CORR, HAS_BIAS, EPI, HAS_GATE, Q_PERCOL, Q_ROWSUM, BM, EXACT_DIV, GATE2)


SMEM_LIMIT = 232448  # bytes of shared memory one program may use on sm_90


def _smem_bytes(cfg: GemmConfig, int4: bool) -> int:
    """Shared memory of the mainloop's pipeline stages (A and W tiles), before any TMA-store staging tile: an fp32
    output tile that would not fit next to them falls back to plain stores instead of failing to launch."""
    return cfg.num_stages * (cfg.bm * cfg.bk + cfg.bn * cfg.bk // (2 if int4 else 1))  # int4: two A half-tiles


def _descriptors(a: torch.Tensor, w: torch.Tensor, cfg: GemmConfig, int4: bool):
    a2 = a.reshape(-1, a.shape[-1])
    bk_a = cfg.bk // 2 if int4 else cfg.bk
    bk_w = cfg.bk // 2
    if TensorDescriptor is None:
        raise RuntimeError("this Triton has no host TensorDescriptor (needs Triton >= 3.4)")
    return (TensorDescriptor.from_tensor(a2, [cfg.bm, bk_a]),
            TensorDescriptor.from_tensor(w, [cfg.bn, bk_w if int4 else cfg.bk]))


def qgemm(
    a: torch.Tensor,
    rowsums: Optional[torch.Tensor],
    lin: PackedGroup,
    m: int,
    *,
    out_dtype: torch.dtype = torch.bfloat16,
    epilogue: str = "store",
    out: Optional[torch.Tensor] = None,
    residual: Optional[torch.Tensor] = None,
    gate: Optional[torch.Tensor] = None,
    tokens_per_frame: int = 1,
    next_act: Optional[StackedAct] = None,
    next_rowsum: bool = False,
    config: Optional[GemmConfig] = None,
):
    """Grouped quantized GEMM: codes ``a`` [C, M, Kp] int8 (+ row sums [C, M, 2]) times ``lin`` -> [M, C*N].

    ``residual``: res [M, N] updated out of place into ``out`` (may alias res) as res + round(y) * gate[m // S],
    ``gate`` a [R, N] view (row stride free). ``gelu_quant``: returns (codes [M, Kp'] int8, row sums [M, 2] or None)
    for the next layer's single consumer ``next_act``.
    """
    if a.dtype != torch.int8 or a.shape[-1] != lin.kp or a.shape[0] != lin.count:
        raise ValueError(f"codes {tuple(a.shape)} {a.dtype} do not match the packed layer (C={lin.count}, Kp={lin.kp})")
    c, n, kp = lin.count, lin.n, lin.kp
    dev = a.device
    cfg = config or lookup(lin, m, epilogue)
    if c > 1 and n % cfg.bn:
        raise ValueError(f"grouped GEMM needs N % BN == 0 (N={n}, BN={cfg.bn})")
    dummy_f = dummy(torch.float32, dev)
    dummy_i = dummy(torch.int32, dev)
    res, gate_t, stride_gr = (dummy(out_dtype, dev), dummy_f, 0)
    q = dict(qcs=dummy_f, qcz=dummy_f, qdest=dummy_i, qkop=0, qlo=0, qhi=0, qrs=dummy_i, percol=0, qnout=0, qshift=0)
    result = None
    if epilogue == "store":
        out = out if out is not None else torch.empty((m, c * n), dtype=out_dtype, device=dev)
        result = out
    elif epilogue == "residual":
        if residual is None:
            raise ValueError("epilogue 'residual' needs the residual tensor")
        if residual.stride(-1) != 1:
            raise ValueError("the residual must be row-major (unit column stride)")
        res = residual
        out = out if out is not None else torch.empty_like(residual)
        if gate is not None:
            gate_t, stride_gr = gate, gate.stride(0)
        result = out
    elif epilogue == "gelu_quant":
        if next_act is None or next_act.count != 1 or next_act.col_scale.shape[1] != c * n:
            raise ValueError("epilogue 'gelu_quant' needs the single consumer's StackedAct over this layer's outputs")
        out = torch.empty((m, next_act.kp), dtype=torch.int8, device=dev)
        qrs = torch.zeros((m, 2), dtype=torch.int32, device=dev) if next_rowsum else None
        q = dict(qcs=next_act.col_scale, qcz=next_act.col_zero, qdest=next_act.dest, qkop=next_act.kops[0],
                 qlo=next_act.lo, qhi=next_act.hi, qrs=qrs if qrs is not None else dummy_i,
                 percol=0 if next_act.uniform else 1, qnout=0, qshift=0)
        if next_act.split and next_act.src is None:  # the split layout in this layer's output order: two runs
            q.update(qcs=next_act.gscale, qcz=next_act.gzero, percol=2, qnout=next_act.nouts[0],
                     qshift=next_act.kops[0] - next_act.nouts[0])
        res = dummy(out_dtype, dev)
        result = (out, qrs)
    else:
        raise ValueError(f"unknown epilogue {epilogue!r}; choose from {sorted(EPILOGUES)}")
    a_desc, w_desc = _descriptors(a, lin.weight, cfg, lin.int4)
    out_desc = None
    bn_epi = cfg.bn // cfg.subtile
    if (cfg.tma_store and epilogue != "gelu_quant" and out.dim() == 2 and out.stride(1) == 1
            and _smem_bytes(cfg, lin.int4) + cfg.bm * bn_epi * out.element_size() <= SMEM_LIMIT
            and (out.stride(0) * out.element_size()) % 16 == 0 and out.data_ptr() % 16 == 0):
        out_desc = TensorDescriptor(out, list(out.shape), list(out.stride()), [cfg.bm, bn_epi])
    tiles = triton.cdiv(m, cfg.bm) * triton.cdiv(c * n, cfg.bn)
    grid = (min(tiles, num_sms(dev) * cfg.occupancy) if cfg.persistent else tiles,)
    _qgemm_kernel[grid](
        a_desc, w_desc, m, n, kp, c,
        lin.kop, lin.a_scale, lin.w_scale, lin.w_zero, lin.corr, lin.ratio,
        lin.bias if lin.bias is not None else dummy_f, rowsums if rowsums is not None else dummy_i,
        out, out_desc, out.stride(0), res, res.stride(0) if res.dim() == 2 else 0, gate_t, stride_gr, tokens_per_frame,
        q["qcs"], q["qcz"], q["qdest"], q["qkop"], q["qlo"], q["qhi"], q["qrs"], q["qnout"], q["qshift"],
        DUAL=DUAL_MODES[lin.dual], W4=lin.int4, WZP=lin.has_wzp, CORR=lin.has_corr, HAS_BIAS=lin.bias is not None,
        EPI=EPILOGUES[epilogue], HAS_GATE=gate is not None, Q_PERCOL=q["percol"], Q_ROWSUM=q["qrs"] is not dummy_i,
        BM=cfg.bm, BN=cfg.bn, BK=cfg.bk, GROUP_M=cfg.group_m, FLATTEN=cfg.flatten and not interpreting(),
        EXACT_DIV=_common.EXACT_DIVISION, SUBTILE=cfg.subtile, GATE2=gate is not None and tokens_per_frame >= cfg.bm,
        num_warps=cfg.num_warps, num_stages=cfg.num_stages,
    )
    if lin.has_wzp and rowsums is None:
        raise ValueError("this layer has weight zero points: pass the activation row sums")
    return result


# ----------------------------------------------------------------------------------------------- reference
def _unpacked_weight(lin: PackedGroup, g: int) -> torch.Tensor:
    """Integer weights minus the in-kernel zero points of stacked linear g, float64 [N, Kp]."""
    from kernels.layout import unpack_int4

    sl = slice(g * lin.n, (g + 1) * lin.n)
    if not lin.int4:
        return lin.weight[sl].double()
    u = unpack_int4(lin.weight[sl]).double()
    kop = int(lin.kop[g]) if lin.dual != "none" else 0
    outlier = torch.arange(lin.kp, device=u.device)[None, :] < kop
    return u - torch.where(outlier, lin.w_zero[0, sl][:, None].double(), lin.w_zero[1, sl][:, None].double())


def qgemm_ref(a: torch.Tensor, rowsums: Optional[torch.Tensor], lin: PackedGroup, m: int) -> torch.Tensor:
    """float64 reference of the grouped GEMM's ``y`` (before rounding to the activation dtype): [M, C*N]."""
    n, c = lin.n, lin.count
    out = torch.empty((m, c * n), dtype=torch.float64, device=a.device)
    for g in range(c):
        sl = slice(g * n, (g + 1) * n)
        w = _unpacked_weight(lin, g)
        kop = int(lin.kop[g]) if lin.dual != "none" else 0
        y = torch.zeros((m, n), dtype=torch.float64, device=a.device)
        parts = []
        for grp, (k0, k1) in enumerate([(0, kop), (kop, lin.kp)]):
            acc = a[g, :, k0:k1].double() @ w[:, k0:k1].T
            if lin.has_wzp:
                acc = acc - lin.w_zero[grp, sl].double()[None, :] * rowsums[g, :, grp].double()[:, None]
            if lin.has_corr:
                acc = acc + lin.corr[grp, sl].double()[None, :]
            parts.append(acc)
        if lin.dual == "int_ratio":
            y = (parts[0] * lin.ratio[sl].double() + parts[1]) * (lin.a_scale[g, 1] * lin.w_scale[1, sl]).double()
        else:
            for grp in (0, 1):
                y = y + parts[grp] * (lin.a_scale[g, grp] * lin.w_scale[grp, sl]).double()
        if lin.bias is not None:
            y = y + lin.bias[sl].double()
        out[:, sl] = y
    return out


def qgemm_torch(a, rowsums, lin: PackedGroup, m: int, *, out_dtype=torch.bfloat16, epilogue: str = "store", out=None,
                residual=None, gate=None, tokens_per_frame: int = 1, next_act: Optional[StackedAct] = None,
                next_rowsum: bool = False, config=None):
    """:func:`qgemm` in torch: float64 GEMM of the codes, then the same epilogues with the same rounding points."""
    from kernels.act_quant import quantize_ref

    y = qgemm_ref(a, rowsums, lin, m).float().to(out_dtype).float()
    if epilogue == "store":
        return out.copy_(y) if out is not None else y.to(out_dtype)
    if epilogue == "residual":
        if gate is not None:
            r = torch.arange(m, device=y.device) // tokens_per_frame
            y = (y * gate[r].float()).to(residual.dtype).float()
        res = (residual.float() + y).to(residual.dtype)
        return out.copy_(res) if out is not None else res
    if epilogue == "gelu_quant":
        h = torch.nn.functional.gelu(y, approximate="tanh").to(out_dtype).float()
        codes, rs = quantize_ref(h, next_act, rowsum=True)
        return codes[0], (rs[0] if next_rowsum else None)
    raise ValueError(f"unknown epilogue {epilogue!r}; choose from {sorted(EPILOGUES)}")
