"""One calibration run from a composed config: FP reference, method recipe, artifact, record (train_quant.py).

Outputs in ``out_dir`` (written atomically, the record last, so a failed run never looks finished):
``quant_artifact.safetensors`` + ``quant_config.json``, ``resolved_config.yaml`` and ``record.json`` (stage
``calibrate``) with the latent MSE of the quantized rollout to the FP rollout (same per-prompt seeds) on held-out
prompts: overall, per chunk and per prompt.
"""
from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Optional

import torch
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

from eval.records import RECORD_FILE, new_record
from qarvd.app.preflight import preflight
from qarvd.app.provenance import base_weights, calibration_seed, environment, run_identity, run_lock, weights_identity
from qarvd.app.quantized import weight_bytes
from qarvd.app.wandb_logger import NullLogger, log_calibration, logging_run
from qarvd.data.prompts import select
from qarvd.methods.base import Calibration
from qarvd.models.pipeline import build_pipeline
from qarvd.quant.artifact import TENSORS_FILE, save_artifact
from qarvd.quant.quantizer import check_bits
from qarvd.quant.sensitivity import generate, latent_mse_by_chunk
from qarvd.utils.io import atomic_write_json, atomic_write_text

log = logging.getLogger(__name__)


def calib_prompts(cfg: DictConfig, pool: Optional[list[str]] = None) -> list[str]:
    """The calibration prompts alone (also what a deployment calibrates its FP8 attention scales on); ``pool``: the
    calibration prompt file's contents when the caller has read it already."""
    pool = instantiate(cfg.model.prompts.calib) if pool is None else pool
    return select(pool, int(cfg.calib.prompt_start), cfg.calib.num_prompts, "calib.num_prompts")


def calibration_prompts(cfg: DictConfig) -> tuple[list[str], list[str], list[str]]:
    """(calibration, sensitivity, held-out evaluation) prompts."""
    calib_pool = instantiate(cfg.model.prompts.calib)
    eval_pool = instantiate(cfg.model.prompts.eval)
    c = cfg.calib
    calib = calib_prompts(cfg, calib_pool)
    sens = select(calib_pool, int(c.prompt_start), min(int(c.sensitivity_prompts), len(calib_pool) - int(c.prompt_start)),
                  "calib.sensitivity_prompts")
    return calib, sens, select(eval_pool, 0, c.eval_prompts, "calib.eval_prompts")


# calib keys added after runs were made, with the value that leaves a result as it was: at that value the key is left
# out of the fingerprint, so those runs' resume folders and caches still match.
INERT_LATER_KEYS = {("seed",): None, ("batch", "bf16"): False}


def _without_inert(calib: dict, path: tuple = ()) -> dict:
    def inert(key: tuple, v) -> bool:
        return key in INERT_LATER_KEYS and v is INERT_LATER_KEYS[key]  # None / False only, not 0

    return {k: _without_inert(v, path + (k,)) if isinstance(v, dict) else v for k, v in calib.items()
            if not inert(path + (k,), v)}


def calibration_fingerprint(cfg: DictConfig) -> dict:
    """Everything a calibration's result depends on (model, method, bits, calibration settings, seed, weight file
    hashes): resumable reconstruction and the reuse of a finished calibration both require it to match."""
    calib = OmegaConf.to_container(cfg.calib, resolve=True)
    kept = {k: v for k, v in calib.items() if k not in ("resume_dir", "cache_dir", "eval_prompts")}
    kept["batch"] = {k: v for k, v in calib["batch"].items() if k != "checkpoint_s"}  # results do not depend on it
    return ({k: OmegaConf.to_container(cfg[k], resolve=True) for k in ("model", "method", "bits")}
            | {"calib": _without_inert(kept), "seed": int(cfg.seed), "weights": weights_identity(cfg)})


def build_calibration(cfg: DictConfig, out_dir: str | Path) -> tuple[Calibration, list[str], list[int]]:
    """The pipeline and calibration inputs of a config: (Calibration, held-out prompts, their seeds)."""
    bits = cfg.bits
    check_bits(bits.w_bits, "bits.w_bits")
    check_bits(bits.a_bits, "bits.a_bits")
    torch.manual_seed(int(cfg.seed))
    pipeline = build_pipeline(cfg.model, cfg.device)
    calib_prompts, sens_prompts, eval_prompts = calibration_prompts(cfg)
    seed, eval_seed = calibration_seed(cfg), int(cfg.seed)
    calib = OmegaConf.to_container(cfg.calib, resolve=True)
    cal = Calibration(
        pipeline=pipeline, w_bits=int(bits.w_bits), a_bits=int(bits.a_bits), symmetric=bool(bits.symmetric),
        calib=calib, prompts=calib_prompts, seeds=[seed + i for i in range(len(calib_prompts))], work_dir=Path(out_dir),
        sensitivity_prompts=sens_prompts, sensitivity_seeds=[seed + i for i in range(len(sens_prompts))],
        fingerprint=calibration_fingerprint(cfg),
        sensitivity_key={"model": OmegaConf.to_container(cfg.model.arch, resolve=True), "dtype": cfg.model.dtype,
                         "weights": base_weights(cfg), "rollout": OmegaConf.to_container(cfg.model.rollout, resolve=True),
                         "bits": [int(bits.w_bits), int(bits.a_bits), bool(bits.symmetric)],
                         "calib": {k: calib[k] for k in ("percentiles", "hist_bins")},
                         "calib_prompts": list(calib_prompts), "sensitivity_prompts": list(sens_prompts), "seed": seed,
                         "format": "frame_alpha/1"},  # the cached result's layout: older caches are not reused
        seed=seed,
    )
    return cal, eval_prompts, [eval_seed + i for i in range(len(eval_prompts))]


