"""VBench in its own interpreter: missing pieces fail naming them; the runner calls VBench's API as the paper's setup
needs (custom_input, local=True, VBENCH_CACHE_DIR); results are parsed into percentages and their plain mean.

The official package cannot be installed here (it needs CUDA 11.6-12.1 and numpy<2), so a stand-in ``vbench`` with
the same class and method signatures records how it was called and writes a results file in VBench's format.
"""
from __future__ import annotations

import ast
import json
import os
import stat
import sys

import pytest

from eval.vbench import CACHE_FILES, PAPER_DIMENSIONS, check_vbench, parse_vbench_results, run_vbench
from qarvd.utils.errors import MissingWeightsError

STANDIN = '''
import json, os
from pathlib import Path

def get_prompt_from_filename(path):
    import re
    stem = Path(path).stem
    return re.sub(r"-\\d+$", "", stem)

class VBench:
    def __init__(self, device, full_info_dir, output_path):
        self.device, self.output_path = device, output_path
        os.makedirs(output_path, exist_ok=True)

    def evaluate(self, videos_path, name, prompt_list=[], dimension_list=None, local=False, read_frame=False,
                 mode="vbench_standard", **kwargs):
        videos = sorted(f for f in os.listdir(videos_path) if f.endswith(".mp4"))
        call = dict(videos=videos, prompts=[get_prompt_from_filename(v) for v in videos], dimension_list=dimension_list,
                    local=local, mode=mode, device=str(self.device), cache=os.environ.get("VBENCH_CACHE_DIR"))
        Path(self.output_path, name + "_call.json").write_text(json.dumps(call))
        scores = {d: [0.5 + 0.1 * i, [{"video_path": v, "video_results": 0.5} for v in videos]]
                  for i, d in enumerate(dimension_list)}
        Path(self.output_path, name + "_eval_results.json").write_text(json.dumps(scores))
'''


@pytest.fixture
def cache_dir(tmp_path):
    root = tmp_path / "vbench_cache"
    for dim in PAPER_DIMENSIONS:
        for rel, _ in CACHE_FILES[dim]:
            p = root / rel
            p.parent.mkdir(parents=True, exist_ok=True)
            p.mkdir() if rel.endswith("_main") else p.write_bytes(b"0")
    return root


@pytest.fixture
def vbench_python(tmp_path):
    """An 'interpreter' of a separate environment: our python with only the stand-in vbench on its path."""
    pkg = tmp_path / "venv_site" / "vbench"
    pkg.mkdir(parents=True)
    (pkg / "__init__.py").write_text(STANDIN)
    exe = tmp_path / "vbench-python"
    exe.write_text(f'#!/bin/sh\nPYTHONPATH="{pkg.parent}" exec "{sys.executable}" "$@"\n')
    exe.chmod(exe.stat().st_mode | stat.S_IXUSR)
    return exe


def test_runner_calls_vbench_custom_input_local_and_results_are_parsed(tmp_path, cache_dir, vbench_python):
    videos = tmp_path / "quant"
    videos.mkdir()
    for name in ("a cat-0.mp4", "a dog-1.mp4"):
        (videos / name).write_bytes(b"")
    scores = run_vbench(videos, tmp_path / "out", vbench_python, cache_dir, PAPER_DIMENSIONS, name="q", device="cpu")
    call = json.loads((tmp_path / "out" / "q_call.json").read_text())
    assert call["mode"] == "custom_input" and call["local"] is True and call["cache"] == str(cache_dir)
    assert call["dimension_list"] == list(PAPER_DIMENSIONS) and call["prompts"] == ["a cat", "a dog"]
    expected = {d: 100 * (0.5 + 0.1 * i) for i, d in enumerate(PAPER_DIMENSIONS)}
    assert scores == pytest.approx({**expected, "avg": sum(expected.values()) / 5})


def test_parse_results_in_vbench_format(tmp_path):
    raw = {"subject_consistency": [0.9725, []], "background_consistency": [0.9668, []], "motion_smoothness": [0.9899, []],
           "aesthetic_quality": [0.6249, []], "imaging_quality": [0.7135, []]}  # paper Table 2, BF16
    (tmp_path / "r.json").write_text(json.dumps(raw))
    scores = parse_vbench_results(tmp_path / "r.json")
    assert scores["avg"] == pytest.approx(85.352)  # the paper rounds it to 85.35
    with pytest.raises(ValueError, match="lack dimensions"):
        parse_vbench_results(tmp_path / "r.json", PAPER_DIMENSIONS + ("dynamic_degree",))


def test_missing_interpreter_package_and_cache_files_are_named(tmp_path, cache_dir, vbench_python):
    with pytest.raises(MissingWeightsError, match="eval.vbench.python.*(?s:.*)Vchitect/VBench"):
        check_vbench(tmp_path / "no-python", cache_dir, PAPER_DIMENSIONS)
    with pytest.raises(MissingWeightsError, match="no 'vbench' package"):
        check_vbench(sys.executable, cache_dir, PAPER_DIMENSIONS)  # our own environment has no vbench
    with pytest.raises(MissingWeightsError, match="eval.vbench.cache_dir"):
        check_vbench(vbench_python, None, PAPER_DIMENSIONS)
    os.remove(cache_dir / "amt_model" / "amt-s.pth")
    with pytest.raises(MissingWeightsError) as err:
        check_vbench(vbench_python, cache_dir, PAPER_DIMENSIONS)
    assert "amt_model/amt-s.pth" in str(err.value) and "huggingface.co/lalala125/AMT" in str(err.value)
    check_vbench(vbench_python, cache_dir, ["subject_consistency"])  # a dimension that does not need it still runs
    with pytest.raises(ValueError, match="not supported"):
        check_vbench(vbench_python, cache_dir, ["object_class"])


def test_runner_is_standalone():
    """The runner executes in VBench's environment: it may import only the standard library, torch and vbench."""
    from eval import vbench_runner

    tree = ast.parse(open(vbench_runner.__file__).read())
    imports = {a.name.split(".")[0] for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names}
    imports |= {n.module.split(".")[0] for n in ast.walk(tree) if isinstance(n, ast.ImportFrom)}
    assert imports <= {"argparse", "os", "sys", "torch", "vbench"}, imports


def test_scores_are_kept_next_to_the_videos_and_not_recomputed(tmp_path, cache_dir, vbench_python):
    from omegaconf import OmegaConf

    from qarvd.app.evaluate import vbench_metrics

    videos = tmp_path / "fp"
    videos.mkdir()
    (videos / "a cat-0.mp4").write_bytes(b"")
    cfg = OmegaConf.create({"eval": {"vbench": {"python": str(vbench_python), "cache_dir": str(cache_dir),
                                                "dimensions": list(PAPER_DIMENSIONS), "device": "cpu", "timeout_s": None}}})
    first = vbench_metrics(cfg, videos, "fp")
    assert set(first) == set(PAPER_DIMENSIONS) | {"vbench_avg"}
    vbench_python.unlink()  # VBench is gone: only the stored results can answer now
    assert vbench_metrics(cfg, videos, "fp") == first
    assert (tmp_path / "fp.vbench" / "fp_eval_results.json").exists()
