"""What a job leaves behind: short job folders usable as override values, logs with stage lines and tracebacks,
progress that degrades to plain lines, and an offline W&B run holding everything a record has."""
from __future__ import annotations

import glob
import json
import logging
import os
import subprocess
import sys
from pathlib import Path

import pytest
from hydra._internal.core_plugins.basic_sweeper import BasicSweeper
from hydra.core.override_parser.overrides_parser import OverridesParser

from qarvd.utils.hydra_resolvers import JOB_DIR_MAX, job_dir_name
from qarvd.utils import progress
from wandb_records import read_run

REPO = Path(__file__).resolve().parents[1]
# 9 overrides, 12 jobs (2 methods x 3 bit-widths x 2 tau), all cheap on the debug model
SWEEP = ["method=minmax,qarvd", "bits=w4a8,w8a8,w4a6", "method.outlier.tau=3.0,3.5", "debug=tiny", "calib=fast",
         "calib.iters=2", "model.prompts.eval.count=1", "calib.eval_prompts=1", "calib.sensitivity_prompts=2"]
LONG = ["experiment=tau_sweep", "model=tiny", "eval=default", "method.frame_weighting=final_quality",
        "method.dual_scale=true", "calib.capture.spill_dir=/scratch/some/long/folder/for/spilled/activations",
        "eval.fp_cache_dir=/scratch/another/long/folder/for/shared/fp/videos", "model.rollout.guidance_scale=1.5"]


def _run(args, env=None, check=True):
    out = subprocess.run([sys.executable, *args], cwd=REPO, capture_output=True, text=True, timeout=900,
                         env={**os.environ, "OMP_NUM_THREADS": "1", "WANDB_MODE": "offline", **(env or {})})
    assert not check or out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    return out


def _jobs(args: list[str]) -> list[list[str]]:
    parsed = OverridesParser.create().parse_overrides(args)
    return [list(job) for batch in BasicSweeper.split_arguments(parsed, None) for job in batch]


def _as_override_value(folder: str) -> str:
    (o,) = OverridesParser.create().parse_overrides([f"eval.artifact={folder}"])
    return o.value()


def test_job_folder_names_of_a_12_job_sweep_with_9_overrides():
    jobs = _jobs(SWEEP)
    assert len(jobs) == 12 and all(len(j) == 9 for j in jobs)
    names = [job_dir_name(j, ["method.outlier.tau"], ["device", "logger", "experiment"]) for j in jobs]
    assert len(set(names)) == 12  # the hash of the whole override set keeps them apart
    for job, name in zip(jobs, names):
        assert len(name) <= JOB_DIR_MAX and "=" not in name and "," not in name
        method, bits, tau = (o.split("=")[1] for o in job[:3])
        assert name.startswith(f"{method}_{bits}_tau-{tau}_")  # headline keys, then the swept key
        folder = f"/logs/evaluate/multiruns/2026-01-01_00-00-00_tau_sweep/{name}"
        assert _as_override_value(folder) == folder  # usable unquoted as eval.artifact=<job dir>
    assert job_dir_name(list(reversed(jobs[0]))) == job_dir_name(jobs[0])  # stable: the set, not the order
    long = LONG + ["method=qarvd", "bits=w4a8"]
    assert len(",".join(long)) > 255  # Hydra's override_dirname: 'File name too long'
    name = job_dir_name(long, exclude=["experiment"])
    assert len(name) <= JOB_DIR_MAX and name.startswith("qarvd_w4a8_tiny_") and _as_override_value(name) == name


def test_a_real_12_job_multirun_names_its_folders_and_prints_the_sweep_folder(tmp_path):
    """The resolver in conf/hydra/default.yaml on the jobs Hydra launches (preflight: builds nothing, 12 jobs)."""
    out = _run(["scripts/preflight.py", "-m", *SWEEP, f"paths.log_dir={tmp_path}"])
    sweep = next((tmp_path / "preflight" / "multiruns").iterdir())
    folders = sorted(p.name for p in sweep.iterdir() if p.is_dir())
    assert len(folders) == 12 and all(len(f) <= JOB_DIR_MAX and "=" not in f and "," not in f for f in folders)
    assert out.stdout.count(f"sweep folder: {sweep}") == 2  # at the start and at the end
    assert out.stdout.startswith(f"sweep folder: {sweep} (12 jobs)")


