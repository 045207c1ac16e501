"""train_quant: outputs, the demo entry point, bit-width ordering, and bad input (choices, bits, NaN)."""
from __future__ import annotations

import hashlib
import json
import subprocess
import sys
from pathlib import Path

import pytest
from hydra.errors import ConfigCompositionException, MissingConfigException

from conftest import compose
from qarvd.app.calibrate import train_quant
from qarvd.app.provenance import weights_identity
from quant_helpers import tiny_cfg
from wandb_records import read_run

ROOT = Path(__file__).resolve().parents[1]


def test_cli_demo_writes_artifact_config_and_metrics(tmp_path):
    out = subprocess.run([sys.executable, "scripts/train_quant.py", "debug=tiny", f"hydra.run.dir={tmp_path}", f"paths.log_dir={tmp_path}/logs"],
                         cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    assert f"artifact: {tmp_path}" in out.stdout and f"record:   {tmp_path / 'record.json'}" in out.stdout
    names = {p.name for p in tmp_path.iterdir()}
    assert {"quant_artifact.safetensors", "quant_config.json", "resolved_config.yaml", "record.json"} <= names
    m = json.loads((tmp_path / "record.json").read_text())
    assert (m["method"], m["bits"], m["calib"], m["model"], m["stage"]) == ("minmax", "w4a8", "default", "tiny", "calibrate")
    assert len(m["per_item"]) == m["num_items"] == 2 and len(m["per_chunk"]["latent_mse"]) == 2
    assert m["metrics"]["latent_mse"] == pytest.approx(sum(v["latent_mse"] for v in m["per_item"].values()) / 2, rel=1e-12)
    assert "${" not in (tmp_path / "resolved_config.yaml").read_text()
    (run,) = (tmp_path / "wandb").glob("offline-run-*")  # logger=wandb (offline) is the default: the job's W&B run
    wb = read_run(run)
    assert wb["run"]["job_type"] == "train_quant" and wb["run"]["tags"] == ["tiny", "minmax", "w4a8"]
    assert wb["summary"]["calibrate/latent_mse"] == pytest.approx(m["metrics"]["latent_mse"])
    assert wb["summary"]["weight_bytes"] == m["weight_bytes"] and wb["exit_code"] == 0
    assert "job train_quant finished in" in (tmp_path / "train_quant.log").read_text()


def test_error_grows_as_bits_shrink_on_the_tiny_model(tmp_path):
    """W8A8 < W4A8 < W4A6 latent MSE with MinMax on the embedded model (full dims, 2 eval prompts)."""
    mse = {}
    for bits in ("w8a8", "w4a8", "w4a6"):
        cfg = compose(["method=minmax", f"bits={bits}", "calib.eval_prompts=2", "paths.output_dir=/nonexistent"])
        mse[bits] = train_quant(cfg, tmp_path / bits)["metrics"]["latent_mse"]
    assert mse["w8a8"] < mse["w4a8"] < mse["w4a6"], mse


@pytest.mark.parametrize("override,choice", [("method=gptq", "qarvd"), ("bits=w3a8", "w4a6")])
def test_unknown_method_or_bits_lists_the_choices(override, choice):
    with pytest.raises((MissingConfigException, ConfigCompositionException)) as err:
        compose([override])
    assert choice in str(err.value)


@pytest.mark.parametrize("key,value", [("bits.w_bits", 9), ("bits.a_bits", 1)])
def test_bits_outside_2_to_8_fail_before_anything_is_written(key, value, tmp_path):
    with pytest.raises(ValueError, match=rf"{key}={value}.*2 to 8"):
        train_quant(tiny_cfg(f"{key}={value}"), tmp_path)
    assert not tmp_path.exists() or not any(tmp_path.iterdir())


def test_nan_activation_stops_the_run_naming_layer_and_chunk_and_saves_nothing(tmp_path, monkeypatch):
    from qarvd.models.context import current_forward
    from qarvd.app import calibrate as runner
    from qarvd.quant.linear import NonFiniteActivationError, QuantLinear

    real_build = runner.build_pipeline

    def poisoned(*a, **k):
        pipe = real_build(*a, **k)

        def hook(module, args):  # NaN inputs once the model is being calibrated (the FP reference stays clean)
            info = current_forward()
            if info is not None and info.chunk == 1 and any(isinstance(m, QuantLinear) for m in pipe.model.modules()):
                return (args[0] * float("nan"),)

        pipe.model.blocks[1].ffn.register_forward_pre_hook(hook)
        return pipe

    monkeypatch.setattr(runner, "build_pipeline", poisoned)
    with pytest.raises(NonFiniteActivationError, match=r"blocks\.1\.ffn\.0.*chunk 1"):
        train_quant(tiny_cfg("method=adaround"), tmp_path)
    assert not (tmp_path / "record.json").exists() and not (tmp_path / "quant_artifact.safetensors").exists()


def test_results_name_their_weights_by_file_hash(tmp_path):
    """Every weight file a run reads is identified by sha256 (recorded in the run record and the resume fingerprint)."""
    bundle = tmp_path / "bundle.safetensors"
    bundle.write_bytes(b"weights v1")
    cfg = compose([f"model.checkpoint.path={bundle}"])
    ids = weights_identity(cfg)
    assert ids["model.checkpoint"] == {"path": str(bundle), "sha256": hashlib.sha256(b"weights v1").hexdigest()}
    assert ids["model.text_encoder"]["sha256"] == ids["model.checkpoint"]["sha256"]  # same bundle file
    bundle.write_bytes(b"weights v2")  # retrained model at the same path: a different identity
    assert weights_identity(cfg)["model.checkpoint"]["sha256"] == hashlib.sha256(b"weights v2").hexdigest()
    assert weights_identity(compose(["model.checkpoint.random_init=true"])) == {}
