"""Paired comparison of two cells from their run records: a minus b per metric with its 95 % bootstrap interval
over the shared videos (and the calibrations, where a side lists several runs of one cell with their own calib.seed).

    python scripts/compare_runs.py 'a=[runs/qarvd_w4a8]' 'b=[runs/adaround_w4a8]'
    python scripts/compare_runs.py 'a=[runs/qarvd_s0,runs/qarvd_s1,runs/qarvd_s2]' 'b=[runs/ada_s0,runs/ada_s1]' \
        'metrics=[psnr_fp,fvd_fp]' out=cmp.json
"""
from pathlib import Path

import hydra
from omegaconf import DictConfig

import qarvd.utils.hydra_resolvers  # noqa: F401  (registers ${qarvd_repo:} etc.)
from eval.compare import compare, comparison_markdown
from eval.records import load_records
from qarvd.utils.io import atomic_write_json


@hydra.main(version_base="1.3", config_path="../conf", config_name="compare_runs")
def main(cfg: DictConfig) -> None:
    if not cfg.a or not cfg.b:
        raise ValueError("give both sides: a=[<record or run folder>, ...] b=[...]")
    result = compare(load_records(list(cfg.a), stage="evaluate") or load_records(list(cfg.a)),
                     load_records(list(cfg.b), stage="evaluate") or load_records(list(cfg.b)),
                     list(cfg.metrics) if cfg.metrics else None, int(cfg.n_boot), int(cfg.seed))
    print(comparison_markdown(result))
    if cfg.out:
        atomic_write_json(Path(cfg.out), result)


if __name__ == "__main__":
    main()
