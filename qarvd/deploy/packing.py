"""Pack a :class:`RealLayerSpec` into the kernels' storage: padded, permuted int8 or packed int4 weights, the
per-column activation quantization vectors, and the exact integer zero-point corrections of the GEMM epilogue.

The dual-scale ``int_ratio`` variant re-quantizes the outlier weights so that their combined scale is an integer
multiple R[n] of the normal group's (``s_a_out * s_w_out' = R * s_a_norm * s_w_norm``); R is the smallest integer
that keeps the re-quantized outliers inside the weight range. That is the variant's only numerical change.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from kernels.layout import ActQuant, pack_int4, padded
from qarvd.deploy.spec import RealLayerSpec

DUAL_MODES = ("exact", "int_ratio")


def _offset(qmin: int, qmax: int) -> int:
    """Shift that centres an integer range on int8 (0 for signed ranges, 2^(b-1) for unsigned ones)."""
    return (int(qmin) + int(qmax) + 1) // 2


@dataclass
class Packed:
    """Kernel-ready tensors of one layer (CPU) plus the scalar layout facts stored next to them."""

    tensors: dict
    meta: dict


def pack_spec(spec: RealLayerSpec, dual_mode: str = "exact") -> Packed:
    if dual_mode not in DUAL_MODES:
        raise ValueError(f"dual_mode={dual_mode!r}; choose from {DUAL_MODES}")
    n, k = spec.out_features, spec.in_features
    int4 = spec.w_qmax - spec.w_qmin < 16
    two = len(spec.groups) == 2
    dual = dual_mode if two else "none"
    kgs = [int(c.numel()) for c in spec.groups]
    kop = padded(kgs[0]) if two else 0
    kp = kop + padded(kgs[-1])
    # activation side: per source column scale / stored zero / destination
    a_off = _offset(spec.a_qmin, spec.a_qmax)
    lo, hi = spec.a_qmin - a_off, spec.a_qmax - a_off
    if lo < -128 or hi > 127:
        raise ValueError(f"activation range [{spec.a_qmin}, {spec.a_qmax}] does not fit int8 storage")
    col_scale = torch.empty(k, dtype=torch.float32)
    col_zero = torch.empty(k, dtype=torch.float32)
    dest = torch.empty(k, dtype=torch.int32)
    a_scale = torch.zeros(2, dtype=torch.float32)
    a_zero = torch.zeros(2, dtype=torch.float32)
    starts = [0, kop] if two else [0]
    grp_ids = [0, 1] if two else [1]
    for cols, s, z, start, gid in zip(spec.groups, spec.act_scale, spec.act_zero, starts, grp_ids):
        cols = cols.long().cpu()
        col_scale[cols] = float(s)
        col_zero[cols] = float(z) - a_off
        dest[cols] = start + torch.arange(cols.numel(), dtype=torch.int32)
        a_scale[gid], a_zero[gid] = float(s), float(z) - a_off
    if spec.smooth is not None:
        col_scale = (col_scale.double() * spec.smooth.double().cpu()).float()
    uniform = not two and spec.smooth is None and torch.equal(dest, torch.arange(k, dtype=torch.int32))

    # weight side, groups laid out at their padded column ranges
    w_scale = torch.zeros(2, n, dtype=torch.float32)
    w_zero = torch.zeros(2, n, dtype=torch.int32)
    corr = torch.zeros(2, n, dtype=torch.int64)
    ratio = torch.ones(n, dtype=torch.int32)
    w_off = _offset(spec.w_qmin, spec.w_qmax)
    full = torch.zeros(n, kp, dtype=torch.int32)
    weffs = [wi.double().cpu() - wz.double().cpu()[:, None] for wi, wz in zip(spec.weight_int, spec.weight_zero)]
    for gi, (cols, wi, ws, wz, start, gid) in enumerate(
            zip(spec.groups, spec.weight_int, spec.weight_scale, spec.weight_zero, starts, grp_ids)):
        wi, ws, wz = wi.cpu().round().long(), ws.float().cpu(), wz.cpu().round().long()
        kg = cols.numel()
        zx = int(a_zero[gid].item())
        if dual == "int_ratio" and gid == 0:
            # outlier weights, re-quantized so that their combined scale is R[n] x the normal group's
            rho = (spec.act_scale[0] * ws.double()) / (spec.act_scale[1] * spec.weight_scale[1].double().cpu())
            qmax = 7 if int4 else 127
            amax = weffs[0].abs().amax(1).clamp_min(1)
            r = torch.clamp(torch.ceil(rho * amax / qmax - 1e-9), min=1).long()
            weff = torch.clamp(torch.round(weffs[0] * rho[:, None] / r[:, None]), -qmax, qmax).long()
            ratio = r.to(torch.int32)
            ws = (r.double() * spec.act_scale[1] * spec.weight_scale[1].double().cpu() / spec.act_scale[0]).float()
            stored, zw = (weff + 8, torch.full((n,), 8)) if int4 else (weff, torch.zeros(n, dtype=torch.long))
        elif int4:
            stored, zw = wi - spec.w_qmin, wz - spec.w_qmin
            weff = wi - wz[:, None]
        else:
            stored, zw = wi - w_off, wz - w_off
            weff = wi - wz[:, None]
        full[:, start:start + kg] = stored.to(torch.int32)
        if int4:  # pads hold the zero point so that they dequantize to exactly 0
            pad_to = start + (padded(kg))
            full[:, start + kg:pad_to] = zw[:, None].to(torch.int32)
            corr[gid] = -zx * weff.sum(1)
        else:
            corr[gid] = -zx * stored.sum(1) + kg * zx * zw
        w_scale[gid], w_zero[gid] = ws, zw.to(torch.int32)
    if int(corr.abs().max()) >= 2**31:
        raise ValueError("zero-point correction overflows int32")
    if int4:
        if int(full.min()) < 0 or int(full.max()) > 15:
            raise ValueError("int4 weights (minus qmin) must lie in 0..15")
        weight = pack_int4(full.to(torch.uint8))
    else:
        if int(full.min()) < -128 or int(full.max()) > 127:
            raise ValueError("int8 weights do not fit after centring; check w_qmin/w_qmax")
        weight = full.to(torch.int8)
    has_wzp = (not int4) and bool((w_zero != 0).any())
    tensors = dict(weight=weight, w_scale=w_scale, w_zero=w_zero, corr=corr.to(torch.int32), ratio=ratio,
                   a_scale=a_scale, a_zero=a_zero, a_col_scale=col_scale, a_col_zero=col_zero, a_dest=dest)
    if spec.bias is not None:
        tensors["bias"] = spec.bias.float().cpu()
    if spec.smooth is not None:
        tensors["smooth"] = spec.smooth.float().cpu()
    if spec.lowrank is not None:
        tensors["lr_down"], tensors["lr_up"] = (t.float().cpu() for t in spec.lowrank)
    meta = dict(in_features=k, out_features=n, kp=kp, kop=kop, lo=lo, hi=hi, int4=int4, dual=dual,
                has_wzp=has_wzp, has_corr=bool((corr != 0).any()), uniform=uniform)
    return Packed(tensors, meta)


def act_quant(t: dict, meta: dict) -> ActQuant:
    return ActQuant(t["a_col_scale"], t["a_col_zero"], t["a_dest"], t["a_scale"], t["a_zero"], meta["kp"],
                    meta["kop"], meta["lo"], meta["hi"], meta["uniform"])


# ----------------------------------------------------------------------------------------------- minmax specs
def minmax_spec(weight: torch.Tensor, bias, *, w_bits: int = 8, a_bits: int = 8, act_range: tuple = (-4.0, 4.0),
                n_outliers: int = 0, asym_act: bool = True, asym_w: bool = True) -> RealLayerSpec:
    """A per-channel min-max spec of a float linear, for benchmarks and tests of the deployment path.

    Outlier columns (dual-scale) are the ``n_outliers`` input columns of largest L2 norm (a multiple of 32, as the
    method aligns them); each group gets its own weight quantizer and the same activation range.
    """
    w = weight.detach().double().cpu()
    n, k = w.shape
    if n_outliers:
        if n_outliers % 32 or n_outliers >= k:
            raise ValueError("n_outliers must be a multiple of 32 below in_features")
        order = w.norm(dim=0).argsort(descending=True)
        groups = [order[:n_outliers].sort().values, order[n_outliers:].sort().values]
    else:
        groups = [torch.arange(k)]
    wq = ((0, 2**w_bits - 1) if asym_w else (-(2 ** (w_bits - 1)), 2 ** (w_bits - 1) - 1))
    aq = ((0, 2**a_bits - 1) if asym_act else (-(2 ** (a_bits - 1)), 2 ** (a_bits - 1) - 1))
    wi, wsc, wz, asc, az = [], [], [], [], []
    for cols in groups:
        wg = w[:, cols]
        if asym_w:
            lo, hi = wg.amin(1).clamp(max=0), wg.amax(1).clamp(min=0)
            s = ((hi - lo) / (wq[1] - wq[0])).clamp_min(1e-12)
            z = torch.round(-lo / s).clamp(wq[0], wq[1])
        else:
            s = (wg.abs().amax(1) / wq[1]).clamp_min(1e-12)
            z = torch.zeros(n, dtype=torch.float64)
        wi.append(torch.clamp(torch.round(wg / s[:, None]) + z[:, None], *wq))
        wsc.append(s.float())
        wz.append(z)
        lo_a, hi_a = act_range
        if asym_act:
            sa = (hi_a - lo_a) / (aq[1] - aq[0])
            za = float(min(max(round(-lo_a / sa), aq[0]), aq[1]))
        else:
            sa, za = max(abs(lo_a), abs(hi_a)) / aq[1], 0.0
        asc.append(float(sa))
        az.append(za)
    return RealLayerSpec(groups, wi, wsc, wz, asc, az, *wq, *aq,
                         bias=None if bias is None else bias.detach().float().cpu())


def packed_bytes(tensors: dict) -> int:
    return sum(t.numel() * t.element_size() for t in tensors.values())
