"""Checks that run before any model is built: the config's values, and every file the run will read.

A run that would fail on a missing I3D file after an hour of calibration, or on ``bits.symmetric='false'`` read as
true, fails here instead, in seconds, with every problem named at once (the config key, the file, where it is
published). A multirun checks every job's config before its first job starts (:class:`MultirunPreflight`, a Hydra
callback in conf/hydra/default.yaml).
"""
from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any, Optional

from hydra.experimental.callback import Callback
from omegaconf import DictConfig, OmegaConf

from qarvd.utils.errors import MissingWeightsError

STAGES = ("calibrate", "generate", "evaluate")


class PreflightError(ValueError):
    """Everything wrong with a config, listed (keys and files)."""


def _is_count(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool) and v >= 1


def value_problems(cfg: DictConfig) -> list[str]:
    """Values that would be misread: derived names, booleans that must be booleans, counts that must be >= 1."""
    problems = []
    try:
        OmegaConf.select(cfg, "bits.name", throw_on_resolution_failure=True)  # derived and validated (hydra_resolvers)
    except Exception as err:  # noqa: BLE001  (the resolver's message names the key)
        problems.append(str(err).splitlines()[0].replace("ValueError raised while resolving interpolation: ", ""))
    bools = ["bits.symmetric", "method.recon", "method.dual_scale", "method.dual_scale_frame_weights", "eval.deploy",
             "eval.share_fp", "eval.skip_existing", "eval.fvd.enabled", "eval.lpips.enabled", "eval.lpips.required",
             "eval.psnr", "eval.ssim", "eval.vbench.enabled", "model.checkpoint.random_init"]
    for key in bools:
        v = OmegaConf.select(cfg, key, default=None)
        if v is not None and not isinstance(v, bool):
            problems.append(f"{key}={v!r}: give true or false (unquoted)")
    counts = ["calib.num_prompts", "calib.sensitivity_prompts", "calib.eval_prompts", "calib.iters",
              "calib.calls_per_step", "calib.prompts_per_batch", "eval.prompts_per_batch", "eval.samples_per_prompt"]
    for key in counts:
        v = OmegaConf.select(cfg, key, default=None)
        if v is not None and not _is_count(v):
            problems.append(f"{key}={v!r}: give an integer >= 1")
    seed = OmegaConf.select(cfg, "calib.seed", default=None)
    if seed is not None and (isinstance(seed, bool) or not isinstance(seed, int) or seed < 0):
        problems.append(f"calib.seed={seed!r}: give an integer >= 0, or null for the run's seed")
    count = OmegaConf.select(cfg, "eval.count", default=None)
    if count is not None and not _is_count(count):
        problems.append(f"eval.count={count!r}: give an integer >= 1, or null for every prompt")
    return problems


def required_files(cfg: DictConfig, stage: str) -> list[tuple[str, Optional[str], str]]:
    """(config key, path, where it is published) of every file ``stage`` will read."""
    if stage not in STAGES:
        raise ValueError(f"preflight stage {stage!r}; choose from {STAGES}")
    m, out = cfg.model, []
    if not m.checkpoint.get("random_init", False):
        out.append(("model.checkpoint.path", m.checkpoint.get("path"), m.checkpoint.get("published_at", "")))
        for node, keys in (("text_encoder", ("path", "weights", "tokenizer")), ("vae", ("weights",))):
            sub = m.get(node)
            if sub is None or sub.get("random_init", False):
                continue
            for k in keys:
                if k in sub and sub.get(k) is not None:
                    out.append((f"model.{node}.{k}", sub.get(k), sub.get("published_at", "")))
    from qarvd.data.prompts import PROMPTS_PUBLISHED_AT

    calibrates = stage == "calibrate" or (stage == "evaluate" and not OmegaConf.select(cfg, "eval.artifact"))
    pools = [("model.prompts.calib", m.prompts.get("calib"))] if calibrates else []
    pools += [("model.prompts.eval", m.prompts.get("eval"))]
    if stage != "calibrate" and OmegaConf.select(cfg, "eval.names") is not None:
        pools.append(("eval.names", cfg.eval.names))
    for key, node in pools:
        if node is not None and node.get("path") is not None:
            out.append((f"{key}.path", node.path, PROMPTS_PUBLISHED_AT))
    if stage != "calibrate" and OmegaConf.select(cfg, "eval.artifact"):
        from qarvd.quant.artifact import TENSORS_FILE

        a = Path(str(cfg.eval.artifact))
        out.append(("eval.artifact", str(a / TENSORS_FILE if a.suffix != ".safetensors" else a),
                    "a scripts/train_quant.py run folder"))
    if stage == "evaluate":
        out += metric_files(cfg)
    return out


