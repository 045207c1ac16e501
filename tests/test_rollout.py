"""Rollout semantics of self-forcing / causal-forcing: forward sequence, warped timesteps, seeded noise."""
from __future__ import annotations

import pytest
import torch

from qarvd.models.context import current_forward
from qarvd.models.rollout import FlowMatchSchedule, RolloutConfig, rollout


def _record(model):
    seen = []
    model.register_forward_pre_hook(lambda mod, args: seen.append(current_forward()))
    return seen


def test_warped_timesteps_match_self_forcing():
    ts = FlowMatchSchedule(shift=5.0).warp([1000, 750, 500, 250])
    assert ts == pytest.approx([1000.0, 937.5, 833.33, 625.0], abs=1e-2)


def test_five_forwards_per_chunk_with_published_sequence(tiny_model):
    cfg = RolloutConfig(num_frames=21, frames_per_chunk=3)
    seen = _record(tiny_model)
    rollout(tiny_model, torch.randn(1, 4, 8), [0], (4, 4, 4), cfg)
    assert len(seen) == 7 * 5 == len(cfg.forward_infos())
    expected = []
    for c in range(7):
        expected += [(c, i, t, False) for i, t in enumerate([1000.0, 937.5, 833.333, 625.0])]
        expected.append((c, 4, 0.0, True))
    got = [(f.chunk, f.step, round(f.timestep, 3), f.refresh) for f in seen]
    assert got == [(c, s, pytest.approx(t, abs=1e-3), r) for c, s, t, r in expected]
    assert all(f.num_chunks == 7 for f in seen)
    assert current_forward() is None


def test_skipping_the_last_refresh_keeps_the_video(tiny_model):
    """refresh_last=False drops exactly the last chunk's refresh forward (34 of 35), and the latents are identical:
    no chunk reads the cache it would write."""
    ctx = torch.randn(2, 4, 8, generator=torch.Generator().manual_seed(5))
    full, short = RolloutConfig(num_frames=21, frames_per_chunk=3), RolloutConfig(num_frames=21, frames_per_chunk=3,
                                                                                  refresh_last=False)
    seen = _record(tiny_model)
    want = rollout(tiny_model, ctx, [0, 1], (4, 4, 4), full)
    n_full = len(seen)
    got = rollout(tiny_model, ctx, [0, 1], (4, 4, 4), short)
    skipped = seen[n_full:]
    assert (n_full, len(skipped)) == (35, 34) == (len(full.forward_infos()), len(short.forward_infos()))
    assert [f.refresh for f in skipped].count(True) == 6 and not skipped[-1].refresh
    assert torch.equal(got, want)
    with pytest.raises(ValueError, match="refresh_last"):
        RolloutConfig(refresh_last="no")


def test_framewise_mode_has_21_chunks(tiny_model):
    cfg = RolloutConfig(num_frames=21, frames_per_chunk=1)
    seen = _record(tiny_model)
    rollout(tiny_model, torch.randn(1, 4, 8), [0], (4, 2, 2), cfg)
    assert cfg.num_chunks == 21 and len(seen) == 21 * 5
    assert sorted({f.chunk for f in seen}) == list(range(21))


def test_first_chunk_steps_variant(tiny_model):
    cfg = RolloutConfig(num_frames=3, frames_per_chunk=1, denoising_steps=[1000], first_chunk_steps=[1000, 750, 500, 250])
    seen = _record(tiny_model)
    rollout(tiny_model, torch.randn(1, 4, 8), [0], (4, 2, 2), cfg)
    assert [sum(1 for f in seen if f.chunk == c) for c in range(3)] == [5, 2, 2]


def test_noise_depends_only_on_the_prompt_seed(tiny_model):
    cfg = RolloutConfig(num_frames=4, frames_per_chunk=2)
    ctx = torch.randn(2, 4, 8)
    both = rollout(tiny_model, ctx, [11, 12], (4, 4, 4), cfg)
    torch.manual_seed(123)
    torch.randn(1000)  # unrelated draws must not change anything
    alone = rollout(tiny_model, ctx[1:], [12], (4, 4, 4), cfg)
    assert torch.allclose(both[1], alone[0], atol=1e-6)
    other = rollout(tiny_model, ctx[1:], [13], (4, 4, 4), cfg)
    assert not torch.allclose(other[0], alone[0])


