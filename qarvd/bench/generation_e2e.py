"""End-to-end generation speed: prompt to mp4 on disk, 81 frames at 480 x 832, for each DiT row (bf16 and real W8A8
kernels) in the same run; frames per second of the whole path and of its generating part.

The composed ``model`` (self-forcing) is built with seeded random full-size weights (DiT, umT5-XXL, Wan VAE:
``model.checkpoint.random_init=true``), so nothing is downloaded; a tokenizer folder is read, or a tiny one trained.
Each row swaps the pipeline's DiT (``rows``: ``kernel: null`` = the model as built, eager, or with ``w_bits`` its
fake-quantized copy, the simulation evaluation generates with unless ``eval.deploy``; a ``conf/kernel`` choice =
:func:`qarvd.deploy.accelerate_` with that backend; ``w_bits`` = the min-max real low-bit conversion of
:func:`qarvd.bench.rows.real_model`) and runs :func:`qarvd.app.generate.generate_set` (the generation stage itself:
text encode, rollout, VAE decode, ``writers`` threads encoding ``eval.video`` mp4 files) over ``videos`` prompts
in batches of ``batch``, after ``warmup_batches`` untimed ones (CUDA graphs, cuDNN plans, lazily built models).

Reported per row: wall seconds until the last file is on disk and its FPS (frames written / seconds), the generating
part alone (sum of batch seconds: text + DiT + VAE, the writers' queue hidden), and the seconds each file took to
write in its thread (random weights make noisy frames, which x264 encodes slower than real videos: with ``writers``
threads the writers keep up while ``writers * frames / write_seconds`` exceeds the generating FPS). With
``vae_precision`` also the bf16 decode's error against fp32 at full size (:mod:`qarvd.bench.vae_precision`).

With ``metrics``, each row after the first also times the evaluation's reference-metric stage as evaluation runs it,
:func:`qarvd.app.evaluate.reference_metrics` under the ``eval`` group (video decoding on ``eval.readers`` threads,
PSNR / SSIM / LPIPS-FP per frame of each pair, FVD-FP backbone features), on the first row's videos as the FP side
against the row's own: seconds per video pair under the row's ``metric_stage``. Run right after the row, so a run cut
by a time limit keeps it. What it stands for is recorded under ``metric_stage``: LPIPS on a random AlexNet
(``eval.lpips.pnet_rand``: its cost does not depend on the weight values), FVD-FP only when the configured
backbone's file exists (else "not measured": no other network is timed in its place), VBench never (its own
environment and scoring models). The JSON is rewritten after every row.
"""
from __future__ import annotations

import copy
import gc
import platform
import tempfile
from pathlib import Path

import torch
from omegaconf import DictConfig, OmegaConf, open_dict

from eval.video_io import VideoEncoding
from qarvd.app.evaluate import reference_metrics
from qarvd.app.generate import StripSpec, generate_set, shard, video_jobs
from qarvd.bench.real_profile import PROMPTS, command_overrides, tokenizer_folder
from qarvd.bench.rows import backend, real_model
from qarvd.bench.timing import Timer, host_rss_gb
from qarvd.bench.vae_precision import vae_bf16_error
from qarvd.deploy import accelerate_
from qarvd.quant.api import QuantConfig, quantize_
from qarvd.utils.io import atomic_write_json


def row_model(base, spec: DictConfig, cfg: DictConfig):
    """The DiT of a row: the base as built (eager, PyTorch's attention choice), its fake-quantized copy (``kernel:
    null`` with ``w_bits``: the simulation that evaluation generates with unless ``eval.deploy``; the steps' values do
    not change its cost), accelerated with a backend (which runs its own attention kernel), or converted to real
    low-bit modules of that backend."""
    if spec.kernel is None:
        if spec.w_bits is None:
            return base
        return quantize_(copy.deepcopy(base), QuantConfig(w_bits=int(spec.w_bits), a_bits=int(spec.a_bits)))
    be = backend(cfg, spec.kernel, attention=spec.attention, graphs=bool(spec.graphs))
    if spec.w_bits is None:
        return accelerate_(copy.deepcopy(base), be)
    return real_model(base, be, int(spec.w_bits), int(spec.outliers))


def run_row(pipe, jobs, cfg: DictConfig, enc: VideoEncoding, work: Path, name: str, device: torch.device) -> dict:
    """Warm-up batches, then the timed generation of every job into ``work/<name>``."""
    batch, frames = int(cfg.batch), pipe.vae.num_video_frames(pipe.rollout_cfg.num_frames)
    strip, writers = StripSpec(0, 1), int(cfg.writers)
    warm = shard(jobs[: batch * int(cfg.warmup_batches)], batch)
    generate_set(pipe, warm, work / f"{name}_warmup", None, enc, strip, writers, skip_existing=False, desc=f"{name} warm-up")
    with Timer(device, reset_peak=True) as t:
        stats = generate_set(pipe, shard(jobs, batch), work / name, None, enc, strip, writers, skip_existing=False,
                             desc=name)
    generating = sum(stats["batch_seconds"])
    write = stats["write_seconds"]
    return {"videos": stats["written"], "frames_per_video": frames, "seconds": t.seconds,
            "fps": stats["written"] * frames / t.seconds, "generating_seconds": generating,
            "generating_fps": stats["written"] * frames / generating, "batch_seconds": stats["batch_seconds"],
            "write_seconds_per_video": sum(write) / len(write), "writers_fps": writers * frames * len(write) / sum(write),
            "gpu": t.gpu}


