"""Multi-GPU generation throughput: the same video list through ``torchrun scripts/generate.py`` on 1 and on N GPUs.

    python scripts/bench_generate_scaling.py gpus=[1,2] videos=16 out=benchmarks/results name=generate_scaling_h200x2
    python scripts/bench_generate_scaling.py device=cpu videos=4 'overrides=["model.arch.dim=32",...]'   # CPU smoke

:func:`qarvd.bench.generate_scaling.generate_scaling` (what is measured) writes ``<out>/<name>.json``; settings in
conf/bench/generate_scaling.yaml.
"""
from __future__ import annotations

import logging

import hydra
from omegaconf import DictConfig

import qarvd.utils.hydra_resolvers  # noqa: F401  (registers ${qarvd_repo:} before composing)
from qarvd.bench.generate_scaling import generate_scaling

log = logging.getLogger("bench_generate_scaling")


@hydra.main(version_base="1.3", config_path="../conf", config_name="bench/generate_scaling")
def main(cfg: DictConfig) -> None:
    try:
        path = generate_scaling(cfg)
    except Exception:
        log.exception("bench_generate_scaling failed (gpus=%s, device=%s)", list(cfg.gpus), cfg.device)
        raise
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
