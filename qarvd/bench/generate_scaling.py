"""Multi-GPU generation throughput: the same video list through ``torchrun scripts/generate.py`` on 1 and on N GPUs.

Runs the real entry point (``model`` with full-size seeded random weights: DiT, umT5-XXL and Wan VAE; a tokenizer
trained on the spot; mp4 + PNG strip written per video), once per process count of ``gpus``. Throughput is videos /
the slowest rank's generation-loop seconds (encode + rollout + decode + file writing, from ``generation.json``);
model building is reported separately. A steady-state figure leaves out each rank's first batch, which also builds
the lazily loaded umT5 and VAE (a one-off that a 946-prompt sweep amortises). Scaling = throughput(N) /
throughput(1). The files of every run are hashed and compared with the first run (sharding must not change a video).
Settings: conf/bench/generate_scaling.yaml.
"""
from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
from omegaconf import DictConfig

from qarvd.bench.real_profile import PROMPTS  # realistic, MovieGen-style prompt lengths
from qarvd.utils.hydra_resolvers import REPO_ROOT
from qarvd.utils.io import atomic_write_json


def file_hashes(folder: Path) -> dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.glob("*.mp4"))}


def run_generation(nproc: int, work: Path, cfg: DictConfig, tokenizer: Path, prompt_file: Path) -> dict:
    """One ``torchrun`` of generate.py; its per-rank stats, wall seconds and video hashes."""
    run_dir = work / f"nproc{nproc}"
    overrides = [f"model={cfg.model}", f"device={cfg.device}", "model.checkpoint.random_init=true",
                 f"model.text_encoder.tokenizer={tokenizer}", "model.text_encoder.cache_dir=null",
                 f"model.prompts.eval.path={prompt_file}", "eval.names=null",  # files named by the prompts
                 f"eval.samples_per_prompt={cfg.videos // len(PROMPTS)}",
                 f"eval.prompts_per_batch={cfg.prompts_per_batch}", f"eval.video_dir={run_dir / 'videos'}",
                 "eval.strip.scale=1", f"hydra.run.dir={run_dir / 'run'}", *cfg.overrides]
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}",
           str(REPO_ROOT / "scripts" / "generate.py"), *overrides]
    start = time.perf_counter()
    subprocess.run(cmd, cwd=REPO_ROOT, check=True, env={**os.environ, "OMP_NUM_THREADS": str(cfg.threads_per_proc)})
    wall = time.perf_counter() - start
    stats = json.loads((run_dir / "run" / "generation.json").read_text())
    ranks = [r["fp"] for r in stats["ranks"]]
    videos = sum(r["written"] for r in ranks)
    loop = max(r["seconds"] for r in ranks)
    # steady state: each rank without its first batch (which also builds the lazily loaded umT5 and VAE)
    steady_videos = videos - cfg.prompts_per_batch * len(ranks)
    steady_loop = max(r["seconds"] - r["batch_seconds"][0] for r in ranks)
    return {"nproc": nproc, "videos": videos, "rank_seconds": [r["seconds"] for r in ranks],
            "rank_batch_seconds": [r["batch_seconds"] for r in ranks], "loop_seconds": loop,
            "videos_per_s": videos / loop, "steady_videos_per_s": steady_videos / steady_loop,
            "command_wall_s": wall, "hashes": file_hashes(Path(stats["dirs"]["fp"]))}


def generate_scaling(cfg: DictConfig) -> Path:
    """One generation run per process count; writes ``<out>/<name>.json`` and returns its path."""
    from qarvd.models.public_layout import write_tokenizer

    if cfg.videos % len(PROMPTS):
        raise ValueError(f"videos={cfg.videos} must be a multiple of {len(PROMPTS)} (the prompt list)")
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        tokenizer = write_tokenizer(work / "tokenizer", PROMPTS, vocab_size=256)
        prompt_file = work / "prompts.txt"
        prompt_file.write_text("\n".join(PROMPTS) + "\n")
        runs = [run_generation(n, work, cfg, tokenizer, prompt_file) for n in cfg.gpus]
    base, base_hashes = runs[0], runs[0]["hashes"]
    for r in runs:
        r["scaling"] = r["videos_per_s"] / base["videos_per_s"]
        r["steady_scaling"] = r["steady_videos_per_s"] / base["steady_videos_per_s"]
        r["same_files_as_base"] = r.pop("hashes") == base_hashes
        print(f"{r['nproc']} process(es): {r['videos']} videos, slowest rank {r['loop_seconds']:.1f} s, "
              f"{r['videos_per_s']:.3f} videos/s (scaling {r['scaling']:.2f}x); without each rank's first batch "
              f"{r['steady_videos_per_s']:.3f} videos/s (scaling {r['steady_scaling']:.2f}x); same files: "
              f"{r['same_files_as_base']}")
    res = {"model": cfg.model, "device": torch.cuda.get_device_name(0) if cfg.device == "cuda" else "cpu",
           "gpus_visible": torch.cuda.device_count(), "torch": torch.__version__, "videos": cfg.videos,
           "batch_size": cfg.prompts_per_batch, "overrides": list(cfg.overrides), "runs": runs}
    return atomic_write_json(Path(cfg.out) / f"{cfg.name}.json", res)
