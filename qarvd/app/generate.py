"""Paired generation: FP and quantized videos of the same prompts and seeds, under identical file names.

Every video is a :class:`VideoJob` with its own seed (``seed + prompt_index * samples + k``), so a video never
depends on which process made it or what else ran before it. Jobs are cut into fixed batches of the global list
and the batches are dealt round-robin to ``RANK`` of ``WORLD_SIZE`` (torchrun sets both): a batch holds the same
prompts whatever the number of processes, so the files are byte-identical to a single-process run. A batch whose
files all exist is skipped (resume); files are written atomically, the mp4 last, so its presence means "done".

File names follow VBench's ``custom_input`` convention ``<prompt>-<k>.mp4`` (VBench reads the prompt back from the
name); ``names`` (e.g. VBench's short prompts for the extended ones used for generation) can name the files, and a
repeated name gets the next ``k``.
"""
from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator, Optional, Sequence

import torch

from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf, open_dict

from eval.strip import save_png, strip_image
from eval.video_io import VIDEO_SUFFIX, VideoEncoding, VideoWriterPool, write_video
from qarvd.app.preflight import preflight
from qarvd.app.provenance import base_weights, check_or_write_manifest, run_lock, video_manifest
from qarvd.data.prompts import select
from qarvd.utils.io import atomic_write_json
from qarvd.utils.progress import progress_bar

log = logging.getLogger(__name__)

MAX_NAME_BYTES = 230  # file names are limited to 255 bytes; room is left for "-<k>.mp4"


@dataclass(frozen=True)
class VideoJob:
    index: int  # position of the prompt in the full prompt list
    sample: int  # k-th video of this prompt
    prompt: str  # text given to the model
    name: str  # file stem, unique within a set
    seed: int  # rollout noise seed


def file_stem(text: str) -> str:
    """A file-system-safe stem: no path separators, no leading '.' (hidden files are skipped by every folder
    listing, so such a video would be generated but never scored), at most MAX_NAME_BYTES bytes of UTF-8."""
    stem = text.replace("/", "_").replace("\0", "_").strip() or "video"
    stem = "_" + stem[1:] if stem.startswith(".") else stem
    return stem.encode("utf-8")[:MAX_NAME_BYTES].decode("utf-8", errors="ignore")


def video_jobs(
    prompts: Sequence[str],
    names: Optional[Sequence[str]] = None,
    start: int = 0,
    count: Optional[int] = None,
    samples_per_prompt: int = 1,
    seed: int = 0,
) -> list[VideoJob]:
    """The jobs for prompts ``[start, start + count)`` (count None: to the end), ``samples_per_prompt`` each.

    Names are numbered over the whole list, so a video's name does not depend on ``start`` or ``count``.
    """
    if names is not None and len(names) != len(prompts):
        raise ValueError(f"eval.names has {len(names)} entries for {len(prompts)} prompts; they must align line by line")
    if samples_per_prompt < 1:
        raise ValueError(f"eval.samples_per_prompt must be >= 1, got {samples_per_prompt}")
    end = start + len(select(prompts, start, count, "eval.count"))
    seen: Counter = Counter()
    jobs = []
    for i in range(end):
        stem = file_stem((names or prompts)[i])
        for k in range(samples_per_prompt):
            n = seen[stem]
            seen[stem] += 1
            if i >= start:
                jobs.append(VideoJob(i, k, prompts[i], f"{stem}-{n}", seed + i * samples_per_prompt + k))
    return jobs


def dist_env() -> tuple[int, int]:
    """(RANK, WORLD_SIZE) from the environment torchrun sets; (0, 1) for a plain run."""
    rank, world = int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1))
    if not 0 <= rank < world:
        raise ValueError(f"RANK={rank} is outside WORLD_SIZE={world}")
    return rank, world


def shard(jobs: Sequence[VideoJob], prompts_per_batch: int, rank: int = 0, world_size: int = 1) -> list[list[VideoJob]]:
    """This rank's batches: fixed batches of the global job list, dealt round-robin."""
    if prompts_per_batch < 1:
        raise ValueError(f"eval.prompts_per_batch must be >= 1, got {prompts_per_batch}")
    batches = [list(jobs[i : i + prompts_per_batch]) for i in range(0, len(jobs), prompts_per_batch)]
    return batches[rank::world_size]


