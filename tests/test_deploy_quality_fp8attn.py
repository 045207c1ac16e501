"""scripts/deploy_quality.py --attention: the FP8-attention row of a calibrated run, end to end on the debug=tiny model."""
from __future__ import annotations

import json
import math
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def test_fp8_attention_row_next_to_the_default_row(tmp_path):
    from qarvd.app.calibrate import train_quant
    from quant_helpers import tiny_cfg

    sys.path.insert(0, str(ROOT / "scripts"))
    try:
        import deploy_quality
    finally:
        sys.path.pop(0)
    run = tmp_path / "run"
    train_quant(tiny_cfg("method=minmax", "bits=w8a8"), run)
    deploy_quality.main(["--run", str(run), "--out", str(tmp_path), "--weights", "artifact",
                         "--attention", "default", "cudnn_fp8", "--batch", "2"])
    res = json.loads((tmp_path / "deploy_quality.json").read_text())
    assert res["prompts"] == 2 and res["attention_calibration_prompts"] == 1
    default, fp8 = res["rows"]
    assert (default["attention"], fp8["attention"]) == ("default", "cudnn_fp8")
    assert default["vs_fake_quant"] == pytest.approx(1.0, abs=0.05)  # the existing criterion, unchanged
    assert len(fp8["latent_mse"]["per_chunk"]) == 2 and math.isfinite(fp8["latent_mse"]["overall"])
    # FP8 attention moves the rollout away from the fake-quant one (it ran) and adds error, but not an order of
    # magnitude: 1.23x the default row's MSE to FP here, 2.12x on the embedded model (results/deploy_quality_fp8attn)
    assert fp8["mse_to_fake_quant"] > 2 * default["mse_to_fake_quant"]
    assert 1.0 < fp8["latent_mse"]["overall"] / default["latent_mse"]["overall"] < 3
