"""The embedded ARVD's training matches its inference, trains deterministically, and the shipped bundle works."""
from __future__ import annotations

from pathlib import Path

import pytest
import torch
from omegaconf import open_dict

from conftest import compose
from qarvd.models.rollout import FlowMatchSchedule, RolloutConfig
from qarvd.train.layout import context_frames, teacher_forcing_mask, token_layout
from qarvd.train.tiny_arvd import TinyARVD, sample_sigmas

ARCH = dict(dim=32, ffn_dim=64, num_heads=2, num_layers=2, freq_dim=16, text_dim=8, text_len=4, in_dim=3, out_dim=3,
            patch_size=(1, 4, 4))


def test_teacher_forced_forward_equals_the_cached_rollout_forwards():
    """One training forward gives, for every chunk, exactly the flow the rollout's KV-cache forward gives when
    the earlier chunks were refreshed clean at t=0 (float64, so any layout error shows up far above 1e-12)."""
    torch.manual_seed(0)
    nets = TinyARVD(ARCH, 4).double()
    rc = RolloutConfig(num_frames=7, frames_per_chunk=3)  # chunks of 3, 3, 1 frames
    x0, xt = torch.randn(2, 2, 3, 7, 8, 8, dtype=torch.float64)
    sigma = torch.tensor([[0.9] * 3 + [0.6] * 3 + [0.3], [1.0] * 3 + [0.625] * 3 + [0.8]], dtype=torch.float64)
    text = torch.randn(2, 4, 8, dtype=torch.float64)
    mask = teacher_forcing_mask(rc, nets.model.tokens_per_frame(8, 8))
    v, x0_hat = nets.predict_x0(x0[:, :, : context_frames(rc)], xt, sigma, text, mask, rc)
    model, cache = nets.model, nets.model.new_cache(2, 7, 8, 8)
    for start, n in rc.chunk_frames():
        v_chunk = model(xt[:, :, start : start + n], sigma[:, start : start + n] * 1000, text, cache=cache, frame_offset=start)
        assert (v_chunk - v[:, :, start : start + n]).abs().max() < 1e-12
        model(x0[:, :, start : start + n], torch.zeros(2, n, dtype=torch.float64), text, cache=cache, frame_offset=start)
    assert torch.allclose(x0_hat, xt - sigma[:, None, :, None, None] * v)


def test_mask_rule_on_chunk_pairs():
    rc = RolloutConfig(num_frames=9, frames_per_chunk=3)  # 3 chunks: 2 clean context chunks + 3 noisy chunks
    mask = teacher_forcing_mask(rc, 1)
    ids, noisy = token_layout(rc, 1)
    assert mask.shape == (6 + 9, 6 + 9) and noisy.sum() == 9

    def tok(chunk, is_noisy):  # first token of that chunk in that half
        return int(((ids == chunk) & (noisy == is_noisy)).nonzero()[0])

    assert mask[tok(1, False), tok(0, False)] and mask[tok(1, False), tok(1, False)]
    assert not mask[tok(0, False), tok(1, False)]  # clean context is causal
    assert mask[tok(2, True), tok(1, False)] and not mask[tok(1, True), tok(1, False)]  # noisy sees earlier clean only
    assert mask[tok(1, True), tok(1, True)] and not mask[tok(2, True), tok(1, True)]  # noisy chunks see only themselves
    assert not mask[tok(0, False), tok(0, True)]  # nothing clean looks at noise


def test_noise_levels_are_the_rollout_timesteps_per_chunk():
    rc = RolloutConfig()
    gen = torch.Generator().manual_seed(0)
    sig = sample_sigmas(rc, 512, 1.0, gen, "cpu")
    warped = torch.tensor([FlowMatchSchedule().sigma(t) for t in rc.timesteps(0)], dtype=torch.float32)
    assert sig.shape == (512, 21)
    assert torch.isin(sig, warped).all()
    assert (sig.view(512, 7, 3) == sig.view(512, 7, 3)[..., :1]).all()  # constant within a chunk
    assert len(torch.unique(sig[:, 0])) == 4 and len(torch.unique(sig[:, ::3], dim=0)) > 100  # chunks independent
    mixed = sample_sigmas(rc, 4096, 0.5, gen, "cpu")
    assert 0.4 < torch.isin(mixed, warped).float().mean() < 0.6


def _train_cfg(tmp_path, steps, resume=None):
    cfg = compose(["model=tiny"], config_name="train_tiny")
    with open_dict(cfg):
        cfg.device, cfg.resume, cfg.featnet_path = "cpu", resume, None
        cfg.model.arch.update({k: list(v) if isinstance(v, tuple) else v for k, v in ARCH.items()})
        cfg.model.latent.update(height=16, width=16)
        cfg.model.rollout.num_frames = 6
        cfg.train.update(steps=steps, batch_size=2, checkpoint_every=2, probe_every=0, warmup_steps=1)
        cfg.train.own_context.start_fraction = 0.5
        cfg.eval.num_videos = 0
    return cfg


def test_training_resumes_to_the_same_weights_and_writes_a_bundle(tmp_path, monkeypatch):
    from safetensors.torch import load_file

    import qarvd.train.tiny_arvd as tiny
    from qarvd.models.checkpoint import read_metadata

    straight, resumed = tmp_path / "a", tmp_path / "b"
    straight.mkdir(), resumed.mkdir()
    save = tiny.save_state

    def keep_step_two(path, state):  # the state an interrupted run would have left behind
        save(path, state)
        if state["step"] == 2:
            save(resumed / "state.pt", state)

    monkeypatch.setattr(tiny, "save_state", keep_step_two)
    tiny.train_tiny_arvd(_train_cfg(tmp_path, 4), straight)
    monkeypatch.setattr(tiny, "save_state", save)
    metrics = tiny.train_tiny_arvd(_train_cfg(tmp_path, 4, resume=str(resumed)), resumed)
    assert metrics["resumed_at"] == 2
    a, b = load_file(straight / "tiny_arvd.safetensors"), load_file(resumed / "tiny_arvd.safetensors")
    assert a.keys() == b.keys() and any(k.startswith("text_encoder.") for k in a)
    assert all(torch.equal(a[k], b[k]) for k in a)
    meta = read_metadata(straight / "tiny_arvd.safetensors")
    assert meta["vae"] == {"kind": "identity"} and meta["wan_config"]["dim"] == 32
    assert set(meta["text_encoder"]) == {"text_dim", "text_len", "vocab", "vocab_size"}
    assert meta["training"]["seed"] == 0 and meta["metrics"]["steps"] == 4
