"""Diagnostics behind the latent tables: does a calibrated model generalise, and what does dual scale spend?

    python scripts/latent_diagnostics.py 'runs=[logs/latent_tables/w4a8_*,logs/latent_analysis/*]' prompts=8 \
        'baseline=[w4a8_adaround,w8a8_adaround]' out=results/latent_tables/diagnostics.json

Per train_quant run folder: the held-out MSE recomputed from the artifact per prompt, seen / unseen calibration-pool
MSE, reconstruction fit, outlier use; once per model the weight error of the dual-scale split. Writes the JSON ``out``
and its tables next to it (:func:`qarvd.app.diagnostics.latent_diagnostics`; settings in conf/latent_diagnostics.yaml).
"""
from __future__ import annotations

import logging
from pathlib import Path

import hydra
from omegaconf import DictConfig

import qarvd.utils.hydra_resolvers  # noqa: F401  (registers ${qarvd_repo:} etc. before composing)
from qarvd.app.diagnostics import latent_diagnostics

log = logging.getLogger("latent_diagnostics")


@hydra.main(version_base="1.3", config_path="../conf", config_name="latent_diagnostics")
def main(cfg: DictConfig) -> None:
    out = Path(cfg.out)
    try:
        latent_diagnostics(cfg, out)
    except Exception:
        log.exception("latent diagnostics failed")
        raise
    print(f"diagnostics: {out} and {out.with_suffix('.md')}")


if __name__ == "__main__":
    main()
