"""INT8 self-attention (kernels/attn_int8.py, ``kernel.attention=int8_sage``) on the CPU: the Triton kernel and the
int8-key glue in Triton's interpreter against their torch references, and the deployment path (calibration of the
mean keys, the int8 key cache, graphs, save/load) through torch_ref; the GPU kernel in test_kernels_gpu.py."""
from __future__ import annotations

import copy
import os

os.environ["TRITON_INTERPRET"] = "1"  # the Triton kernels run in the interpreter on the CPU

import pytest  # noqa: E402
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

from kernels import attn_int8, glue  # noqa: E402
from qarvd.deploy import (accelerate_, calibrate_attention_, load_real, restore_,  # noqa: E402
                          save_real)
from qarvd.deploy.backends import TorchRefBackend, TritonInt8Backend  # noqa: E402

from test_attention_fp8 import _video, real  # noqa: E402,F401 - the same small real model and rollout


def _exact(q, k, v):
    return F.scaled_dot_product_attention(*(t.double().transpose(1, 2) for t in (q, k, v))).transpose(1, 2)


def _int8_cache(k, mean):
    codes, sc = attn_int8.quantize_rows(k - mean)
    return codes.to(torch.int8), sc[..., 0].transpose(1, 2).contiguous()


@pytest.mark.parametrize("vdtype", [torch.float32, torch.bfloat16])
def test_kernel_matches_reference_at_every_cache_length(vdtype):
    """Full tiles, a masked partial tile and a cache longer than ``end`` (stale slots past it never count); keys
    with a large shared component, removed by the mean before rounding; the reference is within INT8 rounding of
    exact attention, and subtracting the mean is what keeps it there. The interpreter multiplies bf16 operands
    wrongly (tl.dot of bf16 tiles returns ~1e10 there), so bf16 V checks the reference only here and the kernel in
    test_kernels_gpu.py."""
    g = torch.Generator().manual_seed(0)
    b, lq, t, h, d = 2, 24, 100, 2, 16
    q = torch.randn(b, lq, h, d, generator=g) * 2
    mean = torch.randn(h, d, generator=g) * 4
    k = torch.randn(b, t, h, d, generator=g) + mean
    v = torch.randn(b, t, h, d, generator=g).to(vdtype)
    k8, ks = _int8_cache(k, mean)
    k8[:, 90:], ks[:, :, 90:] = 77, 1e3  # stale slots past the longest end below
    for end in (90, 64, 37, 5):
        ref = attn_int8.int8_attention_ref(q, k8, ks, v, end)
        if vdtype == torch.float32:
            got = attn_int8.int8_attention(q, k8, ks, v, end, config=(16, 32, 4, 1))
            assert got.dtype == q.dtype and got.shape == q.shape
            assert float((got - ref).abs().max()) < 2e-6 * float(ref.abs().max()), end
        exact = _exact(q, k[:, :end], v[:, :end].float())
        rel = float((ref.double() - exact).norm() / exact.norm())
        assert 1e-4 < rel < (0.02 if vdtype == torch.float32 else 0.03), (end, rel)
    k8_raw, ks_raw = _int8_cache(k, torch.zeros(h, d))  # the same keys without the mean subtracted
    raw = attn_int8.int8_attention_ref(q, k8_raw, ks_raw, v, 90)
    exact = _exact(q, k[:, :90], v[:, :90].float())
    assert float((raw.double() - exact).norm() / exact.norm()) > 3 * rel


def test_kernel_rejects_bad_layouts():
    q = torch.zeros(1, 4, 2, 16)
    k8, v, ks = torch.zeros(1, 8, 2, 16, dtype=torch.int8), torch.zeros(1, 8, 2, 16), torch.zeros(1, 2, 8)
    with pytest.raises(ValueError, match="int8 key codes"):
        attn_int8.int8_attention(q, k8.float(), ks, v, 8)
    with pytest.raises(ValueError, match=r"\[B, H, T\]"):
        attn_int8.int8_attention(q, k8, ks.transpose(1, 2), v, 8)
    with pytest.raises(ValueError, match="end=9"):
        attn_int8.int8_attention_ref(q, k8, ks, v, 9)