@dataclass(frozen=True)
class StripSpec:
    """PNG strip per video: ``frames`` evenly spaced frames (0 = all), upscaled ``scale`` times (``eval.strip``)."""

    frames: int
    scale: int


def generate_set(
    pipe,
    batches: Sequence[Sequence[VideoJob]],
    video_dir: str | os.PathLike,
    strips: Optional[str | os.PathLike],
    enc: VideoEncoding,
    strip: StripSpec,
    writers: int,
    skip_existing: bool = True,
    desc: str = "videos",
) -> dict:
    """Roll out every batch and hand its videos to ``writers`` threads (mp4 + PNG strip each; 0: written in this
    thread), which encode while the next batch generates; returns counts of written and skipped videos, the wall
    seconds of the loop (until the last file is written), of each generated batch (text encode + rollout + decode;
    the first one also loads lazily built models) and of each video's writing (in its thread): the throughput
    figures of multi-GPU runs and of the writer pool."""
    video_dir = Path(video_dir)
    written = skipped = 0
    batch_seconds, write_seconds = [], []
    start = time.perf_counter()
    with VideoWriterPool(writers) as pool:
        for batch in progress_bar(batches, desc=desc, unit="batch"):
            paths = [video_dir / f"{j.name}{VIDEO_SUFFIX}" for j in batch]
            if skip_existing and all(p.exists() for p in paths):
                skipped += len(batch)
                continue
            t0 = time.perf_counter()
            latents = pipe.generate_latents([j.prompt for j in batch], [j.seed for j in batch])
            videos = pipe.decode(latents)
            for job, video, path in zip(batch, videos, paths):
                strip_path = None if strips is None else Path(strips) / f"{job.name}.png"
                pool.submit(_write, video, path, enc, strip_path, pipe.rollout_cfg.num_chunks, strip, write_seconds)
                written += 1
            batch_seconds.append(time.perf_counter() - t0)
    return {"written": written, "skipped": skipped, "seconds": time.perf_counter() - start, "batch_seconds": batch_seconds,
            "write_seconds": write_seconds}


def _write(video: torch.Tensor, path: Path, enc: VideoEncoding, strip_path: Optional[Path], num_chunks: int,
           strip: StripSpec, seconds: list) -> None:
    """One video's files: the strip first, the mp4 last (its presence means the video is done)."""
    t0 = time.perf_counter()
    if strip_path is not None:
        save_png(_strip(video, num_chunks, strip), strip_path)
    write_video(path, video, enc)
    seconds.append(time.perf_counter() - t0)


def _strip(video: torch.Tensor, num_chunks: int, spec: StripSpec):
    t = video.shape[0]
    frames = None if spec.frames <= 0 or spec.frames >= t else torch.linspace(0, t - 1, spec.frames).round().long().tolist()
    return strip_image(video, max(1, round(t / num_chunks)), spec.scale, frames=frames)


def strip_dir(video_folder: str | os.PathLike) -> Path:
    """Where the PNG strips of a video folder go: ``<parent>/strips/<folder name>`` (outside the folder VBench scans)."""
    folder = Path(video_folder)
    return folder.parent / "strips" / folder.name


def encoding(cfg: DictConfig) -> VideoEncoding:
    return VideoEncoding(**OmegaConf.to_container(cfg.eval.video, resolve=True))


def jobs(cfg: DictConfig):
    """The video jobs of ``cfg.eval`` (prompts, optional names, range, samples) with base seed ``cfg.seed``."""
    e = cfg.eval
    prompts = instantiate(e.prompts, _convert_="all")
    names = instantiate(e.names, _convert_="all") if e.names is not None else None
    return video_jobs(prompts, names, int(e.start), e.count, int(e.samples_per_prompt), int(cfg.seed))


