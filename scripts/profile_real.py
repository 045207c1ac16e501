"""Time and memory of the real-model path: umT5 text encoding, DiT rollout and VAE decoding, reported separately.

    python scripts/profile_real.py tokenizer=<google/umt5-xxl folder> out=benchmarks/results name=profile_real_h100
    python scripts/profile_real.py device=cpu batch_sizes=[1] <model.* overrides shrinking the model>   # smoke run

:func:`qarvd.bench.real_profile.profile_real` (what is timed) writes ``<out>/<name>.json``; settings in
conf/bench/profile_real.yaml (the root config with ``model=self_forcing`` and random weights).
"""
from __future__ import annotations

import logging

import hydra
from omegaconf import DictConfig

import qarvd.utils.hydra_resolvers  # noqa: F401  (registers ${qarvd_repo:} etc. before composing)
from qarvd.bench.real_profile import profile_real

log = logging.getLogger("profile_real")


@hydra.main(version_base="1.3", config_path="../conf", config_name="bench/profile_real")
def main(cfg: DictConfig) -> None:
    try:
        path = profile_real(cfg)
    except Exception:
        log.exception("profile_real failed (model=%s, device=%s)", cfg.model.name, cfg.device)
        raise
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
