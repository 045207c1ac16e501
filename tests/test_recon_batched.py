"""Lock-step reconstruction (qarvd.quant.recon_batched) gives the codes and scales of one layer at a time, bit for bit."""
from __future__ import annotations

import pytest
import torch

from qarvd.quant.api import QuantConfig, calibrate_activations_, quantize_
from qarvd.quant.artifact import layer_state
from qarvd.quant.capture import CaptureBudget, run_calibration
from qarvd.quant.linear import quant_layers
from qarvd.quant.recon_batched import BatchOptions
from qarvd.quant.reconstruct import reconstruct_model
from quant_helpers import clone, outlier_cfg, prompts, recon_cfg, tiny_pipeline


def _prepared(*overrides):
    """Q-ARVD W4A8 before reconstruction: dual-scale layers (forced: random weights rarely have outliers),
    non-uniform chunk weights, percentile weight steps and histogram activation steps."""
    pipe, cfg = tiny_pipeline(*overrides)
    ps = prompts(cfg, "calib", 1)
    quantize_(pipe.model, QuantConfig(w_bits=4, a_bits=8, dual_scale=outlier_cfg(tau=0.5, outlier_ratio=1.0, multiple=8)))
    weights = torch.linspace(2.0, 0.5, pipe.rollout_cfg.num_chunks)
    for l in quant_layers(pipe.model).values():
        l.chunk_weights = weights
    calibrate_activations_(pipe.model, lambda: run_calibration(pipe, ps, [0], 8), bins=1024)
    return pipe, ps


def _reconstructed(pipe, ps, batch, **recon):
    pipe = clone(pipe)
    stats = reconstruct_model(pipe, ps, [0], recon_cfg(batch=batch, **recon), CaptureBudget())
    return {f"{n}.{k}": v for n, l in quant_layers(pipe.model).items() for k, v in layer_state(l).items()}, stats["units"]


@pytest.mark.parametrize("model,recon", [([], dict(iters=20, calls_per_step=4)),
                                         pytest.param(["model=tiny"], dict(iters=5, calls_per_step=2), marks=pytest.mark.slow)],
                         ids=["debug_tiny", "model_tiny"])
def test_lock_step_groups_equal_one_at_a_time_bitwise(model, recon):
    pipe, ps = _prepared(*model)
    off = BatchOptions(enabled=False, gpu_gb=40, tf32=False, compile=False)
    one, one_stats = _reconstructed(pipe, ps, off, **recon)
    rc, (_, h, w) = pipe.rollout_cfg, pipe.latent_shape
    square = len(rc.forward_infos()) * rc.frames_per_chunk * pipe.model.tokens_per_frame(h, w) * 2 * pipe.model.cfg.dim * 4
    budget = 3 * square / 2**30  # bytes of three dim x dim layers' inputs and targets: a few layers per group
    small, small_stats = _reconstructed(pipe, ps, BatchOptions(enabled=True, gpu_gb=budget, tf32=False, compile=False), **recon)
    whole, whole_stats = _reconstructed(pipe, ps, BatchOptions(enabled=True, gpu_gb=40, tf32=False, compile=False), **recon)
    assert any(k.endswith("g1.w_int") for k in one), "no dual-scale layer: the test would not cover them"
    assert set(one) == set(small) == set(whole)
    for key in one:  # integer codes, weight and activation scales, zero points, column groups: every artifact tensor
        assert torch.equal(one[key], small[key]) and torch.equal(one[key], whole[key]), key
    sizes = [s["group_size"] for s in small_stats.values()]
    assert 1 < max(sizes) < len(sizes) and {s["group_size"] for s in whole_stats.values()} == {len(sizes)}, sizes
    for u, s in one_stats.items():
        for k in ("loss_nearest", "loss_final", "soft_loss_first", "soft_loss_last"):
            assert small_stats[u][k] == s[k], (u, k)
    assert all(not s["tf32"] and not s["compiled"] for s in small_stats.values())  # GPU-only switches


def test_batch_options_fail_early_naming_the_key():
    with pytest.raises(ValueError, match="calib.batch.enabled=true"):
        BatchOptions(enabled=False, gpu_gb=40, tf32=True, compile=False)
    with pytest.raises(ValueError, match="calib.batch.gpu_gb"):
        BatchOptions(enabled=True, gpu_gb=0, tf32=False, compile=False)
    with pytest.raises(ValueError, match="calib.granularity=layer"):
        recon_cfg(granularity="block", batch=BatchOptions(enabled=True, gpu_gb=1, tf32=False, compile=False))
