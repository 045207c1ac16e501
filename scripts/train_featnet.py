"""Train the embedded domain's video feature network (the FVD backbone of model=tiny).

    python scripts/train_featnet.py device=cuda seed=0 train.steps=2000
    python scripts/train_featnet.py export_path=qarvd/assets/featnet.safetensors   # also replace the shipped one

Writes featnet.safetensors and featnet_metrics.json into the run folder (and to ``export_path`` if set).
"""
from __future__ import annotations

import json
import logging
from pathlib import Path

import hydra
from omegaconf import DictConfig

import qarvd.utils.hydra_resolvers  # noqa: F401  (registers ${qarvd_asset:} etc.)
from qarvd.app.embedded import train_featnet

log = logging.getLogger(__name__)


@hydra.main(config_path="../conf", config_name="train_featnet", version_base="1.3")
def main(cfg: DictConfig) -> float:
    metrics = train_featnet(cfg, Path(cfg.paths.output_dir))  # a failure's traceback goes to the job log (JobLog callback)
    log.info("featnet metrics: %s", json.dumps(metrics))
    return metrics["heldout_accuracy"]["all"]


if __name__ == "__main__":
    main()
