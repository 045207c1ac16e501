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
(the o projection's producer) dequantizes it. The scales come from :func:`calibrate_attention_` (amax of q, k, v
and the attention output over a rollout with bf16 attention); the K/V cache is then float8 (half the memory).
With ``"int8_sage"`` (kernels/attn_int8.py) the glue kernel writes the keys as int8 codes of k minus the layer's
calibrated mean key (:func:`calibrate_attention_`), one scale per (token, head) next to them, and the values in bf16;
the kernel quantizes q per row, multiplies Q.K^T in int8 and P.V in bf16, and hands a bf16 output to o.

Forwards without a cache or with an explicit mask (training-style full sequences) run the eager block unchanged.
"""
from __future__ import annotations

from typing import Callable

import torch
import torch.nn.functional as F

from kernels.attn_cudnn import FP8_MAX, fp8_scalars
from kernels.attn_int8 import quantize_rows
from kernels.glue import fp8_code
from kernels.layout import stack_acts
from qarvd.deploy.modules import Fp8Linear, RealQuantLinear, head_layout, in_split_order, rows_permuted, stack_group
from qarvd.models.context import current_forward
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
        self.a_each = [m.stacked_act() for m in self.qkv_mods]  # q, k, v one by one (no grouped launch)
        f2 = self.f2.act()
        if backend.dual_layout == "scatter":
            self.a = {name: a.scattered() for name, a in self.a.items()}
            self.a_each = [a.scattered() for a in self.a_each]
            self.a_qkv = None if self.a_qkv is None else self.a_qkv.scattered()
        elif f2.n_out and not f2.src_identity:  # ffn.0's rows in ffn.2's split order: its epilogue writes two runs
            self.g["f0"] = rows_permuted(self.g["f0"], f2.src)
            self.a["f2"] = stack_acts([in_split_order(f2)])
        if backend.dual_layout == "head":  # the producers that gather gather only the outlier columns
            if self.g_qkv is not None:
                self.g_qkv, self.a_qkv = self._head(self.g_qkv, self.qkv_mods, self.a_qkv)
            for name in ("o", "cq", "co", "f0"):
                self.g[name], self.a[name] = self._head(self.g[name], [getattr(self, name)], self.a[name])

    @staticmethod
    def _head(group, mods, acts):
        got = head_layout(group, [m.act() for m in mods])
        return (group, acts) if got is None else (got[0], stack_acts(got[1]))

    def _q(self, x, name, **kw):
        return self.be.norm_quant(x, self.a[name], rowsum=self.g[name].has_wzp, **kw)

    def qkv(self, x2, mod, s):
        if self.g_qkv is None:  # q, k, v quantized and multiplied one by one
            outs = []
            for m, acts in zip(self.qkv_mods, self.a_each):
                a, rs = self.be.norm_quant(x2, acts, ln=self.ln1, mod=(mod, 0, 1, s), rowsum=m.group().has_wzp)
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

    def forward(self, x, e, context, cos, sin, kv, token_start, frames, mask):
        plan = getattr(self, "_qarvd_plan", None)
        if plan is None or kv is None or mask is not None:
            return super().forward(x, e, context, cos, sin, kv, token_start, frames, mask)
        be = plan.be
        b, n, d = x.shape
        s, m = n // frames, b * n
        sa, ca = self.self_attn, self.cross_attn
        heads, hd = sa.num_heads, sa.head_dim
        end = token_start + n
        if end > kv.max_tokens:
            raise ValueError(f"KV cache holds {kv.max_tokens} tokens; this forward needs {end}")
        mod = (self.modulation.unsqueeze(1) + e.float()).reshape(b * frames, 6, d)
        x2 = x.reshape(m, d).contiguous()  # block 0 gets the transposed patch embedding
        be.check(x2)
        qkv = plan.qkv(x2, mod, s)
        quant = be.quantized_attention
        scales, key_mean = getattr(self, "_qarvd_attn_scales", None), getattr(self, "_qarvd_key_mean", None)
        if quant == "fp8" and not be.smooth_keys:
            key_mean = None  # plain FP8 keys (the mean, if any, came from another calibration)
        cache_k, cache_v, kind = kv.k, kv.v, quant
        codes_from_early = False  # this chunk's K/V go to the 16-bit cache, then their codes to the quantized one
        if quant and be.attention_chunks is not None:  # chunk-adaptive precision
            info = current_forward()
            bf16_here = not _chunk_runs(be.attention_chunks)
            bf16_later = info is not None and any(c not in be.attention_chunks
                                                  for c in range(info.chunk + 1, info.num_chunks))
            if bf16_here:
                quant = None
            if kv.early is not None and (bf16_here or bf16_later):
                cache_k, cache_v = kv.early
                codes_from_early = True  # (without early K/V the attention is not calibrated: 16-bit caches)
        if quant and not _ready(self, kv, quant, be.smooth_keys):
            need = {"fp8": "per-layer scales" + (" and mean keys" if be.smooth_keys else "") + " and a float8 KV cache",
                    "int8": "per-layer mean keys and an int8 key cache"}[quant]
            raise RuntimeError(f"attention={be.attention} needs its calibration ({need}): run "
                               "qarvd.deploy.calibrate_attention_(model, run) after accelerate_")
        q = be.qk_norm_rope(qkv, (0, d, 2 * d), d, n, wq=_norm_weight(sa.norm_q), wk=_norm_weight(sa.norm_k),
                            eps=getattr(sa.norm_q, "eps", 0.0), cos=cos, sin=sin, cache_k=cache_k, cache_v=cache_v,
                            start=token_start, fp8_scales=scales if quant == "fp8" and not codes_from_early else None,
                            key_int8=(key_mean, kv.k_scale) if quant == "int8" and not codes_from_early else None,
                            fp8_key_mean=key_mean if quant == "fp8" and not codes_from_early else None)
        if codes_from_early:
            _quantize_early(kv, token_start, end, kind, scales, key_mean, heads, hd)
            if quant == "fp8":  # a quantized chunk followed by a bf16 one: q coded from its 16-bit value
                q = fp8_code(q, scales[0].float())
        q = q.view(b, n, heads, hd)
        if quant == "fp8":
            y = be.fp8_attention(q, kv.k[:, :end], kv.v[:, :end], self._qarvd_attn_scalars, scales)
            x2 = plan.self_out(y.reshape(m, d), x2, mod, s, in_scale=scales[3:4])
        else:
            if quant == "int8":
                y = be.int8_attention(q, kv.k, kv.k_scale, kv.v, end)
            elif be.attention == "sage2" and _chunk_runs(be.attention_chunks):  # over the bf16 cache: no codes
                y = be.sage_attention(q, cache_k[:, :end], cache_v[:, :end])
            else:
                y = _attend(be, q, cache_k[:, :end], cache_v[:, :end])
            seen = getattr(self, "_qarvd_attn_stats", None)
            if seen is not None:  # calibration (bf16 attention): amax of q, this chunk's k and v, the output; k sums
                k_new, v_new = cache_k[:, token_start:end], cache_v[:, token_start:end].float()
                k_new = k_new.float().flatten(2)
                new = torch.stack([q.abs().amax(), k_new.abs().amax(), v_new.abs().amax(), y.abs().amax()]).float()
                torch.maximum(seen[:4], new, out=seen[:4])
                sums, count, kmax, kmin = seen[4:].split([d, 1, d, d])
                sums += k_new.sum((0, 1))
                count += b * n
                torch.maximum(kmax, k_new.amax((0, 1)), out=kmax)
                torch.minimum(kmin, k_new.amin((0, 1)), out=kmin)
            x2 = plan.self_out(y.reshape(m, d), x2, mod, s)
        qc = be.qk_norm_rope(plan.cross_q(x2), (0,), d, n, wq=_norm_weight(ca.norm_q), eps=getattr(ca.norm_q, "eps", 0.0))
        if kv.cross is None:
            kv.cross = ca.context_kv(context)
        kc, vc = kv.cross
        y = _attend(be, qc.view(b, n, heads, hd), kc, vc)
        x2 = plan.cross_out(y.reshape(m, d), x2)
        return plan.ffn(x2, mod, s).view(b, n, d)


def _chunk_runs(chunks) -> bool:
    """Whether this forward's chunk runs the chosen attention (``chunks`` None: every chunk)."""
    if chunks is None:
        return True
    info = current_forward()
    return info is not None and info.chunk in chunks


