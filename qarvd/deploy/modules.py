"""Real low-bit linear modules: int8 / packed-int4 (W8A8, W4A8) and float8 E4M3 (FP8 W8A8) storage.

They replace ``nn.Linear`` (or a fake-quant QuantLinear) under the same module name, hold only integer/fp8
weights and their scales as buffers (so ``state_dict`` is the deployment artifact), and compute through the
kernel backend they are bound to (:mod:`qarvd.deploy.backends`). Called on their own they quantize their input and run
the GEMM; the fused block forward (:mod:`qarvd.deploy.fast`) instead lets the producer kernels quantize for them.
"""
from __future__ import annotations

from dataclasses import replace
from typing import Optional

import torch
from torch import nn

from kernels.layout import PAD, ActQuant, PackedGroup, StackedAct, stack_acts
from qarvd.deploy.packing import minmax_spec, pack_spec
from qarvd.deploy.spec import RealLayerSpec


class RealQuantLinear(nn.Module):
    """W8A8 / W4A8 linear: int8 [N, Kp] or packed int4 [N, Kp/2] weights in the kernels' padded layout.

    Persistent buffers are the storage of :func:`qarvd.deploy.packing.pack_spec` (what the artifact saves); the
    kernel tensors derived from them (``k_*``) are non-persistent and rebuilt after loading or moving.
    """

    def __init__(self, meta: dict, tensors: Optional[dict] = None, backend=None) -> None:
        super().__init__()
        self.meta = dict(meta)
        self.in_features, self.out_features = meta["in_features"], meta["out_features"]
        self.backend = backend
        tensors = tensors if tensors is not None else self._empty(meta)
        for name, t in tensors.items():
            self.register_buffer(name, t)
        self.meta.update(has_bias="bias" in tensors, has_smooth="smooth" in tensors, has_ratio="ratio" in tensors,
                         has_wzero="w_zero" in tensors,
                         rank=int(tensors["lr_down"].shape[0]) if "lr_down" in tensors else 0,
                         bias_dtype=str(tensors["bias"].dtype).removeprefix("torch.") if "bias" in tensors else None)
        self._derived_key = None
        self._group_cache = self._act_cache = None

    @staticmethod
    def _empty(meta: dict) -> dict:
        n, k, kp, g = meta["out_features"], meta["in_features"], meta["kp"], meta["groups"]
        t = dict(
            weight=torch.empty((n, kp // 2), dtype=torch.uint8) if meta["int4"] else torch.empty((n, kp), dtype=torch.int8),
            w_scale=torch.empty(g, n), a_scale=torch.empty(g), a_zero=torch.empty(g))
        if meta.get("has_wzero", True):
            t["w_zero"] = torch.empty(g, n, dtype=torch.int8)
        if g == 2:
            t["outlier_cols"] = torch.empty(meta["kop_cols"], dtype=torch.int16 if k < 2**15 else torch.int32)
        if meta.get("has_ratio"):
            t["ratio"] = torch.empty(n, dtype=torch.int16)
        if meta.get("has_bias"):
            t["bias"] = torch.empty(n, dtype=getattr(torch, meta.get("bias_dtype") or "float32"))
        if meta.get("has_smooth"):
            t["smooth"] = torch.empty(k)
        if meta.get("rank"):
            t["lr_down"], t["lr_up"] = torch.empty(meta["rank"], k), torch.empty(n, meta["rank"])
        return t

    @classmethod
    def from_spec(cls, spec: RealLayerSpec, dual_mode: str = "exact", backend=None, device=None) -> "RealQuantLinear":
        """The module holding ``spec``'s packed storage (:func:`pack_spec`), its tensors moved to ``device``."""
        p = pack_spec(spec, dual_mode)
        return cls(p.meta, {k: v.to(device) for k, v in p.tensors.items()} if device is not None else p.tensors,
                   backend)

    @classmethod
    def random(cls, k: int, n: int, *, seed: int = 0, dual_mode: str = "exact", device=None,
               **spec_kw) -> "RealQuantLinear":
        """A min-max layer (:func:`minmax_spec` keywords) of a seeded Gaussian weight (std 1/sqrt(k)) and bias (std
        0.1): the layer kernel tests and micro-benchmarks run, where the values matter less than the format."""
        g = torch.Generator().manual_seed(seed)
        w = torch.randn(n, k, generator=g) / k**0.5
        return cls.from_spec(minmax_spec(w, torch.randn(n, generator=g) * 0.1, **spec_kw), dual_mode, device=device)

    def storage_meta(self) -> dict:
        """Scalar facts saved next to the tensors (enough to rebuild an empty module for loading)."""
        out = dict(self.meta)
        if out["groups"] == 2:
            out["kop_cols"] = int(self.outlier_cols.numel())
        return out

    # -- kernel tensors ---------------------------------------------------------------------------------
    def _derived(self) -> None:
        key = (self.weight.device, self.weight.data_ptr(), self.w_scale.data_ptr())
        if self._derived_key == key:
            return
        from qarvd.deploy.packing import derive

        d = derive({name: b for name, b in self.named_buffers(recurse=False) if not name.startswith("k_")}, self.meta)
        for name in ("has_wzp", "has_corr", "uniform", "n_out", "src_identity"):
            self.meta[name] = d.pop(name)
        for name, t in d.items():
            self.register_buffer(name, t, persistent=False)
        self._derived_key = key
        self._group_cache = self._act_cache = None

    def act(self) -> ActQuant:
        self._derived()
        m = self.meta
        return ActQuant(self.k_col_scale, self.k_col_zero, self.k_dest, self.k_a_scale, self.k_a_zero, m["kp"],
                        m["kop"], m["lo"], m["hi"], m["uniform"], self.k_src, m["n_out"], m["src_identity"])

    def stacked_act(self) -> StackedAct:
        """This layer's activation quantization as a one-consumer stack (cached with the kernel tensors)."""
        self._derived()
        if self._act_cache is None:
            self._act_cache = stack_acts([self.act()])
        return self._act_cache

    def group(self) -> PackedGroup:
        """This layer as a one-member grouped GEMM (views of the buffers, cached per device)."""
        self._derived()
        if self._group_cache is None:
            self._group_cache = stack_group([self])
        return self._group_cache

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.backend is None:
            raise RuntimeError("RealQuantLinear has no kernel backend: call qarvd.deploy.set_backend_(model, backend)")
        return self.backend.module_forward(self, x)

    def extra_repr(self) -> str:
        m = self.meta
        return (f"in={m['in_features']}, out={m['out_features']}, w={'int4' if m['int4'] else 'int8'}, "
                f"dual={m['dual']}, Kp={m['kp']}, kop={m['kop']}")


def rows_permuted(group: PackedGroup, order: torch.Tensor) -> PackedGroup:
    """A one-linear group whose output row j is the old row ``order[j]``: its GEMM writes the outputs in that order,
    each one computed exactly as before (copies of the row-indexed tensors). ffn.0 in ffn.2's split order lets
    ffn.0's GELU -> int8 epilogue write ffn.2's two runs with no scatter (qarvd.deploy.fast.IntPlan)."""
    if group.count != 1:
        raise ValueError(f"rows_permuted takes one linear, got a group of {group.count}")
    o = order.long().to(group.weight.device)
    cols = lambda t: t[:, o].contiguous()  # noqa: E731 - [groups, N] tensors
    return replace(group, weight=group.weight[o].contiguous(), w_scale=cols(group.w_scale), w_zero=cols(group.w_zero),
                   corr=cols(group.corr), ratio=group.ratio[o].contiguous(),
                   bias=None if group.bias is None else group.bias[o].contiguous())


def in_split_order(act: ActQuant) -> ActQuant:
    """``act`` for an input that arrives already in its split layout's order (outliers, then normal columns):
    column j carries source column src[j]'s step, zero point and destination, and no gather is needed."""
    if not act.n_out:
        raise ValueError("in_split_order needs a split-layout activation (dual scale without smoothing)")
    s = act.src.long()
    return ActQuant(act.col_scale[s], act.col_zero[s], act.dest[s], act.scale, act.zero, act.kp, act.kop, act.lo,
                    act.hi, act.uniform, torch.arange(act.k, dtype=torch.int32, device=s.device), act.n_out, True)


def head_layout(group: PackedGroup, acts: list) -> Optional[tuple]:
    """``(group, acts)`` in the head layout (kernels/layout.py ActQuant), or None where it does not apply.

    Why: a dual-scale layer in the split layout needs its producer to gather the input in the layer's own
    outlier-first order, and q/k/v each have their own outlier set (Eq. 12 tests each weight), so the q/k/v producer
    gathered and recomputed the normalised row three times (on the H100 the producers took twice plain W8A8's kernel
    time, benchmarks/results/h100_session8.json). In the head layout the body is every column in its own order
    (the outlier columns' weights zeroed there), so only the n_out outlier columns are gathered; K grows by kop.
    Each output is the same integer sum as in the split layout. Applies to int8 weights without zero points (the
    row sums would count the holes) where every member has outliers, a gathered input and one kop."""
    if group.int4 or group.has_wzp or len(acts) != group.count or any(
            not a.n_out or a.src_identity or a.head for a in acts) or len({a.kop for a in acts}) != 1:
        return None
    kop, k = acts[0].kop, acts[0].k
    kp = kop + -(-k // PAD) * PAD
    w = group.weight
    new = torch.zeros((w.shape[0], kp), dtype=w.dtype, device=w.device)
    new[:, :kop] = w[:, :kop]
    new_acts = []
    for c, a in enumerate(acts):
        normal = a.src[a.n_out:].long()  # the normal columns, ascending: the split layout's run from kop on
        rows = slice(c * group.n, (c + 1) * group.n)
        new[rows, kop + normal] = w[rows, kop:kop + normal.numel()]
        dest = a.dest.clone()
        dest[normal] = (kop + normal).to(dest.dtype)
        new_acts.append(replace(a, dest=dest, kp=kp, head=True))
    return replace(group, weight=new, kp=kp), new_acts


def stack_group(mods: list) -> PackedGroup:
    """Stack linears of equal K, N and layout along N (copies when more than one)."""
    ref = mods[0].meta
    for m in mods[1:]:
        for key in ("in_features", "out_features", "kp", "int4", "lo", "hi"):
            if m.meta[key] != ref[key]:
                raise ValueError(f"cannot group layers differing in {key}: {m.meta[key]} vs {ref[key]}")
    duals = {m.meta["dual"] for m in mods} - {"none"}
    if len(duals) > 1:
        raise ValueError(f"one group needs one dual-scale mode, got {duals}")
    for m in mods:
        m._derived()
    cat = (lambda ts, dim=0: ts[0]) if len(mods) == 1 else (lambda ts, dim=0: torch.cat(ts, dim))
    has_bias = any(m.meta["has_bias"] for m in mods)
    biases = [m.k_bias if m.meta["has_bias"] else torch.zeros_like(m.k_w_scale[0]) for m in mods]
    return PackedGroup(
        weight=cat([m.weight for m in mods]), w_scale=cat([m.k_w_scale for m in mods], 1),
        w_zero=cat([m.k_w_zero for m in mods], 1), corr=cat([m.k_corr for m in mods], 1),
        ratio=cat([m.k_ratio for m in mods]), bias=cat(biases) if has_bias else None,
        a_scale=torch.stack([m.k_a_scale for m in mods]),
        kop=torch.tensor([m.meta["kop"] for m in mods], dtype=torch.int32, device=mods[0].weight.device),
        n=ref["out_features"], kp=ref["kp"], count=len(mods), int4=ref["int4"],
        dual=duals.pop() if duals else "none", has_wzp=any(m.meta["has_wzp"] for m in mods),
        has_corr=any(m.meta["has_corr"] for m in mods))


class Fp8Linear(nn.Module):
    """FP8 E4M3 W8A8: per-output-channel weight scales, one static per-tensor activation scale (torch._scaled_mm)."""

    def __init__(self, meta: dict, tensors: Optional[dict] = None, backend=None) -> None:
        super().__init__()
        self.meta = dict(meta)
        self.in_features, self.out_features = meta["in_features"], meta["out_features"]
        self.backend = backend
        if tensors is None:
            n, k = meta["out_features"], meta["in_features"]
            tensors = dict(weight=torch.empty((n, k), dtype=torch.float8_e4m3fn), w_scale=torch.empty(n),
                           a_scale=torch.empty(1))
            if meta.get("has_bias"):
                tensors["bias"] = torch.empty(n)
            if meta.get("has_smooth"):
                tensors["smooth"] = torch.empty(k)
            if meta.get("rank"):
                tensors["lr_down"], tensors["lr_up"] = torch.empty(meta["rank"], k), torch.empty(n, meta["rank"])
        for name, t in tensors.items():
            self.register_buffer(name, t)
        self.meta.update(has_bias="bias" in tensors, has_smooth="smooth" in tensors,
                         rank=int(tensors["lr_down"].shape[0]) if "lr_down" in tensors else 0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.backend is None:
            raise RuntimeError("Fp8Linear has no kernel backend: call qarvd.deploy.set_backend_(model, backend)")
        return self.backend.module_forward(self, x)

    def extra_repr(self) -> str:
        return f"in={self.in_features}, out={self.out_features}, w=fp8_e4m3"


def fp8_from_spec(spec, fp8_max: float = 448.0) -> tuple[dict, dict]:
    """FP8 tensors of a spec: dequantized weights re-encoded per output channel, the activation range of the spec's
    (largest) group as the per-tensor scale. Dual-scale groups collapse: FP8's exponent covers the outliers."""
    w = spec.dequant_weight()
    ws = (w.abs().amax(1) / fp8_max).clamp_min(1e-12)
    amax = max(max(abs(spec.a_qmin - z), abs(spec.a_qmax - z)) * float(s)
               for s, z in zip(spec.act_scale, spec.act_zero))
    t = dict(weight=(w / ws[:, None]).clamp(-fp8_max, fp8_max).to(torch.float8_e4m3fn), w_scale=ws.float(),
             a_scale=torch.tensor([amax / fp8_max], dtype=torch.float32, device=w.device))
    if spec.bias is not None:
        t["bias"] = spec.bias.detach().to(w.device)
    if spec.smooth is not None:
        t["smooth"] = spec.smooth.float().to(w.device)
    if spec.lowrank is not None:
        t["lr_down"], t["lr_up"] = (x.detach().to(w.device) for x in spec.lowrank)
    return t, dict(in_features=spec.in_features, out_features=spec.out_features, fmt="fp8")
