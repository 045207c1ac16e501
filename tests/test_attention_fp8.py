"""FP8 self-attention of the deployment path (kernels/attn_cudnn.py, qarvd.deploy.calibrate_attention_) on the CPU:
torch_ref emulates cuDNN's FP8 numerics, so calibration, the float8 KV cache, the FP8 hand-over to the o projection
and the quality cost are tested here; the cuDNN kernel itself against the emulation in test_kernels_gpu.py."""
from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F

from kernels import attn_cudnn
from qarvd.deploy.backends import TorchRefBackend
from qarvd.deploy import accelerate_, calibrate_attention_, convert_to_real, restore_
from qarvd.deploy.packing import minmax_spec
from qarvd.models.rollout import RolloutConfig, rollout
from qarvd.models.wan import CausalWanModel, WanConfig
from qarvd.quant.select import select_linears

ARCH = dict(dim=64, ffn_dim=128, num_heads=2, num_layers=2, freq_dim=16, text_dim=16, text_len=4, in_dim=4,
            out_dim=4, patch_size=(1, 2, 2))
RC = RolloutConfig(num_frames=6, frames_per_chunk=2, denoising_steps=[1000, 500])
SHAPE = (4, 8, 8)


def _attention_inputs(g, lq=24, lk=40, h=2, d=32):
    q, k, v = (torch.randn(2, n, h, d, generator=g) for n in (lq, lk, lk))
    return q * 2, k * 2, v


def test_emulation_costs_a_few_percent_and_reuses_codes():
    g = torch.Generator().manual_seed(0)
    q, k, v = _attention_inputs(g)
    ref = F.scaled_dot_product_attention(*(t.transpose(1, 2) for t in (q, k, v))).transpose(1, 2)
    steps = torch.stack([t.abs().amax() / attn_cudnn.FP8_MAX for t in (q, k, v)] + [v.abs().amax() / 448])
    codes = attn_cudnn.fp8_attention_ref(q, k, v, steps)
    assert codes.dtype == torch.float8_e4m3fn and codes.shape == q.shape
    rel = float((codes.float() * steps[3] - ref).norm() / ref.norm())
    assert 0.005 < rel < 0.1  # E4M3 on q, k, v, P and o: a few percent, not zero (the quantizers are on)
    pre = [attn_cudnn.quantize_fp8(t, s) for t, s in zip((q, k, v), steps)]
    assert torch.equal(attn_cudnn.fp8_attention_ref(*pre, steps).float(), codes.float())  # codes in = floats in


def test_fp8_scalars_layout():
    s = attn_cudnn.fp8_scalars(torch.tensor([0.1, 0.2, 0.3, 0.5]))
    assert s.shape == (6, 1, 1, 1)
    assert torch.allclose(s.flatten(), torch.tensor([0.1, 0.2, 0.3, 1 / 448, 448.0, 2.0]))


@pytest.fixture(scope="module")
def real():
    torch.manual_seed(0)
    fp = CausalWanModel(WanConfig(**ARCH)).eval().requires_grad_(False)
    specs = {n: minmax_spec(fp.get_submodule(n).weight, fp.get_submodule(n).bias, act_range=(-4.0, 4.0))
             for n in select_linears(fp)}
    return convert_to_real(copy.deepcopy(fp), specs, TorchRefBackend())


def _video(model, ctx):
    return rollout(model, ctx, list(range(ctx.shape[0])), SHAPE, RC)


@pytest.mark.parametrize("graphs", [False, True])
def test_calibrated_fp8_attention_rollout(real, graphs):
    ctx = torch.randn(2, 4, 16, generator=torch.Generator().manual_seed(1))
    base = _video(accelerate_(copy.deepcopy(real), TorchRefBackend(graphs=graphs)), ctx)
    model = accelerate_(copy.deepcopy(real), TorchRefBackend(attention="cudnn_fp8", graphs=graphs))
    assert model.kv_cache_dtype is None  # not calibrated yet: bf16/fp32 caches, and the forward refuses to run
    with pytest.raises(RuntimeError, match="calibrate_attention_"):
        _video(model, ctx)
    amax = calibrate_attention_(model, lambda: _video(model, ctx))
    assert amax.shape == (2, 4) and (amax > 0).all()
    block = model.blocks[0]
    assert torch.allclose(block._qarvd_attn_scales, amax[0] / 448)
    assert getattr(block, "_qarvd_key_mean", None) is None  # smooth_keys=false (the default): plain FP8 keys
    assert model.new_cache(2, 6, 8, 8).layers[0].k.dtype == torch.float8_e4m3fn
    got = _video(model, ctx)
    rel = float((got - base).norm() / base.norm())
    assert 1e-4 < rel < 0.1, rel  # FP8 attention moves the latents a little, not a lot
    # re-accelerating with bf16 attention keeps the scales but goes back to full-precision caches and numbers
    back = accelerate_(model, TorchRefBackend(graphs=graphs))
    assert back.kv_cache_dtype is None and torch.equal(_video(back, ctx), base)
    restore_(back)
    assert back.kv_cache_dtype is None


