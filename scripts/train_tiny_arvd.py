"""Train the embedded ARVD (`model=tiny`).

    python scripts/train_tiny_arvd.py device=cuda train.steps=1400 train.first_chunk_batch=512   # stage 1 (README)
    python scripts/train_tiny_arvd.py device=cuda init_from=<stage-1 bundle> train.lr=3e-4        # stage 2

Writes tiny_arvd.safetensors (EMA weights + metadata) and tiny_arvd_metrics.json into the run folder (and the
bundle to ``export_path`` if set). With a feature network at ``featnet_path`` it also reports caption accuracy
and Fréchet distances of the trained model (qarvd.embedded.domain_eval).
"""
from __future__ import annotations

import json
import logging
from pathlib import Path

import hydra
from omegaconf import DictConfig

import qarvd.utils.hydra_resolvers  # noqa: F401  (registers ${qarvd_asset:} etc.)
from qarvd.app.embedded import train_arvd

log = logging.getLogger(__name__)


@hydra.main(config_path="../conf", config_name="train_tiny", version_base="1.3")
def main(cfg: DictConfig) -> float:
    metrics = train_arvd(cfg, Path(cfg.paths.output_dir))  # a failure's traceback goes to the job log (JobLog callback)
    log.info("tiny ARVD metrics: %s", json.dumps(metrics))
    return metrics.get("domain", {}).get("caption_accuracy", {}).get("generated", {}).get("all", float("nan"))


if __name__ == "__main__":
    main()
