"""Quality of the real-kernel deployment against the fake-quant rollout it replaces, on the embedded model.

    python scripts/deploy_quality.py run=logs/latent_tables/w8a8_minmax out=/tmp/dq
    python scripts/deploy_quality.py run=<dir> out=$OUT kernels=[triton_int8] device=cuda   # the real kernels
    python scripts/deploy_quality.py run=<dir> 'attention=[default,cudnn_fp8]'               # adds FP8 attention rows

``run`` is a ``scripts/train_quant.py`` output folder. Writes ``deploy_quality.json``: the latent MSE to the FP
rollout of every (kernel, weights, dual mode, attention) row, and its ratio to the fake-quant MSE
(:func:`qarvd.app.deploy_quality.deploy_quality`; settings in conf/deploy_quality.yaml).
"""
from __future__ import annotations

import logging
from pathlib import Path

import hydra
from omegaconf import DictConfig

import qarvd.utils.hydra_resolvers  # noqa: F401  (registers ${qarvd_repo:} etc. before composing)
from qarvd.app.deploy_quality import deploy_quality

log = logging.getLogger("deploy_quality")


@hydra.main(version_base="1.3", config_path="../conf", config_name="deploy_quality")
def main(cfg: DictConfig) -> None:
    out = Path(cfg.out)
    try:
        deploy_quality(cfg, out)
    except Exception:
        log.exception("deploy_quality failed (run=%s)", cfg.run)
        raise
    print(f"deploy quality: {out / 'deploy_quality.json'}")


if __name__ == "__main__":
    main()
