"""One evaluation job: paired videos -> reference metrics (+ VBench) -> ``record.json`` (stage evaluate) -> logger.

Metrics that cannot be computed because an optional weight file is missing (LPIPS without the AlexNet backbone
under ``eval.lpips.required=false``) are recorded under ``unavailable`` with the error message, so a table shows
"n/a" and why instead of silently dropping the column; a required one stops the run.
"""
from __future__ import annotations

import contextlib
import json
import logging
import os
import time
from pathlib import Path
from typing import Optional

from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf, open_dict

from eval.lpips_fp import LPIPSMetric, build_lpips, psnr_frames, ssim_frames
from eval.reference import evaluate_pairs, per_chunk
from eval.records import RECORD_FILE, load_records, new_record, save_fvd_features
from eval.vbench import parse_vbench_results, run_vbench
from eval.video_io import VIDEO_SUFFIX, VideoEncoding, read_video, side_by_side, write_video
from qarvd.app.generate import barrier, dist_env, from_rank0, generate, process_group
from qarvd.app.preflight import preflight
from qarvd.app.provenance import MANIFEST, ProvenanceError, environment, labels_from_artifact, run_identity, run_lock
from qarvd.app.wandb_logger import NullLogger, log_evaluation, logging_run
from qarvd.models.rollout import RolloutConfig
from qarvd.utils.errors import MissingWeightsError
from qarvd.utils.io import atomic_write_json

log = logging.getLogger(__name__)

CALIBRATION_DIR = "calibration"  # sub-folder of an evaluation run that calibrates first (artifact + its record)
SAMPLES_DIR = "samples"  # sub-folder of an evaluation run with the side-by-side sample videos


def reference_metrics(cfg: DictConfig, fp_dir: str | os.PathLike, quant_dir: str | os.PathLike) -> tuple[dict, dict]:
    """(``eval.reference.evaluate_pairs`` output, unavailable reasons) for the enabled reference-based metrics."""
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
    return evaluate_pairs(fp_dir, quant_dir, frame_metrics, backbone, device=e.metrics_device,
                          readers=int(e.readers)), unavailable


def video_encoding(cfg: DictConfig, folder: str | os.PathLike) -> dict:
    """How the scored files were encoded: the folder's manifest says (a reused folder may predate the config), else
    ``eval.video``; tables name the preset, since lossy files move FVD-FP / LPIPS-FP."""
    manifest = Path(folder) / MANIFEST
    if manifest.exists() and json.loads(manifest.read_text()).get("encoding"):
        return json.loads(manifest.read_text())["encoding"]
    return OmegaConf.to_container(cfg.eval.video, resolve=True)


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


def evaluate_run(cfg: DictConfig, fp_dir: str | os.PathLike, quant_dir: str | os.PathLike, output_dir: str | os.PathLike,
                 identity: dict, extra: Optional[dict] = None) -> dict:
    """All enabled metrics for one FP/quantized pair of folders, labelled ``identity`` (model, method, bits, ...,
    tags); writes ``<output_dir>/record.json`` (and the FVD feature pairs beside it)."""
    e = cfg.eval
    t0 = time.perf_counter()
    out, unavailable = reference_metrics(cfg, fp_dir, quant_dir)
    record = new_record(
        "evaluate", identity, metrics=out["metrics"],
        per_item=out["per_item"], num_items=out["num_items"], unavailable=unavailable,
        per_chunk=chunk_curves(cfg, out["per_frame"]),
        fvd_backbone=e.fvd.backbone if e.fvd.enabled else None, video=video_encoding(cfg, quant_dir),
        dirs={"fp": str(fp_dir), "quant": str(quant_dir)}, provenance={"environment": environment(cfg.device)},
        **(extra or {}))
    log.info("reference metrics of %d video pairs in %.1f s: %s", out["num_items"], time.perf_counter() - t0,
             ", ".join(f"{k} {v:.4g}" for k, v in out["metrics"].items()))
    if e.vbench.enabled:
        t = time.perf_counter()
        record["metrics"].update(vbench_metrics(cfg, quant_dir, "quant"))
        if e.vbench.score_fp:
            record["fp_metrics"] = vbench_metrics(cfg, fp_dir, "fp")
        log.info("VBench in %.1f s: average %.2f", time.perf_counter() - t, record["metrics"]["vbench_avg"])
    record.setdefault("seconds", {})["metrics"] = time.perf_counter() - t0
    if out["features"] is not None:
        f = out["features"]
        save_fvd_features(output_dir, f["names"], f["fp"], f["quant"])
    atomic_write_json(Path(output_dir) / RECORD_FILE, record)
    log.info("record %s", Path(output_dir) / RECORD_FILE)
    return record


def chunk_curves(cfg: DictConfig, per_frame: dict) -> dict:
    """The per-frame metric curves averaged per chunk of ``cfg.model.rollout``; {} (and a warning) for videos whose
    length does not follow from it (folders made with other settings)."""
    rollout = RolloutConfig(**OmegaConf.to_container(cfg.model.rollout, resolve=True))
    try:
        return per_chunk(per_frame, rollout.chunk_frames(), rollout.num_frames)
    except ValueError as err:
        log.warning("no per-chunk curves: %s", err)
        return {}


