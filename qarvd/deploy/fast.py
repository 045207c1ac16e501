"""Fused forward of the Wan attention block for inference with a KV cache (the deployment path).

``accelerate_(model, backend)`` switches every block to :class:`FastWanAttentionBlock` (a subclass: module names,
parameters and state dict are unchanged) and attaches a per-block plan for the backend's weight format:

- ``bf16``: cuBLAS linears (q/k/v fused into one GEMM) with the Triton glue kernels;
- ``int`` (W8A8 / W4A8): the producers quantize for their consumers (norm1 + modulation -> q/k/v codes, attention
  output -> o codes, norm3 -> cross q codes, norm2 + modulation -> ffn.0 codes), ffn.0's epilogue applies GELU and
  writes ffn.2's codes, o / cross o / ffn.2 epilogues apply the (gated) residual update;
- ``fp8``: Triton producers write float8, torch._scaled_mm multiplies.

With ``backend.attention == "cudnn_fp8"`` the self-attention runs in FP8 (kernels/attn_cudnn.py): the glue kernel
writes q and the K/V cache as E4M3 codes with static per-layer scales, the attention output stays FP8 and its consumer
(the o projection's producer) dequantizes it. The scales come from :func:`calibrate_attention_fp8_` (amax of q, k, v
and the attention output over a rollout with bf16 attention); the K/V cache is then float8 (half the memory).

Forwards without a cache or with an explicit mask (training-style full sequences) run the eager block unchanged.
"""
from __future__ import annotations

from typing import Callable

import torch
import torch.nn.functional as F

from kernels.attn_cudnn import FP8_MAX, fp8_scalars
from kernels.layout import stack_acts
from qarvd.deploy.modules import Fp8Linear, RealQuantLinear, stack_group
from qarvd.models.wan import WanAttentionBlock, WanRMSNorm, attention


def _ln(norm) -> tuple:
    w = getattr(norm, "weight", None)
    b = getattr(norm, "bias", None)
    return (w, b, norm.eps)


def _share_storage(mods: list, weight) -> None:
    """Point each module's weight at its slice of the stacked copy, so grouping costs no extra memory."""
    n = mods[0].weight.shape[0]
    for i, m in enumerate(mods):
        view = weight[i * n:(i + 1) * n]
        if isinstance(m.weight, torch.nn.Parameter):
            m.weight.data = view
        else:
            m.weight = view


class _Plan:
    """Per-block ops for one weight format; the block forward below calls these five steps."""

    def __init__(self, block: WanAttentionBlock, backend) -> None:
        self.be = backend
        sa, ca, ffn = block.self_attn, block.cross_attn, block.ffn
        self.qkv_mods = [sa.q, sa.k, sa.v]
        self.o, self.cq, self.co, self.f0, self.f2 = sa.o, ca.q, ca.o, ffn[0], ffn[2]
        self.ln1, self.ln2, self.ln3 = _ln(block.norm1), _ln(block.norm2), _ln(block.norm3)
        if not isinstance(block.norm3, torch.nn.LayerNorm):
            raise NotImplementedError("fused path needs cross_attn_norm=True")

    def _deq(self, attn2, in_scale, dtype):
        """The attention output as the activation dtype (FP8 attention hands over codes and their step)."""
        return attn2 if in_scale is None else self.be.norm_quant(attn2, in_scale=in_scale, act_dtype=dtype)


