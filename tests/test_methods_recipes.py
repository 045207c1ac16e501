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
    assert metrics["calibration"]["prepare"]["smoothed_layers"] == 2 * 5  # self_attn.q/k/v, cross_attn.q, ffn.0


def _check_ptq4dit(layers, metrics):
    assert metrics["calibration"]["prepare"]["balanced_layers"] == 2 * 9  # every block linear but ffn.2


def _check_svdquant(layers, metrics):
    # rank 32 at width 1536 keeps its parameter share at width 64 as rank 1; the text embedding gets no branch
    assert all(s["lowrank_rank"] == (1 if s["name"].startswith("blocks.") else None) for s in layers.values())
    groups = metrics["calibration"]["prepare"]["groups"]
    assert len(groups) == 2 * 7 and sorted(groups["blocks.0.self_attn.qkv"]["layers"]) == [
        "blocks.0.self_attn.k", "blocks.0.self_attn.q", "blocks.0.self_attn.v"]
    for g in groups.values():
        a, b = g["exponents"]
        assert (a, b) == (0.0, 0.0) or (0 < a < 1 and b in (0.0, pytest.approx(1 - a)))
        assert g["search_error"] <= g["identity_error"]


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
                   outlier={**cfg.method.outlier, "tau": 0.5, "outlier_ratio": 1.0}, dual_scale_frame_weights=paper_weighting)
    cal = Calibration(pipeline=pipe, w_bits=4, a_bits=8, symmetric=False, calib=OmegaConf.to_container(cfg.calib),
                      prompts=prompts(cfg, "calib", 1), seeds=[0], work_dir=tmp_path)
    info = qarvd.run(cal)
    assert info["frame_weighting"]["chunk_weights"] == pytest.approx([1.5, 0.5])
    # chunk 0 denoises in 10 steps (11 calls), chunk 1 in 2 (3 calls): per call 0.75 * 14 / 11 and 0.25 * 14 / 3
    per_call = [0.75 * 14 / 11, 0.25 * 14 / 3]
    assert info["frame_weighting"]["calls_per_chunk"] == [11, 3]
    assert info["frame_weighting"]["call_weights"] == pytest.approx(per_call)
    layers = quant_layers(pipe.model).values()
    split = [l for l in layers if len(l.groups) == 2]
    plain = [l for l in layers if len(l.groups) == 1]
    assert split and plain
    assert all(l.chunk_weights.tolist() == pytest.approx(per_call) for l in plain)
    assert all((l.chunk_weights is not None) == paper_weighting for l in split)


@pytest.mark.parametrize("method", ["smoothquant_published", "svdquant_published", "ptq4dit_published"])
def test_published_variants_run_as_their_originals_under_their_own_name(method, tmp_path):
    """No reconstruction for SmoothQuant and SVDQuant, block reconstruction for PTQ4DiT; the record names the
    variant and tags its protocol, so tables never put it in the cell of the paper-protocol run."""
    metrics = train_quant(tiny_cfg(f"method={method}", "bits=w4a8"), tmp_path)
    assert metrics["method"] == method and metrics["tags"]["protocol"] == "as_published"
    assert metrics["calibration"]["protocol"] == "as_published"
    assert 0 < metrics["metrics"]["latent_mse"] < 1
    if method == "ptq4dit_published":
        assert set(metrics["calibration"]["recon"]["units"]) == {"blocks.0", "blocks.1"}
    else:
        assert "recon" not in metrics["calibration"]


def test_qarvd_chunk_shares_and_outlier_multiple_on_a_longer_first_chunk(tmp_path):
    """Chunk 0 denoises in 10 steps (11 calls), the others in 4 (5 calls). Summed over the captured calls the loss
    reads (every call's sample weight, in activation init and reconstruction), each chunk carries exactly its alpha;
    the outlier groups round up to the width's multiple (2 at width 128), not to 32."""
    from omegaconf import OmegaConf

    from qarvd.methods.base import Calibration
    from qarvd.quant.capture import CaptureBudget, capture
    from qarvd.quant.linear import quant_layers

    pipe, cfg = tiny_pipeline("model.arch.dim=128", "model.rollout.num_frames=6", "model.rollout.denoising_steps=[1000,750,500,250]")
    alpha = [0.6, 0.3, 0.1]
    (tmp_path / "alpha.json").write_text(json.dumps({"frame_alpha": alpha}))
    qarvd = recipe("qarvd", recon=False, sensitivity_file=str(tmp_path / "alpha.json"), dual_scale_frame_weights=True,
                   outlier={**OmegaConf.to_container(cfg.method.outlier, resolve=True), "tau": 0.5, "outlier_ratio": 1.0})
    ps = prompts(cfg, "calib", 2)
    cal = Calibration(pipeline=pipe, w_bits=4, a_bits=8, symmetric=False, calib=OmegaConf.to_container(cfg.calib),
                      prompts=ps, seeds=[0, 1], work_dir=tmp_path)
    info = qarvd.run(cal)
    assert info["frame_weighting"]["calls_per_chunk"] == [11, 5, 5]
    assert info["outlier_multiple"] == 2
    split = {n: s for n, s in info["dual_scale"].items() if s["count"] > 0}
    assert split and any(s["raw_count"] % 2 for s in split.values())
    for n, s in split.items():
        cap = quant_layers(pipe.model)[n].in_features // 2
        assert s["count"] == min(s["raw_count"] + s["raw_count"] % 2, cap), n
    name = "blocks.0.ffn.2"
    layer = quant_layers(pipe.model)[name]
    session = capture(pipe, ps, [0, 1], {name: layer}, CaptureBudget())
    try:
        infos = session.stores[name].infos()
    finally:
        session.close()
    assert len(infos) == 2 * 21
    totals = [sum(layer.sample_weight(i) for i in infos if i.chunk == c) for c in range(3)]
    assert [t / sum(totals) for t in totals] == pytest.approx(alpha, abs=1e-6)
    assert sum(totals) == pytest.approx(len(infos))  # mean weight 1 per call
