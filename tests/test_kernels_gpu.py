"""GPU checks of the Triton kernels and the fused forward against the torch references (skip without CUDA).

Run in their own process (``pytest -m gpu tests/test_kernels_gpu.py``): the CPU kernel tests switch Triton to its
interpreter at import time, which must not happen before these run.
"""
from __future__ import annotations

import copy
import os

import pytest
import torch
import torch.nn.functional as F

pytestmark = [pytest.mark.gpu,
              pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA"),
              pytest.mark.skipif(os.environ.get("TRITON_INTERPRET", "0") not in ("", "0"),
                                 reason="Triton runs in its interpreter in this process")]

VARIANTS = [(8, 0, "exact"), (8, 128, "exact"), (8, 128, "int_ratio"), (4, 0, "exact"), (4, 128, "exact"),
            (4, 128, "int_ratio")]


def _layers(k, n, count, w_bits, outliers, dual, seed=0):
    from qarvd.deploy.modules import RealQuantLinear
    from qarvd.deploy.packing import minmax_spec

    g = torch.Generator().manual_seed(seed)
    mods, specs = [], []
    for _ in range(count):
        w = torch.randn(n, k, generator=g) / k**0.5
        w[:, torch.randperm(k, generator=g)[:40]] *= 8
        spec = minmax_spec(w.cuda(), (torch.randn(n, generator=g) * 0.1).cuda(), w_bits=w_bits, n_outliers=outliers,
                           act_range=(-3.0, 5.0))
        specs.append(spec)
        mods.append(RealQuantLinear.from_spec(spec, dual))
    return mods, specs


@pytest.mark.parametrize("w_bits,outliers,dual", VARIANTS)
@pytest.mark.parametrize("count", [1, 3])
def test_gemm_matches_float64(w_bits, outliers, dual, count):
    from kernels.act_quant import norm_quant, quantize_ref
    from kernels.layout import stack_acts
    from kernels.qgemm import qgemm, qgemm_ref
    from qarvd.deploy.modules import stack_group

    m, k, n = 777, 1536, 512
    mods, _ = _layers(k, n, count, w_bits, outliers, dual)
    group, acts = stack_group(mods), stack_acts([mo.act() for mo in mods])
    x = torch.randn(m, k, device="cuda") * 2
    a, rs = norm_quant(x, acts, rowsum=group.has_wzp)
    a_ref, rs_ref = quantize_ref(x, acts, rowsum=True)
    valid = torch.zeros(acts.kp, dtype=torch.bool, device="cuda")
    valid[acts.dest[0].long()] = True
    assert (a[:, :, valid].int() - a_ref[:, :, valid].int()).abs().max() <= 1
    assert (a[:, :, valid] != a_ref[:, :, valid]).float().mean() < 1e-4
    y = qgemm(a, rs, group, m, out_dtype=torch.float32)
    ref = qgemm_ref(a, rs, group, m)
    assert float((y.double() - ref).norm() / ref.norm()) < 1e-6


@pytest.mark.parametrize("epilogue", ["residual", "gelu_quant"])
@pytest.mark.parametrize("w_bits,outliers,dual", VARIANTS[:3])
def test_gemm_epilogues_match_torch(epilogue, w_bits, outliers, dual):
    from kernels.qgemm import qgemm, qgemm_torch

    m, k, n = 3 * 200, 512, 1024
    mods, _ = _layers(k, n, 1, w_bits, outliers, dual)
    grp, acts = mods[0].group(), mods[0].stacked_act()
    a = torch.randint(acts.lo, acts.hi + 1, (1, m, acts.kp), dtype=torch.int8, device="cuda")
    rs = torch.stack([a[..., :acts.kops[0]].int().sum(-1), a[..., acts.kops[0]:].int().sum(-1)], -1)
    kw = {}
    if epilogue == "residual":
        kw = dict(residual=torch.randn(m, n, device="cuda", dtype=torch.bfloat16),
                  gate=torch.randn(3, 6, n, device="cuda")[:, 2], tokens_per_frame=200)
    else:
        nxt, _ = _layers(n, k, 1, w_bits, outliers, dual, seed=1)
        kw = dict(next_act=nxt[0].stacked_act(), next_rowsum=True)
    out = qgemm(a, rs, grp, m, epilogue=epilogue, **kw)
    ref = qgemm_torch(a, rs, grp, m, epilogue=epilogue, **kw)
    if epilogue == "residual":
        assert float((out.float() - ref.float()).norm() / ref.float().norm()) < 2e-3
    else:
        valid = kw["next_act"].dest[0].long()
        diff = (out[0][:, valid].int() - ref[0][:, valid].int()).abs()
        assert diff.max() <= 1 and diff.float().mean() < 2e-2
        assert (out[1] - ref[1]).abs().max() <= diff.sum(1).max()


