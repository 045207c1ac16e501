"""The sample figure of a model (scripts/make_sample_grid.py's stage): every frame of every chunk, one row per prompt.

Frames are grouped by chunk (gap between chunks), so what each autoregressive step produced stays visible.
"""
from __future__ import annotations

from pathlib import Path

import torch
from omegaconf import DictConfig

from eval.strip import grid_image, save_png
from qarvd.models.pipeline import build_pipeline


def sample_grid(cfg: DictConfig, out: str | Path) -> Path:
    """Roll out ``cfg.prompts`` (prompt i with seed ``cfg.seed + i``) on ``cfg.model`` (conf/sample_grid.yaml) and
    write their frames as one PNG to ``out``; return ``out``."""
    pipe = build_pipeline(cfg.model, device=cfg.device)
    prompts = list(cfg.prompts)
    seeds = [int(cfg.seed) + i for i in range(len(prompts))]
    with torch.no_grad():
        videos = pipe.decode(pipe.generate_latents(prompts, seeds))
    rc = pipe.rollout_cfg
    title = (f"model={cfg.model.name}: {rc.num_chunks} chunks x {rc.frames_per_chunk} frames, "
             f"{videos.shape[-1]}x{videos.shape[-2]} px, seeds {seeds[0]}..{seeds[-1]}")
    save_png(grid_image(videos, prompts, rc.frames_per_chunk, int(cfg.scale), title=title), out)
    return Path(out)
