"""Streamed capture: tags, call limit, token subsampling, spill to disk, NaN stops naming layer and chunk."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from qarvd.models.context import current_forward
from qarvd.quant.api import QuantConfig, quantize_
from qarvd.quant.capture import CaptureBudget, capture, channel_absmax, plan_passes
from qarvd.quant.linear import NonFiniteActivationError, quant_layers
from quant_helpers import prompts, tiny_pipeline


@pytest.fixture(scope="module")
def quantized():
    pipe, cfg = tiny_pipeline()
    quantize_(pipe.model, QuantConfig(w_bits=4, a_bits=8))
    return pipe, prompts(cfg, "calib", 2)


def _capture(pipe, ps, names, budget, **kw):
    layers = quant_layers(pipe.model)
    return capture(pipe, ps, [0, 1][: len(ps)], {n: layers[n] for n in names}, budget, **kw)


def test_samples_are_tagged_with_chunk_step_and_timestep(quantized):
    pipe, ps = quantized
    from qarvd.quant.capture import LinearRecorder

    s = _capture(pipe, ps, ["blocks.1.ffn.2", "blocks.0.cross_attn.k"], CaptureBudget(), recorder=LinearRecorder(outputs=True))
    try:
        infos = pipe.rollout_cfg.forward_infos()
        ffn = s.stores["blocks.1.ffn.2"]
        assert len(ffn) == 2 * len(infos)  # 2 prompts x (2 chunks x (2 steps + refresh))
        assert [(i.chunk, i.step, i.timestep, i.refresh) for i in ffn.infos()[::2]] == \
            [(i.chunk, i.step, i.timestep, i.refresh) for i in infos]
        assert [smp.prompt for smp in ffn.samples[:2]] == [0, 1]
        t = ffn.tensors(3)
        layer = quant_layers(pipe.model)["blocks.1.ffn.2"]
        assert torch.allclose(t["y"], F.linear(t["x"], layer.weight, layer.bias), atol=1e-6)  # FP output
        kv = s.stores["blocks.0.cross_attn.k"]  # cross K/V run once per video (cached): chunk 0, step 0 only
        assert [(i.chunk, i.step) for i in kv.infos()] == [(0, 0), (0, 0)]
    finally:
        s.close()


def test_call_limit_token_subsample_and_spill_round_trip(quantized, tmp_path):
    pipe, ps = quantized
    name = "blocks.0.self_attn.q"
    full = _capture(pipe, ps, [name], CaptureBudget())
    small = _capture(pipe, ps, [name], CaptureBudget(max_calls=5, tokens_per_call=7, ram_bytes=0, spill_dir=str(tmp_path), seed=3))
    try:
        st = small.stores[name]
        assert len(st) == 5 and all(smp.tensors is None and smp.path.exists() for smp in st.samples)
        assert small.ledger.peak == 0 and st.spilled_bytes > 0
        assert all(st.tensors(i)["x"].shape == (7, 64) for i in range(5))
        # every kept row is a row of the same call in the full capture
        by_call = {(smp.prompt, smp.info.chunk, smp.info.step): smp for smp in full.stores[name].samples}
        for i, smp in enumerate(st.samples):
            ref = by_call[(smp.prompt, smp.info.chunk, smp.info.step)].tensors["x"]
            rows = st.tensors(i)["x"]
            assert all(any(torch.equal(r, q) for q in ref) for r in rows)
        paths = [smp.path for smp in st.samples]
    finally:
        small.close()
        full.close()
    assert not any(p.exists() for p in paths)  # close() frees the spill files


def test_blocks_refuse_token_subsampling(quantized):
    pipe, ps = quantized
    from qarvd.quant.capture import BlockRecorder

    with pytest.raises(ValueError, match="tokens_per_call"):
        capture(pipe, ps, [0, 1], {"blocks.0": pipe.model.blocks[0]}, CaptureBudget(tokens_per_call=4), BlockRecorder())


def test_nan_stops_the_capture_naming_layer_and_chunk(quantized):
    pipe, ps = quantized
    layer = quant_layers(pipe.model)["blocks.1.ffn.2"]

    def poison(module, args):
        if current_forward().chunk == 1:
            return (args[0] * float("nan"),)

    h = layer.register_forward_pre_hook(poison)
    try:
        with pytest.raises(NonFiniteActivationError, match=r"blocks\.1\.ffn\.2.*chunk 1"):
            _capture(pipe, ps, ["blocks.1.ffn.2"], CaptureBudget())
        with pytest.raises(NonFiniteActivationError, match=r"blocks\.1\.ffn\.2.*chunk 1"):
            channel_absmax(pipe, ps, [0, 1], {"blocks.1.ffn.2": layer})
    finally:
        h.remove()


def test_plan_passes_packs_under_the_budget():
    assert plan_passes(["a", "b", "c", "d"], {"a": 4, "b": 4, "c": 9, "d": 1}, ram_bytes=8) == [["a", "b"], ["c"], ["d"]]