def test_rint_is_round_half_even_on_gpu():
    from kernels.act_quant import norm_quant
    from kernels.layout import StackedAct

    k = 256
    x = (torch.arange(k, device="cuda", dtype=torch.float32) - 128) * 0.5  # exact ties at every odd step
    ones = torch.ones(1, k, device="cuda")
    acts = StackedAct(ones, torch.zeros(1, k, device="cuda"), torch.arange(k, device="cuda", dtype=torch.int32)[None],
                      torch.zeros(1, device="cuda", dtype=torch.int32), (0,), k, -128, 127, True)
    a, _ = norm_quant(x[None], acts)
    assert torch.equal(a[0, 0].float(), torch.round(x).clamp(-128, 127))


def test_fused_forward_matches_reference_backend():
    from qarvd.deploy.backends import Bf16Backend, TorchRefBackend, TritonInt8Backend
    from qarvd.deploy import accelerate_, convert_to_real
    from qarvd.deploy.packing import minmax_spec
    from qarvd.models.wan import CausalWanModel, WanConfig
    from qarvd.quant.select import select_linears

    torch.manual_seed(0)
    cfg = WanConfig(dim=256, ffn_dim=1024, num_heads=2, num_layers=2, freq_dim=64, text_dim=64, text_len=16)
    base = CausalWanModel(cfg).cuda().to(torch.bfloat16).eval()
    x = torch.randn(2, 16, 3, 16, 24, device="cuda")
    t = torch.full((2, 3), 900.0, device="cuda")
    ctx = torch.randn(2, 16, 64, device="cuda", dtype=torch.bfloat16)

    def fwd(model):
        with torch.no_grad():
            return model(x, t, ctx, cache=model.new_cache(2, 3, 16, 24)).float()

    ref = fwd(base)
    fused = accelerate_(copy.deepcopy(base), Bf16Backend(attention="auto"))
    assert float((fwd(fused) - ref).norm() / ref.norm()) < 2e-3
    for w_bits, outliers, dual in [(8, 0, "exact"), (8, 128, "exact"), (8, 128, "int_ratio"), (4, 0, "exact")]:
        model = copy.deepcopy(base)
        specs = {nm: minmax_spec(model.get_submodule(nm).weight, model.get_submodule(nm).bias, w_bits=w_bits,
                                 n_outliers=outliers if nm.startswith("blocks.") else 0)
                 for nm in select_linears(model)}
        be = TritonInt8Backend(attention="auto", dual_mode=dual)
        accelerate_(convert_to_real(model, specs, be), be)
        y = fwd(model)
        accelerate_(model, TorchRefBackend(attention="auto", dual_mode=dual))
        assert float((y - fwd(model)).norm() / ref.norm()) < 1e-2, (w_bits, outliers, dual)


