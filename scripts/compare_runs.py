"""Paired comparison of two cells from their run records: a minus b per metric with its 95 % bootstrap interval
over the shared videos (and the calibrations, where a side lists several runs of one cell with their own calib.seed).

    python scripts/compare_runs.py 'a=[runs/qarvd_w4a8]' 'b=[runs/adaround_w4a8]'
    python scripts/compare_runs.py 'a=[runs/qarvd_s0,runs/qarvd_s1,runs/qarvd_s2]' 'b=[runs/ada_s0,runs/ada_s1]' \
        'metrics=[psnr_fp,fvd_fp]' out=cmp.json
"""
import hydra
from omegaconf import DictConfig

import qarvd.utils.hydra_resolvers  # noqa: F401  (registers ${qarvd_repo:} etc.)
from eval.compare import comparison_markdown
from qarvd.app.report import compare_runs


@hydra.main(version_base="1.3", config_path="../conf", config_name="compare_runs")
def main(cfg: DictConfig) -> None:
    print(comparison_markdown(compare_runs(cfg)))


if __name__ == "__main__":
    main()