class Bf16Plan(_Plan):
    def __init__(self, block, backend) -> None:
        super().__init__(block, backend)
        mods = self.qkv_mods
        if not all(type(m) is torch.nn.Linear for m in mods + [self.o, self.cq, self.co, self.f0, self.f2]):
            raise NotImplementedError("bf16 plan needs plain nn.Linear layers")
        self.w_qkv = torch.cat([m.weight.detach() for m in mods])
        self.b_qkv = torch.cat([m.bias.detach() for m in mods])
        _share_storage(mods, self.w_qkv)

    def qkv(self, x2, mod, s):
        h = self.be.norm_quant(x2, ln=self.ln1, mod=(mod, 0, 1, s))
        return F.linear(h, self.w_qkv, self.b_qkv)

    def self_out(self, attn2, x2, mod, s, in_scale=None):
        return self.be.residual(x2, self.o(self._deq(attn2, in_scale, x2.dtype)), mod[:, 2], s)

    def cross_q(self, x2):
        return self.cq(self.be.norm_quant(x2, ln=self.ln3))

    def cross_out(self, attn2, x2):
        return self.be.residual(x2, self.co(attn2), out=x2)

    def ffn(self, x2, mod, s):
        h = self.be.norm_quant(x2, ln=self.ln2, mod=(mod, 3, 4, s))
        y = self.f2(F.gelu(self.f0(h), approximate="tanh"))
        return self.be.residual(x2, y, mod[:, 5], s, out=x2)


class IntPlan(_Plan):
    def __init__(self, block, backend) -> None:
        super().__init__(block, backend)
        mods = self.qkv_mods + [self.o, self.cq, self.co, self.f0, self.f2]
        if not all(isinstance(m, RealQuantLinear) for m in mods):
            raise NotImplementedError("int plan needs RealQuantLinear layers")
        if any(m.meta.get("rank") for m in mods):
            raise NotImplementedError("low-rank branches run through the module path")
        try:  # one grouped launch needs one padded width: dual-scale layers with different outlier counts differ
            self.g_qkv = stack_group(self.qkv_mods)
            self.a_qkv = stack_acts([m.act() for m in self.qkv_mods])
            _share_storage(self.qkv_mods, self.g_qkv.weight)
        except ValueError:
            self.g_qkv = self.a_qkv = None
        self.g = {name: getattr(self, name).group() for name in ("o", "cq", "co", "f0", "f2")}
        self.a = {name: getattr(self, name).stacked_act() for name in ("o", "cq", "co", "f0", "f2")}

    def _q(self, x, name, **kw):
        return self.be.norm_quant(x, self.a[name], rowsum=self.g[name].has_wzp, **kw)

    def qkv(self, x2, mod, s):
        if self.g_qkv is None:  # q, k, v quantized and multiplied one by one
            outs = []
            for m in self.qkv_mods:
                a, rs = self.be.norm_quant(x2, m.stacked_act(), ln=self.ln1, mod=(mod, 0, 1, s),
                                           rowsum=m.group().has_wzp)
                outs.append(self.be.gemm(a, rs, m.group(), x2.shape[0], out_dtype=x2.dtype))
            return torch.cat(outs, dim=1)
        a, rs = self.be.norm_quant(x2, self.a_qkv, ln=self.ln1, mod=(mod, 0, 1, s), rowsum=self.g_qkv.has_wzp)
        return self.be.gemm(a, rs, self.g_qkv, x2.shape[0], out_dtype=x2.dtype)

    def self_out(self, attn2, x2, mod, s, in_scale=None):
        a, rs = self._q(attn2, "o", in_scale=in_scale, act_dtype=x2.dtype)
        return self.be.gemm(a, rs, self.g["o"], x2.shape[0], out_dtype=x2.dtype, epilogue="residual", residual=x2,
                            gate=mod[:, 2], tokens_per_frame=s)

    def cross_q(self, x2):
        a, rs = self._q(x2, "cq", ln=self.ln3)
        return self.be.gemm(a, rs, self.g["cq"], x2.shape[0], out_dtype=x2.dtype)

    def cross_out(self, attn2, x2):
        a, rs = self._q(attn2, "co")
        return self.be.gemm(a, rs, self.g["co"], x2.shape[0], out_dtype=x2.dtype, epilogue="residual", residual=x2,
                            out=x2)

    def ffn(self, x2, mod, s):
        m = x2.shape[0]
        a, rs = self._q(x2, "f0", ln=self.ln2, mod=(mod, 3, 4, s))
        a2, rs2 = self.be.gemm(a, rs, self.g["f0"], m, out_dtype=x2.dtype, epilogue="gelu_quant",
                               next_act=self.a["f2"], next_rowsum=self.g["f2"].has_wzp)
        return self.be.gemm(a2[None], None if rs2 is None else rs2[None], self.g["f2"], m, out_dtype=x2.dtype,
                            epilogue="residual", residual=x2, out=x2, gate=mod[:, 5], tokens_per_frame=s)