def test_fp8_module_matches_reference():
    from qarvd.deploy.backends import Fp8Backend, Fp8RefBackend
    from qarvd.deploy.modules import Fp8Linear, fp8_from_spec
    from qarvd.deploy.packing import minmax_spec

    w = torch.randn(512, 1024, device="cuda") / 32
    t, meta = fp8_from_spec(minmax_spec(w, torch.randn(512, device="cuda")))
    mod = Fp8Linear(meta, t, Fp8Backend())
    x = torch.randn(300, 1024, device="cuda", dtype=torch.bfloat16)
    y = mod(x).float()
    mod.backend = Fp8RefBackend()
    ref = mod(x).float()
    assert float((y - ref).norm() / ref.norm()) < 1e-2


def test_graphed_rollout_matches_eager_on_gpu():
    """CUDA-graph replays (qarvd.deploy.graphs) against the eager fused forward: bf16, W8A8 and FP8, two videos each
    (the second replays every signature), bit-identical latents; a graph really was captured."""
    from qarvd.deploy.backends import Bf16Backend, Fp8Backend, TritonInt8Backend
    from qarvd.deploy import accelerate_, convert_to_real
    from qarvd.deploy.packing import minmax_spec
    from qarvd.models.rollout import RolloutConfig, rollout
    from qarvd.models.wan import CausalWanModel, WanConfig
    from qarvd.quant.select import select_linears

    torch.manual_seed(0)
    cfg = WanConfig(dim=256, ffn_dim=1024, num_heads=2, num_layers=2, freq_dim=64, text_dim=64, text_len=16)
    base = CausalWanModel(cfg).cuda().to(torch.bfloat16).eval().requires_grad_(False)
    rc = RolloutConfig(num_frames=6, frames_per_chunk=3, denoising_steps=[1000, 500])
    g = torch.Generator().manual_seed(1)
    ctxs = [torch.randn(2, 16, 64, generator=g).to(torch.bfloat16) for _ in range(2)]

    def build(make_be, graphs):
        be = make_be(graphs)
        model = copy.deepcopy(base)
        if be.format != "bf16":
            specs = {nm: minmax_spec(model.get_submodule(nm).weight, model.get_submodule(nm).bias)
                     for nm in select_linears(model)}
            convert_to_real(model, specs, be)
        return accelerate_(model, be)

    for make_be in (lambda gr: Bf16Backend(attention="auto", graphs=gr),
                    lambda gr: TritonInt8Backend(attention="auto", weights="symmetric", graphs=gr),
                    lambda gr: Fp8Backend(attention="auto", graphs=gr)):
        eager, graphed = build(make_be, False), build(make_be, True)
        for ctx in ctxs:
            with torch.no_grad():
                a = rollout(eager, ctx, [0, 1], (16, 16, 24), rc)
                b = rollout(graphed, ctx, [0, 1], (16, 16, 24), rc)
            assert torch.isfinite(a).all() and torch.equal(a, b), (make_be(False).name, float((a - b).abs().max()))
        (store,) = graphed._qarvd_stores.values()
        assert len(store.graphs) == rc.num_chunks and all(v.graph is not None for v in store.graphs.values())




def test_fp8_attention_kernel_matches_float64():
    """kernels/attn_fp8.py on the GPU: odd query and key counts (partial tiles), the FP8 copy written in two chunks
    from a cache view; error bounded by the E4M3 casts."""
    import torch.nn.functional as F

    from kernels import attn_fp8

    g = torch.Generator(device="cuda").manual_seed(0)
    b, lq, lk, h, d = 2, 300, 1000, 3, 128
    q = torch.randn(b, lq, h, d, device="cuda", generator=g).to(torch.bfloat16)
    cache = torch.randn(2, b, lk + 77, h, d, device="cuda", generator=g).to(torch.bfloat16)
    k, v = cache[0][:, :lk], cache[1][:, :lk]
    ref = F.scaled_dot_product_attention(q.transpose(1, 2).double(), k.transpose(1, 2).double(),
                                         v.transpose(1, 2).double()).transpose(1, 2)
    kv = attn_fp8.Fp8KV(b, lk + 77, h, d, "cuda")
    kv.write(k[:, :600], v[:, :600], 0)
    kv.write(k[:, 600:], v[:, 600:], 600)
    out = kv.attend(q, lk)
    assert torch.isfinite(out).all() and float((out.double() - ref).norm() / ref.norm()) < 0.1