def _attend(be, q, k, v):
    """bf16 attention of [B, L, H, D] tensors: FlashAttention-4 with attention=fa4, else SDPA under the backend's
    kernel choice."""
    if be.attention == "fa4":
        return be.fa4_attention(q, k, v)
    with be.sdpa():
        return attention(q, k, v)


def _quantize_early(kv, start: int, end: int, quant: str, scales, key_mean, heads: int, head_dim: int) -> None:
    """In a chunk-adaptive rollout, a chunk that runs bf16 attention, or precedes one that does, writes its 16-bit
    K/V (``kv.early``); its tokens ``[start, end)`` are then also written into the quantized cache, as the quantized
    attention's glue would have written them (float8 codes of K/V with the static steps; int8 codes of k - mean key
    with one scale per (token, head), values as they are). So every chunk finds all earlier tokens in its format.

    Each forward rewrites only its own chunk's slot (the refresh pass leaves the clean values), at fixed shapes and
    addresses: CUDA graphs capture it, and no chunk converts the cache of others."""
    k, v = (t[:, start:end] for t in kv.early)
    if quant == "fp8":  # key_mean: smoothed FP8 keys (None: plain)
        k = k if key_mean is None else k.float() - key_mean.view(heads, head_dim)
        kv.k[:, start:end].copy_(fp8_code(k, scales[1].float()))
        kv.v[:, start:end].copy_(fp8_code(v, scales[2].float()))
        return
    codes, scale = quantize_rows(k.float() - key_mean.view(heads, head_dim))
    kv.k[:, start:end].copy_(codes)
    kv.k_scale[:, :, start:end].copy_(scale[..., 0].transpose(1, 2))
    kv.v[:, start:end].copy_(v)