@pytest.mark.slow  # 12 calibrations of the debug model (~2 min on 2 cores)
def test_the_12_job_sweep_runs(tmp_path):
    _run(["scripts/train_quant.py", "-m", *SWEEP, "logger=none", f"paths.log_dir={tmp_path}"])
    sweep = next((tmp_path / "train_quant" / "multiruns").iterdir())
    records = sorted(sweep.glob("*/record.json"))
    assert len(records) == 12 and all(len(p.parent.name) <= JOB_DIR_MAX for p in records)


def test_preset_sweeps_land_under_the_entry_point_and_are_checked_before_the_first_job(tmp_path):
    """evaluate -m experiment=table2 writes under logs/evaluate/multiruns/<time>_table2 (not logs/train_quant or
    table2/), so MultirunPreflight knows the stage and stops a sweep whose weights are missing."""
    out = _run(["scripts/evaluate.py", "-m", "experiment=table2", f"paths.log_dir={tmp_path}",
                f"paths.weights_dir={tmp_path}/none"], check=False)
    assert out.returncode != 0 and "the multirun was not started" in out.stderr
    first = out.stdout.splitlines()[0]
    sweep = Path(first.removeprefix("sweep folder: ").removesuffix(" (18 jobs)"))
    assert first.endswith("(18 jobs)") and sweep.parent == tmp_path / "evaluate" / "multiruns"
    assert sweep.name.endswith("_table2")


def test_help_shows_the_description_examples_and_groups():
    out = _run(["scripts/evaluate.py", "--help"]).stdout
    assert out.startswith("Evaluate a quantized model") and "python scripts/evaluate.py -m experiment=table2" in out
    assert "experiment: alpha_sweep" in out and "-sc install=bash" in out and "== Config ==" not in out


# ------------------------------------------------------------------------------------------------------- logs
def test_a_failing_job_leaves_its_traceback_in_its_log(tmp_path):
    """A sweep of two evaluations of folders that do not exist: both fail, each log holds its traceback."""
    out = _run(["scripts/evaluate.py", "-m", "debug=tiny", "logger=wandb", "logger.mode=offline",
                f"eval.fp_dir={tmp_path}/no_fp", f"eval.quant_dir={tmp_path}/a,{tmp_path}/b",
                f"paths.log_dir={tmp_path}/logs"], check=False)
    assert out.returncode != 0
    logs = sorted(glob.glob(f"{tmp_path}/logs/evaluate/multiruns/*/*/evaluate.log"))
    assert len(logs) == 2
    for path in logs:
        text = Path(path).read_text()
        assert "job evaluate started" in text and "job evaluate FAILED" in text and "Traceback (most recent call last)" in text
        assert "FileNotFoundError: video folder" in text and "no_fp" in text
        (run,) = (Path(path).parent / "wandb").glob("offline-run-*")
        assert read_run(run)["exit_code"] == 1  # the W&B run is finished, as failed


def test_progress_is_plain_lines_off_a_terminal(caplog, monkeypatch):
    monkeypatch.setattr(progress, "LINE_INTERVAL_S", 0.0)
    with caplog.at_level(logging.INFO, logger="qarvd.progress"):
        for _ in progress.progress_bar(range(3), desc="stage", unit="batch"):
            for _ in progress.progress_bar(range(2), desc="inner", leave=False):
                pass
    lines = [r.getMessage() for r in caplog.records]
    assert lines[0] == "stage: 0/3 [00:00<?, ?batch/s]" and lines[-1].startswith("stage: 3/3 [00:00<00:00")
    assert not any(c in m for m in lines for c in "\r\x1b")  # no carriage returns, no cursor codes
    caplog.clear()
    monkeypatch.setattr(progress, "on_terminal", lambda: True)  # a terminal: tqdm's bar, and the final line logged
    with caplog.at_level(logging.INFO, logger="qarvd.progress"):
        for _ in progress.progress_bar(range(2), desc="bar", file=open(os.devnull, "w")):
            pass
    assert [r.getMessage()[:8] for r in caplog.records] == ["bar: 2/2"]