def _graphed(fn):
    """fn() once eagerly (compilation, plans), then captured in a CUDA graph and replayed: returns both outputs."""
    eager = fn().clone()
    g = torch.cuda.CUDAGraph()
    with torch.cuda.graph(g):
        out = fn()
    g.replay()
    torch.cuda.synchronize()
    return eager, out


def test_int8_attention_kernel_matches_reference_and_captures():
    """kernels/attn_int8.py on the GPU with bf16 V (the interpreter cannot multiply bf16 tiles): partial tiles, q a
    view of the glue's [B*L, H*D] output, keys with a large shared mean removed before the int8 rounding; the
    kernel equals its torch reference to float32 summation order, the reference stays within INT8 rounding of
    exact attention, and a CUDA-graph replay gives the eager output bit for bit."""
    from kernels import attn_int8

    g = torch.Generator(device="cuda").manual_seed(0)
    b, lq, t, h, d = 2, 300, 1000, 3, 128
    q = (torch.randn(b * lq, h * d, device="cuda", generator=g) * 2).to(torch.bfloat16).view(b, lq, h, d)
    mean = torch.randn(h, d, device="cuda", generator=g) * 4
    k = torch.randn(b, t, h, d, device="cuda", generator=g) + mean
    v = torch.randn(b, t, h, d, device="cuda", generator=g).to(torch.bfloat16)
    codes, sc = attn_int8.quantize_rows(k - mean)
    k8, ks = codes.to(torch.int8), sc[..., 0].transpose(1, 2).contiguous()
    for end in (t, 777):
        ref = attn_int8.int8_attention_ref(q, k8, ks, v, end).float()
        eager, replay = _graphed(lambda: attn_int8.int8_attention(q, k8, ks, v, end))
        assert torch.equal(eager, replay)
        assert float((eager.float() - ref).norm() / ref.norm()) < 5e-3, end
        exact = F.scaled_dot_product_attention(*(x.transpose(1, 2).double() for x in (q, k[:, :end], v[:, :end]))
                                               ).transpose(1, 2)
        assert float((eager.double() - exact).norm() / exact.norm()) < 0.03, end


def test_fa4_attention_matches_sdpa_and_captures():
    """kernel.attention=fa4 (kernels/attn_fa4.py) against SDPA in float64 on the fused block's layouts: q a view of
    a [B*L, H*D] tensor, k/v slices of a longer cache; a CUDA-graph replay gives the eager output bit for bit."""
    from kernels import attn_fa4

    if not attn_fa4.available():
        pytest.skip(f"FlashAttention-4 is not installed ({attn_fa4.PACKAGES})")
    g = torch.Generator(device="cuda").manual_seed(0)
    b, lq, t, h, d = 2, 4680, 9360 + 77, 12, 128
    q = torch.randn(b * lq, h * d, device="cuda", generator=g).to(torch.bfloat16).view(b, lq, h, d)
    cache = torch.randn(2, b, t, h, d, device="cuda", generator=g).to(torch.bfloat16)
    k, v = cache[0][:, :9360], cache[1][:, :9360]
    ref = F.scaled_dot_product_attention(*(x.transpose(1, 2).double() for x in (q, k, v))).transpose(1, 2)
    eager, replay = _graphed(lambda: attn_fa4.fa4_attention(q, k, v))
    assert torch.equal(eager, replay) and eager.shape == q.shape and eager.dtype == torch.bfloat16
    assert float((eager.double() - ref).norm() / ref.norm()) < 1e-2


