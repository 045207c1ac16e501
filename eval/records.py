"""Run records: the one JSON format every run writes (calibration and evaluation), and its one loader.

A record is a flat, self-describing dict, written as ``record.json`` into its run folder::

    {"schema": "qarvd.record/1", "stage": "evaluate",            # or "calibrate"
     "model": "self_forcing", "method": "qarvd", "bits": "w4a8", "calib": "default", "seed": 0,
     "tags": {"dual_scale": true, "frame_weighting": "final_quality", "tau": 3.5, "outlier_ratio": 1.2},
     "metrics": {"fvd_fp": 116.26, "lpips_fp": 0.466, "latent_mse": ..., "vbench_avg": 84.80, ...},
     "per_chunk": {"latent_mse": [...]},                         # curves over the rollout's chunks
     "per_item": {"<video or prompt>": {"psnr_fp": ..., ...}},  # paired values: the intervals resample these
     "num_items": 946, "fp_metrics": {...}, "unavailable": {"lpips_fp": "why it was not computed"},
     "provenance": {"artifact": ..., "weights": {...}, ...}}

``metrics`` holds one scalar per metric, the mean of ``per_item`` where the metric is per item (FVD-FP is a set
statistic; its per-pair features sit in ``fvd_features.safetensors`` next to the record). The full-precision model
is the record with ``bits == "bf16"``; when a sweep has none, it is derived from the records' ``fp_metrics`` and the
values reference-based metrics take for FP by definition.
"""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Iterable, Optional

import numpy as np

SCHEMA = "qarvd.record/1"
RECORD_FILE = "record.json"
STAGES = ("calibrate", "evaluate")
FP = "bf16"
REFERENCE_METRICS = ("fvd_fp", "lpips_fp", "psnr_fp", "ssim_fp")
LOWER_IS_BETTER = {"fvd_fp", "lpips_fp", "latent_mse"}
BY_DEFINITION = {"fvd_fp": 0.0, "lpips_fp": 0.0, "ssim_fp": 1.0, "latent_mse": 0.0}  # FP vs itself (PSNR: infinite)
VBENCH_KEYS = (
    "subject_consistency",
    "background_consistency",
    "motion_smoothness",
    "aesthetic_quality",
    "imaging_quality",
    "vbench_avg",
)
REQUIRED = ("schema", "stage", "model", "method", "bits", "metrics")
FEATURES_FILE = "fvd_features.safetensors"  # next to an evaluation record: FP and quantized features per video pair


def higher_is_better(metric: str) -> bool:
    """FVD, LPIPS and latent MSE fall as quality rises; PSNR, SSIM and VBench scores rise."""
    return metric not in LOWER_IS_BETTER


def new_record(stage: str, identity: dict, **fields) -> dict:
    """A record of ``stage`` with the identity keys (model, method, bits, ...) and the given fields."""
    if stage not in STAGES:
        raise ValueError(f"record stage {stage!r}; choose from {STAGES}")
    base = {"schema": SCHEMA, "stage": stage, "tags": {}, "metrics": {}, "per_chunk": {}, "per_item": {},
            "fp_metrics": {}, "unavailable": {}, "provenance": {}}
    return {**base, **identity, **fields}


def load_records(paths: Iterable[str | os.PathLike], stage: Optional[str] = None) -> list[dict]:
    """Records from files (one record or a JSON list of them) and folders (every ``record.json`` and
    ``*.record.json`` below them); ``stage`` keeps one stage. Each record gets ``_source`` (its file)."""
    records: list[dict] = []
    seen: set[Path] = set()  # a W&B run links record.json into its files/: the same file, read once
    for p in map(Path, paths):
        if p.is_dir():
            files = sorted(set(p.rglob(RECORD_FILE)) | set(p.rglob(f"*.{RECORD_FILE}")))
            if not files:
                raise FileNotFoundError(f"no {RECORD_FILE} below '{p}'")
        elif p.is_file():
            files = [p]
        else:
            raise FileNotFoundError(f"record path '{p}' does not exist")
        for f in files:
            if f.resolve() in seen:
                continue
            seen.add(f.resolve())
            data = json.loads(f.read_text(encoding="utf-8"))
            for r in data if isinstance(data, list) else [data]:
                check_record(r, f)
                if stage is None or r["stage"] == stage:
                    records.append({**r, "_source": str(f)})
    return records


def check_record(r: dict, source: str | os.PathLike = "<memory>") -> None:
    """A record must carry the schema and identity keys; anything else is not a record of this project."""
    if not isinstance(r, dict):
        raise ValueError(f"'{source}' holds a {type(r).__name__}, not a record")
    missing = [k for k in REQUIRED if k not in r]
    if missing:
        raise ValueError(f"record in '{source}' lacks {missing} (keys: {sorted(r)}); records are written by "
                         f"qarvd.app (schema {SCHEMA})")
    if r["schema"] != SCHEMA:
        raise ValueError(f"record in '{source}' has schema {r['schema']!r}; this version reads {SCHEMA!r}")
    if r["stage"] not in STAGES:
        raise ValueError(f"record in '{source}' has stage {r['stage']!r}; expected one of {STAGES}")


def fp_record(records: list[dict]) -> Optional[dict]:
    """The full-precision record: an explicit BF16 one, else one built from the first ``fp_metrics`` found plus the
    values the reference-based metrics take for the FP set by definition (FVD-FP 0, LPIPS-FP 0, SSIM-FP 1); None
    without any record."""
    for r in records:
        if r.get("bits") == FP:
            return r
    if not records:
        return None
    fp_metrics = next((r["fp_metrics"] for r in records if r.get("fp_metrics")), {})
    metrics = {**fp_metrics, **BY_DEFINITION}
    return {"schema": SCHEMA, "stage": records[0]["stage"], "model": records[0].get("model"), "method": FP, "bits": FP,
            "tags": {}, "metrics": metrics, "per_item": {}}


def save_fvd_features(folder: str | os.PathLike, names: list[str], fp, quant) -> Path:
    """The FVD backbone's features of every (FP, quantized) video pair, rows in ``names`` order, so that tables can
    bootstrap FVD-FP over video pairs (``fp``/``quant``: [N, D] tensors)."""
    import torch

    from qarvd.utils.io import save_safetensors_atomic

    if len(names) != len(fp) or len(names) != len(quant):
        raise ValueError(f"{len(names)} names for {len(fp)} FP and {len(quant)} quantized feature rows")
    return save_safetensors_atomic(Path(folder) / FEATURES_FILE, {"fp": torch.as_tensor(fp).double(),
                                   "quant": torch.as_tensor(quant).double()}, {"names": list(names)})


def load_fvd_features(record: dict) -> Optional[dict]:
    """``{"names", "fp", "quant"}`` (numpy) saved next to ``record`` by :func:`save_fvd_features`, or None."""
    source = record.get("_source")
    if not source:
        return None
    path = Path(source).parent / FEATURES_FILE
    if not path.is_file():
        return None
    from safetensors import safe_open

    with safe_open(str(path), "np") as f:
        names = json.loads(f.metadata()["names"])
        return {"names": names, "fp": np.asarray(f.get_tensor("fp")), "quant": np.asarray(f.get_tensor("quant"))}
