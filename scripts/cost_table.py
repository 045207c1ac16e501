"""GPU-hours of the paper's tables on the real models (calibration + generation + metrics per job), computed only from
measured benchmark JSON files; a cost without a measurement is printed "not measured", never 0.

    python scripts/cost_table.py out=results/cost_table
    python scripts/cost_table.py out=results/cost_table generation.json=<e2e json> metrics.json=<e2e json with metrics=true>
    python scripts/cost_table.py tables=[table2] projection=tf32_compile strict=true 'job_overrides=["eval.count=64"]'

:func:`qarvd.bench.cost_table.cost_table` (what is counted and how) writes ``<out>/<name>.md`` and ``.json``;
settings in conf/cost_table.yaml.
"""
from __future__ import annotations

import logging

import hydra
from omegaconf import DictConfig

import qarvd.utils.hydra_resolvers  # noqa: F401  (registers ${qarvd_repo:} before composing)
from qarvd.bench.cost_table import cost_table

log = logging.getLogger("cost_table")


@hydra.main(version_base="1.3", config_path="../conf", config_name="cost_table")
def main(cfg: DictConfig) -> None:
    try:
        _, path = cost_table(cfg)
    except Exception:
        log.exception("cost_table failed")
        raise
    print(path.read_text())
    print(f"written: {path} and {path.with_suffix('.json')}")


if __name__ == "__main__":
    main()