def test_mismatched_seeds_raise(tiny_model):
    with pytest.raises(ValueError, match="seeds"):
        rollout(tiny_model, torch.randn(2, 4, 8), [1], (4, 4, 4), RolloutConfig(num_frames=2, frames_per_chunk=1))


def test_guidance_with_the_prompt_as_negative_is_the_unguided_rollout(tiny_model):
    """v_neg + w (v_pos - v_neg) = v_pos when both branches see the same text, for any w, over every chunk."""
    ctx = torch.randn(2, 4, 8)
    plain = rollout(tiny_model, ctx, [3, 4], (4, 4, 4), RolloutConfig(num_frames=4, frames_per_chunk=2))
    guided = rollout(tiny_model, ctx, [3, 4], (4, 4, 4), RolloutConfig(num_frames=4, frames_per_chunk=2, guidance_scale=3.0),
                     negative_context=ctx.clone())
    assert torch.allclose(plain, guided, atol=1e-5)


def test_guidance_extrapolates_the_x0_of_one_step(tiny_model):
    """One chunk, one step: x0 is linear in v, so the guided x0 is x0_neg + w (x0_pos - x0_neg) of two plain rollouts."""
    ctx, neg = torch.randn(1, 4, 8), torch.randn(1, 4, 8)
    one = dict(num_frames=2, frames_per_chunk=2, denoising_steps=[1000])
    x_pos = rollout(tiny_model, ctx, [5], (4, 4, 4), RolloutConfig(**one))
    x_neg = rollout(tiny_model, neg, [5], (4, 4, 4), RolloutConfig(**one))
    x_cfg = rollout(tiny_model, ctx, [5], (4, 4, 4), RolloutConfig(**one, guidance_scale=2.5), negative_context=neg)
    assert (x_pos - x_neg).abs().max() > 1e-3  # the two texts do lead to different videos
    assert torch.allclose(x_cfg, x_neg + 2.5 * (x_pos - x_neg), atol=1e-5)


def test_guided_rollout_runs_one_doubled_batch_per_forward(tiny_model):
    shapes = []
    tiny_model.register_forward_pre_hook(lambda mod, args: shapes.append(args[0].shape[0]))
    cfg = RolloutConfig(num_frames=4, frames_per_chunk=2, guidance_scale=2.0)
    rollout(tiny_model, torch.randn(3, 4, 8), [0, 1, 2], (4, 4, 4), cfg, negative_context=torch.zeros(3, 4, 8))
    assert shapes == [6] * len(cfg.forward_infos())


def test_guidance_without_negative_context_or_with_bad_settings_raises(tiny_model):
    with pytest.raises(ValueError, match="negative_context"):
        rollout(tiny_model, torch.randn(1, 4, 8), [0], (4, 4, 4), RolloutConfig(num_frames=2, frames_per_chunk=2, guidance_scale=2.0))
    with pytest.raises(ValueError, match="guidance_scale"):
        RolloutConfig(guidance_scale=-1.0)
    with pytest.raises(ValueError, match="sampler"):
        RolloutConfig(sampler="ddpm")


def test_euler_sampler_steps_the_flow_ode(tiny_model):
    """Two steps of the Euler sampler: x_1 = x_0 + (s1 - s0) v(x_0, t0); output x_1 - s1 v(x_1, t1), no fresh noise."""
    cfg = RolloutConfig(num_frames=2, frames_per_chunk=2, denoising_steps=[1000, 500], sampler="euler", shift=1.0)
    ctx = torch.randn(1, 4, 8)
    out = rollout(tiny_model, ctx, [9], (4, 4, 4), cfg)
    x = torch.randn((2, 4, 4, 4), generator=torch.Generator().manual_seed(9))[None]  # the rollout's noise draw
    cache = tiny_model.new_cache(1, 2, 4, 4)
    with torch.no_grad():
        v0 = tiny_model(x.transpose(1, 2), torch.full((1, 2), 1000.0), ctx, cache=cache, frame_offset=0).transpose(1, 2)
        x1 = x + (0.5 - 1.0) * v0
        v1 = tiny_model(x1.transpose(1, 2), torch.full((1, 2), 500.0), ctx, cache=cache, frame_offset=0).transpose(1, 2)
    assert torch.allclose(out, x1 - 0.5 * v1, atol=1e-5)
