"""Chunk-adaptive precision: the allocator's schedules and the measured ones, quality against GPU seconds.

    python scripts/schedule_report.py quality=results/precision_schedule/deploy_quality.json \
        latency=benchmarks/results/h100_issue20_schedule.json sensitivity=<run>/sensitivity.json out=<folder>

Writes schedule_report.{json,md,png} (:func:`qarvd.app.schedule_report.schedule_report`; settings in
conf/schedule_report.yaml).
"""
import hydra
from omegaconf import DictConfig

import qarvd.utils.hydra_resolvers  # noqa: F401  (registers ${qarvd_repo:} etc.)
from qarvd.app.schedule_report import schedule_report


@hydra.main(version_base="1.3", config_path="../conf", config_name="schedule_report")
def main(cfg: DictConfig) -> None:
    res = schedule_report(cfg)
    print(f"schedule report: {cfg.out}/schedule_report.md (allocator: {' '.join(res['allocation']['schedule'])})")


if __name__ == "__main__":
    main()
