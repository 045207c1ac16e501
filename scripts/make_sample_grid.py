"""Render the sample figure of a model: every frame of every chunk for a few prompts, one row per prompt.

    python scripts/make_sample_grid.py                     # model=tiny -> docs/images/tiny_samples.png

Frames are grouped by chunk, so what each autoregressive step produced stays visible
(:func:`qarvd.app.sample_grid.sample_grid`).
"""
from __future__ import annotations

import logging

import hydra
from omegaconf import DictConfig

import qarvd.utils.hydra_resolvers  # noqa: F401  (registers ${qarvd_asset:} etc.)
from qarvd.app.sample_grid import sample_grid

log = logging.getLogger(__name__)


@hydra.main(config_path="../conf", config_name="sample_grid", version_base="1.3")
def main(cfg: DictConfig) -> None:
    try:
        out = sample_grid(cfg, cfg.out)
    except Exception:
        log.exception("sample grid failed")
        raise
    print(f"sample grid: {out}")


if __name__ == "__main__":
    main()