def _ready(block, kv, quant: str, smooth_keys: bool) -> bool:
    """The block's quantized attention is calibrated and the cache has the matching key format."""
    if quant == "fp8":
        return (getattr(block, "_qarvd_attn_scales", None) is not None and kv.k.dtype == torch.float8_e4m3fn
                and (not smooth_keys or getattr(block, "_qarvd_key_mean", None) is not None))
    return getattr(block, "_qarvd_key_mean", None) is not None and kv.k.dtype == torch.int8


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
    quant = backend.quantized_attention
    if (quant or backend.attention in ("fa4", "sage2")) and not planned:
        raise ValueError(f"attention={backend.attention} runs inside the fused block forward: it needs fused=true and "
                         f"a plan for every block (no low-rank branches)")
    _set_cache_dtypes(model, quant, backend.attention_chunks)
    return graph_(model) if getattr(backend, "graphs", False) else ungraph_(model)


_STATE = {"fp8": "_qarvd_attn_scales", "int8": "_qarvd_key_mean"}  # block attribute of each quantized attention


def _set_cache_dtypes(model, quant, chunks=None) -> None:
    """New caches hold float8 K/V (fp8) or int8 keys (int8) once the attention is calibrated; a rollout that runs it
    in some chunks only (``attention_chunks``) also gets 16-bit K/V (``LayerCache.early``)."""
    ready = quant is not None and _calibrated(model, quant)
    model.kv_cache_dtype = torch.float8_e4m3fn if ready and quant == "fp8" else None
    model.key_cache_dtype = torch.int8 if ready and quant == "int8" else None
    model.early_cache_dtype = next(model.parameters()).dtype if ready and chunks is not None else None


def _calibrated(model, quant: str) -> bool:
    return all(getattr(b, _STATE[quant], None) is not None for b in model.blocks)


def calibrate_attention_(model: torch.nn.Module, run: Callable[[], object], margin: float = 1.0) -> torch.Tensor:
    """Calibrate the quantized self-attention of every block from one calibration ``run()`` (a rollout).

    ``model`` must be accelerated (``accelerate_``) with a quantized attention (``cudnn_fp8`` or ``int8_sage``);
    ``run`` executes with bf16 attention (SDPA's own choice, cuDNN on Hopper) while the fused blocks record the amax
    of q (after norm and RoPE), k, v and the attention output, and the sum, max and min of the keys per channel.
    ``cudnn_fp8``: static FP8 steps ``margin * amax / 448``, returns the amax [layers, 4] (q, k, v, o); with the
    backend's ``smooth_keys`` also the mean key of each layer, subtracted before the keys are coded (the k amax is
    then that of k - mean). ``int8_sage``: the mean key of each layer (subtracted before the int8 rounding,
    softmax-invariant), returns it [layers, dim]; on the host. Afterwards
    new caches take the quantized format and the blocks attend quantized (CUDA graphs captured before are dropped).
    """
    from qarvd.deploy.graphs import graph_, ungraph_

    blocks = list(model.blocks)
    plans = [getattr(b, "_qarvd_plan", None) for b in blocks]
    if any(p is None for p in plans) or not plans[0].be.quantized_attention:
        raise ValueError("calibrate_attention_ needs a model accelerated with a quantized attention (cudnn_fp8 or "
                         "int8_sage) and a fused plan for every block")
    be = plans[0].be
    name, quant, graphs = be.attention, be.quantized_attention, getattr(be, "graphs", False)
    ungraph_(model)
    device = next(model.parameters()).device
    d = model.cfg.dim
    smooth = quant == "int8" or be.smooth_keys  # the mean key is subtracted before the keys are coded
    for b in blocks:  # amax q/k/v/o, key sum [d], count, key max [d], key min [d]
        b._qarvd_attn_stats = torch.cat([torch.zeros(4 + d + 1, device=device),
                                         torch.full((d,), -torch.inf, device=device),
                                         torch.full((d,), torch.inf, device=device)])
        setattr(b, _STATE[quant], None)
        if smooth:
            b._qarvd_key_mean = None
    model.kv_cache_dtype = model.key_cache_dtype = model.early_cache_dtype = None
    be.attention = "auto"  # bf16 SDPA, PyTorch's choice (cuDNN on Hopper); "auto" also runs on the CPU
    try:
        with torch.no_grad():
            run()
    finally:
        be.attention = name
    stats = torch.stack([b._qarvd_attn_stats for b in blocks])
    for b in blocks:
        b._qarvd_attn_stats = None
    sums, count, kmax, kmin = stats[:, 4:].split([d, 1, d, d], dim=1)
    means = sums / count.clamp_min(1)
    if smooth:
        set_attention_key_means_(model, means)
    if quant == "fp8":
        out = stats[:, :4].clone()
        if smooth:  # the smoothed keys' amax: per channel, the farther of its max and min from the mean
            out[:, 1] = torch.maximum(kmax - means, means - kmin).amax(1)
        set_attention_fp8_scales_(model, out.clamp_min(1e-12) * (margin / FP8_MAX))
    else:
        out = means
    if graphs:
        graph_(model)
    return out.cpu()


