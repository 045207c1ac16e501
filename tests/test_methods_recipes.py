"""Every method recipe runs end to end on the debug-size model, saves a reloadable artifact and does its own thing."""
from __future__ import annotations

import json

import pytest
import torch

from qarvd.app.calibrate import train_quant
from qarvd.quant.artifact import CONFIG_FILE, load_artifact
from quant_helpers import prompts, recipe, tiny_cfg, tiny_pipeline

METHODS = ["minmax", "adaround", "smoothquant", "ptq4dit", "svdquant", "qarvd"]
FORCE_OUTLIERS = ["method.outlier.tau=0.5", "method.outlier.outlier_ratio=1.0"]  # random weights rarely have outliers


def _check_smoothquant(layers, metrics):
    assert all(s["folded_into"] == s["name"].replace("cross_attn.q", "norm3") for s in layers.values()
               if s["name"].endswith("cross_attn.q"))
    assert metrics["calibration"]["prepare"]["smoothed_layers"] == len(layers)


def _check_ptq4dit(layers, metrics):
    assert metrics["calibration"]["prepare"]["balanced_layers"] == 2 * 9  # every block linear but ffn.2


def _check_svdquant(layers, metrics):
    assert all(s["lowrank_rank"] == 32 for s in layers.values())
    assert all(0.0 <= a <= 1.0 for a in metrics["calibration"]["prepare"]["smooth_strength"].values())


def _check_qarvd(layers, metrics):
    cal = metrics["calibration"]
    assert cal["dual_scale_layers"] > 0 and sum(s["groups"] == 2 for s in layers.values()) == cal["dual_scale_layers"]
    assert len(cal["frame_weighting"]["frame_alpha"]) == 2 and sum(cal["frame_weighting"]["frame_alpha"]) == pytest.approx(1.0)


CHECKS = {"smoothquant": _check_smoothquant, "ptq4dit": _check_ptq4dit, "svdquant": _check_svdquant, "qarvd": _check_qarvd}


@pytest.mark.parametrize("method", METHODS)
def test_method_runs_saves_and_reloads_bitwise(method, tmp_path):
    cfg = tiny_cfg(f"method={method}", "bits=w4a8", *(FORCE_OUTLIERS if method == "qarvd" else []))
    metrics = train_quant(cfg, tmp_path)
    mse = {"overall": metrics["metrics"]["latent_mse"], "per_chunk": metrics["per_chunk"]["latent_mse"],
           "per_prompt": [v["latent_mse"] for v in metrics["per_item"].values()]}
    assert len(mse["per_chunk"]) == 2 and 0 < mse["overall"] < 1 and metrics["calib"] == "default"
    assert ("recon" in metrics["calibration"]) == (method != "minmax")
    if method != "minmax":
        units = metrics["calibration"]["recon"]["units"]
        assert len(units) == 2 * 8 and all(u["loss_final"] < u["loss_nearest"] * 1.5 for u in units.values())
    layers = json.loads((tmp_path / CONFIG_FILE).read_text())["layers"]
    for name, spec in layers.items():
        spec["name"] = name
    CHECKS.get(method, lambda *a: None)(layers, metrics)
    saved = json.loads((tmp_path / "record.json").read_text())
    assert saved["metrics"]["latent_mse"] == mse["overall"] and saved["per_chunk"]["latent_mse"] == mse["per_chunk"]
    # reload into a freshly built FP model: the quantized rollout is reproduced bit for bit
    pipe, cfg2 = tiny_pipeline(f"method={method}")
    ps = prompts(cfg2, "eval", 2)
    from qarvd.quant.sensitivity import generate, latent_mse_by_chunk

    fp = generate(pipe, ps, [0, 1], 8)
    load_artifact(pipe.model, tmp_path)
    q = generate(pipe, ps, [0, 1], 8)
    assert latent_mse_by_chunk(q, fp, pipe.rollout_cfg.chunk_frames()) == mse


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("method", METHODS)
def test_method_runs_on_cuda_like_on_cpu(method, tmp_path):
    """Calibration on the GPU (activation statistics gathered on the host meet CUDA weights in smoothing and the
    outlier split): it runs, and its latent MSE is the CPU run's up to float summation order."""
    extra = FORCE_OUTLIERS if method == "qarvd" else []
    cpu = train_quant(tiny_cfg(f"method={method}", "bits=w4a8", *extra), tmp_path / "cpu")["metrics"]["latent_mse"]
    gpu = train_quant(tiny_cfg(f"method={method}", "bits=w4a8", "device=cuda", *extra), tmp_path / "cuda")
    assert gpu["metrics"]["latent_mse"] == pytest.approx(cpu, rel=0.25), (gpu["metrics"], cpu)


@pytest.mark.parametrize("paper_weighting", [False, True])
def test_dual_scale_frame_weight_switch(paper_weighting, tmp_path):
    """Release quirk: split layers get chunk weight 1; the paper weights every layer."""
    from qarvd.methods.base import Calibration
    from qarvd.quant.linear import quant_layers
    from omegaconf import OmegaConf

    pipe, cfg = tiny_pipeline()
    (tmp_path / "alpha.json").write_text(json.dumps({"frame_alpha": [0.75, 0.25]}))
    qarvd = recipe("qarvd", recon=False, sensitivity_file=str(tmp_path / "alpha.json"),
                   outlier={"tau": 0.5, "outlier_ratio": 1.0, "multiple": 8, "max_fraction": 0.5},
                   dual_scale_frame_weights=paper_weighting)
    cal = Calibration(pipeline=pipe, w_bits=4, a_bits=8, symmetric=False, calib=OmegaConf.to_container(cfg.calib),
                      prompts=prompts(cfg, "calib", 1), seeds=[0], work_dir=tmp_path)
    info = qarvd.run(cal)
    assert info["frame_weighting"]["chunk_weights"] == pytest.approx([1.5, 0.5])
    layers = quant_layers(pipe.model).values()
    split = [l for l in layers if len(l.groups) == 2]
    plain = [l for l in layers if len(l.groups) == 1]
    assert split and plain
    assert all(torch.equal(l.chunk_weights, torch.tensor([1.5, 0.5])) for l in plain)
    assert all((l.chunk_weights is not None) == paper_weighting for l in split)
