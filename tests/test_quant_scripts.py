"""scripts/sensitivity.py, scripts/outliers.py, scripts/latent_diagnostics.py and their qarvd.app stages (outlier report,
latent diagnostics) produce their files; the alpha cache."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from quant_helpers import outlier_cfg

ROOT = Path(__file__).resolve().parents[1]


def _run(script, tmp_path, *overrides):
    out = subprocess.run([sys.executable, f"scripts/{script}", "debug=tiny", f"hydra.run.dir={tmp_path}",
                          f"paths.log_dir={tmp_path}/logs", *overrides], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    return out.stdout


def test_sensitivity_script_writes_alpha_and_figure(tmp_path):
    stdout = _run("sensitivity.py", tmp_path, "bits=w4a6")
    res = json.loads((tmp_path / "sensitivity.json").read_text())
    assert len(res["frame_alpha"]) == 2 and sum(res["frame_alpha"]) == pytest.approx(1.0) and res["a_bits"] == 6
    assert (tmp_path / "fig2_sensitivity.png").stat().st_size > 1000 and "sensitivity.json" in stdout


def test_outlier_statistics_and_figures(tmp_path):
    from eval.plots import plot_outlier_patterns, plot_outlier_ratio
    from qarvd.app.outlier_report import outlier_stats, summarise
    from qarvd.models.wan import CausalWanModel, WanConfig

    torch.manual_seed(0)
    model = CausalWanModel(WanConfig(dim=64, ffn_dim=128, num_heads=2, num_layers=2, freq_dim=16, text_dim=8, text_len=4,
                                     in_dim=4, out_dim=4, patch_size=(1, 2, 2)))
    with torch.no_grad():
        model.blocks[1].ffn[2].weight[:, 5] *= 20  # one loud input channel
    stats, norms = outlier_stats(model, outlier_cfg(multiple=32))
    assert len(stats) == 20 and stats["blocks.1.ffn.2"]["raw_count"] == 1 and stats["blocks.1.ffn.2"]["count"] == 32
    assert 5 in norms["blocks.1.ffn.2"][1].tolist()
    summary = summarise(stats)
    assert summary["layers_with_outliers"] == 1
    assert summary["share_by_type"]["ffn.2"] == 0.5 and summary["share_by_block"] == {"0": 0.0, "1": 0.1}
    plot_outlier_patterns(norms, ["blocks.1.ffn.2", "blocks.0.self_attn.q"], tmp_path / "f3.png")
    plot_outlier_ratio(summary, tmp_path / "f4.png")
    assert (tmp_path / "f3.png").stat().st_size > 1000 and (tmp_path / "f4.png").stat().st_size > 1000


def test_outliers_cli(tmp_path):
    _run("outliers.py", tmp_path, "method.outlier.tau=1.0", "method.outlier.outlier_ratio=1.02")
    data = json.loads((tmp_path / "outliers.json").read_text())
    assert data["outlier_config"]["tau"] == 1.0 and data["summary"]["layers"] == 20
    assert {"fig3_outlier_patterns.png", "fig4_outlier_ratio.png"} <= {p.name for p in tmp_path.iterdir()}


def test_sensitivity_is_cached_by_what_it_depends_on(tmp_path):
    from qarvd.methods.base import measure_sensitivity
    from qarvd.app.calibrate import build_calibration
    from quant_helpers import tiny_cfg

    cfg = tiny_cfg(f"calib.cache_dir={tmp_path}/cache")
    first = measure_sensitivity(build_calibration(cfg, tmp_path)[0])
    again = measure_sensitivity(build_calibration(cfg, tmp_path)[0])
    assert "cached" not in first and again["cached"] and again["frame_alpha"] == first["frame_alpha"]
    other = measure_sensitivity(build_calibration(tiny_cfg(f"calib.cache_dir={tmp_path}/cache", "bits=w8a8"), tmp_path)[0])
    assert "cached" not in other and len(list((tmp_path / "cache" / "sensitivity").glob("*.json"))) == 2


def test_calib_seed_moves_the_calibration_draws_not_the_held_out_prompts(tmp_path):
    """Repeated calibrations of one cell (calib.seed) are scored on the same held-out seeds; null keeps the
    fingerprint of a run that predates the key, so its resume folder and caches still match."""
    from qarvd.app.calibrate import build_calibration, calibration_fingerprint
    from quant_helpers import tiny_cfg

    base, other = tiny_cfg("seed=3"), tiny_cfg("seed=3", "calib.seed=11")
    cal0, _, held0 = build_calibration(base, tmp_path)
    cal1, _, held1 = build_calibration(other, tmp_path)
    assert held0 == held1 and held0[0] == 3
    assert (cal0.seed, cal0.seeds[0], cal0.sensitivity_seeds[0]) == (3, 3, 3)
    assert (cal1.seed, cal1.seeds[0], cal1.sensitivity_seeds[0]) == (11, 11, 11)
    assert "seed" not in calibration_fingerprint(base)["calib"]
    assert "bf16" not in calibration_fingerprint(base)["calib"]["batch"]  # off: the fingerprint of earlier runs
    assert calibration_fingerprint(other)["calib"]["seed"] == 11


def test_outlier_use_and_recon_fit_by_hand():
    from eval.diagnostics import paired_ratio
    from qarvd.app.diagnostics import outlier_use, recon_fit

    metrics = {"calibration": {
        "dual_scale": {"a": {"raw_count": 3, "count": 32}, "b": {"raw_count": 0, "count": 0}, "c": {"raw_count": 10, "count": 32}},
        "recon": {"units": {"a": {"loss_nearest": 2.0, "loss_final": 0.5}, "c": {"loss_nearest": 1.0, "loss_final": 0.75}}}}}
    use = outlier_use(metrics, {"a": 128, "b": 128, "c": 512})
    assert (use["split_layers"], use["checked_layers"], use["raw_columns"], use["group_columns"]) == (2, 3, 13, 64)
    assert use["eq12_share_of_group"] == pytest.approx(13 / 64) and use["layers"]["a"]["share"] == 0.25
    assert use["layers"]["c"]["share"] == pytest.approx(32 / 512)
    assert recon_fit(metrics) == {"layers": 2, "mean_final_over_nearest": pytest.approx((0.25 + 0.75) / 2)}
    assert paired_ratio([2.0, 4.0], [1.0, 2.0]) == pytest.approx((2.0, 2.0, 2.0))  # every resample has ratio 2
    m, lo, hi = paired_ratio([1.0, 3.0], [1.0, 1.0])
    assert m == 2.0 and lo == pytest.approx(1.0) and hi == pytest.approx(3.0)  # resamples: {1,1}, {1,3}, {3,3}


def g_seen_both(r):
    return r["generalization"]["seen"]["overall"]


def test_latent_diagnostics_on_a_calibrated_run(tmp_path):
    from conftest import compose
    from qarvd.app.calibrate import train_quant
    from qarvd.app.diagnostics import latent_diagnostics
    from quant_helpers import tiny_cfg

    run = tmp_path / "run"
    metrics = train_quant(tiny_cfg("method=qarvd", "method.frame_weighting=uniform", "calib.num_prompts=1"), run)
    cfg = compose([f"runs=['{run}']", "prompts=3", "outlier_multiples=[8,1]", "split_runs=[run]"], "latent_diagnostics")
    latent_diagnostics(cfg, tmp_path / "diag.json")
    res = json.loads((tmp_path / "diag.json").read_text())
    r = res["runs"]["run"]
    assert r["eval_rerun"]["overall"] == pytest.approx(metrics["metrics"]["latent_mse"], rel=1e-6)  # artifact reproduces
    assert len(r["eval_rerun"]["per_prompt"]) == metrics["num_items"]
    wa = r["weights_vs_acts"]  # each half alone is a different (smaller) perturbation than both together
    assert 0 < wa["weights_only"]["seen"] != g_seen_both(r) and 0 < wa["acts_only"]["unseen"]
    g = r["generalization"]
    assert (g["seen_prompts"], g["unseen_prompts"]) == (1, 2)
    assert g["seen"]["overall"] > 0 and g["unseen"]["overall"] > 0 and len(g["seen"]["per_chunk"]) == 2
    ds = metrics["calibration"]["dual_scale"]
    for name, row in res["weight_error_w4"].items():  # the unrounded count is Eq. 12's raw count, the m8 one the run's
        assert row["m1"]["count"] == ds[name]["raw_count"] and row["m8"]["count"] == ds[name]["count"]
    assert "| run | default | 1 |" in (tmp_path / "diag.md").read_text()


def test_latent_diagnostics_run_patterns(tmp_path):
    from qarvd.app.diagnostics import run_folders

    for name in ("b_run", "a_run", "c_other"):
        (tmp_path / name).mkdir()
    assert [p.name for p in run_folders([str(tmp_path / "*_run"), str(tmp_path / "c_other")])] == ["a_run", "b_run", "c_other"]
    with pytest.raises(FileNotFoundError, match="runs: .*nothing_here"):
        run_folders([str(tmp_path / "nothing_here*")])
