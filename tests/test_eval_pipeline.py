"""Paired generation and evaluation through the entry points, on a shrunken embedded model (random weights).

calibrate (train_quant.py) -> generate.py (FP + quantized, one process) -> the same under torchrun with 2 processes
(gloo, CPU): byte-identical files; resuming redoes only unfinished batches; evaluate.py on the two folders writes
record.json and an offline W&B run.
"""
from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from conftest import CONF_DIR

REPO = Path(__file__).resolve().parents[1]
SMALL = ["model.checkpoint.random_init=true", "model.arch.dim=32", "model.arch.ffn_dim=64", "model.arch.num_heads=2",
         "model.arch.num_layers=1", "model.rollout.num_frames=6", "model.latent.height=32", "model.latent.width=32",
         "model.prompts.eval.count=5"]


def wiring(logger: str = "none") -> list[str]:
    """eval/logger choices: overrides if conf/config.yaml lists the groups in its defaults, appended otherwise."""
    text = (Path(CONF_DIR) / "config.yaml").read_text()
    plus = "" if ("- eval:" in text and "- logger:" in text) else "+"
    return [f"{plus}eval=default", f"{plus}logger={logger}"]


def _run(args, cwd, env_extra=None):
    env = {**os.environ, "WANDB_MODE": "offline", "OMP_NUM_THREADS": "1", **(env_extra or {})}
    out = subprocess.run(args, cwd=cwd, env=env, capture_output=True, text=True)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    return out.stdout


def _digests(folder: Path) -> dict[str, str]:
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def artifact(tmp_path_factory):
    run = tmp_path_factory.mktemp("calib")
    _run([sys.executable, str(REPO / "scripts" / "train_quant.py"), *SMALL, "method=minmax", "bits=w4a8", "calib=fast",
          "calib.eval_prompts=1", "calib.sensitivity_prompts=1", f"hydra.run.dir={run}"], REPO)
    return json.loads((run / "record.json").read_text())["provenance"]["artifact"]


@pytest.fixture(scope="module")
def videos(tmp_path_factory, artifact):
    """The same generation by one process and by torchrun with two (gloo on CPU)."""
    root = tmp_path_factory.mktemp("gen")
    common = [*wiring(), *SMALL, f"eval.artifact={artifact}", "eval.strip.scale=1"]
    _run([sys.executable, str(REPO / "scripts" / "generate.py"), *common, f"hydra.run.dir={root / 'one'}"], REPO)
    _run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
          str(REPO / "scripts" / "generate.py"), *common, f"hydra.run.dir={root / 'two'}"], REPO)
    return root


def test_torchrun_writes_the_same_files_as_one_process(videos):
    one, two = _digests(videos / "one" / "videos"), _digests(videos / "two" / "videos")
    assert len([k for k in one if k.endswith(".mp4")]) == 10  # 5 prompts x (FP + quantized)
    assert len([k for k in one if k.endswith(".png")]) == 10
    assert one == two
    fp = {k.split("/", 1)[1]: v for k, v in one.items() if k.startswith("fp/")}
    quant = {k.split("/", 1)[1]: v for k, v in one.items() if k.startswith("quant/")}
    assert fp.keys() == quant.keys() and fp != quant  # same names, the quantized model made different videos


def test_generation_stats_count_every_rank_share(videos):
    """generation.json (rank 0's run folder) holds each rank's videos and loop/batch seconds: 5 prompts, batch 1,
    dealt round-robin -> ranks 3 and 2; the throughput benchmark reads these numbers."""
    one = json.loads((videos / "one" / "generation.json").read_text())
    two = json.loads((videos / "two" / "generation.json").read_text())
    assert one["world_size"] == 1 and two["world_size"] == 2
    assert [r["fp"]["written"] for r in one["ranks"]] == [5]
    assert [r["fp"]["written"] for r in two["ranks"]] == [3, 2]
    assert [r["quant"]["written"] for r in two["ranks"]] == [3, 2]
    for r in two["ranks"]:
        assert len(r["fp"]["batch_seconds"]) == r["fp"]["written"]
        assert 0 < sum(r["fp"]["batch_seconds"]) <= r["fp"]["seconds"]


def test_generation_resumes_without_redoing_finished_videos(tmp_path):
    from conftest import compose
    from omegaconf import open_dict

    from qarvd.app.generate import generate, jobs

    cfg = compose([*wiring(), *SMALL, "model.prompts.eval.count=3", "eval.prompts_per_batch=2"])
    with open_dict(cfg):
        cfg.eval.video_dir = str(tmp_path)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny tensors: one thread is much faster than two on a busy 2-core machine
    try:
        first = generate(cfg)
        assert (first["counts"]["fp"]["written"], first["counts"]["fp"]["skipped"]) == (3, 0)
        assert len(first["counts"]["fp"]["batch_seconds"]) == 2  # batches of 2 prompts: [2, 1]
        before = _digests(tmp_path)
        (tmp_path / "fp" / "a-0.mp4").write_bytes(b"")  # not one of ours: ignored
        (tmp_path / "fp" / f"{jobs(cfg)[-1].name}.mp4").unlink()  # the second batch holds only the last prompt
        again = generate(cfg)
    finally:
        torch.set_num_threads(threads)
    assert (again["counts"]["fp"]["written"], again["counts"]["fp"]["skipped"]) == (1, 2)  # only the unfinished batch is redone ...
    assert {k: v for k, v in _digests(tmp_path).items() if k != "fp/a-0.mp4"} == before  # ... identically


