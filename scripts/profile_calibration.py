"""Calibration cost at Wan2.1-T2V-1.3B dims (random weights): capture + layer-wise reconstruction of one block.

    python scripts/profile_calibration.py device=cuda out=benchmarks/results name=profile_calibration_h100
    python scripts/profile_calibration.py device=cpu small=true iters=5 out=/tmp/p   # smoke run

:func:`qarvd.bench.calibration_profile.profile_calibration` (the stages, the projection) writes ``<out>/<name>.json``;
settings in conf/bench/profile_calibration.yaml.
"""
from __future__ import annotations

import logging

import hydra
from omegaconf import DictConfig

import qarvd.utils.hydra_resolvers  # noqa: F401  (registers ${qarvd_repo:} before composing)
from qarvd.bench.calibration_profile import profile_calibration

log = logging.getLogger("profile_calibration")


@hydra.main(version_base="1.3", config_path="../conf", config_name="bench/profile_calibration")
def main(cfg: DictConfig) -> None:
    try:
        path = profile_calibration(cfg)
    except Exception:
        log.exception("profile_calibration failed (device=%s)", cfg.device)
        raise
    print(f"profile: {path}")


if __name__ == "__main__":
    main()
