"""Where a result came from: run labels, the identity of the weight files, and the record of a run's provenance.

Labels are derived, never typed twice: ``bits`` is named from its bit widths, ``method`` from the method config.
Weight files are identified by sha256 (path, size and time say nothing about contents), so a result names its exact
model and a cache or artifact made from other weights at the same path is refused.
"""
from __future__ import annotations

import hashlib
from pathlib import Path

from omegaconf import DictConfig


def file_sha256(path: str | Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def experiment_preset() -> str | None:
    """The ``experiment=`` preset of the running Hydra job (which table the record belongs to), or None."""
    from hydra.core.hydra_config import HydraConfig

    return HydraConfig.get().runtime.choices.get("experiment") if HydraConfig.initialized() else None


def run_identity(cfg: DictConfig) -> dict:
    """What a result row needs to say where it came from."""
    random_init = bool(cfg.model.checkpoint.get("random_init", False))
    return {"model": cfg.model.name, "method": cfg.method.name, "bits": cfg.bits.name, "calib": cfg.calib.name,
            "seed": int(cfg.seed), "random_init": random_init, "experiment": experiment_preset(),
            "checkpoint": None if random_init else str(cfg.model.checkpoint.path)}


def checkpoint_identity(cfg: DictConfig) -> dict:
    """The DiT weights a run used: seeded random init, or the checkpoint file (path, size, mtime): a cheap key for
    caches that are re-validated by content elsewhere."""
    ck = cfg.model.checkpoint
    if ck.get("random_init", False):
        return {"random_init": True, "init_seed": int(cfg.model.init_seed)}
    p = Path(str(ck.path))
    st = p.stat() if p.exists() else None
    return {"path": str(p), "size": st.st_size if st else None, "mtime": st.st_mtime if st else None}


def weights_identity(cfg: DictConfig) -> dict:
    """sha256 of every weight file the run reads (DiT checkpoint, text encoder); {} for seeded random weights."""
    out = {}
    for key in ("checkpoint", "text_encoder"):
        node = cfg.model.get(key)
        if node is None or node.get("random_init", False) or not node.get("path"):
            continue
        p = Path(str(node.path))
        out[f"model.{key}"] = {"path": str(p), "sha256": file_sha256(p) if p.is_file() else None}
    return out
