"""The embedded ARVD's training matches its inference, trains deterministically, and the shipped bundle works."""
from __future__ import annotations

import torch
from omegaconf import open_dict

from conftest import compose
from qarvd.models.rollout import FlowMatchSchedule, RolloutConfig
from qarvd.embedded.train_layout import context_frames, teacher_forcing_mask, token_layout
from qarvd.embedded.train_arvd import TinyARVD, sample_sigmas

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
        cfg.train.update(steps=steps, videos_per_step=2, checkpoint_every=2, probe_every=0, warmup_steps=1)
        cfg.train.own_context.start_fraction = 0.5
        cfg.eval.num_videos = 0
    return cfg


def test_training_resumes_to_the_same_weights_and_writes_a_bundle(tmp_path, monkeypatch):
    from safetensors.torch import load_file

    import qarvd.embedded.train_arvd as tiny
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


# ----------------------------------------------------------------------------------------------- the shipped bundle
def _shipped():
    from qarvd.utils.hydra_resolvers import ASSET_DIR

    return ASSET_DIR / "tiny_arvd.safetensors"


def test_shipped_bundle_matches_the_tiny_config():
    from omegaconf import OmegaConf

    from qarvd.models.checkpoint import read_metadata, read_state_dict

    path = _shipped()
    assert path.stat().st_size <= 50 * 2**20
    meta, sd = read_metadata(path), read_state_dict(path)
    assert {k.split(".")[0] for k in sd} == {"model", "text_encoder"}
    cfg = compose(["model=tiny"]).model
    arch = OmegaConf.to_container(cfg.arch, resolve=True)
    assert {k: meta["wan_config"][k] for k in arch} == {k: list(v) if isinstance(v, tuple) else v for k, v in arch.items()}
    # keys added to RolloutConfig after a bundle was trained take their defaults there
    assert RolloutConfig(**meta["rollout"]) == RolloutConfig(**OmegaConf.to_container(cfg.rollout, resolve=True))
    assert meta["vae"] == {"kind": "identity"} and meta["text_encoder"]["vocab_size"] == len(meta["text_encoder"]["vocab"]) + 2
    assert meta["training"]["command"].startswith("python scripts/train_tiny_arvd.py") and "seed" in meta["training"]


def test_model_tiny_loads_the_shipped_bundle():
    from qarvd.models.pipeline import build_pipeline

    cfg = compose(["model=tiny", "model.checkpoint.random_init=false"]).model
    pipe = build_pipeline(cfg)
    assert pipe.rollout_cfg.num_chunks >= 7


def test_trained_model_draws_the_prompted_colour_and_motion():
    """Eight prompts: the trained bundle's videos show the prompted colour and direction (read by the feature
    network); the same architecture with random weights does not."""
    from qarvd.embedded.domain_eval import accuracy
    from qarvd.embedded.procedural import caption_prompts
    from qarvd.models.checkpoint import read_metadata, read_state_dict
    from qarvd.embedded.featnet import FeatNetBackbone
    from qarvd.embedded.train_arvd import generate_fn, pipeline_of
    from qarvd.utils.hydra_resolvers import ASSET_DIR

    meta = read_metadata(_shipped())
    rc = RolloutConfig(**meta["rollout"])
    judge = FeatNetBackbone(ASSET_DIR / "featnet.safetensors")
    prompts = caption_prompts("eval", 8)
    scores = {}
    for name in ("trained", "random"):
        torch.manual_seed(0)
        nets = TinyARVD(meta["wan_config"], meta["wan_config"]["text_len"])
        if name == "trained":
            nets.load_state_dict(read_state_dict(_shipped()))
        videos = generate_fn(pipeline_of(nets.eval(), rc, 32))(prompts, list(range(100000, 100008)))
        scores[name] = accuracy(judge, videos, prompts)
    assert scores["trained"]["color"] >= 0.75 and scores["trained"]["direction"] >= 0.75, scores
    assert scores["random"]["color"] <= 0.5 and scores["random"]["direction"] <= 0.5, scores