def test_glue_writes_int8_keys_and_scales():
    """qk_norm_rope(key_int8=...) in the interpreter: q and V as without it, key codes of k - mean and one scale
    per (token, head) as the reference, only in the chunk's slots; dequantized keys within int8 rounding."""
    b, length, heads, hd = 2, 10, 2, 16
    d = heads * hd
    g = torch.Generator().manual_seed(1)
    src = torch.randn(b * length, 3 * d, generator=g) * 2
    ang = torch.rand(length, hd // 2, generator=g) * 6
    kw = dict(wq=torch.rand(d, generator=g) + 0.5, wk=torch.rand(d, generator=g) + 0.5, eps=1e-6, cos=ang.cos(),
              sin=ang.sin(), start=3)
    mean = torch.randn(d, generator=g)
    outs = []
    for fn in (glue.qk_norm_rope, glue.qk_norm_rope_ref):
        kc = torch.zeros((b, 16, heads, hd), dtype=torch.int8)
        vc, ks = torch.zeros((b, 16, heads, hd)), torch.zeros((b, heads, 16))
        outs.append((fn(src, (0, d, 2 * d), d, length, cache_k=kc, cache_v=vc, key_int8=(mean, ks), **kw), kc, vc, ks))
    (q, kc, vc, ks), (q_r, kc_r, vc_r, ks_r) = outs
    assert torch.allclose(q, q_r, atol=1e-5) and torch.equal(vc, vc_r) and torch.allclose(ks, ks_r, rtol=1e-6)
    assert (kc.int() - kc_r.int()).abs().max() <= 1 and (kc != kc_r).float().mean() < 0.01
    assert ks[:, :, :3].abs().sum() == 0 and ks[:, :, 13:].abs().sum() == 0 and (ks[:, :, 3:13] > 0).all()
    assert int(kc[:, 3:13].abs().amax((1, 3)).min()) == 127  # each (token, head) row uses the full code range
    plain_k = torch.zeros((b, 16, heads, hd))
    glue.qk_norm_rope_ref(src, (0, d, 2 * d), d, length, cache_k=plain_k, cache_v=torch.zeros_like(plain_k), **kw)
    deq = kc.float() * ks.transpose(1, 2)[..., None] + mean.view(heads, hd)
    err = (deq - plain_k)[:, 3:13]
    assert float(err.abs().max()) <= float(ks.max()) / 2 + 1e-6
    with pytest.raises(ValueError, match="int8 key cache"):
        glue.qk_norm_rope(src, (0, d, 2 * d), d, length, cache_k=plain_k, cache_v=plain_k, key_int8=(mean, ks), **kw)


@pytest.mark.parametrize("graphs", [False, True])
def test_calibrated_int8_attention_rollout(real, graphs):
    ctx = torch.randn(2, 4, 16, generator=torch.Generator().manual_seed(1))
    base = _video(accelerate_(copy.deepcopy(real), TorchRefBackend(graphs=graphs)), ctx)
    model = accelerate_(copy.deepcopy(real), TorchRefBackend(attention="int8_sage", graphs=graphs))
    assert model.key_cache_dtype is None
    with pytest.raises(RuntimeError, match="calibrate_attention_"):
        _video(model, ctx)
    means = calibrate_attention_(model, lambda: _video(model, ctx))
    assert means.shape == (2, 64) and means.abs().sum() > 0
    cache = model.new_cache(2, 6, 8, 8)
    assert cache.layers[0].k.dtype == torch.int8 and cache.layers[0].k_scale.shape == (2, 2, 6 * 16)
    assert cache.layers[0].v.dtype == torch.float32
    got = _video(model, ctx)
    rel = float((got - base).norm() / base.norm())
    assert 1e-5 < rel < 0.02, rel  # INT8 Q.K^T moves the latents a little (FP8 attention: ~10x more, test_attention_fp8)
    back = accelerate_(model, TorchRefBackend(graphs=graphs))  # bf16 attention again: full-precision caches
    assert back.key_cache_dtype is None and torch.equal(_video(back, ctx), base)
    restore_(back)


def test_triton_int8_attention_matches_reference_backend(real):
    """The fused forward with the Triton glue and attention kernels (interpreter) against torch_ref, same means."""
    ctx = torch.randn(1, 4, 16, generator=torch.Generator().manual_seed(2))
    ref = accelerate_(copy.deepcopy(real), TorchRefBackend(attention="int8_sage"))
    calibrate_attention_(ref, lambda: _video(ref, ctx))
    x, t = torch.randn(1, 4, 2, 8, 8), torch.full((1, 2), 900.0)

    def fwd(model):
        cache = model.new_cache(1, 6, 8, 8)
        with torch.no_grad():
            model(x, t, ctx, cache=cache, frame_offset=0)
            return model(x, t, ctx, cache=cache, frame_offset=2)

    want = fwd(ref)
    tri = accelerate_(ref, TritonInt8Backend(attention="int8_sage"))
    got = fwd(tri)
    assert float((got - want).norm() / want.norm()) < 1e-4


def test_key_means_are_saved_and_loaded(real, tmp_path):
    ctx = torch.randn(1, 4, 16, generator=torch.Generator().manual_seed(3))
    model = accelerate_(copy.deepcopy(real), TorchRefBackend(attention="int8_sage"))
    calibrate_attention_(model, lambda: _video(model, ctx))
    want = _video(model, ctx)
    save_real(model, tmp_path)
    loaded = accelerate_(load_real(tmp_path, TorchRefBackend()), TorchRefBackend(attention="int8_sage"))
    assert loaded.key_cache_dtype == torch.int8
    assert torch.equal(loaded.blocks[1]._qarvd_key_mean, model.blocks[1]._qarvd_key_mean)
    assert torch.equal(_video(loaded, ctx), want)


def test_fa4_attention_runs_in_the_fused_block_only(real):
    """kernel.attention=fa4: torch_ref stands in with SDPA (same latents as auto); the eager path refuses it (FA4
    is called by the fused block, not by the eager model's SDPA); without the package the kernel names it."""
    from kernels import attn_fa4

    ctx = torch.randn(1, 4, 16, generator=torch.Generator().manual_seed(4))
    base = _video(accelerate_(copy.deepcopy(real), TorchRefBackend()), ctx)
    assert torch.equal(_video(accelerate_(copy.deepcopy(real), TorchRefBackend(attention="fa4")), ctx), base)
    with pytest.raises(ValueError, match="fused=true"):
        accelerate_(copy.deepcopy(real), TorchRefBackend(attention="fa4", fused=False))
    if not attn_fa4.available():
        with pytest.raises(ImportError, match="flash-attn-4"):
            attn_fa4.fa4_attention(torch.zeros(1, 2, 1, 16), torch.zeros(1, 2, 1, 16), torch.zeros(1, 2, 1, 16))
