"""CUDA-graph rollout wrapper (qarvd.deploy.graphs) on the CPU: the static-buffer path runs eagerly there, so these
tests check what the graphs rely on (persistent caches, per-video text state, signatures, stale caches, refusals)
and that the rollout's numbers do not change. The GPU comparison of replayed graphs is in test_kernels_gpu.py."""
from __future__ import annotations

import copy

import pytest
import torch

from qarvd.deploy.backends import TorchRefBackend
from qarvd.deploy import accelerate_, convert_to_real, graph_, ungraph_
from qarvd.deploy.graphs import GraphedCausalWan, StaticCache, _Graph
from qarvd.deploy.packing import minmax_spec
from qarvd.models.rollout import RolloutConfig, rollout
from qarvd.models.wan import CausalWanModel, WanConfig
from qarvd.quant.select import select_linears

ARCH = dict(dim=64, ffn_dim=128, num_heads=2, num_layers=2, freq_dim=16, text_dim=16, text_len=4, in_dim=4,
            out_dim=4, patch_size=(1, 2, 2))
RC = RolloutConfig(num_frames=6, frames_per_chunk=2, denoising_steps=[1000, 500])
SHAPE = (4, 8, 8)


@pytest.fixture(scope="module")
def fp():
    torch.manual_seed(0)
    return CausalWanModel(WanConfig(**ARCH)).eval().requires_grad_(False)


def _real(fp, graphs: bool):
    be = TorchRefBackend(graphs=graphs)
    model = copy.deepcopy(fp)
    specs = {n: minmax_spec(model.get_submodule(n).weight, model.get_submodule(n).bias, act_range=(-4.0, 4.0))
             for n in select_linears(model)}
    return accelerate_(convert_to_real(model, specs, be), be)


def _videos(model, ctxs):
    return [rollout(model, c, list(range(c.shape[0])), SHAPE, RC) for c in ctxs]


def test_graphed_rollout_equals_eager(fp):
    """Two videos per model (the second runs entirely on captured signatures): the latents are bit-identical."""
    g = torch.Generator().manual_seed(1)
    ctxs = [torch.randn(2, 4, 16, generator=g) for _ in range(2)]
    for eager, graphed in ((fp, graph_(copy.deepcopy(fp))), (_real(fp, False), _real(fp, True))):
        assert isinstance(graphed, GraphedCausalWan) and not isinstance(eager, GraphedCausalWan)
        for a, b in zip(_videos(eager, ctxs), _videos(graphed, ctxs)):
            assert torch.equal(a, b)
        (store,) = graphed._qarvd_stores.values()
        # one signature per chunk (steps and the refresh pass share it), each captured after its eager first call
        assert len(store.graphs) == RC.num_chunks
        assert all(isinstance(v, _Graph) for v in store.graphs.values())


def test_new_cache_reuses_storage_and_stales_the_previous_cache(fp):
    model = graph_(copy.deepcopy(fp))
    c1 = model.new_cache(1, 6, 8, 8)
    x, t, ctx = torch.randn(1, 4, 2, 8, 8), torch.full((1, 2), 500.0), torch.randn(1, 4, 16)
    model(x, t, ctx, cache=c1)
    assert c1.layers[0].k.abs().sum() > 0 and c1.layers[0].cross is not None
    c2 = model.new_cache(1, 6, 8, 8)
    assert isinstance(c2, StaticCache) and c2.layers[0].k is c1.layers[0].k and float(c2.layers[0].k.abs().sum()) == 0.0
    assert c2.context is None and c2.layers[0].cross is None
    with pytest.raises(RuntimeError, match="stale KV cache"):
        model(x, t, ctx, cache=c1)
    assert model.new_cache(2, 6, 8, 8).layers[0].k is not c1.layers[0].k  # another batch size: its own storage


def test_uncached_and_masked_forwards_run_eagerly(fp):
    model = graph_(copy.deepcopy(fp))
    x, t, ctx = torch.randn(1, 4, 2, 8, 8), torch.full((1, 2), 500.0), torch.randn(1, 4, 16)
    with torch.no_grad():
        assert torch.equal(model(x, t, ctx), fp(x, t, ctx))
        cache = fp.new_cache(1, 6, 8, 8)  # a plain cache: the eager path
        assert torch.equal(model(x, t, ctx, cache=cache), fp(x, t, ctx, cache=fp.new_cache(1, 6, 8, 8)))
    assert model._qarvd_stores == {}


def test_graph_refuses_fake_quant_and_hooked_models(fp):
    from qarvd.quant.api import QuantConfig, quantize_

    q = copy.deepcopy(fp)
    quantize_(q, QuantConfig(w_bits=8, a_bits=8))
    with pytest.raises(ValueError, match="QuantLinear"):
        graph_(q)
    hooked = copy.deepcopy(fp)
    hooked.blocks[0].register_forward_hook(lambda *a: None)
    with pytest.raises(ValueError, match="hooks"):
        graph_(hooked)


def test_backend_key_switches_graphs_on_and_off(fp):
    model = _real(fp, True)
    assert isinstance(model, GraphedCausalWan)
    accelerate_(model, TorchRefBackend(graphs=False))
    assert type(model) is CausalWanModel and not hasattr(model, "_qarvd_stores")
    assert type(ungraph_(model)) is CausalWanModel
