"""Judge the embedded model with its feature network (caption accuracy, Fréchet distances).

    python scripts/eval_tiny.py                                        # the shipped bundle, default rollout
    python scripts/eval_tiny.py -m model.rollout.guidance_scale=1,1.5,2  # one job per guidance weight

Writes ``domain_metrics.json`` (caption accuracy per attribute of generated and real held-out videos, Fréchet
distances to a real set) and the resolved rollout settings into the run folder. The same numbers as the training
script's final evaluation, for any bundle and rollout setting without retraining.
"""
from __future__ import annotations

import json
import logging
from pathlib import Path

import hydra
from omegaconf import DictConfig

import qarvd.utils.hydra_resolvers  # noqa: F401  (registers ${qarvd_asset:} etc.)
from qarvd.app.embedded import judge_bundle

log = logging.getLogger(__name__)


@hydra.main(config_path="../conf", config_name="eval_tiny", version_base="1.3")
def main(cfg: DictConfig) -> float:
    metrics = judge_bundle(cfg, Path(cfg.paths.output_dir))  # a failure's traceback goes to the job log (JobLog callback)
    acc = metrics["caption_accuracy"]["generated"]
    log.info("caption accuracy (generated): %s", json.dumps({k: round(v, 4) for k, v in acc.items()}))
    print(f"metrics: {Path(cfg.paths.output_dir) / 'domain_metrics.json'}")
    return acc["all"]


if __name__ == "__main__":
    main()
