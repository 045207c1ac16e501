"""CUDA graphs for the cached DiT forwards of a rollout: each forward shape captured once, then replayed.

Why: the fused W8A8 rollout is bound by the host at batch 1 (80-160 us of Python per ``qgemm()`` call, about ten
per block: kernels/NOTES.md, run4). A replayed graph launches the whole forward with one call, so that cost is
gone for every format; bf16 gets the same treatment, so speedups stay measured against an equally fast baseline.
Measured on the H100 (benchmarks/results/h100_run5.json): W8A8 2.91 -> 1.90 s at batch 1, 4.04 -> 3.55 s at batch 2;
bf16 fused 2.31 -> 2.09 s and 4.04 -> 3.93 s; the latents are bit-identical.

``graph_(model)`` switches the model's class to :class:`GraphedCausalWan` (a subclass: parameters, state dict and
module names are unchanged; :func:`ungraph_` undoes it). A graph reads and writes fixed addresses, hence:

- ``new_cache(batch, frames, h, w)`` returns a cache whose K/V storage persists per (batch, tokens) and is
  re-zeroed per call (the rollout asks for a new cache per video); the cache handed out before for that shape
  becomes stale and refuses further forwards: one video per shape at a time;
- the per-video text state (embedded context, cross-attention K/V of every block) is computed eagerly on the
  video's first forward and copied into persistent buffers;
- forward inputs are copied into static buffers; the caller gets a clone of the graph's output.

A signature (latent shape, dtype, frame offset, context length) runs eagerly on its first call (Triton
compilation, cuDNN plans, RoPE tables), is captured on its second and replayed from then on. The timestep is an
input tensor, so the denoising steps and the refresh pass of a chunk share one graph: a 7-chunk rollout captures
7 graphs per batch size, all in one memory pool. Forwards without such a cache, with explicit frame positions or
with a mask run the eager model. Without CUDA the static-buffer path runs eagerly (what the CPU tests check).
"""
from __future__ import annotations

from typing import Optional

import torch

from qarvd.models.wan import CausalWanModel, LayerCache, RolloutCache


class StaticCache(RolloutCache):
    """A view of a :class:`_Store`'s persistent K/V storage for one video (what ``new_cache`` returns)."""

    def __init__(self, store: "_Store") -> None:  # no super().__init__: the storage is the store's
        self.store = store
        self.layers = [LayerCache(l.k, l.v, l.k_scale, l.early) for l in store.layers]  # fresh cross-attention slots
        self.max_tokens = store.max_tokens
        self.context = None


class _Store:
    """Persistent state of one (batch, tokens) shape: K/V storage, text buffers, graphs and their memory pool."""

    def __init__(self, model: CausalWanModel, batch: int, max_tokens: int) -> None:
        self.layers = RolloutCache(model.cfg, batch, max_tokens, *model.cache_dtype_device()).layers
        self.max_tokens = max_tokens
        self.text: dict = {}  # context length -> (embedded context, [cross K], [cross V])
        self.graphs: dict = {}  # signature -> None (seen once, eager) | _Graph
        self.pool = torch.cuda.graph_pool_handle() if self.layers[0].k.is_cuda else None
        self.live: Optional[StaticCache] = None


