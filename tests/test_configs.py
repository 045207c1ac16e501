"""Config groups compose, bad choices fail with Hydra's list of options, model configs build pipelines."""
from __future__ import annotations

from pathlib import Path

import pytest
from hydra.errors import ConfigCompositionException, MissingConfigException

from conftest import CONF_DIR, TINY_ARCH, compose

MODELS = sorted(p.stem for p in (Path(CONF_DIR) / "model").glob("*.yaml"))


def test_model_group_has_the_papers_models():
    assert {"tiny", "self_forcing", "causal_forcing_chunkwise", "causal_forcing_framewise"} <= set(MODELS)


@pytest.mark.parametrize("model", MODELS)
def test_every_model_config_composes_and_resolves(model):
    from omegaconf import OmegaConf

    cfg = compose([f"model={model}"])
    resolved = OmegaConf.to_container(cfg.model, resolve=True)
    assert resolved["name"] == model
    assert resolved["latent"]["channels"] == resolved["arch"]["in_dim"]


def test_unknown_group_option_lists_the_choices():
    with pytest.raises((MissingConfigException, ConfigCompositionException)) as err:
        compose(["model=selfforcing"])
    msg = str(err.value)
    assert "selfforcing" in msg and "tiny" in msg and "self_forcing" in msg


def test_causal_forcing_layouts():
    chunk = compose(["model=causal_forcing_chunkwise"]).model
    frame = compose(["model=causal_forcing_framewise"]).model
    assert chunk.checkpoint.key == "generator" and frame.checkpoint.key == "generator_ema"  # frame-wise runs --use_ema
    assert "model._fsdp_wrapped_module." in chunk.checkpoint.prefixes
    assert chunk.rollout.frames_per_chunk == 3 and frame.rollout.frames_per_chunk == 1


def test_random_init_self_forcing_config_builds_at_small_dims():
    """The self_forcing config path builds the real classes when only dims and weights are overridden."""
    from qarvd.models.pipeline import build_model

    cfg = compose(["model=self_forcing", "model.checkpoint.random_init=true"] +
                  [f"model.arch.{k}={list(v) if isinstance(v, tuple) else v}" for k, v in TINY_ARCH.items()])
    from omegaconf import OmegaConf

    model = build_model(OmegaConf.to_container(cfg.model.arch), "float32", cfg.model.checkpoint, 0)
    assert model.cfg.dim == TINY_ARCH["dim"] and not any(p.requires_grad for p in model.parameters())
