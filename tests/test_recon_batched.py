"""Lock-step reconstruction (qarvd.quant.recon_batched) gives the codes and scales of one layer at a time, bit for bit."""
from __future__ import annotations

import pytest
import torch

from qarvd.quant.api import QuantConfig, calibrate_activations_, quantize_
from qarvd.quant.artifact import layer_state
from qarvd.quant.capture import CaptureBudget, run_calibration
from qarvd.quant.linear import quant_layers
from qarvd.quant.recon_batched import BatchOptions
from qarvd.quant.reconstruct import ResumeStore, RoundingLearner, reconstruct_model
from quant_helpers import clone, outlier_cfg, prompts, recon_cfg, tiny_pipeline


def _prepared(*overrides, device="cpu"):
    """Q-ARVD W4A8 before reconstruction: dual-scale layers (forced: random weights rarely have outliers),
    non-uniform chunk weights, percentile weight steps and histogram activation steps."""
    pipe, cfg = tiny_pipeline(*overrides)
    pipe.model.to(device)
    ps = prompts(cfg, "calib", 1)
    quantize_(pipe.model, QuantConfig(w_bits=4, a_bits=8, dual_scale=outlier_cfg(tau=0.5, outlier_ratio=1.0, multiple=8)))
    weights = torch.linspace(2.0, 0.5, pipe.rollout_cfg.num_chunks)
    for l in quant_layers(pipe.model).values():
        l.chunk_weights = weights
    calibrate_activations_(pipe.model, lambda: run_calibration(pipe, ps, [0], 8), bins=1024)
    return pipe, ps


def _options(enabled=True, gpu_gb=40.0, fast=False, checkpoint_s=None) -> BatchOptions:
    return BatchOptions(enabled=enabled, gpu_gb=gpu_gb, tf32=fast, compile=fast, checkpoint_s=checkpoint_s)


def _budget(pipe, layers: int) -> float:
    """GB of ``layers`` dim x dim layers' captured inputs and FP targets (fp32): a budget for a few layers per group."""
    rc, (_, h, w) = pipe.rollout_cfg, pipe.latent_shape
    calls, tokens = len(rc.forward_infos()), rc.frames_per_chunk * pipe.model.tokens_per_frame(h, w)
    return layers * calls * tokens * 2 * pipe.model.cfg.dim * 4 / 2**30


def _reconstructed(pipe, ps, batch, resume=None, **recon):
    pipe = clone(pipe)
    stats = reconstruct_model(pipe, ps, [0], recon_cfg(batch=batch, **recon), CaptureBudget(), resume=resume)
    return {f"{n}.{k}": v for n, l in quant_layers(pipe.model).items() for k, v in layer_state(l).items()}, stats["units"]


@pytest.mark.parametrize("model,recon", [([], dict(iters=20, calls_per_step=4)),
                                         pytest.param(["model=tiny"], dict(iters=5, calls_per_step=2), marks=pytest.mark.slow)],
                         ids=["debug_tiny", "model_tiny"])
def test_lock_step_groups_equal_one_at_a_time_bitwise(model, recon):
    pipe, ps = _prepared(*model)
    one, one_stats = _reconstructed(pipe, ps, _options(enabled=False), **recon)
    small, small_stats = _reconstructed(pipe, ps, _options(gpu_gb=_budget(pipe, 3)), **recon)
    whole, whole_stats = _reconstructed(pipe, ps, _options(), **recon)
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


def test_an_interrupted_lock_step_group_resumes_bit_for_bit(tmp_path, monkeypatch):
    pipe, ps = _prepared()
    recon = dict(iters=12, calls_per_step=4)
    whole, whole_stats = _reconstructed(pipe, ps, _options(), **recon)
    resume = ResumeStore(tmp_path, {"test": "lock-step checkpoint"})
    step = RoundingLearner.step

    def killed_at_7(self, it):
        if it == 7:
            raise KeyboardInterrupt  # a time limit or a lost machine, mid-group
        return step(self, it)

    monkeypatch.setattr(RoundingLearner, "step", killed_at_7)
    with pytest.raises(KeyboardInterrupt):
        _reconstructed(pipe, ps, _options(checkpoint_s=0.0), resume=resume, **recon)
    assert len(list(tmp_path.glob("lockstep-*.pt"))) == 1 and not list(tmp_path.glob("*.safetensors"))
    monkeypatch.setattr(RoundingLearner, "step", step)
    resumed, stats = _reconstructed(pipe, ps, _options(checkpoint_s=0.0), resume=resume, **recon)
    assert {s["resumed_at"] for s in stats.values()} == {7} and {s["resumed_at"] for s in whole_stats.values()} == {0}
    for key in whole:
        assert torch.equal(whole[key], resumed[key]), key
    for u, s in whole_stats.items():
        assert (stats[u]["soft_loss_first"], stats[u]["soft_loss_last"]) == (s["soft_loss_first"], s["soft_loss_last"])
    assert not list(tmp_path.glob("lockstep-*.pt"))  # gone once the group's units are saved