def test_sage2_attention_matches_its_emulation_and_captures():
    """kernel.attention=sage2 (kernels/attn_sage.py) on the fused block's layouts and the rollout's first chunk shape:
    its error to float64 attention is SageAttention-class (under 2 %) and within 20 % of the float32 emulation's on the
    same inputs (keys with a shared offset, as the model's), the two outputs close; a CUDA-graph replay equals the
    eager call bit for bit."""
    from kernels import attn_sage

    if not attn_sage.available():
        pytest.skip(f"SageAttention2's sm90 kernels are not installed ({attn_sage.INSTALL})")
    g = torch.Generator(device="cuda").manual_seed(0)
    b, lq, t, h, d = 2, 4680, 9360 + 77, 12, 128
    q = (torch.randn(b * lq, h * d, device="cuda", generator=g) * 2).to(torch.bfloat16).view(b, lq, h, d)
    cache = torch.randn(2, b, t, h, d, device="cuda", generator=g)
    cache[0] = cache[0] * 2 + torch.randn(h, d, device="cuda", generator=g) * 3
    cache = cache.to(torch.bfloat16)
    k, v = cache[0][:, :9360], cache[1][:, :9360]
    exact = F.scaled_dot_product_attention(*(x.transpose(1, 2).double() for x in (q, k, v))).transpose(1, 2)
    eager, replay = _graphed(lambda: attn_sage.sage_attention(q, k, v))
    assert torch.equal(eager, replay) and eager.shape == q.shape and eager.dtype == torch.bfloat16
    rows = slice(0, 512)  # the emulation holds [B, H, rows, keys] scores in float32
    emu = attn_sage.sage_attention_ref(q[:, rows], k, v).double()
    err = lambda x: float((x.double() - exact[:, rows]).norm() / exact[:, rows].norm())  # noqa: E731
    assert err(eager[:, rows]) < 0.02 and err(eager[:, rows]) < 1.2 * err(emu) + 2e-3, (err(eager[:, rows]), err(emu))
    assert float((eager[:, rows].double() - emu).norm() / emu.norm()) < 0.02


def test_fused_rollout_with_int8_and_fa4_attention():
    """The fused bf16 block with attention=int8_sage (calibrated), =fa4 and =sage2 (when installed): eager and
    graphed rollouts equal bit for bit, and both stay close to SDPA's latents."""
    from kernels import attn_fa4, attn_sage
    from qarvd.deploy import accelerate_, calibrate_attention_
    from qarvd.deploy.backends import Bf16Backend
    from qarvd.models.rollout import RolloutConfig, rollout
    from qarvd.models.wan import CausalWanModel, WanConfig

    torch.manual_seed(0)
    cfg = WanConfig(dim=256, ffn_dim=1024, num_heads=2, num_layers=2, freq_dim=64, text_dim=64, text_len=16)
    base = CausalWanModel(cfg).cuda().to(torch.bfloat16).eval().requires_grad_(False)
    rc = RolloutConfig(num_frames=6, frames_per_chunk=3, denoising_steps=[1000, 500])
    ctx = torch.randn(2, 16, 64, generator=torch.Generator().manual_seed(1)).to(torch.bfloat16)
    video = lambda m: rollout(m, ctx, [0, 1], (16, 16, 24), rc)  # noqa: E731
    with torch.no_grad():
        ref = video(accelerate_(copy.deepcopy(base), Bf16Backend(attention="auto", graphs=False)))
        for att in ["int8_sage"] + (["fa4"] if attn_fa4.available() else []) + (["sage2"] if attn_sage.available()
                                                                                  else []):
            got = []
            for graphs in (False, True):
                model = accelerate_(copy.deepcopy(base), Bf16Backend(attention=att, graphs=graphs))
                if att == "int8_sage":
                    calibrate_attention_(model, lambda: video(model))
                got.append(video(model))
            assert torch.equal(*got), att
            assert float((got[0] - ref).norm() / ref.norm()) < 0.05, att