def test_plain_fp8_keys_need_no_mean_and_smoothed_ones_do(real):
    """smooth_keys=false calibrates scales only (the raw keys' amax) and runs; smoothed keys refuse to run on scales
    without their mean keys, and their k amax is that of k - mean."""
    ctx = torch.randn(2, 4, 16, generator=torch.Generator().manual_seed(2))
    plain = accelerate_(copy.deepcopy(real), TorchRefBackend(attention="cudnn_fp8"))
    amax_plain = calibrate_attention_(plain, lambda: _video(plain, ctx))
    assert all(getattr(b, "_qarvd_key_mean", None) is None for b in plain.blocks)
    got_plain = _video(plain, ctx)
    smooth = accelerate_(copy.deepcopy(real), TorchRefBackend(attention="cudnn_fp8", smooth_keys=True))
    amax = calibrate_attention_(smooth, lambda: _video(smooth, ctx))
    assert torch.equal(amax[:, [0, 2, 3]], amax_plain[:, [0, 2, 3]]) and not torch.equal(amax[:, 1], amax_plain[:, 1])
    assert not torch.equal(_video(smooth, ctx), got_plain)
    for b in smooth.blocks:
        b._qarvd_key_mean = None
    with pytest.raises(RuntimeError, match="mean keys"):
        _video(smooth, ctx)
    with pytest.raises(ValueError, match="smooth_keys"):
        TorchRefBackend(attention="cudnn_fp8", smooth_keys="false")


def test_calibration_needs_fp8_backend(real):
    model = accelerate_(copy.deepcopy(real), TorchRefBackend())
    with pytest.raises(ValueError, match="quantized attention"):
        calibrate_attention_(model, lambda: None)
    with pytest.raises(ValueError, match="fused=true"):
        accelerate_(copy.deepcopy(real), TorchRefBackend(attention="cudnn_fp8", fused=False))


needs_cudnn_fp8 = pytest.mark.skipif(not attn_cudnn.available(),
                                     reason="cuDNN FP8 attention needs a Hopper GPU and nvidia-cudnn-frontend")


@needs_cudnn_fp8
def test_cudnn_matches_the_emulation_on_a_strided_cache():
    """The kernel against its float32 emulation: q over a cache view [:, :end] of a longer buffer (the rollout's
    layout), head dim 128; measured 1.0-1.4 % on the H200 at the Wan shapes (scripts/bench_attention_fp8.py)."""
    g = torch.Generator(device="cuda").manual_seed(0)
    q = torch.randn(2, 300, 4, 128, device="cuda", generator=g)
    cache = torch.randn(2, 1000, 4, 128, device="cuda", generator=g)
    k, v = cache[:, :700] * 2, cache[:, 300:1000]
    steps = torch.stack([t.abs().amax() / 448 for t in (q, k, v, v)])
    q8, k8, v8 = (attn_cudnn.quantize_fp8(t, s) for t, s in zip((q, k, v), steps))
    kbuf = torch.zeros(2, 1000, 4, 128, device="cuda", dtype=torch.float8_e4m3fn)
    vbuf = torch.zeros_like(kbuf)
    kbuf[:, :700], vbuf[:, :700] = k8, v8
    att = attn_cudnn.CudnnFp8Attention(torch.device("cuda"))
    got = att(q8, kbuf[:, :700], vbuf[:, :700], attn_cudnn.fp8_scalars(steps)).float() * steps[3]
    ref = attn_cudnn.fp8_attention_ref(q8, k8, v8, steps).float() * steps[3]
    exact = F.scaled_dot_product_attention(*(t.transpose(1, 2) for t in (q, k, v))).transpose(1, 2)
    assert float((got - ref).norm() / ref.norm()) < 0.03
    assert float((got - exact).norm() / exact.norm()) < 0.1
    x = torch.zeros(1, 8, 1, 64, device="cuda")
    with pytest.raises(ValueError, match="float8_e4m3fn"):
        att(x, x, x, attn_cudnn.fp8_scalars(steps))


