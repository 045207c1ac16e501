"""Result records: the JSON every evaluation writes, and the one shape tables, DS and dashboards read.

A record is a flat, self-describing dict::

    {"model": "self_forcing", "method": "qarvd", "bits": "w4a8",
     "tags": {"dual_scale": true, "frame_weighting": "final_quality", "tau": 3.5, "alpha": 1.2},
     "metrics": {"fvd_fp": 116.26, "lpips_fp": 0.466, "psnr_fp": ..., "ssim_fp": ...,
                 "subject_consistency": 97.05, ..., "vbench_avg": 84.80},
     "fp_metrics": {"subject_consistency": 97.25, ...},     # reference-free scores of the FP videos (BF16 row)
     "unavailable": {"lpips_fp": "why it was not computed"},
     "num_videos": 946, "fvd_backbone": "i3d"}

The full-precision model is the record with ``bits == "bf16"`` (method ``bf16``); when a sweep has none, it is
derived from the records' ``fp_metrics`` and the values reference-based metrics take for FP by definition.
"""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Iterable, Optional

RESULTS_FILE = "results.json"
FP = "bf16"
REFERENCE_METRICS = ("fvd_fp", "lpips_fp", "psnr_fp", "ssim_fp")
LOWER_IS_BETTER = {"fvd_fp", "lpips_fp"}
BY_DEFINITION = {"fvd_fp": 0.0, "lpips_fp": 0.0, "ssim_fp": 1.0}  # the FP set compared with itself (PSNR: infinite)
VBENCH_KEYS = (
    "subject_consistency",
    "background_consistency",
    "motion_smoothness",
    "aesthetic_quality",
    "imaging_quality",
    "vbench_avg",
)


def higher_is_better(metric: str) -> bool:
    """FVD and LPIPS fall as quality rises; PSNR, SSIM and VBench scores rise."""
    return metric not in LOWER_IS_BETTER


def load_results(paths: Iterable[str | os.PathLike]) -> list[dict]:
    """Records from files (one record or a list of them) and folders (every ``results.json`` below them)."""
    records: list[dict] = []
    seen: set[Path] = set()  # a W&B run links results.json into its files/: the same file, read once
    for p in map(Path, paths):
        if p.is_dir():
            files = sorted(p.rglob(RESULTS_FILE))
            if not files:
                raise FileNotFoundError(f"no {RESULTS_FILE} below '{p}'")
        elif p.is_file():
            files = [p]
        else:
            raise FileNotFoundError(f"result path '{p}' does not exist")
        for f in files:
            if f.resolve() in seen:
                continue
            seen.add(f.resolve())
            data = json.loads(f.read_text(encoding="utf-8"))
            for r in data if isinstance(data, list) else [data]:
                _check(r, f)
                records.append({**r, "_source": str(f)})
    return records


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
    return {"model": records[0].get("model"), "method": FP, "bits": FP, "tags": {}, "metrics": metrics}


def _check(r: dict, source: Path) -> None:
    for key in ("method", "bits", "metrics"):
        if key not in r:
            raise ValueError(f"result record in '{source}' has no '{key}' (keys: {sorted(r)})")
