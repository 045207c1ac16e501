"""deploy_quality (scripts/deploy_quality.py) attention=[default,cudnn_fp8]: the FP8-attention row of a calibrated run, end to end on the debug=tiny model."""
from __future__ import annotations

import json
import math

import pytest


def test_fp8_attention_row_next_to_the_default_row(tmp_path):
    from conftest import compose
    from qarvd.app.calibrate import train_quant
    from qarvd.app.deploy_quality import deploy_quality
    from quant_helpers import tiny_cfg

    run = tmp_path / "run"
    train_quant(tiny_cfg("method=minmax", "bits=w8a8"), run)
    deploy_quality(compose([f"run='{run}'", "weights=[artifact]", "attention=[default,cudnn_fp8]", "prompts_per_batch=2"],
                           "deploy_quality"), tmp_path)
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


@pytest.mark.parametrize("override,key", [("kernels=[cutlass]", "kernels"), ("attention=[fp4]", "attention"),
                                          ("formats=[w4a8@1]", "formats")])
def test_unknown_choice_fails_before_any_rollout(tmp_path, override, key):
    from conftest import compose
    from qarvd.app.deploy_quality import deploy_quality

    with pytest.raises(ValueError, match=f"^{key}="):  # the run folder does not even exist: checked first
        deploy_quality(compose([f"run='{tmp_path / 'missing'}'", override], "deploy_quality"), tmp_path)
