"""The analysis notebooks execute top to bottom (nbclient) on a shrunken embedded model and show their figures."""
from __future__ import annotations

import sys

import nbformat
import pytest
from nbclient import NotebookClient
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


def test_results_dashboard_notebook(monkeypatch, results_dir):
    nb = _execute("results_dashboard.ipynb", monkeypatch, QARVD_RESULTS=results_dir)
    html = "".join(str(o.get("data", {}).get("text/markdown", "")) for c in nb.cells if c.cell_type == "code" for o in c.outputs)
    assert "| MinMax | W4A8 |" in html  # the method x bits table holds the run
    assert _figures(nb) == 2  # the quality / weight-memory frontier and one run's FP / quantized frames
    printed = "".join(o.get("text", "") for c in nb.cells if c.cell_type == "code" for o in c.outputs)
    assert "no result carries weight_bytes" not in printed and "sample frames of 1 runs" in printed