def metric_files(cfg: DictConfig) -> list[tuple[str, Optional[str], str]]:
    """The files of the enabled metrics: the FVD backbone's weights, AlexNet (when LPIPS is required), VBench."""
    e, out = cfg.eval, []
    if e.fvd.enabled:
        b = e.fvd.backbones[e.fvd.backbone]
        if b.get("path") is not None:
            from eval.fvd import I3D_PUBLISHED_AT

            out.append((f"eval.fvd.backbones.{e.fvd.backbone}.path", b.path, I3D_PUBLISHED_AT))
    if e.lpips.enabled and e.lpips.required and not e.lpips.pnet_rand:
        from eval.lpips_fp import ALEXNET_PUBLISHED_AT, default_alexnet_path

        out.append(("eval.lpips.alexnet_path", e.lpips.alexnet_path or str(default_alexnet_path()), ALEXNET_PUBLISHED_AT))
    if e.vbench.enabled:
        from eval.vbench import VBENCH_PUBLISHED_AT

        python = e.vbench.python
        out.append(("eval.vbench.python", shutil.which(python) if python and not Path(python).exists() else python,
                    VBENCH_PUBLISHED_AT))
        out.append(("eval.vbench.cache_dir", e.vbench.cache_dir, VBENCH_PUBLISHED_AT))
    return out


def preflight(cfg: DictConfig, stage: str) -> None:
    """Raise one :class:`PreflightError` naming every bad value and every missing file of ``stage``."""
    problems = value_problems(cfg)
    for key, path, where in required_files(cfg, stage):
        if not path or not Path(str(path)).exists():
            problems.append(str(MissingWeightsError(key, path, where)))
    if problems:
        raise PreflightError(f"{len(problems)} problem(s) before the {stage} run started (nothing was built):\n  - "
                             + "\n  - ".join(problems))


def check_files(cfg: DictConfig) -> list[str]:
    """The preflight entry point (scripts/preflight.py): one line per file of the ``cfg.stage`` run (found or
    missing, config key, path); raises :class:`PreflightError` with every problem after printing nothing else."""
    preflight(cfg, str(cfg.stage))
    return [f"ok  {key} = {path}" for key, path, _ in required_files(cfg, str(cfg.stage))]


class MultirunPreflight(Callback):
    """Hydra callback: before a multirun's first job, compose every job's config and run :func:`preflight` on it
    (the stage is named by ``task_name``: train_quant -> calibrate, evaluate, generate); jobs that read the same files
    are checked once. A sweep over 18 jobs whose weights are missing fails in seconds, not after the first job."""

    TASKS = {"train_quant": "calibrate", "evaluate": "evaluate", "generate": "generate"}

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        stage = self.TASKS.get(str(config.get("task_name")))
        if stage is None:
            return
        problems, seen = [], set()
        for overrides in job_overrides(config):
            cfg = compose_job(config, overrides)
            try:
                preflight(cfg, stage)
            except PreflightError as err:
                msg = str(err).split("\n", 1)[1]
                if msg not in seen:
                    seen.add(msg)
                    problems.append(f"job {' '.join(overrides)}:\n{msg}")
        if problems:  # SystemExit: Hydra turns a callback's exceptions into warnings and would launch the jobs
            raise SystemExit(f"{PreflightError.__name__}: the multirun was not started:\n" + "\n".join(problems))


def job_overrides(config: DictConfig) -> list[list[str]]:
    """The override list of every job of the sweep: Hydra's basic sweeper's cartesian product of the sweeper params
    (an experiment preset's grid) followed by the command line's overrides."""
    from hydra._internal.core_plugins.basic_sweeper import BasicSweeper
    from hydra.core.override_parser.overrides_parser import OverridesParser

    params = [f"{k}={v}" for k, v in (OmegaConf.select(config, "hydra.sweeper.params") or {}).items()]
    parsed = OverridesParser.create().parse_overrides(params + list(config.hydra.overrides.task))
    return [list(job) for batch in BasicSweeper.split_arguments(parsed, None) for job in batch]


def compose_job(config: DictConfig, overrides: list[str]) -> DictConfig:
    """One job's config, composed from the primary config with its overrides (as the launcher will)."""
    from hydra import compose

    return compose(config_name=config.hydra.job.config_name, overrides=overrides)
