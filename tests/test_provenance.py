"""Provenance, end to end (issue 21): every defect found by trying the codebase as a user, one test each.

Labels come from the artifact, an artifact is tied to its base weights and validated as it loads, rollouts refuse
NaN/Inf, video folders are reused only when their manifest matches, a run folder is locked and never silently reuses
another config's calibration, hidden-file prompts are scored, names are derived and bools/counts validated, and
every file a (multi)run needs is checked before any model is built.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from qarvd.app.calibrate import train_quant
from qarvd.app.preflight import PreflightError, preflight, value_problems
from qarvd.app.provenance import (ProvenanceError, base_weights, check_base_weights, check_or_write_manifest,
                                  code_identity, labels_from_artifact, run_lock, source_sha256, video_manifest)
from qarvd.quant.artifact import TENSORS_FILE, ArtifactError, load_artifact, read_config
from quant_helpers import tiny_cfg, tiny_pipeline

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def adaround_run(tmp_path_factory):
    """A finished debug=tiny AdaRound W4A8 calibration (artifact + record)."""
    run = tmp_path_factory.mktemp("adaround")
    train_quant(tiny_cfg("method=adaround", "calib.iters=2"), run)
    return run


def test_results_are_labelled_from_the_artifact_and_a_contradicting_config_is_refused(adaround_run, tmp_path):
    from qarvd.app.evaluate import labels

    cfg = tiny_cfg()  # the config's own choice is minmax
    ident = labels(cfg, str(adaround_run), None)
    assert (ident["method"], ident["bits"]) == ("adaround", "w4a8") and ident["tags"]["frame_weighting"] == "none"
    out = subprocess.run([sys.executable, "scripts/evaluate.py", "debug=tiny", f"eval.artifact={adaround_run}",
                          "method=qarvd", "bits=w8a8", "logger=none", f"hydra.run.dir={tmp_path}"],
                         cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert out.returncode != 0 and "contradicts artifact" in out.stderr and "method='qarvd'" in out.stderr
    assert not (tmp_path / "record.json").exists() and not (tmp_path / "videos").exists()  # stopped before any video


def test_an_artifact_is_tied_to_its_base_weights(adaround_run):
    run = read_config(adaround_run)["run"]
    check_base_weights(tiny_cfg(), run, "a")  # the weights it was calibrated on
    with pytest.raises(ProvenanceError, match="calibrated on other weights"):
        check_base_weights(tiny_cfg("model.init_seed=1"), run, "a")  # other (seeded random) weights
    cfg = tiny_cfg("model.checkpoint.random_init=false")  # the shipped bundle: identified by file hash, not path
    assert set(base_weights(cfg)) == {"model.checkpoint", "model.text_encoder"} and len(base_weights(cfg)["model.checkpoint"]) == 64
    with pytest.raises(ProvenanceError, match="records no base weights"):
        check_base_weights(tiny_cfg(), {k: v for k, v in run.items() if k != "base_weights"}, "old")


def _rewrite(src: Path, dst: Path, edit_tensors=None, edit_config=None) -> Path:
    from safetensors import safe_open
    from safetensors.torch import save_file

    with safe_open(str(src / TENSORS_FILE), "pt") as f:
        tensors = {k: f.get_tensor(k) for k in f.keys()}
        meta = dict(f.metadata())
    config = json.loads(meta["quant_config"])
    if edit_tensors:
        edit_tensors(tensors)
    if edit_config:
        edit_config(config)
    meta["quant_config"] = json.dumps(config)
    dst.mkdir()
    save_file(tensors, str(dst / TENSORS_FILE), metadata=meta)
    return dst


def test_artifact_metadata_and_values_are_validated_on_load(adaround_run, tmp_path):
    pipe, _ = tiny_pipeline()
    name = "blocks.0.ffn.0"

    def nan_scale(t):
        t[f"{name}.g0.a_scale"] = torch.tensor([float("nan")])

    def zero_scale(t):
        t[f"{name}.g0.w_scale"] = torch.zeros_like(t[f"{name}.g0.w_scale"])

    def edited_bits(c):  # a 4-bit artifact relabelled as 2-bit: its codes no longer fit
        c["run"]["bits_cfg"]["w_bits"] = 2
        c["run"]["bits"] = "w2a8"
        for spec in c["layers"].values():
            spec["w_bits"] = 2

    def renamed_bits(c):  # the label edited alone
        c["run"]["bits"] = "w8a8"

    cases = [(nan_scale, None, "non-finite a_scale"), (zero_scale, None, "non-positive or non-finite w_scale"),
             (None, edited_bits, "outside the 2-bit range"), (None, renamed_bits, "do not match its bit widths")]
    for i, (t, c, msg) in enumerate(cases):
        bad = _rewrite(adaround_run, tmp_path / str(i), t, c)
        with pytest.raises(ArtifactError, match=msg):
            load_artifact(pipe.model, bad)
    load_artifact(pipe.model, adaround_run)  # the untouched artifact loads


def test_a_rollout_with_nan_latents_names_the_prompt_and_seed():
    from qarvd.models.pipeline import NonFiniteLatentsError

    pipe, _ = tiny_pipeline()
    pipe.model.blocks[0].ffn.register_forward_hook(lambda m, a, out: out * float("nan"))
    with pytest.raises(NonFiniteLatentsError, match=r"'a red square' \(seed 7\)"):
        pipe.generate_latents(["a red square"], [7])


def test_video_folders_are_reused_only_when_their_manifest_matches(adaround_run, tmp_path):
    from qarvd.app.generate import video_jobs

    cfg = tiny_cfg()
    jobs = video_jobs(["a", "b"], seed=0)
    folder = tmp_path / "quant"
    first = video_manifest(cfg, jobs, str(adaround_run))
    assert first["labels"]["method"] == "adaround" and len(first["artifact_sha256"]) == 64
    check_or_write_manifest(folder, first)
    check_or_write_manifest(folder, video_manifest(cfg, video_jobs(["a", "b", "c"], seed=0), str(adaround_run)))  # extend
    assert set(json.loads((folder / "manifest.json").read_text())["videos"]) == {"a-0", "b-0", "c-0"}
    with pytest.raises(ProvenanceError, match="artifact_sha256"):
        check_or_write_manifest(folder, video_manifest(cfg, jobs, None))  # FP videos into a quantized folder
    with pytest.raises(ProvenanceError, match="other prompts or seeds"):
        check_or_write_manifest(folder, video_manifest(cfg, video_jobs(["a", "b"], seed=5), str(adaround_run)))
    with pytest.raises(ProvenanceError, match="base_weights"):
        check_or_write_manifest(folder, video_manifest(tiny_cfg("model.init_seed=3"), jobs, str(adaround_run)))
    legacy = tmp_path / "legacy"
    legacy.mkdir()
    (legacy / "a-0.mp4").write_bytes(b"x")
    with pytest.raises(ProvenanceError, match="no manifest.json"):
        check_or_write_manifest(legacy, first)


def test_records_name_the_device_and_the_code_that_made_them(adaround_run, tmp_path):
    env = json.loads((adaround_run / "record.json").read_text())["provenance"]["environment"]
    assert env["device"].startswith("cpu ") and env["torch"] == torch.__version__
    assert env["code"] == code_identity() and len(env["code"]["source_sha256"]) == 64
    a, b = tmp_path / "a" / "pkg", tmp_path / "b" / "pkg"
    for root in (a, b):
        (root / "sub").mkdir(parents=True)
        (root / "sub" / "m.py").write_text("x = 1\n")
        (root / "notes.txt").write_text(str(root))  # not a source file: not hashed
    assert source_sha256([a]) == source_sha256([b])  # same code on another machine or path: same identity
    (b / "sub" / "m.py").write_text("x = 2\n")
    assert source_sha256([a]) != source_sha256([b])


def test_a_run_folder_is_locked_and_keeps_its_own_calibration(adaround_run, tmp_path):
    from qarvd.app.evaluate import CALIBRATION_DIR, calibrate

    with run_lock(tmp_path):
        with pytest.raises(ProvenanceError, match=f"pid {os.getpid()}"):
            with run_lock(tmp_path):
                pass
    with run_lock(tmp_path):  # released
        pass
    (tmp_path / "job").mkdir()
    os.symlink(adaround_run, tmp_path / "job" / CALIBRATION_DIR)
    assert calibrate(tiny_cfg("method=adaround", "calib.iters=2"), tmp_path / "job") == adaround_run / TENSORS_FILE
    with pytest.raises(ProvenanceError, match="finished calibration of another config"):
        calibrate(tiny_cfg("method=qarvd"), tmp_path / "job")  # would have reused AdaRound's metrics as Q-ARVD's


def test_a_prompt_starting_with_a_dot_is_scored(tmp_path):
    from eval.video_io import list_videos
    from qarvd.app.generate import video_jobs

    job = video_jobs([".hidden shape moving left"])[0]
    assert not job.name.startswith(".")
    (tmp_path / f"{job.name}.mp4").write_bytes(b"")
    assert list(list_videos(tmp_path)) == [f"{job.name}.mp4"]


@pytest.mark.parametrize("override,problem", [
    ("bits.symmetric='false'", "bits.symmetric='false': give true or false"),
    ("eval.count=0", "eval.count=0: give an integer >= 1, or null"),
    ("calib.num_prompts=-1", "calib.num_prompts=-1: give an integer >= 1"),
    ("eval.deploy=1", "eval.deploy=1: give true or false"),
    ("calib.seed=-2", "calib.seed=-2: give an integer >= 0"),
])
def test_bools_and_counts_are_validated(override, problem):
    assert any(problem in p for p in value_problems(tiny_cfg(override)))


def test_bits_names_are_derived_from_the_widths():
    assert tiny_cfg("bits.w_bits=3").bits.name == "w3a8"
    assert tiny_cfg("bits=w8a8", "bits.symmetric=true").bits.name == "w8a8_sym"
    assert value_problems(tiny_cfg()) == []
    from qarvd.data.prompts import select

    with pytest.raises(ValueError, match="eval.count=0"):
        select(["a", "b"], 0, 0, "eval.count")


def test_preflight_names_every_missing_file_before_anything_is_built(tmp_path, monkeypatch):
    from conftest import compose

    monkeypatch.setenv("TORCH_HOME", str(tmp_path))  # no AlexNet in torch.hub's cache
    cfg = compose(["model=self_forcing", f"paths.weights_dir={tmp_path}/none", "eval.fvd.backbone=i3d",
                   "eval.lpips.required=true"])
    with pytest.raises(PreflightError) as err:
        preflight(cfg, "evaluate")
    msg = str(err.value)
    for key in ("model.checkpoint.path", "model.text_encoder.weights", "model.text_encoder.tokenizer", "model.vae.weights",
                "eval.fvd.backbones.i3d.path", "eval.lpips.alexnet_path"):
        assert key in msg, key
    assert "huggingface.co/gdhe17/Self-Forcing" in msg and "nothing was built" in msg


def test_multirun_with_missing_weights_fails_before_its_first_job(tmp_path):
    t0 = time.monotonic()
    out = subprocess.run([sys.executable, "scripts/evaluate.py", "-m", "model=self_forcing", "method=minmax,qarvd",
                          "bits=w8a8,w4a8", f"paths.weights_dir={tmp_path}/none", f"paths.log_dir={tmp_path}/logs",
                          f"hydra.sweep.dir={tmp_path}/sweep", "logger=none"],
                         cwd=ROOT, capture_output=True, text=True, timeout=120)
    seconds = time.monotonic() - t0
    assert out.returncode != 0 and "the multirun was not started" in out.stderr, out.stderr[-2000:]
    assert "self_forcing_dmd.pt" in out.stderr and "model.checkpoint.path" in out.stderr
    assert seconds < 30, seconds
    assert "Launching" not in out.stdout + out.stderr and not list((tmp_path / "sweep").glob("*/.hydra"))  # no job started
