"""Quality of the real-kernel deployment against the fake-quant rollout it replaces (scripts/deploy_quality.py's stage).

For the held-out prompts of a train_quant run (same prompts and per-prompt seeds as its ``record.json``) it rolls out
the FP model, the fake-quant model, and the converted real model once per (kernel backend, weights mode, dual mode,
attention mode), and records the latent MSE of each to the FP rollout, overall and per chunk, and the ratio to the
fake-quant MSE (the deployment criterion: within 5%). ``weights=symmetric`` re-quantizes 8-bit weights without zero
point (:func:`qarvd.deploy.packing.symmetric_weights`); ``artifact`` keeps the calibrated weights exactly.

``cudnn_fp8`` attention runs the self-attention in FP8 with a float8 KV cache (torch_ref emulates cuDNN's numerics on
the CPU), ``int8_sage`` in INT8 Q.K^T / bf16 P.V (kernels/attn_int8.py; torch_ref runs its torch reference). Their
static per-layer scales / mean keys need one bf16-attention rollout (:func:`qarvd.deploy.calibrate_attention_`)
on the run's own calibration prompts and seeds (not the held-out ones), so the row measures scales a deployment would
ship, not scales fitted to the prompts they are scored on.

``formats`` rows are per-chunk linear formats in simulation (issue 20): the run's fake-quant layers in some chunks and
those of another run of the same model (``format_runs``, e.g. the W4A8 calibration beside a W8A8 run) in the others
(:func:`qarvd.quant.chunk_formats.chunk_formats_`), each with its MSE ratio to the run's own fake quant and the paired
bootstrap interval over the prompts.
"""
from __future__ import annotations

import copy
import itertools
import logging
import time
from pathlib import Path
from typing import Iterable, Optional

import torch
from omegaconf import DictConfig, OmegaConf

from eval.stats import paired_ratio_interval
from qarvd.app.calibrate import calibration_prompts
from qarvd.app.provenance import calibration_seed
from qarvd.deploy import accelerate_, calibrate_attention_, convert_to_real
from qarvd.deploy.backends import QUANTIZED_ATTENTION, TorchRefBackend, TritonInt8Backend
from qarvd.deploy.from_quant import real_specs
from qarvd.models.pipeline import build_pipeline
from qarvd.quant.artifact import load_artifact
from qarvd.quant.chunk_formats import chunk_formats_
from qarvd.quant.sensitivity import generate, latent_mse_by_chunk
from qarvd.utils.io import atomic_write_json

log = logging.getLogger(__name__)

BACKENDS = dict(torch_ref=TorchRefBackend, triton_int8=TritonInt8Backend)  # `kernels` value -> backend class
ATTENTION = dict(default="auto", cudnn_fp8="cudnn_fp8", int8_sage="int8_sage", sage2="sage2")  # `attention` value -> the backend's attention argument


def chunk_choice(key: str, value: str, names, num_chunks: Optional[int] = None,
                 plain_only: Iterable[str] = ()) -> tuple[str, Optional[tuple[int, ...]]]:
    """(name, the chunks that run it or None for every chunk) of a chunk-schedule entry ``<name>`` (every chunk),
    ``<name>@<first chunk>`` (from that chunk on) or ``<name>@<chunk>+<chunk>...`` (those chunks only). The chunks are
    resolved and checked against ``num_chunks`` (the run's rollout) when it is given, else only the syntax is checked;
    ``plain_only`` names take no chunks."""
    name, _, chunks = str(value).partition("@")
    parts = chunks.split("+") if chunks else []
    if name not in names or (chunks and (name in plain_only or not all(p.isdigit() for p in parts))):
        raise ValueError(f"{key}={value!r} unknown; choose from {list(names)}, or <name>@<first chunk> "
                         f"(e.g. {name}@2), or <name>@<chunk>+<chunk>... (e.g. {name}@1+5+6)")
    if not chunks or num_chunks is None:
        return name, None
    picked = tuple(range(int(parts[0]), num_chunks)) if len(parts) == 1 else tuple(sorted({int(p) for p in parts}))
    if not picked or max(picked) >= num_chunks:
        raise ValueError(f"{key}={value!r}: the rollout has chunks 0..{num_chunks - 1}")
    return name, None if picked == tuple(range(num_chunks)) else picked  # every chunk: the uniform choice


