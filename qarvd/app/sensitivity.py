"""Frame (chunk) sensitivity of an ARVD under quantization (paper Eq. 3-4, Fig. 2): scripts/sensitivity.py's stage.

The model is quantized with the percentile initialisation only (no reconstruction); for each chunk k only chunk k's
forwards (denoising steps + refresh) run quantized. The alpha file is usable as ``method.sensitivity_file``.
"""
from __future__ import annotations

from pathlib import Path

from omegaconf import DictConfig

from eval.plots import plot_chunk_alpha
from qarvd.app.calibrate import build_calibration
from qarvd.app.provenance import run_identity
from qarvd.methods.base import measure_sensitivity
from qarvd.utils.io import atomic_write_json


def frame_sensitivity(cfg: DictConfig, out_dir: str | Path) -> dict:
    """Measure alpha for ``cfg.model`` at ``cfg.bits`` (conf/sensitivity.yaml); write ``sensitivity.json`` (alpha, raw
    MSE, settings) and ``fig2_sensitivity.png`` into ``out_dir``; return the JSON's contents."""
    out = Path(out_dir)
    cal, _, _ = build_calibration(cfg, out)
    result = {**run_identity(cfg), **measure_sensitivity(cal), "prompts_from": "model.prompts.calib"}
    result.pop("method", None)  # alpha depends on the model and bits, not on the method it will weight
    atomic_write_json(out / "sensitivity.json", result)
    plot_chunk_alpha(result["frame_alpha"], f"{cfg.model.name} {cfg.bits.name.upper()}, {result['num_prompts']} prompts",
                     out / "fig2_sensitivity.png")
    return result
