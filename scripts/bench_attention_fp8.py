"""Does FP8 attention beat cuDNN's bf16 attention at the rollout's shapes? Time and error, one run (GPU).

    python scripts/bench_attention_fp8.py out=benchmarks/results name=attention_fp8 [impls=[cudnn]]

:func:`qarvd.bench.attention_fp8.bench_attention_fp8` (what is timed and how) writes ``<out>/<name>.json``; settings
in conf/bench/attention_fp8.yaml.
"""
from __future__ import annotations

import logging

import hydra
from omegaconf import DictConfig

import qarvd.utils.hydra_resolvers  # noqa: F401  (registers ${qarvd_repo:} before composing)
from qarvd.bench.attention_fp8 import bench_attention_fp8

log = logging.getLogger("bench_attention_fp8")


@hydra.main(version_base="1.3", config_path="../conf", config_name="bench/attention_fp8")
def main(cfg: DictConfig) -> None:
    try:
        path = bench_attention_fp8(cfg)
    except Exception:
        log.exception("bench_attention_fp8 failed (impls=%s)", list(cfg.impls))
        raise
    print(f"results: {path}")


if __name__ == "__main__":
    main()
