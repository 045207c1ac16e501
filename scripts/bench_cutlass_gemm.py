"""INT8 GEMM with its dequantizing epilogue (CUTLASS) against cuBLAS bf16 and FP8 at the Wan shapes, one run (GPU).

    python scripts/bench_cutlass_gemm.py out=benchmarks/results name=cutlass_gemm

:func:`qarvd.bench.cutlass_gemm.bench_cutlass_gemm` (what is timed and how) writes ``<out>/<name>.json``; settings in
conf/bench/cutlass_gemm.yaml.
"""
from __future__ import annotations

import logging

import hydra
from omegaconf import DictConfig

import qarvd.utils.hydra_resolvers  # noqa: F401  (registers ${qarvd_repo:} before composing)
from qarvd.bench.cutlass_gemm import bench_cutlass_gemm

log = logging.getLogger("bench_cutlass_gemm")


@hydra.main(version_base="1.3", config_path="../conf", config_name="bench/cutlass_gemm")
def main(cfg: DictConfig) -> None:
    try:
        path = bench_cutlass_gemm(cfg)
    except Exception:
        log.exception("bench_cutlass_gemm failed")
        raise
    print(f"results: {path}")


if __name__ == "__main__":
    main()