class Fp8Plan(_Plan):
    def __init__(self, block, backend) -> None:
        super().__init__(block, backend)
        mods = self.qkv_mods + [self.o, self.cq, self.co, self.f0, self.f2]
        if not all(isinstance(m, Fp8Linear) for m in mods) or any(
                m.meta.get("rank") or m.meta.get("has_smooth") for m in mods):
            raise NotImplementedError("fp8 plan needs Fp8Linear layers without smoothing or low-rank branches")
        # one activation scale for the three consumers of norm1 (the largest): one float8 tensor, one GEMM
        self.s_qkv = torch.stack([m.a_scale for m in self.qkv_mods]).amax().reshape(1)
        self.w_qkv = torch.cat([m.weight for m in self.qkv_mods])
        _share_storage(self.qkv_mods, self.w_qkv)
        self.ws_qkv = torch.cat([m.w_scale for m in self.qkv_mods])
        self.b_qkv = torch.cat([m.bias for m in self.qkv_mods]) if all(m.meta["has_bias"] for m in self.qkv_mods) \
            else None

    def _mm(self, h8, mod, dtype):
        return self.be.fp8_linear(h8, mod.weight, mod.a_scale, mod.w_scale, mod.bias if mod.meta["has_bias"] else None,
                                  dtype)

    def qkv(self, x2, mod, s):
        h8 = self.be.norm_quant(x2, ln=self.ln1, mod=(mod, 0, 1, s), fp8_scale=self.s_qkv)
        return self.be.fp8_linear(h8, self.w_qkv, self.s_qkv, self.ws_qkv, self.b_qkv, x2.dtype)

    def self_out(self, attn2, x2, mod, s, in_scale=None):
        y = self._mm(self.be.norm_quant(attn2, fp8_scale=self.o.a_scale, in_scale=in_scale, act_dtype=x2.dtype),
                     self.o, x2.dtype)
        return self.be.residual(x2, y, mod[:, 2], s)

    def cross_q(self, x2):
        return self._mm(self.be.norm_quant(x2, ln=self.ln3, fp8_scale=self.cq.a_scale), self.cq, x2.dtype)

    def cross_out(self, attn2, x2):
        y = self._mm(self.be.norm_quant(attn2, fp8_scale=self.co.a_scale), self.co, x2.dtype)
        return self.be.residual(x2, y, out=x2)

    def ffn(self, x2, mod, s):
        y = self._mm(self.be.norm_quant(x2, ln=self.ln2, mod=(mod, 3, 4, s), fp8_scale=self.f0.a_scale), self.f0,
                     x2.dtype)
        y = self._mm(self.be.norm_quant(y, pre_gelu=True, fp8_scale=self.f2.a_scale), self.f2, x2.dtype)
        return self.be.residual(x2, y, mod[:, 5], s, out=x2)


PLANS = {"bf16": Bf16Plan, "int": IntPlan, "fp8": Fp8Plan}


def _norm_weight(norm):
    return norm.weight if isinstance(norm, WanRMSNorm) else None


