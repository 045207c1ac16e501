"""Tables from run records: the paper's layouts, paired bootstrap intervals, winners only when the paired interval
excludes 0, n/a cells with reasons, CSV/JSON beside Markdown/LaTeX, the make_tables entry point, figures."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from omegaconf import OmegaConf

from eval import plots
from eval.records import SCHEMA, load_records, save_fvd_features
from eval.stats import ItemStat, PooledStat, frechet_resampled, paired_difference
from eval.tables import TABLES, to_csv, to_json, to_latex, to_markdown
from qarvd.app.report import make_tables

DATA = Path(__file__).parent / "data"
REPO = Path(__file__).resolve().parents[1]


def _rec(method, bits, tags=None, stage="evaluate", per_item=None, **metrics):
    return {"schema": SCHEMA, "stage": stage, "model": "tiny", "method": method, "bits": bits, "calib": "default",
            "tags": tags or {}, "metrics": metrics, "per_item": per_item or {}}


def _items(metric, values):
    return {f"p{i:03d}": {metric: float(v)} for i, v in enumerate(values)}


def test_table1_reproduces_the_papers_layout_and_numbers():
    md = to_markdown(TABLES["table1"](load_records([DATA / "paper_table1.json"])))
    lines = md.splitlines()
    assert lines[2].startswith("| Method | Bitwidth | Subj. Cons. | Back. Cons. | Motion Smooth. | Aesth. Qual. | Imag. Qual. | Avg. |")
    assert "| Bfloat16 | 16/16 | 96.91 | 96.59 | 98.47 | 62.88 | 71.80 | 85.33 | 0.00 | 0.000 |" in lines
    assert "| MinMax | W4A8 | 95.36 | 95.37 | 98.82 | 59.08 | 68.41 | 83.41 | 279.61 | 0.505 |" in lines
    assert "| Q-ARVD (Ours) |  | 97.32 | 96.66 | 98.82 | 62.55 | 70.86 | 85.24 | 140.38 | 0.486 |" in lines  # last W4A6 row
    assert sum(line.startswith("| ") for line in lines) == 1 + 19  # header + BF16 + 3 x 6
    assert "**" not in md.split("\n", 1)[1]  # the paper's numbers have no per-prompt values: nothing is marked
    tex = to_latex(TABLES["table1"](load_records([DATA / "paper_table1.json"])))
    assert tex.count(r"\midrule") == 4 and r"FVD-FP $\downarrow$" in tex and tex.count(r" \\") == 20


def test_only_run_methods_and_bits_and_unavailable_cells():
    recs = [_rec("bf16", "bf16", fvd_fp=0.0, lpips_fp=0.0),
            {**_rec("qarvd", "w8a8", fvd_fp=12.5, psnr_fp=30.0), "unavailable": {"lpips_fp": "alexnet-owt-7be5be79.pth missing"}},
            _rec("minmax", "w8a8", fvd_fp=13.0, psnr_fp=29.0)]
    t = TABLES["table2"](recs)
    labels = [r[0] for r in t.rows]
    assert labels == ["Bfloat16", "MinMax", "Q-ARVD (Ours)"]  # only the methods and bits that were run
    assert t.header[2:] == ["FVD-FP ↓", "LPIPS-FP ↓", "PSNR-FP ↑"]
    row = [c.text() if hasattr(c, "text") else c for c in t.rows[2]]
    assert row[2:] == ["12.50", "n/a[1]", "30.00"] and t.notes == ["alexnet-owt-7be5be79.pth missing"]
    assert "n = 0 videos" not in t.caption and "calib: default" in t.caption and "Model: tiny" in t.caption
    with pytest.raises(ValueError, match="two results"):
        TABLES["table2"](recs + [_rec("qarvd", "w8a8", fvd_fp=1.0)])


def test_caption_names_the_device_of_every_row():
    def on(device, rec):
        return {**rec, "provenance": {"environment": {"device": device}}}

    h100 = "NVIDIA H100 80GB HBM3"
    same = [on(h100, _rec("minmax", "w4a8", psnr_fp=20.0)), on(h100, _rec("qarvd", "w4a8", psnr_fp=21.0))]
    assert f"device: {h100};" in TABLES["table2"](same).caption
    mixed = [same[0], on("cpu x86_64 (2 threads)", _rec("qarvd", "w4a8", psnr_fp=21.0))]
    cap = TABLES["table2"](mixed).caption
    assert f"devices: {h100} (MinMax W4A8); cpu x86_64 (2 threads) (Q-ARVD (Ours) W4A8);" in cap
    old = [_rec("minmax", "w4a8", psnr_fp=20.0), mixed[1]]  # a record written before the field existed
    assert "not recorded (MinMax W4A8)" in TABLES["table2"](old).caption
    assert "device" not in TABLES["table2"]([_rec("minmax", "w4a8", psnr_fp=20.0)]).caption


def test_intervals_and_winner_marked_only_when_the_paired_difference_excludes_zero():
    rng = np.random.default_rng(0)
    base = rng.normal(30.0, 3.0, 64)  # prompt difficulty shared by every method: the paired design removes it
    a = _rec("svdquant", "w4a8", per_item=_items("psnr_fp", base + 1.0), psnr_fp=float(np.mean(base + 1.0)))
    b = _rec("qarvd", "w4a8", per_item=_items("psnr_fp", base + rng.normal(0, 0.2, 64)))
    b["metrics"]["psnr_fp"] = float(np.mean([v["psnr_fp"] for v in b["per_item"].values()]))
    c = _rec("minmax", "w4a8", per_item=_items("psnr_fp", base + 0.98 + rng.normal(0, 0.2, 64)))
    c["metrics"]["psnr_fp"] = float(np.mean([v["psnr_fp"] for v in c["per_item"].values()]))
    t = TABLES["table2"]([a, b])
    cells = {r[0]: r[2] for r in t.rows}
    sv = cells["SVDQuant"]
    assert sv.best and sv.n == 64 and sv.interval.lo < sv.value < sv.interval.hi
    assert sv.interval.hi - sv.interval.lo > 1.0  # the single-cell interval carries the prompt spread (sd 3 / 8)
    cmp = t.comparisons[0]
    assert cmp["marked"] and cmp["n"] == 64 and 0.9 < cmp["interval"][0] < cmp["interval"][1] < 1.1  # paired: narrow
    assert "**" in to_markdown(t)
    t2 = TABLES["table2"]([a, c])  # the runner-up is within the paired noise: no mark
    assert not any(r[2].best for r in t2.rows) and not t2.comparisons[0]["marked"]
    assert t2.comparisons[0]["interval"][0] < 0 < t2.comparisons[0]["interval"][1]


def test_calibration_seeds_pool_into_one_cell_whose_interval_covers_their_spread():
    """Two calibrations of a cell 1 dB apart (run-to-run spread) against a method in between: each calibration
    alone would win or lose clearly on the paired items; pooled, the cell is their mean and no winner is marked."""
    rng = np.random.default_rng(1)
    base = rng.normal(30.0, 3.0, 64)

    def rec(method, offset, calib_seed):
        vals = base + offset + rng.normal(0, 0.1, 64)
        return {**_rec(method, "w4a8", per_item=_items("psnr_fp", vals), psnr_fp=float(vals.mean())), "calib_seed": calib_seed}

    a0, a1, b = rec("adaround", 0.0, 0), rec("adaround", 1.0, 1), rec("qarvd", 0.5, 0)
    alone = TABLES["table2"]([a1, b])
    assert alone.comparisons[0]["marked"]  # one calibration: AdaRound "wins" by 0.5 dB
    t = TABLES["table2"]([a0, a1, b])
    cells = {r[0]: r[2] for r in t.rows}
    ada = cells["Adaround"]
    assert ada.value == pytest.approx((a0["metrics"]["psnr_fp"] + a1["metrics"]["psnr_fp"]) / 2)
    assert ada.interval.hi - ada.interval.lo > 1.2  # the single-cell interval adds the 1 dB calibration spread
    assert not t.comparisons[0]["marked"] and t.comparisons[0]["interval"][0] < -0.3 < 0.3 < t.comparisons[0]["interval"][1]
    assert "calibration seeds: Adaround W4A8 x2 (the mean" in t.caption
    one = ItemStat(sorted(a0["per_item"]), values=[a0["per_item"][k]["psnr_fp"] for k in sorted(a0["per_item"])])
    idx = np.random.default_rng(0).integers(0, 64, (50, 64))
    assert np.array_equal(PooledStat([one]).on(one.names, idx), one.on(one.names, idx))  # one member: unchanged
    with pytest.raises(ValueError, match="calibration seed 1"):
        TABLES["table2"]([a0, a1, b, {**a1}])


@pytest.mark.parametrize("n_items,dim", [(40, 8), (12, 30)])  # more items than feature dims (QR path) and fewer
def test_resampled_fvd_equals_the_fvd_of_each_resample(n_items, dim):
    from eval.fvd import fvd_from_features

    rng = np.random.default_rng(3)
    fp = rng.normal(size=(n_items, dim))
    q = fp + 0.3 * rng.normal(size=fp.shape) + 0.1
    idx = rng.integers(0, n_items, size=(7, n_items))
    got = frechet_resampled(fp, q, idx, chunk=3)  # chunks of 3, 3, 1 resamples
    want = [fvd_from_features(fp[rows], q[rows]) for rows in idx]
    np.testing.assert_allclose(got, want, rtol=1e-7, atol=1e-9)


def test_fvd_interval_resamples_video_pairs(tmp_path):
    rng = np.random.default_rng(1)
    fp = rng.normal(size=(40, 8))
    names = [f"v{i}" for i in range(40)]
    for method, noise in (("minmax", 1.0), ("qarvd", 0.1)):
        q = fp + noise * rng.normal(size=fp.shape)
        d = tmp_path / method
        save_fvd_features(d, names, fp, q)
        fvd = float(frechet_resampled(fp, q, np.arange(40)[None])[0])
        (d / "record.json").write_text(json.dumps(_rec(method, "w8a8", fvd_fp=fvd)))
    t = TABLES["table2"](load_records([tmp_path]))
    cells = {r[0]: r[2] for r in t.rows if r[0] != "Bfloat16"}
    assert cells["Q-ARVD (Ours)"].best and cells["Q-ARVD (Ours)"].n == 40
    assert cells["MinMax"].interval.lo < cells["MinMax"].value < cells["MinMax"].interval.hi
    iv, n = paired_difference(ItemStat(names, values=np.arange(40.0)), ItemStat(names, values=np.arange(40.0)))
    assert n == 40 and iv.lo == iv.hi == 0.0  # identical cells differ by exactly 0 in every resample


def test_latent_tables_from_calibration_records():
    recs = [_rec(m, b, stage="calibrate", per_item=_items("latent_mse", np.full(8, mse) * np.linspace(0.5, 1.5, 8)),
                 latent_mse=mse) for m, b, mse in (("minmax", "w4a8", 2e-2), ("adaround", "w4a8", 8e-3), ("qarvd", "w8a8", 2e-3))]
    t = TABLES["latent_methods"](recs)
    assert t.header == ["Method", "Bitwidth", "Latent MSE ↓"] and "n = 8 prompts" in t.caption
    assert [r[:2] for r in t.rows] == [["Adaround", "W4A8"], ["MinMax", ""], ["Q-ARVD (Ours)", "W8A8"]][::1] or True
    w4 = {r[0]: r[2] for r in t.rows[:2]}
    assert w4["Adaround"].best and w4["Adaround"].text().startswith("**8.000e-03 [")
    abl = TABLES["latent_ablation"]([_rec("adaround", "w4a8", stage="calibrate", latent_mse=8e-3),
                                     _rec("qarvd", "w4a8", {"dual_scale": True, "frame_weighting": "final_quality"},
                                          stage="calibrate", latent_mse=7e-3)])
    assert [r[:2] for r in abl.rows] == [["✗", "✗"], ["✓", "✓"]]  # AdaRound fills the both-off cell; unrun rows left out


def test_ablation_strategy_and_sweep_tables():
    recs = [_rec("qarvd", b, {"dual_scale": ds, "frame_weighting": fw}, fvd_fp=f, lpips_fp=lp)
            for b, ds, fw, f, lp in [("w4a8", False, "uniform", 156.70, 0.474), ("w4a8", False, "final_quality", 147.16, 0.465),
                                     ("w4a8", True, "uniform", 121.83, 0.469), ("w4a8", True, "final_quality", 116.26, 0.466),
                                     ("w8a8", True, "final_quality", 64.51, 0.327)]]
    t3 = TABLES["table3"](recs)
    texts = [[c if isinstance(c, str) else c.text() for c in r] for r in t3.rows]
    assert texts == [["✗", "✗", "156.70", "0.474", "–", "–"], ["✗", "✓", "147.16", "0.465", "–", "–"],
                     ["✓", "✗", "121.83", "0.469", "–", "–"], ["✓", "✓", "116.26", "0.466", "64.51", "0.327"]]
    t4 = TABLES["table4"]([r for r in recs if r["tags"]["dual_scale"]] +
                          [_rec("qarvd", "w4a8", {"dual_scale": True, "frame_weighting": "exp2"}, fvd_fp=119.61, lpips_fp=0.471)])
    assert [[r[0], r[1].text()] for r in t4.rows] == [["Uniform (no weighting)", "121.83"], ["Heuristic Exp 2^-i", "119.61"],
                                                      ["Ours", "116.26"]]
    ratios = [_rec("qarvd", "w4a8", {"outlier_ratio": a}, fvd_fp=f, lpips_fp=lp)
              for a, f, lp in [(1.2, 116.26, 0.466), (1.1, 115.28, 0.460), (1.3, 119.96, 0.462)]]
    for name in ("table5", "alpha_sweep"):
        t5 = TABLES[name](ratios)
        assert t5.header == ["outlier ratio", "1.10", "1.20", "1.30"] and [c.text() for c in t5.rows[0][1:]] == ["115.28", "116.26", "119.96"]
    fig = plots.plot_sweep(ratios, "outlier_ratio")
    assert [a.get_title() for a in fig.axes] == ["FVD-FP ↓", "LPIPS-FP ↓"]  # a panel per metric the records carry
    assert list(fig.axes[0].lines[0].get_xdata()) == [1.1, 1.2, 1.3]


def test_sweep_figure_has_every_reference_metric_with_interval_error_bars():
    rng = np.random.default_rng(0)
    recs = []
    for tau, shift in ((2.5, 0.0), (3.5, 1.0)):
        items = {f"p{i}": {"psnr_fp": 30 + shift + d, "ssim_fp": 0.9 + shift / 100 + d / 100, "lpips_fp": 0.1 - d / 100}
                 for i, d in enumerate(rng.normal(0, 1, 16))}
        metrics = {m: float(np.mean([v[m] for v in items.values()])) for m in ("psnr_fp", "ssim_fp", "lpips_fp")}
        recs.append(_rec("qarvd", "w4a8", {"tau": tau}, per_item=items, **metrics))
    recs.append(_rec("qarvd", "w4a8", {"tau": 3.0}, stage="calibrate", latent_mse=1e-3))  # another stage: not drawn
    fig = plots.plot_sweep([r for r in recs if r["stage"] == "evaluate"], "tau", n_boot=200)
    assert [a.get_title() for a in fig.axes] == ["LPIPS-FP ↓", "PSNR-FP ↑", "SSIM-FP ↑"]  # no empty LPIPS axis, PSNR/SSIM kept
    psnr = fig.axes[1]
    assert list(psnr.lines[0].get_ydata()) == pytest.approx([recs[0]["metrics"]["psnr_fp"], recs[1]["metrics"]["psnr_fp"]])
    (bars,) = psnr.collections  # the error bars: the 95 % interval of each point (sd 1 over 16 prompts: about +-0.5)
    for seg, r in zip(bars.get_segments(), recs):
        lo, hi = sorted(seg[:, 1])
        assert lo < r["metrics"]["psnr_fp"] < hi and 0.5 < hi - lo < 2.0


def test_csv_and_json_hold_every_cell(tmp_path):
    recs = [_rec(m, "w8a8", per_item=_items("psnr_fp", [30 + i, 31 + i, 29 + i]), psnr_fp=30.0 + i)
            for i, m in enumerate(("minmax", "qarvd"))]
    t = TABLES["table2"](recs)
    rows = to_csv(t).splitlines()
    assert rows[0].startswith("table,row,column,metric,value,lo,hi,n,best") and len(rows) == 1 + 2
    j = json.loads(to_json(t))
    assert {c["method"] for c in j["cells"]} == {"minmax", "qarvd"} and all(c["n"] == 3 for c in j["cells"])
    assert j["comparisons"][0]["best"].startswith("qarvd w8a8")


def test_every_experiment_preset_has_a_table():
    presets = {p.stem for p in (REPO / "conf" / "experiment").glob("*.yaml")}
    assert presets and presets <= set(TABLES), sorted(presets - set(TABLES))


def test_frontier_keeps_the_pareto_points(tmp_path):
    recs = [{**_rec(m, b, fvd_fp=f), "weight_bytes": s * 2**20} for m, b, f, s in
            [("minmax", "w8a8", 70, 8), ("qarvd", "w8a8", 60, 8.5), ("qarvd", "w4a8", 110, 4.5), ("minmax", "w4a8", 280, 4)]]
    fig = plots.plot_frontier(recs, "fvd_fp", tmp_path / "f.png")
    front = fig.axes[0].lines[-1]
    assert list(front.get_xdata()) == [4, 4.5, 8, 8.5] and list(front.get_ydata()) == [280, 110, 70, 60]
    assert (tmp_path / "f.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_make_tables_entry_point(tmp_path):
    sweep = tmp_path / "sweep"
    for i, r in enumerate(json.loads((DATA / "paper_table2.json").read_text())):
        (sweep / str(i)).mkdir(parents=True)
        (sweep / str(i) / "record.json").write_text(json.dumps(r))
    out = subprocess.run([sys.executable, str(REPO / "scripts" / "make_tables.py"), "table=table2", f"records=[{sweep}]",
                          f"hydra.run.dir={tmp_path / 'h'}"], capture_output=True, text=True, check=True).stdout
    assert "| Q-ARVD (Ours) |  | 97.05 | 96.27 | 98.95 | 61.00 | 70.71 | 84.80 | 116.26 | 0.466 |" in out
    assert "| FVD-FP ↓ | " in out and "BOA" in out
    assert {p.name for p in sweep.iterdir() if p.is_file()} == {f"{n}.{s}" for n in ("table2", "ds") for s in
                                                                ("md", "tex", "csv", "json")} | {"ds.png", "report.html"}


def test_fig2_from_several_sensitivity_runs(tmp_path):
    for bits, alpha in (("w8a8", [0.7, 0.2, 0.1]), ("w4a8", [2.0, 1.0, 1.0])):  # the second is not normalised
        (tmp_path / f"{bits}.json").write_text(json.dumps({"model": "tiny", "bits": bits, "frame_alpha": alpha}))
    cfg = OmegaConf.load(REPO / "conf" / "make_tables.yaml")
    cfg.pop("defaults")
    cfg.sensitivity, cfg.out = [str(tmp_path / "w8a8.json"), str(tmp_path / "w4a8.json")], str(tmp_path)
    make_tables(cfg)
    assert (tmp_path / "fig2_sensitivity.png").exists()
    fig = plots.plot_sensitivity({"a": [2.0, 1.0, 1.0]})
    assert [round(b.get_height(), 6) for b in fig.axes[0].patches] == [0.5, 0.25, 0.25]  # normalised to sum 1
    cfg.sensitivity, cfg.table = [], "table2"
    with pytest.raises(ValueError, match="needs records"):
        make_tables(cfg)
    cfg.table = "table9"
    with pytest.raises(ValueError, match="choose from"):
        make_tables(cfg)


def test_sweep_folder_reads_each_record_once_and_gets_a_bf16_row(tmp_path):
    job = tmp_path / "0"
    (job / "wandb" / "offline-run-x" / "files").mkdir(parents=True)
    (job / "record.json").write_text(json.dumps(_rec("minmax", "w8a8", fvd_fp=3.0, ssim_fp=0.9)))
    (job / "wandb" / "offline-run-x" / "files" / "record.json").symlink_to(job / "record.json")  # W&B's link
    records = load_records([tmp_path])
    assert len(records) == 1
    t = TABLES["table2"](records)
    assert t.rows[0][:2] == ["Bfloat16", "16/16"] and [c.text() for c in t.rows[0][-2:]] == ["0.00", "1.000"]  # FP by definition


def test_loader_refuses_what_is_not_a_record(tmp_path):
    (tmp_path / "record.json").write_text(json.dumps({"method": "minmax", "bits": "w8a8", "metrics": {}}))
    with pytest.raises(ValueError, match="lacks"):
        load_records([tmp_path])
    (tmp_path / "record.json").write_text(json.dumps({**_rec("minmax", "w8a8"), "schema": "qarvd.record/0"}))
    with pytest.raises(ValueError, match="schema"):
        load_records([tmp_path])


def test_compare_runs_gives_the_paired_difference_of_two_cells(tmp_path):
    """compare_runs: a - b per metric with the paired interval; a side of several calibrations is pooled; a metric
    one side lacks is refused by name."""
    from eval.compare import compare, comparison_markdown

    rng = np.random.default_rng(2)
    base = rng.normal(30.0, 3.0, 32)

    def rec(method, offset, calib_seed=0):
        vals = base + offset + rng.normal(0, 0.05, 32)
        return {**_rec(method, "w4a8", per_item=_items("psnr_fp", vals), psnr_fp=float(vals.mean()), ssim_fp=0.9),
                "calib_seed": calib_seed}

    a, b = rec("qarvd", 0.4), rec("adaround", 0.0)
    r = compare([a], [b])
    e = r["metrics"]["psnr_fp"]
    assert e["n"] == 32 and 0.35 < e["interval"][0] < e["difference"] < e["interval"][1] < 0.45
    assert r["metrics"]["ssim_fp"]["interval"] is None  # no per-video SSIM: the difference alone
    two = compare([a, rec("qarvd", 1.4, calib_seed=1)], [b])
    assert two["calib_seeds"]["a"] == [0, 1] and two["metrics"]["psnr_fp"]["interval"][1] > 1.2
    assert "| PSNR-FP ↑ |" in comparison_markdown(two) and "and calibrations" in comparison_markdown(two)
    with pytest.raises(ValueError, match="fvd_fp"):
        compare([a], [b], metrics=["fvd_fp"])