@pytest.fixture(scope="module")
def evaluation(tmp_path_factory):
    """One evaluation job of Q-ARVD on the debug model (calibration with sensitivity and reconstruction, paired
    videos, metrics), logged offline to W&B."""
    run = tmp_path_factory.mktemp("evaluate")
    _run(["scripts/evaluate.py", "debug=tiny", "calib=fast", "calib.iters=2", "calib.eval_prompts=1",
          "calib.sensitivity_prompts=2", "method=qarvd", "bits=w4a8", "model.prompts.eval.count=2",
          "eval.lpips.enabled=false", "logger=wandb", "logger.mode=offline", f"hydra.run.dir={run}",
          f"paths.log_dir={run}/logs"])
    return run


def test_job_log_has_a_timed_line_per_stage(evaluation):
    text = (evaluation / "evaluate.log").read_text()
    for line in ("FP reference rollout: 1 prompts in", "chunk sensitivity: 2/2", "capture pass 1/1:",
                 "reconstructed blocks.1.ffn.2: loss", "reconstruct (layer): 16/16", "qarvd calibrated in",
                 "quantized rollout in", "FP videos in", "quantized videos in", "reference metrics of 2 video pairs in",
                 "job evaluate finished in"):
        assert line in text, line


def test_offline_wandb_run_holds_the_record(evaluation):
    (folder,) = (evaluation / "wandb").glob("offline-run-*")
    run = read_run(folder)
    record = json.loads((evaluation / "record.json").read_text())
    assert run["run"]["job_type"] == "evaluate" and run["run"]["group"] == "evaluate"
    assert run["run"]["tags"] == ["tiny", "qarvd", "w4a8"] and run["exit_code"] == 0
    assert run["config"]["method"]["name"] == "qarvd" and run["config"]["eval"]["samples"]["min_height"] == 256
    s = run["summary"]
    assert s["psnr_fp"] == pytest.approx(record["metrics"]["psnr_fp"]) and s["weight_bytes"] == record["weight_bytes"] > 0
    assert s["calibrate/latent_mse"] > 0 and s["calibrate/reconstruction/units"] == 16
    assert {"evaluate/seconds/generation", "evaluate/seconds/metrics", "calibrate/seconds/reconstruction"} <= set(s)
    charts = run["config"]["_wandb"]["visualize"]  # line plots over the chunks
    assert {"calibrate/per_chunk/latent_mse", "per_chunk/psnr_fp", "per_chunk/ssim_fp", "calibrate/frame_alpha",
            "calibrate/chunk_weights", "calibrate/reconstruction/final_over_nearest"} <= set(charts)
    assert len(record["per_chunk"]["psnr_fp"]) == 2  # the debug model's 2 chunks
    media = [f for f in run["files"] if f.startswith("media/")]
    assert sum(f.startswith("media/images/strips/") for f in media) == 4  # FP and quantized strip of 2 videos
    videos = [f for f in media if f.startswith("media/videos/samples/")]
    assert len(videos) == 2 and "record.json" in run["files"]
    import av

    with av.open(str(folder / "files" / videos[0])) as c:  # what browsers play: H.264 4:2:0, >= 256 px
        v = c.streams.video[0]
        assert v.codec_context.pix_fmt == "yuv420p" and v.height >= 256 and v.width == 2 * v.height
    kinds = {a["name"]: a["files"] for a in run["artifacts"] if a["type"] == "record"}
    assert kinds == {"record-qarvd-w4a8-calibrate": ["record.json"], "record-qarvd-w4a8-evaluate": ["record.json"]}
