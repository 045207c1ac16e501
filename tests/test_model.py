"""CausalWan DiT: real architecture sizes, embeddings, and KV-cache inference equal to a full recompute."""
from __future__ import annotations

import math

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

from qarvd.models.rollout import FlowMatchSchedule, RolloutConfig, rollout
from qarvd.models.wan import (CausalWanModel, WanConfig, WanRMSNorm, _mul_add, apply_rope, chunk_causal_mask,
                              count_parameters, rope_split, sinusoidal_embedding_1d)


def test_wan_1_3b_parameter_count_and_names():
    with torch.device("meta"):
        model = CausalWanModel(WanConfig())
    n = count_parameters(model)
    assert abs(n - 1.419e9) / 1.419e9 < 0.005, n
    names = dict(model.named_parameters())
    for key, shape in {
        "patch_embedding.weight": (1536, 16, 1, 2, 2),
        "text_embedding.0.weight": (1536, 4096),
        "time_projection.1.weight": (9216, 1536),
        "blocks.29.self_attn.q.weight": (1536, 1536),
        "blocks.0.self_attn.norm_q.weight": (1536,),
        "blocks.0.cross_attn.k.bias": (1536,),
        "blocks.0.norm3.weight": (1536,),
        "blocks.0.ffn.0.weight": (8960, 1536),
        "blocks.0.ffn.2.weight": (1536, 8960),
        "blocks.0.modulation": (1, 6, 1536),
        "head.head.weight": (64, 1536),
        "head.modulation": (1, 2, 1536),
    }.items():
        assert tuple(names[key].shape) == shape, key
    assert "blocks.0.norm1.weight" not in names and "blocks.0.norm2.weight" not in names  # no affine


def test_rope_split_and_sinusoid():
    assert rope_split(128) == (44, 42, 42)
    emb = sinusoidal_embedding_1d(8, torch.tensor([0.0, 1000.0]))
    assert emb.dtype == torch.float64
    # cos half first, then sin half; position 0 -> cos=1, sin=0
    assert torch.equal(emb[0], torch.tensor([1.0] * 4 + [0.0] * 4, dtype=torch.float64))
    assert emb[1, 0] == pytest.approx(math.cos(1000.0)) and emb[1, 4] == pytest.approx(math.sin(1000.0))


def test_rope_rotates_adjacent_pairs():
    x = torch.tensor([[[[1.0, 0.0, 0.0, 1.0]]]])  # [B=1, L=1, H=1, D=4]
    cos, sin = torch.tensor([[0.0, 1.0]]), torch.tensor([[1.0, 0.0]])  # 90 deg on pair 0, 0 deg on pair 1
    assert torch.allclose(apply_rope(x, cos, sin), torch.tensor([[[[0.0, 1.0, 0.0, 1.0]]]]))


class _OpNames(TorchDispatchMode):
    def __init__(self):
        super().__init__()
        self.names = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.names.append(func.overloadpacket.__name__)
        return func(*args, **(kwargs or {}))