def attention_fp8_scales(model: torch.nn.Module):
    """The blocks' FP8 attention steps [layers, 4] (q, k, v, o), or None when they are not calibrated."""
    return torch.stack([b._qarvd_attn_scales for b in model.blocks]) if _calibrated(model, "fp8") else None


def attention_key_means(model: torch.nn.Module):
    """The blocks' calibrated mean keys [layers, dim] of INT8 attention, or None when they are not calibrated."""
    return torch.stack([b._qarvd_key_mean for b in model.blocks]) if _calibrated(model, "int8") else None


def _quantized_by(model, quant: str) -> bool:
    plan = getattr(model.blocks[0], "_qarvd_plan", None)
    return plan is not None and plan.be.quantized_attention == quant


def set_attention_fp8_scales_(model: torch.nn.Module, scales: torch.Tensor) -> torch.nn.Module:
    """Give every block its static FP8 attention steps (``scales`` [layers, 4]: q, k, v, o; from
    :func:`calibrate_attention_` or a saved model); new caches are float8 once the model attends in FP8."""
    blocks = list(model.blocks)
    if tuple(scales.shape) != (len(blocks), 4):
        raise ValueError(f"FP8 attention scales must be [{len(blocks)}, 4] (layers x q/k/v/o), got {tuple(scales.shape)}")
    device = next(model.parameters()).device
    for b, sc in zip(blocks, scales.float().to(device)):
        sc = sc.contiguous()
        b._qarvd_attn_scales, b._qarvd_attn_scalars = sc, fp8_scalars(sc).contiguous()
    if _quantized_by(model, "fp8"):  # otherwise accelerate_ with cudnn_fp8 switches the caches
        _set_cache_dtypes(model, "fp8", model.blocks[0]._qarvd_plan.be.attention_chunks)
    return model


def set_attention_key_means_(model: torch.nn.Module, means: torch.Tensor) -> torch.nn.Module:
    """Give every block its calibrated mean key (``means`` [layers, dim] float32; from :func:`calibrate_attention_`
    or a saved model); new caches hold int8 keys once the model attends in INT8."""
    blocks = list(model.blocks)
    if tuple(means.shape) != (len(blocks), model.cfg.dim):
        raise ValueError(f"INT8 attention key means must be [{len(blocks)}, {model.cfg.dim}] (layers x dim), got "
                         f"{tuple(means.shape)}")
    device = next(model.parameters()).device
    for b, km in zip(blocks, means.float().to(device)):
        b._qarvd_key_mean = km.contiguous()
    if _quantized_by(model, "int8"):  # otherwise accelerate_ with int8_sage switches the caches
        _set_cache_dtypes(model, "int8", model.blocks[0]._qarvd_plan.be.attention_chunks)
    return model


def restore_(model: torch.nn.Module) -> torch.nn.Module:
    """Undo :func:`accelerate_` (blocks run the eager forward again, without graphs)."""
    from qarvd.deploy.graphs import ungraph_

    ungraph_(model)
    model.kv_cache_dtype = model.key_cache_dtype = model.early_cache_dtype = None
    for block in model.blocks:
        if isinstance(block, FastWanAttentionBlock):
            block.__class__ = WanAttentionBlock
            block._qarvd_plan = None
    return model
