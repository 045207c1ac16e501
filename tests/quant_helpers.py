"""Helpers shared by the quantization tests: the debug=tiny pipeline and its prompts (seconds to run)."""
from __future__ import annotations

import copy

from hydra.utils import instantiate
from omegaconf import OmegaConf

from conftest import compose
from qarvd.models.pipeline import build_pipeline


def tiny_cfg(*overrides):
    """The composed root config shrunk by debug=tiny; the run folder is given explicitly by the tests."""
    return compose(["debug=tiny", "paths.output_dir=/nonexistent", "calib.cache_dir=null", *overrides])


def tiny_pipeline(*overrides):
    cfg = tiny_cfg(*overrides)
    return build_pipeline(cfg.model), cfg


def prompts(cfg, split: str, n: int) -> list[str]:
    return list(instantiate(cfg.model.prompts[split]))[:n]


def calib_dict(cfg) -> dict:
    return OmegaConf.to_container(cfg.calib, resolve=True)


def clone(pipeline):
    import dataclasses

    return dataclasses.replace(pipeline, model=copy.deepcopy(pipeline.model))
