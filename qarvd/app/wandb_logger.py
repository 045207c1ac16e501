"""Experiment logging to Weights & Biases (the ``logger`` config group), offline by default.

Results are files first (JSON in the run folder); W&B mirrors them for dashboards. A run is initialised with the
resolved config, grouped per sweep (the multirun folder's name), named after its command-line overrides (so the
jobs of ``-m method=a,b bits=x,y`` read ``bits=x,method=a`` etc.), and always finished, with a non-zero exit code
when the job failed, so a crashed job of a sweep still leaves a complete offline run behind.
"""
from __future__ import annotations

import contextlib
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

    def log_metrics(self, metrics: Mapping[str, float], step: Optional[int] = None) -> None:
        pass

    def log_videos(self, videos: Mapping[str, str | os.PathLike], fps: float) -> None:
        pass

    def log_table(self, key: str, columns: Sequence[str], rows: Sequence[Sequence[object]]) -> None:
        pass

    def log_images(self, images: Mapping[str, str | os.PathLike]) -> None:
        pass

    def log_file(self, path: str | os.PathLike) -> None:
        pass

    def finish(self, exit_code: int = 0) -> None:
        pass


class WandbLogger(NullLogger):
    """One W&B run per job (``logger=wandb``); ``mode`` offline | online | disabled."""

    def __init__(self, project: str = "qarvd", entity: Optional[str] = None, mode: str = "offline",
                 dir: Optional[str] = None, group: Optional[str] = None, job_type: Optional[str] = None,
                 tags: Sequence[str] = ()) -> None:
        if mode not in ("offline", "online", "disabled"):
            raise ValueError(f"logger.mode must be offline, online or disabled, got '{mode}'")
        self.kwargs = dict(project=project, entity=entity, mode=mode, dir=dir, group=group, job_type=job_type, tags=list(tags))
        self.run = None

    def start(self, cfg: DictConfig) -> None:
        import wandb

        kw = dict(self.kwargs)
        kw["group"] = kw["group"] or _sweep_group() or cfg.get("task_name")
        if kw["dir"]:
            Path(kw["dir"]).mkdir(parents=True, exist_ok=True)
        self.run = wandb.init(name=_run_name(cfg), config=OmegaConf.to_container(cfg, resolve=True),
                              reinit="finish_previous", **kw)

    def log_metrics(self, metrics: Mapping[str, float], step: Optional[int] = None) -> None:
        self.run.log(dict(metrics), step=step)
        self.run.summary.update(dict(metrics))

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
        """Attach a result file (e.g. results.json) to the run's files; uploaded with the run on ``wandb sync``."""
        self.run.save(str(path), base_path=str(Path(path).parent), policy="now")

    def finish(self, exit_code: int = 0) -> None:
        if self.run is not None:
            self.run.finish(exit_code=exit_code)
            self.run = None


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


def _sweep_group() -> Optional[str]:
    """The multirun folder's name (one W&B group per sweep), None outside a multirun."""
    from hydra.types import RunMode

    hc = _hydra()
    if hc is None or hc.mode != RunMode.MULTIRUN:
        return None
    return Path(hc.sweep.dir).name


def _run_name(cfg: DictConfig) -> str:
    """``override_dirname`` of the job (its overrides, e.g. ``bits=w4a8,method=qarvd``), else the task name."""
    hc = _hydra()
    name = hc.job.override_dirname if hc is not None else ""
    return name or str(cfg.get("task_name", "run"))
