"""Pack a :class:`RealLayerSpec` into the kernels' storage: padded, permuted int8 or packed int4 weights, the
per-column activation quantization vectors, and the exact integer zero-point corrections of the GEMM epilogue.

The dual-scale ``int_ratio`` variant re-quantizes the outlier weights so that their combined scale is an integer
multiple R[n] of the normal group's (``s_a_out * s_w_out' = R * s_a_norm * s_w_norm``); R is the smallest integer
that keeps the re-quantized outliers inside the weight range. That is the variant's only numerical change.
"""
from __future__ import annotations

from dataclasses import dataclass, replace

import torch

from kernels.layout import pack_int4, padded
from qarvd.deploy.spec import RealLayerSpec

DUAL_MODES = ("exact", "int_ratio")
WEIGHT_MODES = ("symmetric", "artifact")


def symmetric_weights(spec: RealLayerSpec) -> RealLayerSpec:
    """The spec with its 8-bit weights re-quantized per output channel onto a symmetric grid (zero point 0).

    Why: an asymmetric weight zero point makes the GEMM epilogue subtract ``zw[n] * rowsum[m]``, so every producer
    kernel must also emit activation row sums (about 2x its time on the H100) and every epilogue carries two more
    live tiles. Re-quantizing the dequantized weights ``(W - z) * s`` with ``s' = max|W - z| * s / 127`` adds one
    weight rounding (at 8 bits far below the activation error; its effect on the embedded model's rollout is
    measured by ``scripts/deploy_quality.py``). 4-bit weights keep their zero point: it is subtracted in-kernel
    at no cost, and a second 4-bit rounding would not be small. Already-symmetric specs are returned unchanged.
    """
    if spec.w_bits != 8 or (spec.w_qmin < 0 and all(bool((z == 0).all()) for z in spec.weight_zero)):
        return spec
    wi, ws, wz = [], [], []
    for q, s, z in zip(spec.weight_int, spec.weight_scale, spec.weight_zero):
        wd = (q.double() - z.double().to(q.device)[:, None]) * s.double().to(q.device)[:, None]
        sn = (wd.abs().amax(1) / 127.0).clamp_min(1e-12)
        wi.append(torch.clamp(torch.round(wd / sn[:, None]), -127, 127))
        ws.append(sn.float())
        wz.append(torch.zeros_like(sn))
    return replace(spec, weight_int=wi, weight_scale=ws, weight_zero=wz, w_qmin=-128, w_qmax=127,
                   meta={**spec.meta, "weights": "symmetric (re-quantized at deployment)"})


def _offset(qmin: int, qmax: int) -> int:
    """Shift that centres an integer range on int8 (0 for signed ranges, 2^(b-1) for unsigned ones)."""
    return (int(qmin) + int(qmax) + 1) // 2


@dataclass
class Packed:
    """Storage tensors of one layer (CPU; what the artifact saves) plus the scalar layout facts stored next to them."""

    tensors: dict
    meta: dict