class FastWanAttentionBlock(WanAttentionBlock):
    """WanAttentionBlock whose cached-inference forward runs the fused plan attached by :func:`accelerate_`."""

    def forward(self, x, e, context, cos, sin, layer, cache, token_start, frames, mask):
        plan = getattr(self, "_qarvd_plan", None)
        if plan is None or cache is None or mask is not None:
            return super().forward(x, e, context, cos, sin, layer, cache, token_start, frames, mask)
        be = plan.be
        b, n, d = x.shape
        s, m = n // frames, b * n
        sa, ca = self.self_attn, self.cross_attn
        heads, hd = sa.num_heads, sa.head_dim
        end = token_start + n
        if end > cache.max_tokens:
            raise ValueError(f"KV cache holds {cache.max_tokens} tokens; this forward needs {end}")
        mod = (self.modulation.unsqueeze(1) + e.float()).reshape(b * frames, 6, d)
        x2 = x.reshape(m, d).contiguous()  # block 0 gets the transposed patch embedding
        be.check(x2)
        qkv = plan.qkv(x2, mod, s)
        fp8 = be.fp8_attention_on
        scales = getattr(self, "_qarvd_attn_scales", None)
        if fp8 and (scales is None or cache.k[layer].dtype != torch.float8_e4m3fn):
            raise RuntimeError("attention=cudnn_fp8 needs per-layer scales and a float8 KV cache: run "
                               "qarvd.deploy.calibrate_attention_fp8_(model, run) after accelerate_")
        q = be.qk_norm_rope(qkv, (0, d, 2 * d), d, n, wq=_norm_weight(sa.norm_q), wk=_norm_weight(sa.norm_k),
                            eps=getattr(sa.norm_q, "eps", 0.0), cos=cos, sin=sin, cache_k=cache.k[layer],
                            cache_v=cache.v[layer], start=token_start, fp8_scales=scales if fp8 else None)
        kv = (cache.k[layer][:, :end], cache.v[layer][:, :end])
        if fp8:
            y = be.fp8_attention(q.view(b, n, heads, hd), *kv, self._qarvd_attn_scalars, scales)
            x2 = plan.self_out(y.reshape(m, d), x2, mod, s, in_scale=scales[3:4])
        else:
            with be.sdpa():
                y = attention(q.view(b, n, heads, hd), *kv)
            seen = getattr(self, "_qarvd_attn_amax", None)
            if seen is not None:  # calibration: running amax of q, this chunk's k and v, the attention output
                new = torch.stack([q.abs().amax(), kv[0][:, token_start:].abs().amax(),
                                   kv[1][:, token_start:].abs().amax(), y.abs().amax()]).float()
                torch.maximum(seen, new, out=seen)
            x2 = plan.self_out(y.reshape(m, d), x2, mod, s)
        qc = be.qk_norm_rope(plan.cross_q(x2), (0,), d, n, wq=_norm_weight(ca.norm_q), eps=getattr(ca.norm_q, "eps", 0.0))
        if cache.cross[layer] is None:
            cache.cross[layer] = ca.context_kv(context)
        kc, vc = cache.cross[layer]
        with be.sdpa():
            y = attention(qc.view(b, n, heads, hd), kc, vc)
        x2 = plan.cross_out(y.reshape(m, d), x2)
        return plan.ffn(x2, mod, s).view(b, n, d)


def accelerate_(model: torch.nn.Module, backend) -> torch.nn.Module:
    """Attach fused plans for ``backend`` to every block of ``model`` (in place); returns the model.

    Blocks whose layers the plan cannot take (e.g. low-rank branches) keep the eager forward, which still runs the
    real modules through the backend. ``backend.graphs``: the cached rollout forwards then replay CUDA graphs
    (:func:`qarvd.deploy.graphs.graph_`); otherwise any graphs of an earlier call are dropped.
    """
    from qarvd.deploy.convert import set_backend_
    from qarvd.deploy.graphs import graph_, ungraph_

    set_backend_(model, backend)
    planned = False
    if backend.fused:
        plan_cls = PLANS[backend.format]
        planned = True
        for block in model.blocks:
            try:
                plan = plan_cls(block, backend)
            except NotImplementedError:
                plan = None
            planned = planned and plan is not None
            block.__class__ = FastWanAttentionBlock
            block._qarvd_plan = plan
    if backend.fp8_attention_on and not planned:
        raise ValueError("attention=cudnn_fp8 runs inside the fused block forward: it needs fused=true and a plan "
                         "for every block (no low-rank branches)")
    # new caches are float8 once calibrate_attention_fp8_ has set the scales; bf16 (the parameters' dtype) before
    model.kv_cache_dtype = torch.float8_e4m3fn if backend.fp8_attention_on and _calibrated(model) else None
    return graph_(model) if getattr(backend, "graphs", False) else ungraph_(model)


