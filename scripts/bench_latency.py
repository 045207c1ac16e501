"""Latency and size of the CausalWan DiT rollout: bf16 baselines against real W8A8 / W4A8 / FP8 kernels.

    python scripts/bench_latency.py out=benchmarks/results tune=true          # H100: tune GEMM tiles, then everything
    TRITON_INTERPRET=1 python scripts/bench_latency.py device=cpu arch=tiny   # CPU smoke run
    python scripts/bench_latency.py out=benchmarks/results name=b2 sections=[rollout] batches=[2] rows=[w8a8_graph]

Rows are conf/kernel choices plus overrides (``row_specs`` in conf/bench/latency.yaml, with every setting);
:func:`qarvd.bench.latency.bench_latency` runs the sections and writes ``<out>/<name>.json`` and ``<name>.md``.
"""
from __future__ import annotations

import logging

import hydra
from omegaconf import DictConfig

import qarvd.utils.hydra_resolvers  # noqa: F401  (registers ${qarvd_repo:} before composing)
from qarvd.bench.latency import bench_latency

log = logging.getLogger("bench_latency")


@hydra.main(version_base="1.3", config_path="../conf", config_name="bench/latency")
def main(cfg: DictConfig) -> None:
    try:
        path = bench_latency(cfg)
    except Exception:
        log.exception("bench_latency failed (device=%s, arch=%s)", cfg.device, cfg.arch)
        raise
    print(f"results: {path}\ntable:   {path.with_suffix('.md')}")


if __name__ == "__main__":
    main()