def attention_choice(value: str, num_chunks: Optional[int] = None) -> tuple[str, Optional[tuple[int, ...]]]:
    """(the backend's attention, the chunks that run it or None for every chunk) of an ``attention`` entry:
    ``cudnn_fp8``; ``cudnn_fp8@3`` (bf16 attention in chunks 0-2, FP8 from chunk 3 on); ``cudnn_fp8@1+5+6`` (FP8 in
    chunks 1, 5 and 6 only): :func:`chunk_choice`. Every chunk means the uniform quantized attention (no 16-bit K/V
    beside the codes)."""
    name, picked = chunk_choice("attention", value, ATTENTION, num_chunks,
                                plain_only=[n for n, a in ATTENTION.items() if a not in (*QUANTIZED_ATTENTION, "sage2")])
    return ATTENTION[name], picked


def _check_choices(cfg: DictConfig) -> None:
    bad = [v for v in cfg.kernels if v not in BACKENDS]
    if bad:
        raise ValueError(f"kernels={bad} unknown; choose from {list(BACKENDS)}")
    for v in cfg.attention:
        attention_choice(v)
    if not cfg.smooth_keys or any(not isinstance(v, bool) for v in cfg.smooth_keys):
        raise ValueError(f"smooth_keys={list(cfg.smooth_keys)}: give a non-empty list of true/false")
    for v in cfg.formats:
        chunk_choice("formats", v, cfg.format_runs)


def deploy_quality(cfg: DictConfig, out_dir: str | Path) -> dict:
    """Compare the real-kernel rollouts of the train_quant run ``cfg.run`` (conf/deploy_quality.yaml) with its
    fake-quant rollout; write ``deploy_quality.json`` into ``out_dir`` after every row and return its contents."""
    _check_choices(cfg)
    run = Path(cfg.run)
    if not (run / "resolved_config.yaml").is_file():
        raise FileNotFoundError(f"run={run}: no resolved_config.yaml (not a scripts/train_quant.py output folder)")
    rcfg = OmegaConf.load(run / "resolved_config.yaml")
    if cfg.eval_prompts:  # more held-out prompts than the run scored (the pool beyond them is held out too)
        rcfg.calib.eval_prompts = int(cfg.eval_prompts)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    calib_prompts, _, prompts = calibration_prompts(rcfg)
    prompts = prompts[: cfg.prompts] if cfg.prompts else prompts
    seeds = [int(rcfg.seed) + i for i in range(len(prompts))]
    calib_seeds = [calibration_seed(rcfg) + i for i in range(len(calib_prompts))]  # as the run's calibration drew them
    pipe = build_pipeline(rcfg.model, cfg.device)
    chunks = pipe.rollout_cfg.chunk_frames()
    result = dict(run=str(run), model=rcfg.model.name, bits=rcfg.bits.name, method=rcfg.method.name,
                  prompts=len(prompts), attention_calibration_prompts=len(calib_prompts), device=cfg.device, rows=[])

    def roll(name: str, ps=prompts, ss=seeds) -> torch.Tensor:
        t = time.perf_counter()
        with torch.no_grad():
            lat = generate(pipe, ps, ss, int(cfg.prompts_per_batch)).cpu()
        log.info("%s: %.1f s", name, time.perf_counter() - t)
        return lat

    fp = roll("fp")
    fp_model = copy.deepcopy(pipe.model) if cfg.formats else None  # what another format's artifact loads into
    load_artifact(pipe.model, run)
    fake = roll("fake-quant")
    fake_mse = latent_mse_by_chunk(fake, fp, chunks)
    result["fake_quant"] = fake_mse
    quant_model = pipe.model
    alternates: dict[str, torch.nn.Module] = {}  # format name -> its run's fake-quant model, loaded once
    for fmt in cfg.formats:
        result.setdefault("format_rows", []).append(
            format_row(cfg, fmt, fp_model, quant_model, alternates, pipe, roll, fp, fake_mse, chunks))
        atomic_write_json(out / "deploy_quality.json", result)
    pipe.model = quant_model
    plain: dict[tuple, dict] = {}  # (kernel, weights, dual) -> its default-attention row's MSE, the pair of the others
    for kernel, weights, dual, attn, smooth in itertools.product(cfg.kernels, cfg.weights, cfg.dual_modes,
                                                                 cfg.attention, cfg.smooth_keys):
        attention, picked = attention_choice(attn, pipe.rollout_cfg.num_chunks)
        if attention != "cudnn_fp8" and smooth != cfg.smooth_keys[0]:
            continue  # smooth_keys changes only the FP8 attention: one row of the others
        name = f"{kernel}/{weights}/{dual}/{attn}" + ("" if attention != "cudnn_fp8" else f"/smooth_keys={smooth}")
        be = BACKENDS[kernel](attention=attention, dual_mode=dual, weights=weights, attention_chunks=picked,
                              smooth_keys=bool(smooth))
        pipe.model = accelerate_(convert_to_real(copy.deepcopy(quant_model), real_specs(quant_model), be), be)
        if be.quantized_attention:
            calibrate_attention_(pipe.model, lambda: roll(f"{name} calibration", calib_prompts, calib_seeds))
        lat = roll(name)
        mse = latent_mse_by_chunk(lat, fp, chunks)
        result["rows"].append(dict(kernel=kernel, weights=weights, dual_mode=dual, attention=attn, latent_mse=mse,
                                   vs_fake_quant=mse["overall"] / fake_mse["overall"],
                                   mse_to_fake_quant=latent_mse_by_chunk(lat, fake, chunks)["overall"]))
        if attention == "cudnn_fp8":
            result["rows"][-1]["smooth_keys"] = bool(smooth)
        if attention == "auto":
            plain[(kernel, weights, dual)] = mse
        elif (kernel, weights, dual) in plain:  # the issue's bound: within 10 % of the same kernels' bf16 attention
            ratio, ci = paired_ratio_interval(mse["per_prompt"], plain[(kernel, weights, dual)]["per_prompt"],
                                              int(cfg.n_boot), int(cfg.seed))
            result["rows"][-1].update(vs_default_attention=ratio, vs_default_attention_interval=[ci.lo, ci.hi])
        atomic_write_json(out / "deploy_quality.json", result)  # after every row: a long GPU sweep keeps what it did
        log.info("%s: latent MSE %.4g, %.4fx fake quant", name, mse["overall"], result["rows"][-1]["vs_fake_quant"])
    atomic_write_json(out / "deploy_quality.json", result)
    return result


