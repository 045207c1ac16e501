"""Frame sensitivity (Eq. 3-4): only chunk k's forwards are quantized; weighting strategies alpha_c / mean(alpha)."""
from __future__ import annotations

import pytest
import torch

from qarvd.models.context import current_forward
from qarvd.quant.api import QuantConfig, calibrate_activations_, quantize_
from qarvd.quant.capture import run_calibration
from qarvd.quant.linear import chunk_gate, quant_layers, quant_state
from qarvd.models.rollout import RolloutConfig
from qarvd.quant.sensitivity import (call_weights, calls_per_chunk, chunk_weights, frame_sensitivity, latent_mse_by_chunk,
                                     load_sensitivity)
from quant_helpers import prompts, tiny_pipeline


@pytest.fixture(scope="module")
def calibrated():
    pipe, cfg = tiny_pipeline("model.rollout.num_frames=6")  # 3 chunks
    ps = prompts(cfg, "calib", 2)
    quantize_(pipe.model, QuantConfig(w_bits=4, a_bits=6))
    calibrate_activations_(pipe.model, lambda: run_calibration(pipe, ps[:1], [0], 8), bins=1024)
    return pipe, ps


def test_chunk_only_quantization_touches_only_chunk_k(calibrated):
    pipe, ps = calibrated
    layers = quant_layers(pipe.model)
    seen = []
    handles = [l.register_forward_hook(lambda m, a, o: seen.append((current_forward(), m.quant_active(current_forward()))))
               for l in layers.values()]
    try:
        with quant_state(pipe.model, weights=False, acts=False):
            fp = pipe.generate_latents(ps, [0, 1])
        seen.clear()
        with chunk_gate(pipe.model, [1]):
            q = pipe.generate_latents(ps, [0, 1])
    finally:
        for h in handles:
            h.remove()
    active = {(i.chunk, i.step, i.refresh) for i, on in seen if on}
    assert active == {(1, 0, False), (1, 1, False), (1, 2, True)}  # chunk 1's 2 denoising steps + its refresh
    assert all(not on for i, on in seen if i.chunk != 1)
    assert torch.equal(q[:, 0:2], fp[:, 0:2])  # chunk 0 is generated before any quantized forward
    assert not torch.equal(q[:, 2:4], fp[:, 2:4]) and not torch.equal(q[:, 4:6], fp[:, 4:6])  # chunk 2 sees the cache


def test_alpha_is_a_normalised_vector_per_chunk(calibrated, tmp_path):
    pipe, ps = calibrated
    res = frame_sensitivity(pipe, ps, [0, 1], progress=False)
    assert len(res["frame_alpha"]) == 3 and sum(res["frame_alpha"]) == pytest.approx(1.0)
    assert res["frame_alpha"] == pytest.approx([m / sum(res["mse"]) for m in res["mse"]])
    assert all(m > 0 for m in res["mse"])
    import json

    (tmp_path / "s.json").write_text(json.dumps(res))
    assert load_sensitivity(tmp_path / "s.json") == pytest.approx(res["frame_alpha"])
    with pytest.raises(FileNotFoundError, match="sensitivity_file"):
        load_sensitivity(tmp_path / "missing.json")


def test_weighting_strategies_by_hand():
    alpha = [0.5, 0.3, 0.2]
    assert chunk_weights("final_quality", 3, alpha).tolist() == pytest.approx([1.5, 0.9, 0.6])  # alpha / mean
    assert chunk_weights("reverse", 3, alpha).tolist() == pytest.approx([0.6, 0.9, 1.5])
    assert chunk_weights("exp2", 3).tolist() == pytest.approx([12 / 7, 6 / 7, 3 / 7])  # 2^-i / mean
    assert chunk_weights("uniform", 3).tolist() == chunk_weights("none", 3).tolist() == [1.0, 1.0, 1.0]
    with pytest.raises(ValueError, match="chunks"):
        chunk_weights("final_quality", 4, alpha)
    with pytest.raises(ValueError, match="frame weighting"):
        chunk_weights("linear", 3)
    with pytest.raises(ValueError, match="needs a sensitivity"):
        chunk_weights("reverse", 3)


def test_each_chunk_carries_its_alpha_whatever_its_number_of_calls():
    """Eq. 5 draws the chunk uniformly: chunk 0 with 11 calls (10 steps + refresh) and the others with 5 each still
    carry exactly their alpha share of the loss weight when summed over their calls."""
    rollout = RolloutConfig(num_frames=21, frames_per_chunk=3, first_chunk_steps=[1000 - 100 * i for i in range(10)])
    calls = calls_per_chunk(rollout)
    assert calls == [11, 5, 5, 5, 5, 5, 5]
    alpha = [0.5462, 0.1668, 0.1189, 0.0789, 0.0534, 0.0263, 0.0096]  # the published W4A8 self-forcing vector
    for strategy in ("final_quality", "uniform", "exp2"):
        w = call_weights(chunk_weights(strategy, 7, alpha), calls)
        totals = w * torch.tensor(calls, dtype=w.dtype)  # every call of chunk c weighs w[c]
        a = chunk_weights(strategy, 7, alpha).double()
        assert (totals / totals.sum()).tolist() == pytest.approx((a / a.sum()).tolist(), abs=1e-6)
        assert float(totals.sum()) == pytest.approx(sum(calls))  # mean weight per call 1: the loss keeps its scale
    assert call_weights(chunk_weights("uniform", 7), calls)[0] == pytest.approx(41 / 7 / 11)  # 11 of 41 calls share 1/7
    # the release's schedule (5 calls everywhere): the per-call weight is alpha_c / mean(alpha), as before
    same = call_weights(chunk_weights("final_quality", 7, alpha), calls_per_chunk(RolloutConfig()))
    assert same.tolist() == pytest.approx(chunk_weights("final_quality", 7, alpha).tolist())
    with pytest.raises(ValueError, match="call count"):
        call_weights(torch.ones(3), [5, 5])


def test_latent_mse_by_chunk():
    a = torch.zeros(1, 4, 1, 1, 1)
    b = torch.tensor([1.0, 1.0, 2.0, 0.0]).view(1, 4, 1, 1, 1)
    m = latent_mse_by_chunk(b, a, [(0, 2), (2, 2)])
    assert m["per_chunk"] == [1.0, 2.0] and m["overall"] == 1.5
