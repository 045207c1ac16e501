"""One evaluation job: paired videos -> reference metrics (+ VBench) -> ``results.json`` -> logger.

Metrics that cannot be computed because an optional weight file is missing (LPIPS without the AlexNet backbone
under ``eval.lpips.required=false``) are recorded under ``unavailable`` with the error message, so a table shows
"n/a" and why instead of silently dropping the column; a required one stops the run.
"""
from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Callable, Optional

import torch
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

from qarvd.app.generate import StripSpec, dist_env, generate_pair, shard, video_jobs
from eval.lpips_fp import LPIPSMetric, build_lpips, psnr_frames, ssim_frames
from eval.reference import evaluate_pairs
from eval.results import RESULTS_FILE
from eval.vbench import parse_vbench_results, run_vbench
from eval.video_io import VideoEncoding, read_video, write_video
from qarvd.utils.errors import MissingWeightsError
from qarvd.utils.io import atomic_write_json


def encoding(cfg: DictConfig) -> VideoEncoding:
    return VideoEncoding(**OmegaConf.to_container(cfg.eval.video, resolve=True))


def jobs(cfg: DictConfig):
    """The video jobs of ``cfg.eval`` (prompts, optional names, range, samples) with base seed ``cfg.seed``."""
    e = cfg.eval
    prompts = instantiate(e.prompts, _convert_="all")
    names = instantiate(e.names, _convert_="all") if e.names is not None else None
    return video_jobs(prompts, names, int(e.start), int(e.count), int(e.samples_per_prompt), int(cfg.seed))


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
    ckpt = Path(str(cfg.model.checkpoint.path))
    if not cfg.model.checkpoint.get("random_init", False) and ckpt.exists():
        key["checkpoint_file"] = [ckpt.stat().st_size, ckpt.stat().st_mtime_ns]
    digest = hashlib.sha256(json.dumps(key, sort_keys=True, default=str).encode()).hexdigest()[:12]
    return Path(e.fp_cache_dir) / f"{cfg.model.name}-{digest}"


def generate(cfg: DictConfig, quantize: Optional[Callable[[object], None]] = None) -> dict:
    """Build the model pipeline and write this process's share of the FP (and quantized) videos."""
    from qarvd.models.pipeline import build_pipeline

    e = cfg.eval
    pipe = build_pipeline(cfg.model, device=cfg.device)
    todo = jobs(cfg)
    if getattr(pipe.text_encoder, "cache_dir", None) is not None:
        # umT5-XXL: encode this rank's prompts into the cache once and free the encoder (~11 GB) before the rollouts
        rank, world = dist_env()
        pipe.text_encoder.precompute([j.prompt for b in shard(todo, int(e.batch_size), rank, world) for j in b])
    return generate_pair(pipe, todo, e.video_dir, encoding(cfg), quantize, int(e.batch_size),
                         StripSpec(**OmegaConf.to_container(e.strip, resolve=True)), bool(e.skip_existing), fp_folder(cfg))


def reference_metrics(cfg: DictConfig, fp_dir: str | os.PathLike, quant_dir: str | os.PathLike) -> tuple[dict, dict, dict]:
    """(metrics, per-video values, unavailable reasons) for the enabled reference-based metrics."""
    e = cfg.eval
    frame_metrics, unavailable = {}, {}
    if e.lpips.enabled:
        try:
            model = build_lpips(e.lpips.alexnet_path, bool(e.lpips.pnet_rand), e.metrics_device)
            frame_metrics["lpips_fp"] = LPIPSMetric(model, int(e.lpips.frames_per_batch))
        except (MissingWeightsError, ImportError) as err:  # no AlexNet file, or no lpips package
            if e.lpips.required:
                raise
            unavailable["lpips_fp"] = str(err)
    if e.psnr:
        frame_metrics["psnr_fp"] = psnr_frames
    if e.ssim:
        frame_metrics["ssim_fp"] = ssim_frames
    backbone = instantiate(e.fvd.backbones[e.fvd.backbone]) if e.fvd.enabled else None
    out = evaluate_pairs(fp_dir, quant_dir, frame_metrics, backbone, device=e.metrics_device)
    return out["metrics"], out["per_video"], unavailable


def vbench_metrics(cfg: DictConfig, videos_dir: str | os.PathLike, name: str) -> dict:
    """VBench percentages plus ``vbench_avg``, kept next to the videos (``<dir>.vbench/``): a folder that already has
    its results (the FP set shared by a sweep, a resumed job) is not scored again."""
    v = cfg.eval.vbench
    out = Path(f"{Path(videos_dir)}.vbench")
    done = out / f"{name}_eval_results.json"
    try:
        scores = parse_vbench_results(done, list(v.dimensions))
    except (FileNotFoundError, ValueError):
        scores = run_vbench(videos_dir, out, v.python, v.cache_dir, list(v.dimensions), name, v.device, v.timeout_s)
    scores["vbench_avg"] = scores.pop("avg")
    return scores


def run_identity(cfg: DictConfig) -> dict:
    """Model, method and bits names of this run: ``<group>.name`` if the config has it, else Hydra's choice."""
    from hydra.core.hydra_config import HydraConfig

    choices = HydraConfig.get().runtime.choices if HydraConfig.initialized() else {}
    return {key: OmegaConf.select(cfg, f"{key}.name") or choices.get(key) for key in ("model", "method", "bits")}