def write_samples(cfg: DictConfig, record: dict, output_dir: str | os.PathLike) -> dict[str, Path]:
    """``eval.samples.count`` FP | quantized pairs side by side, browser-playable, as ``<output_dir>/samples/NN.mp4``
    (the W&B videos and the HTML report's); {label: path}."""
    s = cfg.eval.samples
    enc = VideoEncoding(**OmegaConf.to_container(s.video, resolve=True))
    out = {}
    for i, name in enumerate(sorted(record["per_item"])[: max(int(s.count), 0)]):
        fp, q = (read_video(Path(record["dirs"][k]) / name) for k in ("fp", "quant"))
        out[f"samples/{i:02d} FP | quantized"] = write_video(Path(output_dir) / SAMPLES_DIR / f"{i:02d}{VIDEO_SUFFIX}",
                                                             side_by_side([fp, q], int(s.min_height)), enc)
    return out


def strip_images(record: dict, count: int) -> dict[str, Path]:
    """The PNG strips of the first ``count`` videos of both sets ({label: path}; those that exist)."""
    from qarvd.app.generate import strip_dir

    out = {}
    for i, name in enumerate(sorted(record["per_item"])[: max(count, 0)]):
        for kind in ("fp", "quant"):
            png = strip_dir(record["dirs"][kind]) / f"{Path(name).stem}.png"
            if png.is_file():
                out[f"strips/{i:02d} {kind}"] = png
    return out


def calibrate(cfg: DictConfig, output_dir: str | os.PathLike, logger: Optional[NullLogger] = None) -> Path:
    """Run the configured method x bits calibration (train_quant's library call) into ``<output_dir>/calibration``,
    unless a finished calibration of the same fingerprint is already there (its record is written last); a
    calibration of another config in that folder is refused. Returns the artifact path."""
    from qarvd.app.calibrate import calibration_fingerprint, train_quant

    folder = Path(output_dir) / CALIBRATION_DIR
    done = folder / RECORD_FILE
    if not done.exists():
        return Path(train_quant(cfg, folder, logger)["provenance"]["artifact"])
    record = load_records([done])[0]
    if record["provenance"].get("fingerprint") != calibration_fingerprint(cfg):
        raise ProvenanceError(f"'{folder}' holds a finished calibration of another config ({record['method']} "
                              f"{record['bits']}, calib {record['calib']}): give this run its own hydra.run.dir")
    log.info("calibration reused: %s", folder)
    return Path(record["provenance"]["artifact"])


def labels(cfg: DictConfig, artifact: Optional[str], quant_dir: Optional[str]) -> dict:
    """Who a result belongs to: the artifact's own labels, or those of the quantized folder's manifest; the config's
    only for a folder that has none (recorded as such in the provenance)."""
    from qarvd.quant.artifact import read_config

    if artifact:
        return labels_from_artifact(cfg, read_config(artifact)["run"], str(artifact))
    manifest = Path(str(quant_dir)) / MANIFEST
    if manifest.exists() and json.loads(manifest.read_text()).get("labels"):
        return labels_from_artifact(cfg, json.loads(manifest.read_text())["labels"], str(manifest))
    return {**run_identity(cfg), "tags": OmegaConf.to_container(cfg.eval.tags, resolve=True), "labels_from": "config"}


def evaluate(cfg: DictConfig) -> Optional[dict]:
    """The evaluate entry point (scripts/evaluate.py): calibrate unless ``eval.artifact`` is given, generate the
    paired videos (sharded over RANK / WORLD_SIZE), score them, write the record and mirror it to the logger.
    Returns the record on rank 0 (None on the others)."""
    e = cfg.eval
    rank = dist_env()[0]
    if rank == 0:
        preflight(cfg, "evaluate")
    logger = instantiate(cfg.logger) if rank == 0 else NullLogger()
    with process_group(), logging_run(logger, cfg):
        output_dir = Path(from_rank0(str(cfg.paths.output_dir)))  # every rank writes into rank 0's run folder
        with run_lock(output_dir) if rank == 0 else contextlib.nullcontext():
            extra: dict = {}
            if e.quant_dir:
                if not e.fp_dir:
                    raise ValueError("eval.quant_dir needs eval.fp_dir: the FP videos to compare against")
                dirs = {"fp": e.fp_dir, "quant": e.quant_dir}
                identity = labels(cfg, None, e.quant_dir)
            else:
                artifact = e.artifact or from_rank0(str(calibrate(cfg, output_dir, logger)) if rank == 0 else None)
                identity = labels(cfg, artifact, None)  # before any video: a contradicting config stops here
                extra["artifact"] = str(artifact)
                with open_dict(cfg):
                    cfg.eval.video_dir = from_rank0(str(e.video_dir))
                t = time.perf_counter()
                dirs = generate(cfg, str(artifact), extra)["dirs"]
                extra["seconds"] = {"generation": time.perf_counter() - t}
                barrier()
            if rank != 0:
                return None
            logger.set_labels(identity)
            record = evaluate_run(cfg, dirs["fp"], dirs["quant"], output_dir, identity, extra)
            log_evaluation(logger, record, output_dir / RECORD_FILE, write_samples(cfg, record, output_dir),
                           strip_images(record, int(e.samples.count)), float(e.samples.video.fps))
    return record