def test_batch_options_fail_early_naming_the_key():
    with pytest.raises(ValueError, match="calib.batch.enabled=true"):
        _options(enabled=False, fast=True)
    with pytest.raises(ValueError, match="calib.batch.gpu_gb"):
        _options(gpu_gb=0)
    with pytest.raises(ValueError, match="calib.batch.checkpoint_s"):
        _options(checkpoint_s=-1)
    with pytest.raises(ValueError, match="calib.granularity=layer"):
        recon_cfg(granularity="block", batch=_options(gpu_gb=1))


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_lock_step_on_cuda_bitwise_and_fast_step_grouping_invariant():
    """On the GPU: eager lock-step = one at a time, bit for bit; with tf32 + torch.compile, groups of a few layers =
    one group of all (same compiled step per layer); the fast step's distance to the eager one is printed."""
    pipe, ps = _prepared(device="cuda")
    recon = dict(iters=40, calls_per_step=4)
    one, _ = _reconstructed(pipe, ps, _options(enabled=False), **recon)
    eager, _ = _reconstructed(pipe, ps, _options(gpu_gb=_budget(pipe, 3)), **recon)
    for key in one:
        assert torch.equal(one[key].cpu(), eager[key].cpu()), key
    fast_small, stats = _reconstructed(pipe, ps, _options(gpu_gb=_budget(pipe, 3), fast=True), **recon)
    fast_whole, _ = _reconstructed(pipe, ps, _options(fast=True), **recon)
    assert all(s["tf32"] and s["compiled"] for s in stats.values())
    for key in one:
        assert torch.equal(fast_small[key].cpu(), fast_whole[key].cpu()), key
    codes = [k for k in one if k.endswith("w_int")]
    same = sum(int((one[k] == fast_whole[k]).sum()) for k in codes) / sum(one[k].numel() for k in codes)
    scale = max(float(((one[k] - fast_whole[k]).abs() / one[k].abs()).max()) for k in one if k.endswith("a_scale"))
    print(f"fast step vs eager fp32: {same:.6f} of the codes equal, activation scales within {scale:.2e} relative")
    assert same > 0.99


def test_bf16_step_is_another_computation_that_learns_as_well():
    """calib.batch.bf16: the learning step's matmuls in bfloat16 (autocast; the CPU runs it too). Its codes are not
    fp32's, and every layer must still improve on nearest rounding about as much as in fp32."""
    pipe, ps = _prepared()
    fp32, fp32_stats = _reconstructed(pipe, ps, _options(), iters=20, calls_per_step=4)
    opts = BatchOptions(enabled=True, gpu_gb=40.0, tf32=False, compile=False, checkpoint_s=None, bf16=True)
    bf16, bf16_stats = _reconstructed(pipe, ps, opts, iters=20, calls_per_step=4)
    assert all(s["bf16"] for s in bf16_stats.values()) and not any(s["bf16"] for s in fp32_stats.values())
    assert any(not torch.equal(fp32[k], bf16[k]) for k in fp32)

    def gain(stats):
        return sum(s["loss_final"] / s["loss_nearest"] for s in stats.values()) / len(stats)

    print("final/nearest fp32", gain(fp32_stats), "bf16", gain(bf16_stats))
    assert gain(fp32_stats) < 1 and abs(gain(bf16_stats) - gain(fp32_stats)) < 0.05
    with pytest.raises(ValueError, match="calib.batch.bf16"):
        BatchOptions(enabled=False, gpu_gb=1.0, tf32=False, compile=False, checkpoint_s=None, bf16=True)
