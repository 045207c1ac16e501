"""Outlier patterns of the FP weights (paper Eq. 9-12, Fig. 3, Fig. 4).

    python scripts/outliers.py                                   # tiny model, tau 3.5, alpha 1.2
    python scripts/outliers.py model=self_forcing method.outlier.tau=3.0

Writes ``outliers.json`` (per-layer statistics, summaries by layer type and by block), ``fig3_outlier_patterns.png``
(sorted column norms, detected outliers in red) and ``fig4_outlier_ratio.png`` (share of layers with outliers by layer
type and by block depth) into the run folder (:func:`qarvd.app.outlier_report.outlier_report`).
"""
from __future__ import annotations

import logging
from pathlib import Path

import hydra
from omegaconf import DictConfig

import qarvd.utils.hydra_resolvers  # noqa: F401  (registers ${qarvd_asset:} etc. before composing)
from qarvd.app.outlier_report import outlier_report

log = logging.getLogger("outliers")


@hydra.main(version_base="1.3", config_path="../conf", config_name="outliers")
def main(cfg: DictConfig) -> int:
    out = Path(cfg.paths.output_dir)
    summary = outlier_report(cfg, out)  # a failure's traceback goes to the job log (JobLog callback)
    log.info("%d of %d block linears have outliers", summary["layers_with_outliers"], summary["layers"])
    print(f"statistics: {out / 'outliers.json'}\n"
          f"figures:    {out / 'fig3_outlier_patterns.png'}, {out / 'fig4_outlier_ratio.png'}")
    return summary["layers_with_outliers"]


if __name__ == "__main__":
    main()
