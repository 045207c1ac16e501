"""Paper tables from result records (Markdown, LaTeX), n/a cells with reasons, DS table, figures, make_tables CLI."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from eval import plots
from eval.results import load_results
from eval.tables import TABLES, to_latex, to_markdown

DATA = Path(__file__).parent / "data"
REPO = Path(__file__).resolve().parents[1]


def _rec(method, bits, tags=None, **metrics):
    return {"model": "tiny", "method": method, "bits": bits, "tags": tags or {}, "metrics": metrics}


def test_table1_reproduces_the_papers_layout_and_numbers():
    md = to_markdown(TABLES["table1"](load_results([DATA / "paper_table1.json"])))
    lines = md.splitlines()
    assert lines[2].startswith("| Method | Bitwidth | Subj. Cons. | Back. Cons. | Motion Smooth. | Aesth. Qual. | Imag. Qual. | Avg. |")
    assert "| Bfloat16 | 16/16 | 96.91 | 96.59 | 98.47 | 62.88 | 71.80 | 85.33 | 0.00 | 0.000 |" in lines
    assert "| MinMax | W4A8 | 95.36 | 95.37 | 98.82 | 59.08 | 68.41 | 83.41 | 279.61 | 0.505 |" in lines
    assert "| Q-ARVD (Ours) |  | 97.32 | 96.66 | 98.82 | 62.55 | 70.86 | 85.24 | 140.38 | 0.486 |" in lines  # last W4A6 row
    assert sum(line.startswith("| ") for line in lines) == 1 + 19  # header + BF16 + 3 x 6
    tex = to_latex(TABLES["table1"](load_results([DATA / "paper_table1.json"])))
    assert tex.count(r"\midrule") == 4 and r"FVD-FP $\downarrow$" in tex and tex.count(r" \\") == 20


def test_missing_and_unavailable_cells():
    recs = [_rec("bf16", "bf16", fvd_fp=0.0, lpips_fp=0.0),
            {**_rec("qarvd", "w8a8", fvd_fp=12.5, psnr_fp=30.0), "unavailable": {"lpips_fp": "alexnet-owt-7be5be79.pth missing"}}]
    t = TABLES["table2"](recs)
    row = next(r for r in t.rows if r[0] == "Q-ARVD (Ours)")
    assert t.header[-3:] == ["FVD-FP ↓", "LPIPS-FP ↓", "PSNR-FP ↑"]  # SSIM: no run computed it, no column
    assert row[-4:] == ["–", "12.50", "n/a[1]", "30.00"]  # VBench avg never computed, FVD, LPIPS n/a with a note, PSNR
    assert t.notes == ["alexnet-owt-7be5be79.pth missing"] and "[1] alexnet-owt-7be5be79.pth missing" in to_markdown(t)
    assert next(r for r in t.rows if r[0] == "MinMax")[2:] == ["–"] * 9  # no record: dashes
    with pytest.raises(ValueError, match="two results"):
        TABLES["table2"](recs + [_rec("qarvd", "w8a8", fvd_fp=1.0)])


def test_ablation_strategy_and_sweep_tables():
    recs = [_rec("qarvd", b, {"dual_scale": ds, "frame_weighting": fw}, fvd_fp=f, lpips_fp=lp)
            for b, ds, fw, f, lp in [("w4a8", False, "uniform", 156.70, 0.474), ("w4a8", False, "final_quality", 147.16, 0.465),
                                     ("w4a8", True, "uniform", 121.83, 0.469), ("w4a8", True, "final_quality", 116.26, 0.466),
                                     ("w8a8", True, "final_quality", 64.51, 0.327)]]
    t3 = TABLES["table3"](recs)
    assert t3.rows == [["✗", "✗", "156.70", "0.474", "–", "–"], ["✗", "✓", "147.16", "0.465", "–", "–"],
                       ["✓", "✗", "121.83", "0.469", "–", "–"], ["✓", "✓", "116.26", "0.466", "64.51", "0.327"]]
    t4 = TABLES["table4"]([r for r in recs if r["tags"]["dual_scale"]] +
                          [_rec("qarvd", "w4a8", {"dual_scale": True, "frame_weighting": "exp2"}, fvd_fp=119.61, lpips_fp=0.471)])
    assert [r[:2] for r in t4.rows] == [["Uniform (no weighting)", "121.83"], ["Heuristic Exp 2^-i", "119.61"],
                                        ["Reverse", "–"], ["Ours", "116.26"]]
    alphas = [_rec("qarvd", "w4a8", {"alpha": a}, fvd_fp=f, lpips_fp=lp)
              for a, f, lp in [(1.2, 116.26, 0.466), (1.1, 115.28, 0.460), (1.3, 119.96, 0.462)]]
    t5 = TABLES["table5"](alphas)
    assert t5.header == ["alpha", "1.10", "1.20", "1.30"] and t5.rows[0] == ["FVD", "115.28", "116.26", "119.96"]
    fig = plots.plot_sweep(alphas, "alpha")
    assert list(fig.axes[0].lines[0].get_xdata()) == [1.1, 1.2, 1.3]


def test_frontier_keeps_the_pareto_points(tmp_path):
    recs = [{**_rec(m, b, fvd_fp=f), "weight_bytes": s * 2**20} for m, b, f, s in
            [("minmax", "w8a8", 70, 8), ("qarvd", "w8a8", 60, 8.5), ("qarvd", "w4a8", 110, 4.5), ("minmax", "w4a8", 280, 4)]]
    fig = plots.plot_frontier(recs, "fvd_fp", tmp_path / "f.png")
    front = fig.axes[0].lines[-1]
    assert list(front.get_xdata()) == [4, 4.5, 8, 8.5] and list(front.get_ydata()) == [280, 110, 70, 60]
    assert (tmp_path / "f.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_make_tables_cli(tmp_path):
    sweep = tmp_path / "sweep"
    for i, r in enumerate(json.loads((DATA / "paper_table2.json").read_text())):
        (sweep / str(i)).mkdir(parents=True)
        (sweep / str(i) / "results.json").write_text(json.dumps(r))
    out = subprocess.run([sys.executable, str(REPO / "scripts" / "make_tables.py"), "--table", "table2", "--results", str(sweep)],
                         capture_output=True, text=True, check=True).stdout
    assert "| Q-ARVD (Ours) |  | 97.05 | 96.27 | 98.95 | 61.00 | 70.71 | 84.80 | 116.26 | 0.466 |" in out
    assert "| FVD-FP ↓ | " in out and "BOA" in out
    assert {p.name for p in sweep.iterdir() if p.is_file()} == {"table2.md", "table2.tex", "ds.md", "ds.tex", "ds.png"}


def test_fig2_from_several_sensitivity_runs(tmp_path):
    import importlib.util

    spec = importlib.util.spec_from_file_location("make_tables", REPO / "scripts" / "make_tables.py")
    make_tables = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(make_tables)
    for bits, alpha in (("w8a8", [0.7, 0.2, 0.1]), ("w4a8", [2.0, 1.0, 1.0])):  # the second is not normalised
        (tmp_path / f"{bits}.json").write_text(json.dumps({"model": "tiny", "bits": bits, "alpha": alpha}))
    make_tables.main(["--sensitivity", str(tmp_path / "w8a8.json"), str(tmp_path / "w4a8.json"), "--out", str(tmp_path)])
    assert (tmp_path / "fig2_sensitivity.png").exists()
    fig = plots.plot_sensitivity({"a": [2.0, 1.0, 1.0]})
    assert [round(b.get_height(), 6) for b in fig.axes[0].patches] == [0.5, 0.25, 0.25]  # normalised to sum 1
    with pytest.raises(SystemExit):
        make_tables.main(["--table", "table2"])  # a table needs results


def test_sweep_folder_reads_each_result_once_and_gets_a_bf16_row(tmp_path):
    job = tmp_path / "0"
    (job / "wandb" / "offline-run-x" / "files").mkdir(parents=True)
    (job / "results.json").write_text(json.dumps(_rec("minmax", "w8a8", fvd_fp=3.0, ssim_fp=0.9)))
    (job / "wandb" / "offline-run-x" / "files" / "results.json").symlink_to(job / "results.json")  # W&B's link
    records = load_results([tmp_path])
    assert len(records) == 1
    t = TABLES["table2"](records)
    assert t.rows[0][:2] == ["Bfloat16", "16/16"] and t.rows[0][-3:] == ["0.00", "0.000", "1.000"]  # FP by definition
