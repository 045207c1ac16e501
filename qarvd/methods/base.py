"""The staged calibration every method shares; a method is a :class:`Recipe` that adds a ``prepare`` stage.

Stages (deepcompressor-style, each reading the previous one's state):
  0. frame weights (if the strategy needs a sensitivity vector, measured on a plain percentile-init copy);
  1. swap Linear -> QuantLinear (:func:`qarvd.quant.api.quantize_`), keep-list left in float;
  2. ``prepare``: the method's own transformation (smoothing, low-rank branch);
  3. dual-scale split of block linears (``dual_scale``), then per-channel weight init (percentile MSE, data free);
  4. activation init on a run with quantized weights (32768-bin histogram, chunk-weighted MSE);
  5. reconstruction (``recon``, per layer or per block: ``recon_granularity``): streamed capture of FP inputs +
     AdaRound and activation-step learning;
  6. hardening: integer weight codes, the state that is saved.
"""
from __future__ import annotations

import copy
import dataclasses
import hashlib
import json
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional, Sequence

import torch

from qarvd.quant.api import QuantConfig, calibrate_activations_, harden_, quantize_, split_outliers
from qarvd.quant.capture import CaptureBudget, capture, channel_absmax, run_calibration
from qarvd.quant.linear import QuantLinear, quant_layers
from qarvd.quant.outliers import OutlierConfig
from qarvd.quant.reconstruct import ReconConfig, ResumeStore, reconstruct_model
from qarvd.quant.roles import BLOCK_ROLES, input_group, role_of
from qarvd.quant.sensitivity import STRATEGIES, call_weights, calls_per_chunk, chunk_weights, frame_sensitivity, load_sensitivity
from qarvd.quant.smoothing import fold_into_norm, foldable_norm
from qarvd.utils.io import atomic_write_json

log = logging.getLogger(__name__)

PROTOCOLS = ("paper", "as_published")  # the paper's §4.1 setting | the method as its original code runs it


@dataclass
class Calibration:
    """Everything a recipe needs: the pipeline, bit-widths, calibration settings, prompts and a work folder."""

    pipeline: Any
    w_bits: int
    a_bits: int
    symmetric: bool
    calib: dict  # the resolved calib config group
    prompts: Sequence[str]
    seeds: Sequence[int]
    work_dir: Path
    sensitivity_prompts: Sequence[str] = ()
    sensitivity_seeds: Sequence[int] = ()
    fingerprint: dict = field(default_factory=dict)  # identifies the run for resumable reconstruction
    sensitivity_key: dict = field(default_factory=dict)  # what the sensitivity alpha depends on (cache key)
    seed: int = 0
    _absmax: Optional[dict] = None
    contexts: dict = field(default_factory=dict)  # encoded calibration prompt batches

    @property
    def model(self):
        return self.pipeline.model

    @property
    def batch(self) -> int:
        return int(self.calib["prompts_per_batch"])

    def quant_config(self, **kw) -> QuantConfig:
        return QuantConfig(w_bits=self.w_bits, a_bits=self.a_bits, symmetric=self.symmetric,
                           percentiles=tuple(self.calib["percentiles"]), **kw)

    def run_calibration(self, pipeline=None) -> None:
        run_calibration(pipeline or self.pipeline, self.prompts, self.seeds, self.batch, self.contexts)

    def absmax(self) -> dict[str, torch.Tensor]:
        """Per-sample input channel abs-max of every quantized layer (one FP pass, cached)."""
        if self._absmax is None:
            self._absmax = channel_absmax(self.pipeline, self.prompts, self.seeds, quant_layers(self.model),
                                          self.batch, self.contexts)
        return self._absmax

    def sample_inputs(self, names: Sequence[str], max_calls: int, tokens: int) -> dict[str, torch.Tensor]:
        """A small FP input sample [rows, in] per layer (seeded calls and token rows)."""
        layers = quant_layers(self.model)
        budget = CaptureBudget(max_calls=max_calls, tokens_per_call=tokens, ram_bytes=1 << 62, seed=self.seed)
        session = capture(self.pipeline, self.prompts, self.seeds, {n: layers[n] for n in names}, budget,
                          prompts_per_batch=self.batch, context_cache=self.contexts)
        try:
            return {n: torch.cat([s.tensors["x"] for s in session.stores[n].samples]).float() for n in names}
        finally:
            session.close()


