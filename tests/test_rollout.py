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
