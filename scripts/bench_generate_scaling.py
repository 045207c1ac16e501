"""Multi-GPU generation throughput: the same video list through ``torchrun scripts/generate.py`` on 1 and on N GPUs.

    python scripts/bench_generate_scaling.py --gpus 1 2 --videos 16 --out benchmarks/results/generate_scaling_h200x2.json
    python scripts/bench_generate_scaling.py --gpus 1 2 --videos 4 --device cpu <Hydra overrides shrinking model.*>  # smoke

Runs the real entry point (``model=self_forcing`` with full-size seeded random weights: DiT, umT5-XXL and Wan VAE; a
tokenizer trained on the spot; mp4 + PNG strip written per video), once per process count. Throughput is videos /
the slowest rank's generation-loop seconds (encode + rollout + decode + file writing, from ``generation.json``);
model building is reported separately. A steady-state figure leaves out each rank's first batch, which also builds
the lazily loaded umT5 and VAE (a one-off that a 946-prompt sweep amortises). Scaling = throughput(N) / throughput(1). The files of every run are hashed
and compared with the 1-process run (sharding must not change a video). Writes one JSON file (atomically).
"""
from __future__ import annotations

import argparse
import hashlib
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "scripts"))
from profile_real import PROMPTS  # noqa: E402  (realistic, MovieGen-style prompt lengths)


def file_hashes(folder: Path) -> dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.glob("*.mp4"))}


def run_generation(nproc: int, work: Path, args, tokenizer: Path, prompt_file: Path) -> dict:
    """One ``torchrun`` of generate.py; its per-rank stats, wall seconds and video hashes."""
    run_dir = work / f"nproc{nproc}"
    overrides = [f"model={args.model}", f"device={args.device}", "model.checkpoint.random_init=true",
                 f"model.text_encoder.tokenizer={tokenizer}", "model.text_encoder.cache_dir=null",
                 f"model.prompts.eval.path={prompt_file}", f"eval.samples_per_prompt={args.videos // len(PROMPTS)}",
                 f"eval.prompts_per_batch={args.batch_size}", f"eval.video_dir={run_dir / 'videos'}", "eval.strip.scale=1",
                 f"hydra.run.dir={run_dir / 'run'}", *args.overrides]
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}",
           str(REPO / "scripts" / "generate.py"), *overrides]
    start = time.perf_counter()
    subprocess.run(cmd, cwd=REPO, check=True, env={**os.environ, "OMP_NUM_THREADS": str(args.threads_per_proc)})
    wall = time.perf_counter() - start
    stats = json.loads((run_dir / "run" / "generation.json").read_text())
    ranks = [r["fp"] for r in stats["ranks"]]
    videos = sum(r["written"] for r in ranks)
    loop = max(r["seconds"] for r in ranks)
    # steady state: each rank without its first batch (which also builds the lazily loaded umT5 and VAE)
    steady_videos = videos - args.batch_size * len(ranks)
    steady_loop = max(r["seconds"] - r["batch_seconds"][0] for r in ranks)
    return {"nproc": nproc, "videos": videos, "rank_seconds": [r["seconds"] for r in ranks],
            "rank_batch_seconds": [r["batch_seconds"] for r in ranks], "loop_seconds": loop,
            "videos_per_s": videos / loop, "steady_videos_per_s": steady_videos / steady_loop,
            "command_wall_s": wall, "hashes": file_hashes(Path(stats["dirs"]["fp"]))}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--gpus", type=int, nargs="+", default=[1, 2], help="process counts (one GPU each); the first is the base")
    ap.add_argument("--videos", type=int, default=16, help="videos per run (a multiple of the 4 prompts)")
    ap.add_argument("--batch-size", type=int, default=1, help="prompts per rollout (eval.prompts_per_batch)")
    ap.add_argument("--model", default="self_forcing", help="model config group option (conf/model/)")
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--threads-per-proc", type=int, default=4, help="OMP_NUM_THREADS of every process")
    ap.add_argument("--out", default=None, help="JSON file to write")
    ap.add_argument("overrides", nargs="*", help="extra Hydra overrides for generate.py")
    args = ap.parse_args()
    if args.videos % len(PROMPTS):
        ap.error(f"--videos must be a multiple of {len(PROMPTS)} (the prompt list)")

    import torch

    from qarvd.models.public_layout import write_tokenizer

    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        tokenizer = write_tokenizer(work / "tokenizer", PROMPTS, vocab_size=256)
        prompt_file = work / "prompts.txt"
        prompt_file.write_text("\n".join(PROMPTS) + "\n")
        runs = [run_generation(n, work, args, tokenizer, prompt_file) for n in args.gpus]
    base, base_hashes = runs[0], runs[0]["hashes"]
    for r in runs:
        r["scaling"] = r["videos_per_s"] / base["videos_per_s"]
        r["steady_scaling"] = r["steady_videos_per_s"] / base["steady_videos_per_s"]
        r["same_files_as_base"] = r.pop("hashes") == base_hashes
        print(f"{r['nproc']} process(es): {r['videos']} videos, slowest rank {r['loop_seconds']:.1f} s, "
              f"{r['videos_per_s']:.3f} videos/s (scaling {r['scaling']:.2f}x); without each rank's first batch "
              f"{r['steady_videos_per_s']:.3f} videos/s (scaling {r['steady_scaling']:.2f}x); same files: {r['same_files_as_base']}")
    res = {"model": args.model, "device": torch.cuda.get_device_name(0) if args.device == "cuda" else "cpu",
           "gpus_visible": torch.cuda.device_count(), "torch": torch.__version__, "videos": args.videos,
           "batch_size": args.batch_size, "overrides": args.overrides, "runs": runs}
    if args.out:
        from qarvd.utils.io import atomic_write_json

        print(f"wrote {atomic_write_json(args.out, res)}")


if __name__ == "__main__":
    main()