def test_evaluate_writes_its_record_and_an_offline_wandb_run(tmp_path, videos):
    fp, quant = videos / "one" / "videos" / "fp", videos / "one" / "videos" / "quant"
    _run([sys.executable, str(REPO / "scripts" / "evaluate.py"), *wiring("wandb"), *SMALL, "eval.fvd.enabled=false",
          "eval.lpips.pnet_rand=true", f"eval.fp_dir={fp}", f"eval.quant_dir={quant}", "logger.mode=offline",
          f"hydra.run.dir={tmp_path}"], REPO)
    record = json.loads((tmp_path / "record.json").read_text())
    assert record["num_items"] == 5 and record["stage"] == "evaluate" and len(record["per_item"]) == 5 and record["method"] == "minmax" and record["bits"] == "w4a8"
    assert record["metrics"]["lpips_fp"] > 0 and 10 < record["metrics"]["psnr_fp"] < 100 and 0 < record["metrics"]["ssim_fp"] < 1
    wb = list((tmp_path / "wandb").glob("offline-run-*"))
    assert len(wb) == 1 and json.loads((wb[0] / "files" / "record.json").read_text())["metrics"] == record["metrics"]
    assert len(list((tmp_path / "samples").glob("*.mp4"))) == 4  # FP | quantized side by side, logged as videos


def test_shared_fp_folder_is_keyed_by_what_fp_videos_depend_on():
    from conftest import compose

    from qarvd.app.generate import fp_folder

    base = [*wiring(), *SMALL, "eval.share_fp=true"]
    folder = fp_folder(compose(base))
    assert folder.parent == Path(compose(base).eval.fp_cache_dir) and folder.name.startswith("tiny-")
    assert fp_folder(compose([*base, "eval.count=2", "eval.prompts_per_batch=4", "method=qarvd", "bits=w8a8"])) == folder
    for change in ("seed=1", "model.arch.num_layers=2", "eval.video.crf=10", "eval.samples_per_prompt=2"):
        assert fp_folder(compose([*base, change])) != folder, change
    assert fp_folder(compose([*wiring(), *SMALL])) is None  # not shared: <video_dir>/fp


def test_shared_fp_folder_keys_a_weight_file_by_its_content(tmp_path):
    """A copied or restored checkpoint (new path, new mtime) finds its FP videos; other bytes at the same path do not."""
    import os

    from conftest import compose

    from qarvd.app.generate import fp_folder

    def folder(path):
        return fp_folder(compose([*wiring(), *SMALL, "eval.share_fp=true", "model.checkpoint.random_init=false",
                                  f"model.checkpoint.path={path}"]))

    a, b = tmp_path / "a.safetensors", tmp_path / "copy" / "b.safetensors"
    a.write_bytes(b"weights v1")
    b.parent.mkdir()
    b.write_bytes(a.read_bytes())
    os.utime(b, (1.5e9, 1.5e9))
    assert folder(a) == folder(b)
    a.write_bytes(b"weights v2")
    assert folder(a) != folder(b)


@pytest.mark.parametrize("attention", ["auto", "cudnn_fp8"])
def test_deployed_real_model_makes_the_quantized_videos(videos, artifact, tmp_path, attention):
    """eval.deploy=true: the quantized videos come from the real integer model (kernel=torch_ref) instead of fake
    quantization. With the same artifact they stay close to the fake-quant videos (the rounding flips of real vs fake
    arithmetic) and the FP videos are the same bytes; cudnn_fp8 attention
    (emulated) calibrates its scales on the calibration prompts first and moves the videos further."""
    from eval.video_io import list_videos, read_video

    _run([sys.executable, str(REPO / "scripts" / "generate.py"), *wiring(), *SMALL, f"eval.artifact={artifact}",
          "eval.strip.scale=1", "eval.deploy=true", "kernel=torch_ref", f"kernel.attention={attention}",
          f"hydra.run.dir={tmp_path}"], REPO)
    ref, new = videos / "one" / "videos", tmp_path / "videos"
    assert _digests(new / "fp") == _digests(ref / "fp")
    fake, real = list_videos(ref / "quant"), list_videos(new / "quant")
    assert sorted(real) == sorted(fake) and len(real) == 5
    gap = torch.stack([(read_video(real[k]).float() - read_video(fake[k]).float()).abs().mean() for k in real])
    fp_gap = torch.stack([(read_video(list_videos(ref / "fp")[k]).float() - read_video(fake[k]).float()).abs().mean()
                          for k in real])
    assert gap.mean() < 0.5 * fp_gap.mean(), (gap, fp_gap)  # real ~ fake, both away from FP (~8e-3 here)
    # the real model ran: integer arithmetic flips a few roundings (2 of 5 videos differ, by <1e-4, measured); FP8
    # attention moves every video (~1.1e-3)
    assert gap.max() > 0 if attention == "auto" else gap.min() > 3e-4, gap


def test_deploy_without_an_artifact_is_refused(tmp_path):
    """eval.deploy=true has nothing to deploy without eval.artifact: an error naming the key, no FP-only videos."""
    out = subprocess.run([sys.executable, str(REPO / "scripts" / "generate.py"), *wiring(), *SMALL, "eval.deploy=true",
                          f"hydra.run.dir={tmp_path}"], cwd=REPO, capture_output=True, text=True,
                         env={**os.environ, "OMP_NUM_THREADS": "1", "HYDRA_FULL_ERROR": "1"})
    assert out.returncode != 0 and "set eval.artifact=" in out.stderr, out.stderr[-2000:]
    assert not (tmp_path / "videos").exists()