def format_row(cfg: DictConfig, fmt: str, fp_model, quant_model, alternates: dict, pipe, roll, fp: torch.Tensor,
               fake_mse: dict, chunks) -> dict:
    """One ``formats`` entry: the run's fake-quant layers, with those of ``format_runs[<name>]`` in the entry's chunks
    (every chunk: that run's fake quant alone); its latent MSE and ratio to the run's fake quant, paired over the
    prompts. ``alternates`` caches each format's loaded model (its layers are only read, so rows share them)."""
    name, picked = chunk_choice("formats", fmt, cfg.format_runs, pipe.rollout_cfg.num_chunks)
    if name not in alternates:
        alternates[name] = copy.deepcopy(fp_model)
        load_artifact(alternates[name], cfg.format_runs[name])  # checks the weights identity against this model's
    other = alternates[name]
    model = other if picked is None else chunk_formats_(copy.deepcopy(quant_model), other, picked)
    pipe.model = model
    mse = latent_mse_by_chunk(roll(f"formats {fmt}"), fp, chunks)
    ratio, ci = paired_ratio_interval(mse["per_prompt"], fake_mse["per_prompt"], int(cfg.n_boot), int(cfg.seed))
    log.info("formats %s: latent MSE %.4g, %.4fx fake quant [%.4f, %.4f]", fmt, mse["overall"], ratio, ci.lo, ci.hi)
    return dict(formats=fmt, alternate_run=str(cfg.format_runs[name]),
                alternate_chunks=list(picked) if picked is not None else list(range(pipe.rollout_cfg.num_chunks)),
                latent_mse=mse, vs_fake_quant=ratio, vs_fake_quant_interval=[ci.lo, ci.hi])