def pack_spec(spec: RealLayerSpec, dual_mode: str = "exact") -> Packed:
    """Storage form: weights in the padded layout, per-group scales and stored zero points, the outlier columns.

    Everything the kernels need beyond this (per-column activation vectors, exact integer corrections) is derived
    at load time by :func:`derive`, so the file holds no redundant bytes.
    """
    if dual_mode not in DUAL_MODES:
        raise ValueError(f"dual_mode={dual_mode!r}; choose from {DUAL_MODES}")
    n, k = spec.out_features, spec.in_features
    int4 = spec.w_qmax - spec.w_qmin < 16
    two = len(spec.groups) == 2
    dual = dual_mode if two else "none"
    kgs = [int(c.numel()) for c in spec.groups]
    kop = padded(kgs[0]) if two else 0
    kp = kop + padded(kgs[-1])
    a_off = _offset(spec.a_qmin, spec.a_qmax)
    lo, hi = spec.a_qmin - a_off, spec.a_qmax - a_off
    if lo < -128 or hi > 127:
        raise ValueError(f"activation range [{spec.a_qmin}, {spec.a_qmax}] does not fit int8 storage")
    w_off = 0 if int4 else _offset(spec.w_qmin, spec.w_qmax)
    dev = spec.weight_int[0].device
    full = torch.zeros(n, kp, dtype=torch.int32, device=dev)
    w_scale, w_zero = [], []
    ratio = None
    starts = [0, kop] if two else [0]
    for gi, (cols, wi, ws, wz, start) in enumerate(zip(spec.groups, spec.weight_int, spec.weight_scale,
                                                       spec.weight_zero, starts)):
        wi, ws, wz = wi.double().round().long(), ws.float().to(dev), wz.to(dev).double().round().long()
        kg = cols.numel()
        if gi == len(spec.groups) - 1:  # the normal group is stored in ascending column order
            wi = wi[:, cols.long().to(dev).argsort()]
        if dual == "int_ratio" and gi == 0:
            # outliers re-quantized so that their combined scale is ratio[n] x the normal group's
            ws_n = spec.weight_scale[1].double().to(dev)
            rho = (float(spec.act_scale[0]) * ws.double()) / (float(spec.act_scale[1]) * ws_n)
            qmax = 7 if int4 else 127
            weff = (wi - wz[:, None]).double()
            r = torch.clamp(torch.ceil(rho * weff.abs().amax(1).clamp_min(1) / qmax - 1e-9), min=1)
            wi = torch.clamp(torch.round(weff * (rho / r)[:, None]), -qmax, qmax).long()
            if int4:
                wi, wz = wi + 8, torch.full((n,), 8, dtype=torch.long, device=dev)
            else:
                wz = torch.zeros(n, dtype=torch.long, device=dev)
            ws = (r * float(spec.act_scale[1]) * ws_n / float(spec.act_scale[0])).float()
            ratio = r.to(torch.int16)
            stored, zw = wi, wz
        elif int4:
            stored, zw = wi - spec.w_qmin, wz - spec.w_qmin
        else:
            stored, zw = wi - w_off, wz - w_off
        full[:, start:start + kg] = stored.to(torch.int32)
        if int4:  # pads hold the zero point so that they dequantize to exactly 0
            full[:, start + kg:start + padded(kg)] = zw[:, None].to(torch.int32)
        w_scale.append(ws)
        w_zero.append(zw)
    if int4:
        if int(full.min()) < 0 or int(full.max()) > 15:
            raise ValueError("int4 weights (minus qmin) must lie in 0..15")
        weight = pack_int4(full.to(torch.uint8))
    else:
        if int(full.min()) < -128 or int(full.max()) > 127:
            raise ValueError("int8 weights do not fit after centring; check w_qmin/w_qmax")
        weight = full.to(torch.int8)
    zeros = torch.stack(w_zero)
    if int(zeros.min()) < -128 or int(zeros.max()) > 127:
        raise ValueError("weight zero points do not fit int8 storage")
    tensors = dict(weight=weight, w_scale=torch.stack(w_scale),
                   a_scale=torch.tensor([float(s) for s in spec.act_scale], dtype=torch.float32, device=dev),
                   a_zero=torch.tensor([float(z) - a_off for z in spec.act_zero], dtype=torch.float32, device=dev))
    if bool((zeros != 0).any()):  # symmetric int8 weights store no zero points
        tensors["w_zero"] = zeros.to(torch.int8)
    if two:
        tensors["outlier_cols"] = spec.groups[0].long().to(dev).to(torch.int16 if k < 2**15 else torch.int32)
    if ratio is not None:
        tensors["ratio"] = ratio
    if spec.bias is not None:
        tensors["bias"] = spec.bias.detach().to(dev)
    if spec.smooth is not None:
        tensors["smooth"] = spec.smooth.float().to(dev)
    if spec.lowrank is not None:
        tensors["lr_down"], tensors["lr_up"] = (t.detach().to(dev) for t in spec.lowrank)
    meta = dict(in_features=k, out_features=n, kp=kp, kop=kop, lo=lo, hi=hi, int4=int4, dual=dual,
                groups=len(spec.groups))
    return Packed(tensors, meta)


