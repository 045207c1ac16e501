"""Judge the embedded model with its feature network: `python scripts/eval_tiny.py [-m model.rollout.guidance_scale=1,3]`.

Writes ``domain_metrics.json`` (caption accuracy per attribute of generated and real held-out videos, Fréchet
distances to a real set) and the resolved rollout settings into the run folder. The same numbers as the training
script's final evaluation, for any bundle and rollout setting without retraining.
"""
from __future__ import annotations

import json
import logging
from pathlib import Path

import hydra
from omegaconf import DictConfig, OmegaConf

import qarvd.utils.hydra_resolvers  # noqa: F401  (registers ${qarvd_asset:} etc.)
from qarvd.data.domain_eval import evaluate_domain
from qarvd.models.featnet import FeatNetBackbone
from qarvd.models.pipeline import build_pipeline
from qarvd.train.common import resolve_device
from qarvd.utils.io import atomic_write_json

log = logging.getLogger(__name__)


@hydra.main(config_path="../conf", config_name="eval_tiny", version_base="1.3")
def main(cfg: DictConfig) -> float:
    try:
        device = resolve_device(cfg.device)
        pipe = build_pipeline(cfg.model, device=device)
        featnet = FeatNetBackbone(cfg.featnet_path, device, 256)
        rc, (_, h, w) = pipe.rollout_cfg, pipe.latent_shape
        if h != w:
            raise ValueError(f"the feature network judges square frames; model.latent is {h}x{w}")
        metrics = evaluate_domain(lambda p, s: pipe.decode(pipe.generate_latents(p, s)), featnet, int(cfg.num_videos),
                                  rc.num_frames, h, int(cfg.seed), int(cfg.batch_size), list(cfg.noise_stds))
        metrics["rollout"] = OmegaConf.to_container(cfg.model.rollout, resolve=True)
        metrics["checkpoint"] = str(cfg.model.checkpoint.path)
        atomic_write_json(Path(cfg.paths.output_dir) / "domain_metrics.json", metrics)
    except Exception:
        log.exception("embedded-model evaluation failed")
        raise
    acc = metrics["caption_accuracy"]["generated"]
    log.info("caption accuracy (generated): %s", json.dumps({k: round(v, 4) for k, v in acc.items()}))
    return acc["all"]


if __name__ == "__main__":
    main()