class _Graph:
    """One captured forward: static inputs, the graph and its output (or, without CUDA, the eager call)."""

    def __init__(self, fn, x: torch.Tensor, t: torch.Tensor, pool, keep: tuple) -> None:
        self.x, self.t = x.clone(memory_format=torch.contiguous_format), t.clone()
        self.keep = keep  # tensors the graph reads that nothing else may keep alive (RoPE tables)
        self.fn = fn
        self.graph = None
        if self.x.is_cuda:
            self.graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(self.graph, pool=pool):
                self.out = fn(self.x, self.t)

    def __call__(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        self.x.copy_(x)
        self.t.copy_(t)
        if self.graph is None:
            return self.fn(self.x, self.t)
        self.graph.replay()
        return self.out.clone()


def _dtype_device(model) -> tuple:
    p = next(model.parameters())
    return p.dtype, p.device


class GraphedCausalWan(CausalWanModel):
    """CausalWanModel whose cached rollout forwards replay CUDA graphs (see the module docstring)."""

    def new_cache(self, batch: int, max_frames: int, height: int, width: int) -> RolloutCache:
        tokens = max_frames * self.tokens_per_frame(height, width)
        key = (batch, tokens)
        store = self._qarvd_stores.get(key)
        if store is None:
            store = self._qarvd_stores[key] = _Store(self, batch, tokens)
        else:
            for layer in store.layers:
                for t in (layer.k, layer.v, layer.k_scale, *(layer.early or ())):
                    if t is not None:
                        t.zero_()
        store.live = StaticCache(store)
        return store.live

    def _text_state(self, cache: StaticCache, context: torch.Tensor) -> None:
        """Embedded context and cross K/V of this video, written into the store's persistent buffers."""
        ctx = self.embed_text(context.to(_dtype_device(self)[0]))
        kv = [block.cross_attn.context_kv(ctx) for block in self.blocks]
        bufs = cache.store.text.get(ctx.shape[1])
        if bufs is None:
            bufs = cache.store.text[ctx.shape[1]] = (ctx, [k for k, _ in kv], [v for _, v in kv])
        else:
            bufs[0].copy_(ctx)
            for buf, (k, v) in zip(zip(bufs[1], bufs[2]), kv):
                buf[0].copy_(k)
                buf[1].copy_(v)
        cache.context = bufs[0]
        for layer, k, v in zip(cache.layers, bufs[1], bufs[2]):
            layer.cross = (k, v)

    def forward(self, x, t, context, cache=None, frame_offset: int = 0, frame_pos=None, attn_mask=None):
        eager = super().forward
        if not isinstance(cache, StaticCache) or frame_pos is not None or attn_mask is not None:
            return eager(x, t, context, cache=cache, frame_offset=frame_offset, frame_pos=frame_pos,
                         attn_mask=attn_mask)
        store = cache.store
        if store.live is not cache:
            raise RuntimeError("stale KV cache: new_cache() was called again for this batch and size; a graphed "
                               "model runs one video per shape at a time")
        if cache.context is None:
            self._text_state(cache, context)
        sig = (tuple(x.shape), x.dtype, t.dtype, int(frame_offset), cache.context.shape[1])
        if sig not in store.graphs:
            store.graphs[sig] = None
            return eager(x, t, context, cache=cache, frame_offset=frame_offset)
        g = store.graphs[sig]
        if g is None:
            _, _, frames, height, width = x.shape
            _, ph, pw = self.cfg.patch_size
            rope = self.rope_tables(torch.arange(frame_offset, frame_offset + frames), height // ph, width // pw,
                                    x.device)

            def fn(xs, ts):
                return eager(xs, ts, context, cache=cache_of(store), frame_offset=frame_offset)

            with torch.no_grad():
                g = store.graphs[sig] = _Graph(fn, x, t, store.pool, keep=rope)
        with torch.no_grad():
            return g(x, t)


def cache_of(store: _Store) -> StaticCache:
    """The store's current cache: a graph captured with one video's cache object serves every later video."""
    return store.live


def graph_(model: CausalWanModel) -> CausalWanModel:
    """Make ``model`` replay CUDA graphs for its cached rollout forwards (in place); returns the model.

    Refuses fake-quant models and models with forward hooks: their modules branch on the forward context (chunk,
    timestep) or record on the host, which a replayed graph would freeze at the captured call. Calling it again
    drops the graphs captured so far (call it after anything that changes the forward, e.g. another backend).
    """
    from qarvd.quant.linear import QuantLinear

    for name, mod in model.named_modules():
        if isinstance(mod, QuantLinear) or mod._forward_hooks or mod._forward_pre_hooks:
            raise ValueError(f"graph_ needs a model without fake-quant modules or hooks; {name or 'model'} has "
                             f"{'a QuantLinear' if isinstance(mod, QuantLinear) else 'forward hooks'}")
    if not isinstance(model, CausalWanModel) or type(model) not in (CausalWanModel, GraphedCausalWan):
        raise TypeError(f"graph_ needs a CausalWanModel, got {type(model).__name__}")
    model.__class__ = GraphedCausalWan
    model._qarvd_stores = {}  # graphs captured before (e.g. with another backend's plans) are dropped
    return model


def ungraph_(model: torch.nn.Module) -> torch.nn.Module:
    """Undo :func:`graph_`: the eager forward again; persistent caches and graphs are freed."""
    if isinstance(model, GraphedCausalWan):
        model.__class__ = CausalWanModel
        del model._qarvd_stores
    return model