def _bf16_steps(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """How many representable bf16 values apart two bf16 tensors are, elementwise (0 below 2^-20 apart: a value near
    zero may change sign)."""
    steps = (a.view(torch.int16).int() - b.view(torch.int16).int()).abs()
    return torch.where((a.float() - b.float()).abs() <= 2.0**-20, 0, steps)


def test_16bit_forms_differ_from_the_two_rounding_float32_forms_only_at_rounding_ties():
    """The eager bf16 path's fused forms (RoPE as one product + one FMA, modulation as one FMA, RMSNorm through
    F.rms_norm) against the float32 formulation they replace (every product rounded to float32, stored in bf16 once):
    at most one bf16 step apart, and only where float32 rounding decides a bf16 rounding tie (here < 0.1 % of the
    elements); F.rms_norm on the CPU is that formulation bit for bit. float32 inputs keep it exactly."""
    g = torch.Generator().manual_seed(0)
    x = torch.randn(2, 64, 4, 32, generator=g).bfloat16()
    ang = torch.rand(64, 16, generator=g) * 6.3
    cos, sin = ang.cos(), ang.sin()

    def rope_ref(v):
        c, s = cos[None, :, None], sin[None, :, None]
        return torch.stack([v[..., 0::2] * c - v[..., 1::2] * s, v[..., 0::2] * s + v[..., 1::2] * c], -1).flatten(-2)

    h = torch.randn(2, 3, 40, 64, generator=g).bfloat16()
    scale, shift = 0.3 * torch.randn(2, 3, 1, 64, generator=g), 0.3 * torch.randn(2, 3, 1, 64, generator=g)
    mult = 1 + scale
    norm = WanRMSNorm(64, eps=1e-6).bfloat16()
    norm.weight.data = (torch.rand(64, generator=g) + 0.5).bfloat16()
    q = torch.randn(2, 40, 64, generator=g).bfloat16()
    qf = q.float()
    with torch.no_grad():
        cases = [(apply_rope(x, cos, sin), rope_ref(x.float()).bfloat16()),
                 (_mul_add(h, mult, shift), (h.float() * mult + shift).bfloat16())]
        for got, ref in cases:
            steps = _bf16_steps(got, ref)
            assert got.dtype == torch.bfloat16 and steps.max() <= 1 and (steps > 0).float().mean() < 1e-3
        assert torch.equal(norm(q), (qf * torch.rsqrt(qf.pow(2).mean(-1, keepdim=True) + 1e-6)).bfloat16() * norm.weight)
        with _OpNames() as ops:  # the fused forms are what runs: one FMA each, no separate add / sub
            apply_rope(x, cos, sin)
            _mul_add(h, mult, shift)
        assert ops.names.count("addcmul") == 2 and not {"add", "sub"} & set(ops.names), ops.names
        assert torch.equal(apply_rope(x.float(), cos, sin), rope_ref(x.float()))
        assert torch.equal(_mul_add(h.float(), mult, shift), h.float() * mult + shift)


def test_patchify_unpatchify_roundtrip_shapes(tiny_model):
    x = torch.randn(2, 4, 3, 8, 6)
    out = tiny_model(x, torch.full((2, 3), 500.0), torch.randn(2, 4, 8))
    assert out.shape == x.shape


def test_kv_cache_forward_equals_chunk_causal_full_recompute(tiny_model):
    m = tiny_model.double()
    b, c, f, h, w = 2, 4, 6, 4, 4
    x = torch.randn(b, c, f, h, w, dtype=torch.float64)
    t = torch.rand(b, f, dtype=torch.float64) * 1000
    ctx = torch.randn(b, 4, 8, dtype=torch.float64)
    full = m(x, t, ctx, attn_mask=chunk_causal_mask(f, 2, (h // 2) * (w // 2)))
    cache = m.new_cache(b, f, h, w)
    chunks = [m(x[:, :, s:s + 2], t[:, s:s + 2], ctx, cache=cache, frame_offset=s) for s in range(0, f, 2)]
    assert torch.allclose(torch.cat(chunks, 2), full, atol=1e-10)


def _recompute_rollout(model, ctx, seeds, shape, cfg: RolloutConfig):
    """Reference: every forward recomputes the whole prefix (clean earlier chunks + current) under a chunk-causal mask."""
    c_, h_, w_ = shape
    sched = FlowMatchSchedule(cfg.shift, cfg.num_train_timesteps)
    gens = [torch.Generator().manual_seed(s) for s in seeds]
    noise = torch.stack([torch.randn((cfg.num_frames, c_, h_, w_), generator=g) for g in gens])
    out = torch.zeros_like(noise)
    tpf = model.tokens_per_frame(h_, w_)
    for ci, (start, n) in enumerate(cfg.chunk_frames()):
        x = noise[:, start:start + n]
        ts = cfg.timesteps(ci)
        for i, t in enumerate(ts):
            seq = torch.cat([out[:, :start], x], 1)
            tt = torch.cat([torch.zeros(len(seeds), start), torch.full((len(seeds), n), t)], 1)
            mask = chunk_causal_mask(start + n, cfg.frames_per_chunk, tpf)
            v = model(seq.transpose(1, 2), tt, ctx, attn_mask=mask).transpose(1, 2)[:, start:]
            x0 = (x.double() - sched.sigma(t) * v.double()).float()
            if i < len(ts) - 1:
                s_next = sched.sigma(ts[i + 1])
                eps = torch.stack([torch.randn((n, c_, h_, w_), generator=g) for g in gens])
                x = ((1 - s_next) * x0.double() + s_next * eps.double()).float()
        out[:, start:start + n] = x0
    return out


def test_kv_cache_rollout_equals_full_recompute(tiny_model):
    cfg = RolloutConfig(num_frames=6, frames_per_chunk=2)
    ctx = torch.randn(2, 4, 8)
    fast = rollout(tiny_model, ctx, [3, 4], (4, 4, 4), cfg)
    ref = _recompute_rollout(tiny_model, ctx, [3, 4], (4, 4, 4), cfg)
    assert torch.allclose(fast, ref, atol=1e-5), (fast - ref).abs().max()


@pytest.mark.slow
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_compiled_blocks_compile_three_graphs_for_a_whole_rollout(tiny_model, dtype):
    """torch.compile of each block (regional compile, as a max-autotune bf16 baseline would do it) over a 4-chunk
    rollout of 2 blocks: one graph for the video's first forward (no cross-attention K/V cached yet), one for chunk 0,
    one with the token offset dynamic for every later chunk; every block shares them (a block gets its LayerCache,
    not a Python-int layer index to specialise on). aot_eager runs the traced graphs with eager kernels, so the
    latents equal the eager ones bit for bit (also in bf16, whose eager forms write through out=)."""
    from torch._dynamo.utils import counters

    cfg = RolloutConfig(num_frames=8, frames_per_chunk=2, denoising_steps=[1000, 500])
    tiny_model = tiny_model.to(dtype)
    ctx = torch.randn(1, 4, 8).to(dtype)
    with torch.no_grad():
        ref = rollout(tiny_model, ctx, [0], (4, 8, 8), cfg)
        torch._dynamo.reset()
        counters.clear()
        try:
            for block in tiny_model.blocks:
                block.compile(backend="aot_eager")
            got = rollout(tiny_model, ctx, [0], (4, 8, 8), cfg)
            graphs = counters["stats"]["unique_graphs"]
        finally:
            torch._dynamo.reset()
    assert torch.equal(got, ref)
    assert graphs == 3, graphs