def train_quant_job(cfg: DictConfig) -> dict:
    """The train_quant entry point: :func:`train_quant` into the run folder, mirrored into a logger run (W&B)."""
    with logging_run(instantiate(cfg.logger), cfg) as logger:
        return train_quant(cfg, cfg.paths.output_dir, logger)


def train_quant(cfg: DictConfig, out_dir: str | Path, logger: Optional[NullLogger] = None) -> dict:
    """Calibrate ``cfg.method`` at ``cfg.bits`` on ``cfg.model``; write artifact, config and record; return the record
    (also logged to ``logger``).

    The config and every file the run reads are checked first (nothing is built before); the folder is locked."""
    out_dir = Path(out_dir)
    check_bits(cfg.bits.w_bits, "bits.w_bits")
    check_bits(cfg.bits.a_bits, "bits.a_bits")
    preflight(cfg, "calibrate")
    with run_lock(out_dir):
        record = _train_quant(cfg, out_dir)
    log_calibration(logger or NullLogger(), record, out_dir / RECORD_FILE)
    return record


def _train_quant(cfg: DictConfig, out_dir: Path) -> dict:
    recipe = instantiate(cfg.method, _convert_="all")
    t0 = time.perf_counter()
    log.info("calibrating %s %s on %s (calib %s) into %s", cfg.method.name, cfg.bits.name, cfg.model.name,
             cfg.calib.name, out_dir)
    cal, eval_prompts, eval_seeds = build_calibration(cfg, out_dir)
    pipeline = cal.pipeline
    log.info("model built in %.1f s; %d calibration, %d sensitivity, %d held-out prompts", time.perf_counter() - t0,
             len(cal.prompts), len(cal.sensitivity_prompts), len(eval_prompts))
    t = time.perf_counter()
    fp_latents = generate(pipeline, eval_prompts, eval_seeds, cal.batch, desc="FP reference rollout")  # before any layer is swapped
    log.info("FP reference rollout: %d prompts in %.1f s", len(eval_prompts), time.perf_counter() - t)
    t1 = time.perf_counter()
    info = recipe.run(cal)
    t2 = time.perf_counter()
    log_recipe(info, t2 - t1)
    q_latents = generate(pipeline, eval_prompts, eval_seeds, cal.batch, desc="quantized rollout")
    mse = latent_mse_by_chunk(q_latents, fp_latents, pipeline.rollout_cfg.chunk_frames())
    log.info("quantized rollout in %.1f s: latent MSE to FP %.4g (per chunk %s)", time.perf_counter() - t2,
             mse["overall"], ", ".join(f"{v:.3g}" for v in mse["per_chunk"]))
    identity = run_identity(cfg)
    tags = OmegaConf.to_container(cfg.eval.tags, resolve=True)
    artifact = save_artifact(pipeline.model, out_dir, {
        **identity, "bits_cfg": OmegaConf.to_container(cfg.bits, resolve=True), "tags": tags,
        "base_weights": base_weights(cfg), "calib_settings": cal.fingerprint["calib"],
        "method_config": OmegaConf.to_container(cfg.method, resolve=True)})
    atomic_write_text(out_dir / "resolved_config.yaml", OmegaConf.to_yaml(cfg, resolve=True))
    record = new_record(
        "calibrate", identity,
        tags=tags,
        metrics={"latent_mse": mse["overall"]},
        per_chunk={"latent_mse": mse["per_chunk"]},
        per_item={item_name(p, s): {"latent_mse": v} for p, s, v in zip(eval_prompts, eval_seeds, mse["per_prompt"])},
        num_items=len(eval_prompts),
        provenance={"weights": cal.fingerprint["weights"], "artifact": str(artifact / TENSORS_FILE),
                    "fingerprint": cal.fingerprint,
                    "config": str(out_dir / "resolved_config.yaml"), "calib_prompts": len(cal.prompts),
                    "environment": environment(cfg.device)},
        method_config=OmegaConf.to_container(cfg.method, resolve=True),
        calibration=info,
        weight_bytes=weight_bytes(pipeline.model),
        seconds={"build_and_fp_reference": t1 - t0, "calibration": t2 - t1, "evaluation": time.perf_counter() - t2},
    )
    atomic_write_json(out_dir / RECORD_FILE, record)
    log.info("artifact %s (%.3g MiB of weights); record %s", artifact, record["weight_bytes"] / 2**20,
             out_dir / RECORD_FILE)
    return record


def log_recipe(info: dict, seconds: float) -> None:
    """The job log's summary of a recipe's stages: frame weighting, outlier split, activation init, reconstruction."""
    fw = info.get("frame_weighting", {})
    if fw.get("frame_alpha"):
        log.info("frame sensitivity alpha %s (%s)", ", ".join(f"{a:.3g}" for a in fw["frame_alpha"]),
                 fw.get("sensitivity_file"))
    log.info("frame weighting: %s; %d quantized layers%s", fw.get("strategy"), info.get("quantized_layers", 0),
             f", {info['dual_scale_layers']} with a dual-scale outlier split" if "dual_scale_layers" in info else "")
    recon = info.get("recon")
    if recon:
        log.info("reconstruction: %d units, learned / nearest rounding loss %.3g on average; captured RAM peak %.3g GiB",
                 len(recon["units"]), recon["mean_final_over_nearest"], recon["captured_ram_peak_bytes"] / 2**30)
    stages = ", ".join(f"{k} {v:.1f} s" for k, v in info.get("seconds", {}).items())
    log.info("%s calibrated in %.1f s (%s)", info.get("method"), seconds, stages)


def item_name(prompt: str, seed: int) -> str:
    """The paired item of a latent-MSE comparison: a prompt with its noise seed."""
    return f"{prompt} #{seed}"