def fp_folder(cfg: DictConfig) -> Optional[Path]:
    """``eval.fp_dir`` if set; with ``eval.share_fp`` a folder under ``eval.fp_cache_dir`` named by a hash of all
    the FP videos depend on (model config and checkpoint file, seed, prompts and names, samples, encoding), so the
    jobs of a sweep generate them once and a changed model never reuses stale ones; else None (<video_dir>/fp)."""
    e = cfg.eval
    if e.fp_dir:
        return Path(e.fp_dir)
    if not e.share_fp:
        return None
    key = {k: OmegaConf.to_container(v, resolve=True) if isinstance(v, DictConfig) else v for k, v in (
        ("model", cfg.model), ("seed", cfg.seed), ("prompts", e.prompts), ("names", e.names),
        ("samples", e.samples_per_prompt), ("video", e.video))}
    if not cfg.model.checkpoint.get("random_init", False) and Path(str(cfg.model.checkpoint.path)).exists():
        key["weights"] = base_weights(cfg)  # by content: a copied or restored file is the same model ...
        for part in ("checkpoint", "text_encoder"):  # ... wherever it lies
            if isinstance(key["model"].get(part), dict):
                key["model"][part].pop("path", None)
    digest = hashlib.sha256(json.dumps(key, sort_keys=True, default=str).encode()).hexdigest()[:12]
    return Path(e.fp_cache_dir) / f"{cfg.model.name}-{digest}"


def generate(cfg: DictConfig, artifact: Optional[str] = None, info: Optional[dict] = None) -> dict:
    """Build the model pipeline and write this process's share of the FP (and, with ``artifact``, quantized)
    videos; ``info`` receives the quantized model's weight memory."""
    from qarvd.app.quantized import artifact_quantizer
    from qarvd.models.pipeline import build_pipeline

    e = cfg.eval
    pipe = build_pipeline(cfg.model, device=cfg.device)
    todo = jobs(cfg)
    if getattr(pipe.text_encoder, "cache_dir", None) is not None:
        # umT5-XXL: encode this rank's prompts into the cache once and free the encoder (~11 GB) before the rollouts
        rank, world = dist_env()
        pipe.text_encoder.precompute([j.prompt for b in shard(todo, int(e.prompts_per_batch), rank, world) for j in b])
    deploy = OmegaConf.to_container(cfg.kernel, resolve=True) if e.deploy else None
    manifests = {"fp": video_manifest(cfg, todo, None), "quant": video_manifest(cfg, todo, artifact, deploy)}
    quantize = artifact_quantizer(artifact, info, cfg) if artifact else None
    log.info("generating %d videos of %s (%s) into %s", len(todo), cfg.model.name, "FP and quantized" if artifact else "FP",
             e.video_dir)
    return generate_pair(pipe, todo, e.video_dir, encoding(cfg), quantize, int(e.prompts_per_batch),
                         StripSpec(**OmegaConf.to_container(e.strip, resolve=True)), int(e.writers), bool(e.skip_existing),
                         fp_folder(cfg), manifests)


def generate_videos(cfg: DictConfig) -> dict:
    """The generate entry point (scripts/generate.py): FP and, with ``eval.artifact``, quantized videos of the prompt
    list, sharded over RANK / WORLD_SIZE; rank 0 writes ``generation.json`` (every rank's counts and seconds)."""
    if cfg.eval.deploy and not cfg.eval.artifact:  # else it would make FP videos only, which is not what was asked
        raise ValueError("eval.deploy=true deploys a quantized artifact: set eval.artifact=<scripts/train_quant.py run dir>")
    preflight(cfg, "generate")
    from qarvd.app.wandb_logger import NullLogger, logging_run

    with process_group(), logging_run(instantiate(cfg.logger) if dist_env()[0] == 0 else NullLogger(), cfg) as logger:
        rank = dist_env()[0]
        with run_lock(cfg.paths.output_dir) if rank == 0 else contextlib.nullcontext():
            with open_dict(cfg):
                cfg.eval.video_dir = from_rank0(str(cfg.eval.video_dir))  # one folder for all ranks
            out = generate(cfg, cfg.eval.artifact or None)
            ranks = gather(out["counts"])
            barrier()
            if rank == 0:
                atomic_write_json(Path(cfg.paths.output_dir) / "generation.json",
                                  {"world_size": out["world_size"], "dirs": out["dirs"], "ranks": ranks})
                logger.log_summary({f"{kind}/{k}": sum(r[kind][k] for r in ranks) for kind in out["dirs"]
                                    for k in ("written", "skipped")} | {"world_size": out["world_size"]})
    return {**out, "ranks": ranks}