@dataclass
class Recipe:
    """A quantization method: shared stages plus an optional ``prepare`` transformation (see module doc)."""

    # every field comes from conf/method/<name>.yaml (shared keys: conf/method/recipe/base.yaml), the one place
    # that holds their defaults
    name: str
    protocol: str
    recon: bool
    recon_granularity: str
    dual_scale: bool
    outlier: dict
    frame_weighting: str
    sensitivity_file: Optional[str]
    dual_scale_frame_weights: bool
    keep: Sequence[str]
    recon_skip_roles: Sequence[str]

    def __post_init__(self) -> None:
        if self.protocol not in PROTOCOLS:
            raise ValueError(f"method.protocol='{self.protocol}' is not one of {list(PROTOCOLS)}")
        if self.recon_granularity not in ("layer", "block"):
            raise ValueError(f"method.recon_granularity='{self.recon_granularity}' must be 'layer' or 'block'")
        if self.frame_weighting not in STRATEGIES:
            raise ValueError(f"method.frame_weighting='{self.frame_weighting}' is not one of {list(STRATEGIES)}")
        self.outlier_cfg = OutlierConfig(**dict(self.outlier))
        self.keep = tuple(self.keep)
        self.recon_skip_roles = tuple(self.recon_skip_roles)

    # -- the method-specific stage ------------------------------------------------------------------------
    def prepare(self, cal: Calibration, layers: dict[str, QuantLinear]) -> dict:
        """Transform layers before initialisation (smoothing, low-rank branch); returns info for the results."""
        return {}

    # -- shared stages -------------------------------------------------------------------------------------
    def frame_weights(self, cal: Calibration) -> tuple[Optional[torch.Tensor], dict]:
        """The loss weight of one calibration call of each chunk (None: every call weighs 1, no chunk weighting).

        Chunk c's calls together carry the share alpha_c / sum(alpha) of the weight, whatever the number of forward
        calls of each chunk (Eq. 5 draws the chunk uniformly; :func:`qarvd.quant.sensitivity.call_weights`).
        """
        rollout = cal.pipeline.rollout_cfg
        num_chunks = rollout.num_chunks
        info: dict = {"strategy": self.frame_weighting}
        if self.frame_weighting == "none":
            return None, info
        alpha = None
        if self.frame_weighting in ("final_quality", "reverse"):
            if self.sensitivity_file:
                alpha = load_sensitivity(self.sensitivity_file)
                info["sensitivity_file"] = str(self.sensitivity_file)
            else:
                result = measure_sensitivity(cal)
                atomic_write_json(cal.work_dir / "sensitivity.json", result)
                alpha = result["frame_alpha"]
                info["sensitivity_file"] = str(cal.work_dir / "sensitivity.json")
            info["frame_alpha"] = list(alpha)
        w = chunk_weights(self.frame_weighting, num_chunks, alpha)
        calls = calls_per_chunk(rollout)
        per_call = call_weights(w, calls)
        info.update(chunk_weights=w.tolist(), calls_per_chunk=calls, call_weights=per_call.tolist())
        return per_call, info

    def run(self, cal: Calibration) -> dict:
        """Calibrate ``cal.pipeline.model`` in place; returns what happened (the record's ``calibration``)."""
        t0 = time.perf_counter()
        torch.manual_seed(cal.seed)
        info: dict[str, Any] = {"method": self.name, "protocol": self.protocol}
        weights, info["frame_weighting"] = self.frame_weights(cal)
        quantize_(cal.model, cal.quant_config(keep=self.keep, init_weights=False))  # initialised after prepare
        layers = quant_layers(cal.model)
        info["quantized_layers"] = len(layers)
        info["prepare"] = self.prepare(cal, layers)
        if self.dual_scale:
            info["outlier_multiple"] = self.outlier_cfg.round_multiple
            info["dual_scale"] = {n: split_outliers(l, self.outlier_cfg).stats()
                                  for n, l in layers.items() if role_of(n) in BLOCK_ROLES}
            info["dual_scale_layers"] = sum(1 for s in info["dual_scale"].values() if s["count"] > 0)
        for l in layers.values():
            l.init_weights(cal.calib["percentiles"])
            split = len(l.groups) > 1
            l.chunk_weights = None if (split and not self.dual_scale_frame_weights) else weights
        t1 = time.perf_counter()
        chosen = calibrate_activations_(cal.model, cal.run_calibration, cal.calib["percentiles"], int(cal.calib["hist_bins"]))
        info["act_percentile_index"] = chosen
        t2 = time.perf_counter()
        if self.recon:
            info["recon"] = reconstruct_model(
                cal.pipeline, cal.prompts, cal.seeds,
                recon_config({**cal.calib, "granularity": self.recon_granularity}, self.recon_skip_roles, cal.seed),
                capture_budget(cal.calib, cal.seed), resume=ResumeStore(resume_dir(cal), cal.fingerprint),
                prompts_per_batch=cal.batch, context_cache=cal.contexts)
        harden_(cal.model)
        info["seconds"] = {"prepare_and_weights": t1 - t0, "activations": t2 - t1, "reconstruction": time.perf_counter() - t2}
        return info


