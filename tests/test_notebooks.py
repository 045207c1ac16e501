"""The analysis notebooks execute top to bottom (nbclient) on a shrunken embedded model and show their figures."""
from __future__ import annotations

import sys

import nbformat
import pytest
from nbclient import NotebookClient
from conftest import run_sweep
from test_eval_pipeline import REPO, SMALL, _run, wiring

NB_SMALL = [*SMALL, "model.prompts.calib.count=2", "calib.eval_prompts=1", "calib.sensitivity_prompts=2"]


@pytest.fixture(scope="module")
def results_dir(tmp_path_factory):
    """One real sweep job of scripts/evaluate.py: MinMax W4A8 calibration in-process, paired videos, metrics."""
    sweep = tmp_path_factory.mktemp("sweep")
    _run([sys.executable, str(REPO / "scripts" / "evaluate.py"), *wiring("none"), *SMALL, "model.prompts.eval.count=2",
          "method=minmax", "bits=w4a8", "calib=fast", "calib.eval_prompts=1", "calib.sensitivity_prompts=1",
          "eval.fvd.enabled=false", "eval.lpips.enabled=false", f"hydra.run.dir={sweep / '0'}"], REPO)
    return sweep


def _execute(name: str, monkeypatch, **env) -> nbformat.NotebookNode:
    monkeypatch.setenv("QARVD_NB_OVERRIDES", " ".join(NB_SMALL))
    monkeypatch.setenv("OMP_NUM_THREADS", "1")  # tiny tensors: one thread is ~10x faster than two on a busy 2-core box
    monkeypatch.setenv("MPLBACKEND", "module://matplotlib_inline.backend_inline")
    for k, v in env.items():
        monkeypatch.setenv(k, str(v))
    nb = nbformat.read(REPO / "notebooks" / name, as_version=4)
    NotebookClient(nb, timeout=600, kernel_name="python3", resources={"metadata": {"path": str(REPO / "notebooks")}}).execute()
    return nb


def _figures(nb) -> int:
    return sum("image/png" in o.get("data", {}) for c in nb.cells if c.cell_type == "code" for o in c.outputs)


def test_outlier_patterns_notebook(monkeypatch):
    assert _figures(_execute("outlier_patterns.ipynb", monkeypatch)) == 3


def test_frame_sensitivity_notebook(monkeypatch):
    nb = _execute("frame_sensitivity.ipynb", monkeypatch)
    assert _figures(nb) == 1
    text = "".join(o.get("text", "") for c in nb.cells if c.cell_type == "code" for o in c.outputs)
    assert "W4A8" in text and "first/last" in text


def _markdown(nb) -> str:
    return "".join(str(o.get("data", {}).get("text/markdown", "")) for c in nb.cells if c.cell_type == "code" for o in c.outputs)


def _printed(nb) -> str:
    return "".join(o.get("text", "") for c in nb.cells if c.cell_type == "code" for o in c.outputs)


def test_results_dashboard_notebook(monkeypatch, results_dir):
    nb = _execute("results_dashboard.ipynb", monkeypatch, QARVD_RESULTS=results_dir)
    assert "| MinMax | W4A8 |" in _markdown(nb)  # the method x bits table holds the run
    printed = _printed(nb)
    assert "preset(s) ['None'] have no single table layout" in printed  # a run without a preset: says which layout
    # the frontier, 3 per-chunk curves (latent MSE of the calibration, PSNR/SSIM of the evaluation), the frames
    assert _figures(nb) == 1 + 3 + 1
    assert "no result carries weight_bytes" not in printed and "sample frames of 1 runs" in printed


def test_results_dashboard_on_a_tau_sweep(monkeypatch, tau_sweep):
    nb = _execute("results_dashboard.ipynb", monkeypatch, QARVD_RESULTS=tau_sweep)
    md, printed = _markdown(nb), _printed(nb)
    assert "Modified Z-score threshold tau" in md and "| tau | 3.00 | 3.50 |" in md  # the preset's own layout
    assert "Discriminability" not in md and "tiny: tau_sweep curves over tau" in printed
    assert "per-chunk curves: ['latent_mse', 'lpips_fp', 'psnr_fp', 'ssim_fp']" in printed
    # frontier, 4 per-chunk curves, the tau curves (one figure of 4 panels), the frames of 2 runs
    assert _figures(nb) == 1 + 4 + 1 + 2


@pytest.mark.slow  # 4 evaluation jobs of the debug model (~1 min on 2 cores)
def test_results_dashboard_on_a_table3_sweep(monkeypatch, tmp_path):
    sweep = run_sweep(tmp_path, "table3", "bits=w4a8")  # dual scale x frame weighting at one bitwidth
    nb = _execute("results_dashboard.ipynb", monkeypatch, QARVD_RESULTS=sweep)
    md = _markdown(nb)
    assert "Table 3: ablation" in md and "| Dual Scale | Frame Weighting |" in md and "Discriminability" not in md
    assert sum(line.startswith(("| ✗", "| ✓")) for line in md.splitlines()) == 4  # the 2 x 2 grid
    assert _figures(nb) == 1 + 4 + 3  # frontier, per-chunk curves, the frames of 3 runs (the notebook shows 3)