def evaluate_run(cfg: DictConfig, fp_dir: str | os.PathLike, quant_dir: str | os.PathLike, output_dir: str | os.PathLike,
                 extra: Optional[dict] = None) -> dict:
    """All enabled metrics for one FP/quantized pair of folders; writes ``<output_dir>/results.json``."""
    e = cfg.eval
    metrics, per_video, unavailable = reference_metrics(cfg, fp_dir, quant_dir)
    record = {**run_identity(cfg), "tags": OmegaConf.to_container(e.tags, resolve=True), "metrics": metrics,
              "fp_metrics": {}, "unavailable": unavailable, "num_videos": len(per_video),
              "fvd_backbone": e.fvd.backbone if e.fvd.enabled else None, "per_video": per_video,
              "dirs": {"fp": str(fp_dir), "quant": str(quant_dir)}, **(extra or {})}
    if e.vbench.enabled:
        metrics.update(vbench_metrics(cfg, quant_dir, "quant"))
        if e.vbench.score_fp:
            record["fp_metrics"] = vbench_metrics(cfg, fp_dir, "fp")
    atomic_write_json(Path(output_dir) / RESULTS_FILE, record)
    return record


def log_record(logger, record: dict, fps: float, sample_videos: int, output_dir: str | os.PathLike) -> None:
    """Mirror a result into the logger: metrics, results.json, the per-video table, FP|quantized sample videos."""
    logger.log_metrics(record["metrics"])
    logger.log_file(Path(output_dir) / RESULTS_FILE)
    cols = sorted({k for v in record["per_video"].values() for k in v})
    logger.log_table("per_video", ["video"] + cols, [[n] + [v.get(c) for c in cols] for n, v in record["per_video"].items()])
    names = sorted(record["per_video"])[: max(sample_videos, 0)]
    videos = {}
    for i, name in enumerate(names):
        fp, q = read_video(Path(record["dirs"]["fp"]) / name), read_video(Path(record["dirs"]["quant"]) / name)
        path = Path(output_dir) / "samples" / f"{i:02d}.mp4"
        write_video(path, torch.cat([fp, q], dim=-1), VideoEncoding(fps=fps))
        videos[f"samples/{i:02d} FP | quantized"] = path
    if videos:
        logger.log_videos(videos, fps)


def artifact_quantizer(path: str | os.PathLike, info: Optional[dict] = None, cfg: Optional[DictConfig] = None,
                       ) -> Callable[[object], None]:
    """``quantize(pipe)`` that loads a saved quantized artifact (scripts/train_quant.py output) into the DiT in place.

    The one place where evaluation reaches into the quantization core. ``info`` receives the model's weight memory.
    With ``cfg.eval.deploy`` the fake-quant model is then converted to real low-bit modules run by ``cfg.kernel``
    (the videos a deployment would make); ``attention=cudnn_fp8`` first calibrates its static FP8 scales with one
    rollout of the config's calibration prompts (not the evaluation prompts).
    """
    def apply(pipe) -> None:
        from qarvd.quant.artifact import load_artifact

        load_artifact(pipe.model, path)
        if info is not None:
            info["weight_bytes"] = weight_bytes(pipe.model)
        if cfg is not None and cfg.eval.deploy:
            deploy_real_(pipe, cfg)

    return apply


def deploy_real_(pipe, cfg: DictConfig) -> None:
    """Replace the pipeline's fake-quant DiT by its real modules of backend ``cfg.kernel``, accelerated (in place)."""
    from qarvd.deploy import accelerate_, calibrate_attention_, convert_to_real
    from qarvd.deploy.from_quant import real_specs
    from qarvd.app.calibrate import calib_prompts
    from qarvd.quant.sensitivity import generate as rollout

    backend = instantiate(cfg.kernel)
    pipe.model = accelerate_(convert_to_real(pipe.model, real_specs(pipe.model), backend), backend)
    if backend.quantized_attention:
        prompts = calib_prompts(cfg)
        seeds = [int(cfg.seed) + i for i in range(len(prompts))]
        calibrate_attention_(pipe.model, lambda: rollout(pipe, prompts, seeds, int(cfg.eval.batch_size)))


def calibrate(cfg: DictConfig, output_dir: str | os.PathLike) -> Path:
    """Run the configured method x bits calibration (train_quant's library call) into ``output_dir``, unless a
    finished calibration is already there (``metrics.json`` is written last); returns the artifact path."""
    from qarvd.app.calibrate import train_quant

    done = Path(output_dir) / "metrics.json"
    metrics = json.loads(done.read_text()) if done.exists() else train_quant(cfg, output_dir)
    return Path(metrics["artifact"])


def weight_bytes(model: torch.nn.Module) -> int:
    """Weight memory of a deployed model: quantized weights at their bit-width, every other parameter (biases, norms,
    layers kept in float, SVDQuant's low-rank branch) at 16 bits; quantizer scales are left out (they are tiny)."""
    from qarvd.quant.linear import quant_layers

    layers = quant_layers(model).values()
    quantized = {id(m.weight) for m in layers}
    bits = sum(m.weight.numel() * m.w_bits for m in layers)
    bits += 16 * sum(p.numel() for p in model.parameters() if id(p) not in quantized)
    bits += 16 * sum(t.numel() for m in layers for t in (getattr(m, "lr_down", None), getattr(m, "lr_up", None)) if t is not None)
    return int(bits // 8)