def _calibrated(model) -> bool:
    return all(getattr(b, "_qarvd_attn_scales", None) is not None for b in model.blocks)


def calibrate_attention_fp8_(model: torch.nn.Module, run: Callable[[], object], margin: float = 1.0) -> torch.Tensor:
    """Set the static FP8 scales of every block's self-attention from one calibration ``run()`` (a rollout).

    ``model`` must be accelerated (``accelerate_``) with ``attention=cudnn_fp8``; ``run`` executes with bf16
    attention (SDPA's own choice, cuDNN on Hopper) while the fused blocks record the amax of q (after norm and RoPE), k, v and the attention output;
    each scale is ``margin * amax / 448``. Afterwards new caches are float8 and the blocks attend in FP8 (CUDA graphs
    captured before are dropped). Returns the amax, [layers, 4] (q, k, v, o), on the host.
    """
    from qarvd.deploy.graphs import graph_, ungraph_

    blocks = list(model.blocks)
    plans = [getattr(b, "_qarvd_plan", None) for b in blocks]
    if any(p is None for p in plans) or not plans[0].be.fp8_attention_on:
        raise ValueError("calibrate_attention_fp8_ needs a model accelerated with attention=cudnn_fp8 and a fused "
                         "plan for every block")
    be = plans[0].be
    graphs = getattr(be, "graphs", False)
    ungraph_(model)
    device = next(model.parameters()).device
    for b in blocks:
        b._qarvd_attn_amax = torch.zeros(4, device=device)
        b._qarvd_attn_scales = None
    model.kv_cache_dtype = None
    be.attention = "auto"  # bf16 SDPA, PyTorch's choice (cuDNN on Hopper); "auto" also runs on the CPU
    try:
        with torch.no_grad():
            run()
    finally:
        be.attention = "cudnn_fp8"
    amax = torch.stack([b._qarvd_attn_amax for b in blocks])
    for b in blocks:
        b._qarvd_attn_amax = None
    set_attention_fp8_scales_(model, amax.clamp_min(1e-12) * (margin / FP8_MAX))
    if graphs:
        graph_(model)
    return amax.cpu()


def attention_fp8_scales(model: torch.nn.Module):
    """The blocks' FP8 attention steps [layers, 4] (q, k, v, o), or None when they are not calibrated."""
    return torch.stack([b._qarvd_attn_scales for b in model.blocks]) if _calibrated(model) else None


def set_attention_fp8_scales_(model: torch.nn.Module, scales: torch.Tensor) -> torch.nn.Module:
    """Give every block its static FP8 attention steps (``scales`` [layers, 4]: q, k, v, o; from
    :func:`calibrate_attention_fp8_` or a saved model); new caches are float8 once the model attends in FP8."""
    blocks = list(model.blocks)
    if tuple(scales.shape) != (len(blocks), 4):
        raise ValueError(f"FP8 attention scales must be [{len(blocks)}, 4] (layers x q/k/v/o), got {tuple(scales.shape)}")
    device = next(model.parameters()).device
    for b, sc in zip(blocks, scales.float().to(device)):
        sc = sc.contiguous()
        b._qarvd_attn_scales, b._qarvd_attn_scalars = sc, fp8_scalars(sc).contiguous()
    plan = getattr(blocks[0], "_qarvd_plan", None)
    if plan is not None and plan.be.fp8_attention_on:  # otherwise accelerate_ with cudnn_fp8 switches the caches
        model.kv_cache_dtype = torch.float8_e4m3fn
    return model


def restore_(model: torch.nn.Module) -> torch.nn.Module:
    """Undo :func:`accelerate_` (blocks run the eager forward again, without graphs)."""
    from qarvd.deploy.graphs import ungraph_

    ungraph_(model)
    model.kv_cache_dtype = None
    for block in model.blocks:
        if isinstance(block, FastWanAttentionBlock):
            block.__class__ = WanAttentionBlock
            block._qarvd_plan = None
    return model
