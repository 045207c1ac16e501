"""Experiment logging to Weights & Biases (the ``logger`` config group), offline by default.

Results are files first (``record.json`` in the run folder); W&B mirrors them for dashboards. One run per job of
every entry point that runs one (train_quant, evaluate, ...): the resolved config; ``job_type`` the entry point
(``task_name``); ``group`` the experiment preset plus the sweep folder (every job of one sweep together); tags
model / method / bits (from the result's own labels once they are known: an artifact's, not the config's
defaults); the name is the job folder's. A run is always finished, with exit code 1 when the job failed, so a
crashed job of a sweep still leaves a complete offline run.

What a record puts into its run (:func:`log_calibration`, :func:`log_evaluation`): scalar metrics, curves over the
rollout's chunks (latent MSE, PSNR / SSIM / LPIPS-FP per chunk) as line plots, the frame sensitivity alpha and chunk
weights, the per-layer reconstruction losses (a table and a summary), model bytes, stage seconds, PNG strips as
images, FP | quantized sample videos side by side, and the record itself as an artifact.
"""
from __future__ import annotations

import contextlib
import math
import os
from pathlib import Path
from typing import Iterator, Mapping, Optional, Sequence

from omegaconf import DictConfig, OmegaConf


class NullLogger:
    """The ``logger=none`` choice: every call is accepted and nothing is recorded."""

    def __init__(self, **_: object) -> None:
        pass

    def start(self, cfg: DictConfig) -> None:
        pass

    def set_labels(self, identity: Mapping[str, object]) -> None:
        """Tag the run with the result's own model / method / bits (known only once an artifact is read)."""

    def log_metrics(self, metrics: Mapping[str, float], step: Optional[int] = None) -> None:
        pass

    def log_summary(self, values: Mapping[str, object]) -> None:
        pass

    def log_curves(self, key: str, x_name: str, xs: Sequence[float], series: Mapping[str, Sequence[float]],
                   title: str = "") -> None:
        pass

    def log_videos(self, videos: Mapping[str, str | os.PathLike], fps: float) -> None:
        pass

    def log_table(self, key: str, columns: Sequence[str], rows: Sequence[Sequence[object]]) -> None:
        pass

    def log_images(self, images: Mapping[str, str | os.PathLike]) -> None:
        pass

    def log_file(self, path: str | os.PathLike) -> None:
        pass

    def log_artifact(self, path: str | os.PathLike, name: str, kind: str) -> None:
        pass

    def finish(self, exit_code: int = 0) -> None:
        pass


