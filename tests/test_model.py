"""CausalWan DiT: real architecture sizes, embeddings, and KV-cache inference equal to a full recompute."""
from __future__ import annotations

import math

import pytest
import torch

from qarvd.models.rollout import FlowMatchSchedule, RolloutConfig, rollout
from qarvd.models.wan import (CausalWanModel, WanConfig, apply_rope, chunk_causal_mask, count_parameters,
                              rope_split, sinusoidal_embedding_1d)


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
def test_compiled_blocks_compile_three_graphs_for_a_whole_rollout(tiny_model):
    """torch.compile of each block (regional compile, as a max-autotune bf16 baseline would do it) over a 4-chunk
    rollout of 2 blocks: one graph for the video's first forward (no cross-attention K/V cached yet), one for chunk 0,
    one with the token offset dynamic for every later chunk; every block shares them (a block gets its LayerCache,
    not a Python-int layer index to specialise on). aot_eager runs the traced graphs with eager kernels, so the
    latents equal the eager ones bit for bit."""
    from torch._dynamo.utils import counters

    cfg = RolloutConfig(num_frames=8, frames_per_chunk=2, denoising_steps=[1000, 500])
    ctx = torch.randn(1, 4, 8)
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
