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


def _conf(path: str):
    from pathlib import Path

    from conftest import CONF_DIR

    return OmegaConf.to_container(OmegaConf.load(Path(CONF_DIR) / path), resolve=False)


def outlier_cfg(**overrides):
    """OutlierConfig with the YAML defaults (conf/method/recipe/base.yaml, resolved for the default model), some
    overridden."""
    from qarvd.quant.outliers import OutlierConfig

    return OutlierConfig(**{**OmegaConf.to_container(compose([]).method.outlier, resolve=True), **overrides})


def recon_cfg(**overrides):
    """ReconConfig with the YAML defaults (conf/calib/default.yaml, the base recipe's skipped roles), some overridden."""
    import dataclasses

    from qarvd.methods.base import recon_config

    base = recon_config(_conf("calib/default.yaml"), _conf("method/recipe/base.yaml")["recon_skip_roles"], 0)
    return dataclasses.replace(base, **overrides)


def recipe(method: str, **overrides):
    """The method's recipe object as its config builds it, some fields overridden."""
    return instantiate(compose([f"method={method}"]).method, **overrides, _convert_="all")