class WandbLogger(NullLogger):
    """One W&B run per job (``logger=wandb``); ``mode`` offline | online | disabled."""

    def __init__(self, project: str, entity: Optional[str], mode: str, dir: Optional[str], group: Optional[str],
                 job_type: Optional[str], tags: Sequence[str]) -> None:
        if mode not in ("offline", "online", "disabled"):
            raise ValueError(f"logger.mode must be offline, online or disabled, got '{mode}'")
        self.kwargs = dict(project=project, entity=entity, mode=mode, dir=dir, group=group, job_type=job_type)
        self.extra_tags = list(tags)
        self.run = None

    def start(self, cfg: DictConfig) -> None:
        import wandb

        kw = dict(self.kwargs)
        kw["group"] = kw["group"] or run_group(cfg)
        if kw["dir"]:
            Path(kw["dir"]).mkdir(parents=True, exist_ok=True)
        self.run = wandb.init(name=run_name(cfg), config=OmegaConf.to_container(cfg, resolve=True),
                              tags=self._tags({k: OmegaConf.select(cfg, f"{k}.name") for k in LABELS}),
                              reinit="finish_previous", **kw)

    def _tags(self, identity: Mapping[str, object]) -> list[str]:
        return [str(identity[k]) for k in LABELS if identity.get(k)] + self.extra_tags

    def set_labels(self, identity: Mapping[str, object]) -> None:
        self.run.tags = tuple(self._tags(identity))

    def log_metrics(self, metrics: Mapping[str, float], step: Optional[int] = None) -> None:
        self.run.log(dict(metrics), step=step)
        self.run.summary.update(dict(metrics))

    def log_summary(self, values: Mapping[str, object]) -> None:
        self.run.summary.update(dict(values))

    def log_curves(self, key: str, x_name: str, xs: Sequence[float], series: Mapping[str, Sequence[float]],
                   title: str = "") -> None:
        """A line plot of ``series`` (name -> values) over ``xs`` (e.g. the chunks), its table kept with it."""
        import wandb

        names = list(series)
        chart = wandb.plot.line_series(xs=list(xs), ys=[list(series[n]) for n in names], keys=names,
                                       title=title or key, xname=x_name)
        self.run.log({key: chart})

    def log_videos(self, videos: Mapping[str, str | os.PathLike], fps: float) -> None:
        import wandb

        self.run.log({k: wandb.Video(str(p), format="mp4") for k, p in videos.items()})  # the file carries its fps

    def log_images(self, images: Mapping[str, str | os.PathLike]) -> None:
        import wandb

        self.run.log({k: wandb.Image(str(p)) for k, p in images.items()})

    def log_table(self, key: str, columns: Sequence[str], rows: Sequence[Sequence[object]]) -> None:
        import wandb

        self.run.log({key: wandb.Table(columns=list(columns), data=[list(r) for r in rows])})

    def log_file(self, path: str | os.PathLike) -> None:
        """Attach a result file (e.g. record.json) to the run's files; uploaded with the run on ``wandb sync``."""
        self.run.save(str(path), base_path=str(Path(path).parent), policy="now")

    def log_artifact(self, path: str | os.PathLike, name: str, kind: str) -> None:
        """``path`` as a versioned W&B artifact (the file is final: referenced, not copied into a staging area)."""
        import wandb

        art = wandb.Artifact(name, type=kind)
        art.add_file(str(path), policy="immutable")
        self.run.log_artifact(art)

    def finish(self, exit_code: int = 0) -> None:
        if self.run is not None:
            self.run.finish(exit_code=exit_code)
            self.run = None


LABELS = ("model", "method", "bits")  # the run's tags, in this order


@contextlib.contextmanager
def logging_run(logger: NullLogger, cfg: DictConfig) -> Iterator[NullLogger]:
    """Start ``logger`` with ``cfg`` and always finish it (exit code 1 if the body raised, and re-raise)."""
    logger.start(cfg)
    try:
        yield logger
    except BaseException:
        logger.finish(exit_code=1)
        raise
    logger.finish(exit_code=0)


def _hydra():
    from hydra.core.hydra_config import HydraConfig

    return HydraConfig.get() if HydraConfig.initialized() else None


def run_group(cfg: DictConfig) -> str:
    """``<experiment preset or task name>/<sweep folder name>`` in a multirun, the preset (or task) alone else."""
    from hydra.types import RunMode

    hc = _hydra()
    preset = hc.runtime.choices.get("experiment") if hc is not None else None
    base = str(preset or cfg.get("task_name", "run"))
    if hc is None or hc.mode != RunMode.MULTIRUN:
        return base
    return f"{base}/{Path(hc.sweep.dir).name}"


def run_name(cfg: DictConfig) -> str:
    """The job folder's name (``minmax_w4a8_..._<hash>`` in a sweep, the run's time stamp else)."""
    hc = _hydra()
    return Path(hc.runtime.output_dir).name if hc is not None else str(cfg.get("task_name", "run"))


# ------------------------------------------------------------------------------------------ records -> logger
def log_stage_seconds(logger: NullLogger, seconds: Mapping[str, float], prefix: str) -> None:
    logger.log_summary({f"{prefix}seconds/{k}": float(v) for k, v in seconds.items()})


