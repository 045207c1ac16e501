"""Render the sample figure of a model: every frame of every chunk for a few prompts, one row per prompt.

    python scripts/make_sample_grid.py                     # model=tiny -> docs/images/tiny_samples.png

Frames are grouped by chunk (gap between chunks), so what each autoregressive step produced stays visible.
"""
from __future__ import annotations

import logging

import hydra
import torch
from omegaconf import DictConfig

import qarvd.utils.hydra_resolvers  # noqa: F401  (registers ${qarvd_asset:} etc.)
from eval.strip import grid_image, save_png
from qarvd.models.pipeline import build_pipeline

log = logging.getLogger(__name__)


@hydra.main(config_path="../conf", config_name="sample_grid", version_base="1.3")
def main(cfg: DictConfig) -> None:
    try:
        pipe = build_pipeline(cfg.model, device=cfg.device)
        prompts = list(cfg.prompts)
        seeds = [int(cfg.seed) + i for i in range(len(prompts))]
        with torch.no_grad():
            videos = pipe.decode(pipe.generate_latents(prompts, seeds))
        rc = pipe.rollout_cfg
        title = (f"model={cfg.model.name}: {rc.num_chunks} chunks x {rc.frames_per_chunk} frames, "
                 f"{videos.shape[-1]}x{videos.shape[-2]} px, seeds {seeds[0]}..{seeds[-1]}")
        save_png(grid_image(videos, prompts, rc.frames_per_chunk, int(cfg.scale), title=title), cfg.out)
    except Exception:
        log.exception("sample grid failed")
        raise
    log.info("wrote %s", cfg.out)


if __name__ == "__main__":
    main()
