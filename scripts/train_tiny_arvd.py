"""Train the embedded ARVD (`model=tiny`): `python scripts/train_tiny_arvd.py [overrides]`.

Writes tiny_arvd.safetensors (EMA weights + metadata) and tiny_arvd_metrics.json into the run folder (and the
bundle to ``export_path`` if set). With a feature network at ``featnet_path`` it also reports caption accuracy
and Fréchet distances of the trained model (qarvd.data.domain_eval).
"""
from __future__ import annotations

import json
import logging
from pathlib import Path

import hydra
from omegaconf import DictConfig

import qarvd.utils.hydra_resolvers  # noqa: F401  (registers ${qarvd_asset:} etc.)
from qarvd.models.featnet import FeatNetBackbone
from qarvd.train.common import resolve_device
from qarvd.train.tiny_arvd import train_tiny_arvd

log = logging.getLogger(__name__)


@hydra.main(config_path="../conf", config_name="train_tiny", version_base="1.3")
def main(cfg: DictConfig) -> float:
    try:
        featnet = FeatNetBackbone(cfg.featnet_path, resolve_device(cfg.device), 256) if cfg.featnet_path else None
        metrics = train_tiny_arvd(cfg, Path(cfg.paths.output_dir), featnet)
    except Exception:
        log.exception("tiny ARVD training failed")
        raise
    log.info("tiny ARVD metrics: %s", json.dumps(metrics))
    return metrics.get("domain", {}).get("caption_accuracy", {}).get("generated", {}).get("all", float("nan"))


if __name__ == "__main__":
    main()