def log_per_chunk(logger: NullLogger, per_chunk: Mapping[str, Sequence[float]], prefix: str = "") -> None:
    """One line plot over the chunks per curve of a record (latent MSE, PSNR-FP, ...)."""
    for metric, values in per_chunk.items():
        logger.log_curves(f"{prefix}per_chunk/{metric}", "chunk", list(range(len(values))), {metric: values},
                          f"{metric} per chunk")


def log_calibration(logger: NullLogger, record: dict, record_file: str | os.PathLike, prefix: str = "calibrate/") -> None:
    """A calibration record: latent MSE (overall, per chunk), frame alpha and chunk weights, per-layer
    reconstruction losses (table + summary), model bytes, stage seconds, and the record as an artifact."""
    logger.set_labels(record)
    logger.log_metrics({f"{prefix}{k}": v for k, v in record["metrics"].items()})
    log_per_chunk(logger, record.get("per_chunk", {}), prefix)
    info = record.get("calibration", {})
    fw = info.get("frame_weighting", {})
    chunk_curves = {k: fw[k] for k in ("frame_alpha", "chunk_weights") if fw.get(k)}
    for name, values in chunk_curves.items():
        logger.log_curves(f"{prefix}{name}", "chunk", list(range(len(values))), {name: values}, f"{name} per chunk")
    units = info.get("recon", {}).get("units", {})
    if units:
        rows = [[u, s.get("loss_nearest"), s.get("loss_final"), _ratio(s), s.get("seconds"), bool(s.get("resumed"))]
                for u, s in units.items()]
        logger.log_table(f"{prefix}reconstruction", ["unit", "loss_nearest", "loss_final", "final_over_nearest",
                                                     "seconds", "resumed"], rows)
        ratios = [r[3] for r in rows if r[3] is not None]
        logger.log_curves(f"{prefix}reconstruction/final_over_nearest", "unit index", list(range(len(ratios))),
                          {"final / nearest": ratios}, "reconstruction loss, learned / nearest rounding, per unit")
        logger.log_summary({f"{prefix}reconstruction/units": len(units),
                            f"{prefix}reconstruction/mean_final_over_nearest": info["recon"].get("mean_final_over_nearest"),
                            f"{prefix}reconstruction/worst_final_over_nearest": max(ratios, default=None),
                            f"{prefix}reconstruction/captured_ram_peak_bytes": info["recon"].get("captured_ram_peak_bytes")})
    if record.get("weight_bytes"):
        logger.log_summary({"weight_bytes": record["weight_bytes"]})
    log_stage_seconds(logger, {**record.get("seconds", {}), **info.get("seconds", {})}, prefix)
    logger.log_artifact(record_file, f"record-{record['method']}-{record['bits']}-calibrate", "record")


def log_evaluation(logger: NullLogger, record: dict, record_file: str | os.PathLike,
                   samples: Mapping[str, str | os.PathLike], strips: Mapping[str, str | os.PathLike], fps: float) -> None:
    """An evaluation record: metrics, per-chunk video metrics, the per-video table, strips, side-by-side samples,
    model bytes, stage seconds and the record (file and artifact)."""
    logger.set_labels(record)
    logger.log_metrics(record["metrics"])
    log_per_chunk(logger, record.get("per_chunk", {}))
    cols = sorted({k for v in record["per_item"].values() for k in v})
    logger.log_table("per_item", ["video"] + cols, [[n] + [v.get(c) for c in cols] for n, v in record["per_item"].items()])
    if record.get("weight_bytes"):
        logger.log_summary({"weight_bytes": record["weight_bytes"]})
    log_stage_seconds(logger, record.get("seconds", {}), "evaluate/")
    if strips:
        logger.log_images(strips)
    if samples:
        logger.log_videos(samples, fps)
    logger.log_file(record_file)
    logger.log_artifact(record_file, f"record-{record['method']}-{record['bits']}-evaluate", "record")


def _ratio(stats: Mapping[str, object]) -> Optional[float]:
    a, b = stats.get("loss_final"), stats.get("loss_nearest")
    return float(a) / float(b) if a is not None and b and math.isfinite(float(b)) else None
