"""Offline sm_90 (H100/H200) compile check of every Triton kernel the rollout launches, on a machine without a GPU.

    python scripts/compile_sm90.py jobs=2          # writes <run dir>/compile_sm90.json; exit 1 on a failure

:func:`qarvd.bench.compile_sm90.compile_sm90` says what is compiled and checked (shared memory, registers); settings
in conf/bench/compile_sm90.yaml. Runs in a fresh process: the check turns Triton's interpreter off before any kernel
is imported.
"""
from __future__ import annotations

import sys

import hydra
from omegaconf import DictConfig

import qarvd.utils.hydra_resolvers  # noqa: F401  (registers ${qarvd_repo:} before composing)
from qarvd.bench.compile_sm90 import compile_sm90


@hydra.main(version_base="1.3", config_path="../conf", config_name="bench/compile_sm90")
def main(cfg: DictConfig) -> None:
    path, failed = compile_sm90(cfg)
    print(f"results: {path}")
    if failed:
        sys.exit(1)


if __name__ == "__main__":
    main()
