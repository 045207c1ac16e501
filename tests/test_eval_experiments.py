"""Every paper-table preset composes on the embedded model, and its sweep has the paper's grid of jobs."""
from __future__ import annotations

import math

import pytest
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

import conftest

GRIDS = {  # preset -> (model it targets, number of jobs in its sweep)
    "table1": ("causal_forcing_chunkwise", 18),
    "table2": ("self_forcing", 18),
    "table3": ("self_forcing", 8),
    "table4": ("self_forcing", 4),
    "table5": ("self_forcing", 5),
    "tau_sweep": ("self_forcing", 5),
}


def _same(got, value: str) -> bool:
    try:
        return math.isclose(float(got), float(value))
    except ValueError:
        return str(got).lower() == value.lower()


@pytest.mark.parametrize("preset", sorted(GRIDS))
def test_preset_grid_and_every_swept_value_on_the_embedded_model(preset):
    model, jobs = GRIDS[preset]
    with initialize_config_dir(config_dir=conftest.CONF_DIR, version_base="1.3"):
        cfg = compose("config", [f"experiment={preset}"], return_hydra_config=True)
        assert cfg.model.name == model and cfg.eval.fvd.backbone == "i3d" and cfg.eval.share_fp
        axes = {k: [v.strip() for v in str(vals).split(",")] for k, vals in cfg.hydra.sweeper.params.items()}
        assert math.prod(len(v) for v in axes.values()) == jobs
        for key, values in axes.items():
            for value in values:  # each swept value composes on the embedded model and reaches the config
                job = compose("config", [f"experiment={preset}", "model=tiny", "eval=default", f"{key}={value}"])
                assert job.model.name == "tiny" and job.eval.fvd.backbone == "featnet"
                got = job[key].name if key in ("method", "bits") else OmegaConf.select(job, key)
                assert _same(got, value), (key, value, got)
                if key == "method.dual_scale":
                    assert job.eval.tags.dual_scale == (value == "true")  # recorded as a tag for Tables 3-5


def test_alpha_sweep_is_table5():
    with initialize_config_dir(config_dir=conftest.CONF_DIR, version_base="1.3"):
        a, b = (compose("config", [f"experiment={p}"], return_hydra_config=True) for p in ("alpha_sweep", "table5"))
    assert a.hydra.sweeper.params == b.hydra.sweeper.params and a.method == b.method
