"""End-to-end generation, prompt to mp4 on disk (81 frames 480x832): bf16 and real W8A8 in one run, FPS (GPU).

    python scripts/bench_generation_e2e.py out=benchmarks/results name=h100_generation_e2e videos=8
    python scripts/bench_generation_e2e.py out=benchmarks/results name=h100_generation_e2e_metrics videos=16 metrics=true \
        '+rows.fake={kernel:null,w_bits:4,a_bits:8,outliers:0,attention:auto,graphs:false}'   # + the metric stage per pair

:func:`qarvd.bench.generation_e2e.bench_generation` (what is timed and how) writes ``<out>/<name>.json``; settings in
conf/bench/generation_e2e.yaml.
"""
from __future__ import annotations

import logging

import hydra
from omegaconf import DictConfig

import qarvd.utils.hydra_resolvers  # noqa: F401  (registers ${qarvd_repo:} before composing)
from qarvd.bench.generation_e2e import bench_generation

log = logging.getLogger("bench_generation_e2e")


@hydra.main(version_base="1.3", config_path="../conf", config_name="bench/generation_e2e")
def main(cfg: DictConfig) -> None:
    try:
        path = bench_generation(cfg)
    except Exception:
        log.exception("bench_generation_e2e failed")
        raise
    print(f"results: {path}")


if __name__ == "__main__":
    main()