def metric_stage(cfg: DictConfig) -> tuple[DictConfig, dict]:
    """(the config the metric stage runs under, what its timing stands for): FVD-FP off when the configured backbone
    reads a file that does not exist (recorded as not measured, nothing timed in its place)."""
    e, run = cfg.eval, copy.deepcopy(cfg)
    fvd: dict = {"backbone": str(e.fvd.backbone), "timed": bool(e.fvd.enabled)}
    spec, key = e.fvd.backbones[e.fvd.backbone], f"eval.fvd.backbones.{e.fvd.backbone}.path"
    if not e.fvd.enabled:
        fvd["reason"] = "not measured: eval.fvd.enabled=false"
    elif "path" in spec and not (spec.path and Path(str(spec.path)).exists()):
        fvd.update(timed=False, reason=f"not measured: {key} = '{spec.path}' does not exist; no other network is "
                                       "timed in its place")
        with open_dict(run):
            run.eval.fvd.enabled = False
    lpips = (("random AlexNet weights (eval.lpips.pnet_rand=true): the cost does not depend on the weight values"
              if e.lpips.pnet_rand else f"AlexNet from eval.lpips.alexnet_path = {e.lpips.alexnet_path}")
             if e.lpips.enabled else "not measured: eval.lpips.enabled=false")
    info = {"function": "qarvd.app.evaluate.reference_metrics", "fp_row": next(iter(cfg.rows)), "lpips_fp": lpips,
            "fvd_fp": fvd, "psnr_fp": bool(e.psnr), "ssim_fp": bool(e.ssim), "readers": int(e.readers),
            "metrics_device": str(e.metrics_device),
            "videos": "made by random weights: noisy frames, whose lossless files are larger than real videos' and "
                      "may decode slower",
            "vbench": "not measured: VBench runs in its own environment with its scoring models (eval.vbench.python, "
                      "eval.vbench.cache_dir), which this benchmark does not time"}
    return run, info


def time_metrics(cfg: DictConfig, fp_dir: Path, quant_dir: Path, device: torch.device) -> dict:
    """Seconds of one reference-metric stage over the video pairs of two folders (metric networks built inside, once
    per call, as in an evaluation job)."""
    with Timer(device, reset_peak=True) as t:
        out, unavailable = reference_metrics(cfg, fp_dir, quant_dir)
    pairs = int(out["num_items"])
    return {"fp_row": fp_dir.name, "pairs": pairs, "seconds": t.seconds, "seconds_per_pair": t.seconds / pairs,
            "timed": sorted(out["metrics"]), "unavailable": unavailable, "gpu": t.gpu}


def bench_generation(cfg: DictConfig) -> Path:
    """Every row of ``cfg.rows`` end to end (module doc); writes ``<out>/<name>.json`` and returns its path."""
    from qarvd.models.pipeline import build_pipeline

    device = torch.device(cfg.device)
    path = Path(cfg.out) / f"{cfg.name}.json"
    enc = VideoEncoding(**OmegaConf.to_container(cfg.eval.video, resolve=True))
    res: dict = {"device": torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor(),
                 "torch": torch.__version__, "overrides": command_overrides(), "batch": int(cfg.batch),
                 "videos": int(cfg.videos), "writers": int(cfg.writers), "encoding": enc.__dict__,
                 "model": {k: OmegaConf.to_container(cfg.model[k], resolve=True) if k != "name" else str(cfg.model.name)
                           for k in ("name", "arch", "rollout")}, "rows": {}}
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        with open_dict(cfg):
            cfg.model.text_encoder.tokenizer = tokenizer_folder(cfg.tokenizer, work)
        with Timer(device) as t:
            pipe = build_pipeline(cfg.model, device=device)
        res["build_seconds"] = t.seconds
        rc = pipe.rollout_cfg
        res["video"] = {"latent": [rc.num_frames, *pipe.latent_shape], "frames": pipe.vae.num_video_frames(rc.num_frames)}
        prompts = [PROMPTS[i % len(PROMPTS)] for i in range(int(cfg.videos))]
        jobs = video_jobs(prompts, seed=int(cfg.seed))
        base = pipe.model
        metric_cfg = None
        if cfg.metrics:
            metric_cfg, res["metric_stage"] = metric_stage(cfg)
        first = next(iter(cfg.rows))
        for name, spec in cfg.rows.items():
            model = row_model(base, spec, cfg)
            pipe.model = model
            with torch.no_grad():
                row = run_row(pipe, jobs, cfg, enc, work, name, device)
            row.update(OmegaConf.to_container(spec, resolve=True))
            res["rows"][name] = row
            pipe.model = base
            del model
            gc.collect()
            torch.cuda.empty_cache() if device.type == "cuda" else None
            if metric_cfg is not None and name != first:
                row["metric_stage"] = time_metrics(metric_cfg, work / first, work / name, device)
            atomic_write_json(path, res)
        names = list(res["rows"])
        res["fps_ratio"] = {f"{n}/{names[0]}": res["rows"][n]["fps"] / res["rows"][names[0]]["fps"] for n in names[1:]}
        if cfg.vae_precision:
            vae = OmegaConf.to_container(cfg.model.vae.arch, resolve=True)
            _, h, w = pipe.latent_shape
            res["vae_bf16_vs_fp32"] = vae_bf16_error(vae, rc.num_frames, h, w, rc.frames_per_chunk, cfg.device)
        res["host_rss_gb"] = host_rss_gb()
    return atomic_write_json(path, res)
