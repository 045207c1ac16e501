"""Q-ARVD W4A8 calibration cost at Wan2.1-1.3B dims with the lock-step reconstruction (>= 3 blocks timed end to
end, 30 projected; GPU).

    python scripts/bench_calibration_batched.py out=benchmarks/results name=h100_calibration_batched blocks=3 'probe_modes=[fp32,tf32,tf32_compile]'

:func:`qarvd.bench.calibration_batched.profile_batched_calibration` (what is timed and how) writes ``<out>/<name>.json``; settings in
conf/bench/calibration_batched.yaml.
"""
from __future__ import annotations

import logging

import hydra
from omegaconf import DictConfig

import qarvd.utils.hydra_resolvers  # noqa: F401  (registers ${qarvd_repo:} before composing)
from qarvd.bench.calibration_batched import profile_batched_calibration

log = logging.getLogger("bench_calibration_batched")


@hydra.main(version_base="1.3", config_path="../conf", config_name="bench/calibration_batched")
def main(cfg: DictConfig) -> None:
    try:
        path = profile_batched_calibration(cfg)
    except Exception:
        log.exception("bench_calibration_batched failed")
        raise
    print(f"results: {path}")


if __name__ == "__main__":
    main()