def generate_pair(
    pipe,
    jobs: Sequence[VideoJob],
    video_dir: str | os.PathLike,
    enc: VideoEncoding,
    quantize: Optional[Callable[[object], None]],
    prompts_per_batch: int,
    strip: StripSpec,
    writers: int,
    skip_existing: bool,
    fp_dir: Optional[str | os.PathLike],
    manifests: dict[str, dict],
) -> dict:
    """FP videos into ``<video_dir>/fp`` (or ``fp_dir``), then ``quantize(pipe)`` in place and the quantized videos
    into ``<video_dir>/quant``; strips per :func:`strip_dir`. This process's share only (RANK / WORLD_SIZE).

    ``manifests[kind]`` says how each folder's videos are made (:func:`qarvd.app.provenance.video_manifest`): a
    folder is resumed or reused only if its manifest matches, and stamped before its first new video."""
    video_dir = Path(video_dir)
    rank, world = dist_env()
    batches = shard(jobs, prompts_per_batch, rank, world)
    dirs = {"fp": Path(fp_dir) if fp_dir else video_dir / "fp"}
    check_or_write_manifest(dirs["fp"], manifests["fp"])
    counts = {"fp": generate_set(pipe, batches, dirs["fp"], strip_dir(dirs["fp"]), enc, strip, writers, skip_existing,
                                 f"FP videos (rank {rank})")}
    log_counts("FP", dirs["fp"], counts["fp"])
    if quantize is not None:
        dirs["quant"] = video_dir / "quant"
        check_or_write_manifest(dirs["quant"], manifests["quant"])
        quant_paths = [dirs["quant"] / f"{j.name}{VIDEO_SUFFIX}" for b in batches for j in b]
        if not (skip_existing and all(p.exists() for p in quant_paths)):
            quantize(pipe)
        counts["quant"] = generate_set(pipe, batches, dirs["quant"], strip_dir(dirs["quant"]), enc, strip, writers,
                                       skip_existing, f"quantized videos (rank {rank})")
        log_counts("quantized", dirs["quant"], counts["quant"])
    return {"dirs": {k: str(v) for k, v in dirs.items()}, "counts": counts, "rank": rank, "world_size": world}


def log_counts(kind: str, folder: Path, counts: dict) -> None:
    log.info("%s videos in %s: %d written, %d already there, %.1f s", kind, folder, counts["written"], counts["skipped"],
             counts["seconds"])


@contextlib.contextmanager
def process_group() -> Iterator[None]:
    """A gloo process group while torchrun runs several processes (broadcast and barrier only; CPU or GPU).

    On a GPU machine each process also takes GPU ``LOCAL_RANK`` as its current device, so ``device=cuda`` means one
    GPU per process rather than every process on GPU 0."""
    _, world = dist_env()
    if world == 1 or torch.distributed.is_initialized():
        yield
        return
    if torch.cuda.is_available():
        local = int(os.environ.get("LOCAL_RANK", 0))
        if local >= torch.cuda.device_count():
            raise RuntimeError(f"LOCAL_RANK={local} but only {torch.cuda.device_count()} GPUs are visible: "
                               "start at most one process per GPU (torchrun --nproc_per_node)")
        torch.cuda.set_device(local)
    torch.distributed.init_process_group("gloo")
    try:
        yield
    finally:
        torch.distributed.destroy_process_group()


def from_rank0(obj):
    """Rank 0's value of ``obj`` on every rank (e.g. the output folder: each process has its own Hydra run dir)."""
    if not torch.distributed.is_initialized():
        return obj
    box = [obj]
    torch.distributed.broadcast_object_list(box, src=0)
    return box[0]


def gather(obj) -> list:
    """Every rank's ``obj``, in rank order (a one-element list without a process group)."""
    if not torch.distributed.is_initialized():
        return [obj]
    out = [None] * torch.distributed.get_world_size()
    torch.distributed.all_gather_object(out, obj)
    return out


def barrier() -> None:
    if torch.distributed.is_initialized():
        torch.distributed.barrier()