def derive(t: dict, meta: dict) -> dict:
    """Kernel tensors from storage: two-row (outlier, normal) scales and zero points, exact int32 corrections for
    the activation zero points, and the per-column activation vectors (scale x smoothing, stored zero, destination)."""
    n, k, kp, kop = meta["out_features"], meta["in_features"], meta["kp"], meta["kop"]
    dev = t["weight"].device
    two = meta["groups"] == 2
    rows = [0, 1] if two else [1]
    w_scale = torch.zeros(2, n, dtype=torch.float32, device=dev)
    w_zero = torch.zeros(2, n, dtype=torch.int32, device=dev)
    a_scale = torch.zeros(2, dtype=torch.float32, device=dev)
    a_zero = torch.zeros(2, dtype=torch.float32, device=dev)
    for i, r in enumerate(rows):
        w_scale[r] = t["w_scale"][i].float()
        if "w_zero" in t:
            w_zero[r] = t["w_zero"][i].int()
        a_scale[r], a_zero[r] = t["a_scale"][i], t["a_zero"][i]
    if meta["int4"]:
        from kernels.layout import unpack_int4

        wint = unpack_int4(t["weight"]).long()
    else:
        wint = t["weight"].long()
    corr = torch.zeros(2, n, dtype=torch.int64, device=dev)
    bounds = [(0, kop), (kop, kp)] if two else [(0, kp)]
    outlier = t["outlier_cols"].long() if two else torch.zeros(0, dtype=torch.long, device=dev)
    normal_mask = torch.ones(k, dtype=torch.bool, device=dev)
    normal_mask[outlier] = False
    counts = [outlier.numel(), int(normal_mask.sum())] if two else [k]
    for r, (k0, k1), kg in zip(rows, bounds, counts):
        zx = int(a_zero[r])
        w = wint[:, k0:k1]
        if meta["int4"]:  # in-kernel zero point; pads equal it and vanish
            corr[r] = -zx * (w - w_zero[r][:, None].long()).sum(1)
        else:
            corr[r] = -zx * w.sum(1) + kg * zx * w_zero[r].long()
    if int(corr.abs().max()) >= 2**31:
        raise ValueError("zero-point correction overflows int32")
    # activation columns: outliers first (in their stored order), then the normal columns in ascending order
    dest = torch.empty(k, dtype=torch.int32, device=dev)
    order = torch.arange(k, device=dev)[normal_mask]
    dest[order] = kop + torch.arange(order.numel(), dtype=torch.int32, device=dev)
    col_scale = torch.full((k,), float(a_scale[1]), dtype=torch.float32, device=dev)
    col_zero = torch.full((k,), float(a_zero[1]), dtype=torch.float32, device=dev)
    if two:
        dest[outlier] = torch.arange(outlier.numel(), dtype=torch.int32, device=dev)
        col_scale[outlier], col_zero[outlier] = a_scale[0], a_zero[0]
    if "smooth" in t:
        col_scale = (col_scale.double() * t["smooth"].double()).float()
    ratio = t["ratio"].int() if "ratio" in t else torch.ones(n, dtype=torch.int32, device=dev)
    src = torch.argsort(dest).to(torch.int32)  # column j of the permuted order (outliers, then normals) reads src[j]
    out = dict(k_w_scale=w_scale, k_w_zero=w_zero, k_corr=corr.to(torch.int32), k_ratio=ratio, k_a_scale=a_scale,
               k_a_zero=a_zero, k_col_scale=col_scale, k_col_zero=col_zero, k_dest=dest, k_src=src)
    if "bias" in t:
        out["k_bias"] = t["bias"].float()
    return out | dict(has_wzp=(not meta["int4"]) and bool((w_zero != 0).any()), has_corr=bool((corr != 0).any()),
                      uniform=not two and "smooth" not in t, n_out=outlier.numel() if "smooth" not in t else 0,
                      src_identity=bool(torch.equal(src.cpu(), torch.arange(k, dtype=torch.int32))))


# ----------------------------------------------------------------------------------------------- minmax specs
def minmax_spec(weight: torch.Tensor, bias, *, w_bits: int = 8, a_bits: int = 8, act_range: tuple = (-4.0, 4.0),
                n_outliers: int = 0, asym_act: bool = True, asym_w: bool = True) -> RealLayerSpec:
    """A per-channel min-max spec of a float linear, for benchmarks and tests of the deployment path.

    Outlier columns (dual-scale) are the ``n_outliers`` input columns of largest L2 norm (a multiple of 32, as the
    method aligns them); each group gets its own weight quantizer and the same activation range.
    """
    w = weight.detach().double()
    n, k = w.shape
    if n_outliers:
        if n_outliers % 32 or n_outliers >= k:
            raise ValueError("n_outliers must be a multiple of 32 below in_features")
        order = w.norm(dim=0).argsort(descending=True)
        groups = [order[:n_outliers].sort().values, order[n_outliers:].sort().values]
    else:
        groups = [torch.arange(k, device=w.device)]
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
            z = torch.zeros(n, dtype=torch.float64, device=w.device)
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
                         bias=None if bias is None else bias.detach())


def packed_bytes(tensors: dict) -> int:
    return sum(t.numel() * t.element_size() for t in tensors.values())