# ----------------------------------------------------------------------------------------------- helpers
def recon_config(calib: dict, skip_roles: Sequence[str], seed: int) -> ReconConfig:
    keys = ("iters", "calls_per_step", "lr_round", "lr_act", "reg_weight", "warmup", "beta_start", "beta_end", "granularity", "batch")
    return ReconConfig(**{k: calib[k] for k in keys}, skip_roles=tuple(skip_roles), seed=seed)


def capture_budget(calib: dict, seed: int) -> CaptureBudget:
    c = calib["capture"]
    return CaptureBudget(max_calls=c["max_calls"], tokens_per_call=c["tokens_per_call"],
                         ram_bytes=int(float(c["ram_gb"]) * (1 << 30)), spill_dir=c["spill_dir"], seed=seed)


def resume_dir(cal: Calibration) -> Path:
    return Path(cal.calib["resume_dir"]) if cal.calib.get("resume_dir") else cal.work_dir / "calib_cache"


def measure_sensitivity(cal: Calibration) -> dict:
    """Eq. 3-4 on a copy of the FP model quantized with the plain percentile init (no reconstruction).

    Cached under ``calib.cache_dir`` by a hash of everything it depends on (model and checkpoint file, bits, the
    calibration and sensitivity prompts, seed), so sweeps over methods and ablations measure it once.
    """
    cache = None
    if cal.calib.get("cache_dir") and cal.sensitivity_key:
        key = hashlib.sha256(json.dumps(cal.sensitivity_key, sort_keys=True, default=str).encode()).hexdigest()[:16]
        cache = Path(cal.calib["cache_dir"]) / "sensitivity" / f"{key}.json"
        if cache.exists():
            log.info("frame sensitivity from cache %s", cache)
            return {**json.loads(cache.read_text()), "cached": str(cache)}
    if quant_layers(cal.model):
        raise RuntimeError("the sensitivity must be measured from the FP model, before quantization")
    pipe = dataclasses.replace(cal.pipeline, model=copy.deepcopy(cal.model))
    quantize_(pipe.model, cal.quant_config())
    calibrate_activations_(pipe.model, lambda: cal.run_calibration(pipe), cal.calib["percentiles"], int(cal.calib["hist_bins"]))
    result = frame_sensitivity(pipe, cal.sensitivity_prompts, cal.sensitivity_seeds, cal.batch)
    result.update({"w_bits": cal.w_bits, "a_bits": cal.a_bits, "symmetric": cal.symmetric})
    if cache is not None:
        atomic_write_json(cache, {**result, "key": cal.sensitivity_key})
    return result


def apply_smoothing(model, layers: dict[str, QuantLinear], names: Sequence[str], s: torch.Tensor, fold: bool) -> Optional[str]:
    """Give every layer of one input group the factor ``s``; fold 1/s into a private affine norm if allowed."""
    norm = foldable_norm(model, names[0]) if (fold and len(names) == 1) else None
    if norm is not None:
        fold_into_norm(model, norm, s)
    for n in names:
        layers[n].set_smoothing(s, folded_into=norm)
    return norm


def input_groups(names: Sequence[str]) -> dict[str, list[str]]:
    groups: dict[str, list[str]] = {}
    for n in names:
        groups.setdefault(input_group(n), []).append(n)
    return groups
