"""Shared fixtures: a tiny random CausalWan model and Hydra composition helpers."""
from __future__ import annotations

import functools
import os
from pathlib import Path

import pytest
import torch

if not torch.cuda.is_available():  # before any test module imports kernels: Triton fixes the mode at decoration
    os.environ.setdefault("TRITON_INTERPRET", "1")

import qarvd.utils.hydra_resolvers  # noqa: F401  (registers ${qarvd_asset:} etc.)
from qarvd.models.wan import CausalWanModel, WanConfig

CONF_DIR = str(Path(__file__).resolve().parents[1] / "conf")
TINY_ARCH = dict(dim=32, ffn_dim=64, num_heads=2, num_layers=2, freq_dim=16, text_dim=8, text_len=4,
                 in_dim=4, out_dim=4, patch_size=(1, 2, 2))


@pytest.fixture
def tiny_cfg() -> WanConfig:
    return WanConfig(**TINY_ARCH)


@pytest.fixture
def tiny_model(tiny_cfg) -> CausalWanModel:
    torch.manual_seed(0)
    return CausalWanModel(tiny_cfg).eval()


def compose(overrides=(), config_name: str = "config"):
    """Compose conf/<config_name>.yaml with overrides (no Hydra run dir is created)."""
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir

    with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
        return hydra_compose(config_name, overrides=list(overrides))


@functools.lru_cache(maxsize=None)
def _video_settings(key: str) -> tuple:
    from omegaconf import OmegaConf

    return tuple(OmegaConf.to_container(OmegaConf.select(compose(), key), resolve=True).items())


def conf_encoding(key: str = "eval.video", **changes):
    """The VideoEncoding of ``key`` in conf/ (its one source of values), with ``changes``."""
    from eval.video_io import VideoEncoding

    return VideoEncoding(**{**dict(_video_settings(key)), **changes})


REPO = Path(__file__).resolve().parents[1]
# a sweep of the debug model at 32x32 (LPIPS needs frames that big): 2 chunks, 2 videos per job, all metrics
TINY_SWEEP = ["model=tiny", "eval=default", "debug=tiny", "calib=fast", "calib.iters=2", "calib.eval_prompts=1",
              "calib.sensitivity_prompts=2", "model.prompts.eval.count=2", "model.latent.height=32",
              "model.latent.width=32", "eval.lpips.pnet_rand=true", "logger=none"]


def run_sweep(root: Path, preset: str, *overrides: str) -> Path:
    """``scripts/evaluate.py -m experiment=<preset>`` on the debug model under ``root``; returns the sweep folder."""
    import subprocess
    import sys

    out = subprocess.run([sys.executable, "scripts/evaluate.py", "-m", f"experiment={preset}", *TINY_SWEEP, *overrides,
                          f"paths.log_dir={root}"], cwd=REPO, capture_output=True, text=True, timeout=1200,
                         env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    (sweep,) = (root / "evaluate" / "multiruns").iterdir()
    return sweep


@pytest.fixture(scope="session")
def tau_sweep(tmp_path_factory) -> Path:
    """Two jobs of the tau sweep (tau 3.0 and 3.5), evaluated (~25 s on 2 cores)."""
    return run_sweep(tmp_path_factory.mktemp("tau"), "tau_sweep", "method.outlier.tau=3.0,3.5")