def test_saved_model_keeps_its_fp8_attention_scales(real, tmp_path):
    """save_real stores the calibrated scales next to the weights; load_real + accelerate_(cudnn_fp8) attends in FP8
    with them at once (same latents as the calibrated model, no recalibration); an uncalibrated save has none."""
    from qarvd.deploy import load_real, save_real

    ctx = torch.randn(2, 4, 16, generator=torch.Generator().manual_seed(2))
    model = accelerate_(copy.deepcopy(real), TorchRefBackend(attention="cudnn_fp8"))
    calibrate_attention_(model, lambda: _video(model, ctx))
    want = _video(model, ctx)
    save_real(restore_(model), tmp_path / "fp8")
    loaded = accelerate_(load_real(tmp_path / "fp8", TorchRefBackend()), TorchRefBackend(attention="cudnn_fp8"))
    assert loaded.kv_cache_dtype == torch.float8_e4m3fn
    assert torch.equal(loaded.blocks[1]._qarvd_attn_scales, model.blocks[1]._qarvd_attn_scales)
    assert torch.equal(_video(loaded, ctx), want)
    save_real(copy.deepcopy(real), tmp_path / "plain")
    plain = accelerate_(load_real(tmp_path / "plain", TorchRefBackend()), TorchRefBackend(attention="cudnn_fp8"))
    assert plain.kv_cache_dtype is None  # not calibrated: the fused forward will ask for calibrate_attention_


@pytest.mark.parametrize("attention", ["cudnn_fp8", "int8_sage"])
def test_quantized_attention_from_a_later_chunk(real, attention):
    """Chunk-adaptive precision (kernel.attention_chunks): bf16 attention in the chunks outside the set, the quantized
    one in it. FP8 from chunk 1 on: chunk 0 of the video equals the all-bf16 rollout's bit for bit, later chunks are
    quantized (and differ from both uniform rollouts); graphed = eager. FP8 in chunk 0 only (a quantized chunk before
    a bf16 one): chunk 0 is close to the uniform quantized rollout's, and the video moves less than uniform."""
    ctx = torch.randn(2, 4, 16, generator=torch.Generator().manual_seed(1))
    bf16 = _video(accelerate_(copy.deepcopy(real), TorchRefBackend()), ctx)
    uniform = accelerate_(copy.deepcopy(real), TorchRefBackend(attention=attention))
    calibrate_attention_(uniform, lambda: _video(uniform, ctx))
    quant = _video(uniform, ctx)
    late = accelerate_(copy.deepcopy(real), TorchRefBackend(attention=attention, attention_chunks=[1, 2]))
    calibrate_attention_(late, lambda: _video(late, ctx))
    assert late.early_cache_dtype == torch.float32  # chunk 0 attends on 16-bit (here fp32) K/V beside the codes
    assert (late.kv_cache_dtype or late.key_cache_dtype) in (torch.float8_e4m3fn, torch.int8)
    mixed = _video(late, ctx)
    first = slice(0, RC.frames_per_chunk)
    assert torch.equal(mixed[:, first], bf16[:, first])
    assert not torch.equal(mixed[:, 2:], bf16[:, 2:]) and not torch.equal(mixed[:, 2:], quant[:, 2:])
    err = lambda x: float((x - bf16).norm() / bf16.norm())  # noqa: E731
    assert 0 < err(mixed) < err(quant)  # a quantized attention in fewer chunks moves the video less
    graphed = accelerate_(late, TorchRefBackend(attention=attention, attention_chunks=[1, 2], graphs=True))
    assert torch.equal(_video(graphed, ctx), mixed) and torch.equal(_video(graphed, ctx), mixed)  # static buffers, 2 videos
    early = accelerate_(copy.deepcopy(real), TorchRefBackend(attention=attention, attention_chunks=[0]))
    calibrate_attention_(early, lambda: _video(early, ctx))
    only0 = _video(early, ctx)
    assert float((only0[:, first] - quant[:, first]).abs().max()) < 1e-5  # chunk 0 quantized as in the uniform run
    assert not torch.equal(only0[:, first], bf16[:, first]) and 0 < err(only0) < err(quant)
    with pytest.raises(ValueError, match="quantized attention"):
        TorchRefBackend(attention="auto", attention_chunks=[2])
    with pytest.raises(ValueError, match="non-empty list of chunk indices"):
        TorchRefBackend(attention=attention, attention_chunks=[])