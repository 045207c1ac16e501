"""Q-ARVD calibration cost at Wan2.1-T2V-1.3B dims with the lock-step reconstruction engine: the first ``blocks``
blocks captured and reconstructed end to end (every one of ``calib.iters`` iterations timed), the whole model
projected from them.

Random bf16 weights of the 1.42 B-parameter architecture, 21 latent frames of 60 x 104, 7 chunks x (4 steps +
refresh) = 35 forwards per prompt, a seeded random umT5-sized text context. Stages, each timed:

1. build; W-quantizer swap with Q-ARVD's dual-scale split (random weights have no outlier columns, so every block
   linear gets its ``outlier_columns`` top-norm columns as the outlier group: the two-GEMM cost of the real model),
   per-channel weight init;
2. activation init: ``histogram`` runs the real two W-quantized calibration rollouts; ``fixed`` sets every step from
   a fixed range without data (the steps' values do not change the reconstruction's cost) and the projection takes
   ``cited_activation_init_seconds`` instead, a measured value;
3. probes: one further block's capture pass (the cost of a pass), then ``probe_iters`` iterations of its layers in
   each ``probe_modes`` step (fp32 eager = the one-at-a-time path's arithmetic, tf32, tf32 + torch.compile): the
   seconds per block-iteration of each, measured in this run;
4. the timed run: :func:`qarvd.quant.reconstruct.reconstruct_model` over the first ``blocks`` blocks with
   ``calib.batch`` (capture passes under ``calib.capture.ram_gb``, lock-step groups under ``calib.batch.gpu_gb``,
   the compile of the step on its first use): end-to-end seconds, peak host RSS and peak GPU memory.

Projection: weight init + activation init + (num_layers / blocks) x the timed run; per probe mode, weight init +
activation init + num_layers x (one capture pass + ``projection_iters`` x its block-iteration rate) + its compile.
Every stage rewrites the JSON (atomically), so a run stopped by a time limit keeps what it measured.
"""
from __future__ import annotations

import dataclasses
import platform
from pathlib import Path

import torch
from omegaconf import DictConfig, OmegaConf

from qarvd.bench.calibration_profile import RandomContextPipeline, random_bf16_model
from qarvd.bench.real_profile import command_overrides
from qarvd.bench.timing import Timer, peak_rss_gb
from qarvd.methods.base import capture_budget, recon_config
from qarvd.models.rollout import RolloutConfig
from qarvd.models.wan import WanConfig, count_parameters
from qarvd.quant.api import QuantConfig, calibrate_activations_, quantize_
from qarvd.quant.capture import capture, run_calibration
from qarvd.quant.linear import quant_layers
from qarvd.quant.outliers import column_norms
from qarvd.quant.recon_batched import BatchOptions, LayerJob, reconstruct_layers
from qarvd.quant.reconstruct import reconstruct_model, unit_seed
from qarvd.quant.roles import BLOCK_ROLES, block_index, role_of
from qarvd.utils.io import atomic_write_json

SMALL = dict(dim=128, ffn_dim=256, num_heads=2, num_layers=4, freq_dim=32, text_dim=32, text_len=8)  # CPU smoke
SMALL_LATENT = (16, 8, 8)
PROBE_MODES = {"fp32": (False, False, False), "tf32": (True, False, False), "tf32_compile": (True, True, False),
               "bf16_compile": (False, True, True)}  # (tf32, compile, bf16)


def split_outlier_columns(layer, count: int) -> None:
    """The dual-scale split with the ``count`` largest-norm input columns as the outlier group."""
    if count <= 0 or 2 * count > layer.in_features:
        return
    top = column_norms(layer.target_weight()).topk(count).indices.sort().values.cpu()
    rest = torch.ones(layer.in_features, dtype=torch.bool)
    rest[top] = False
    layer.set_groups([top, rest.nonzero().flatten()])


def fixed_activation_steps(model, bound: float) -> None:
    """Every activation quantizer on the range [-bound, bound] (no data pass)."""
    for layer in quant_layers(model).values():
        for g in layer.groups:
            g.aq.set_range(torch.tensor(-bound), torch.tensor(bound))


def probe(pipe, layers: dict, names: list[str], prompts, seeds, recon, cfg: DictConfig, device, res: dict) -> None:
    """One block's capture pass, then ``probe_iters`` lock-step iterations of its layers per step mode."""
    calib = cfg.calib
    with Timer(device) as t:
        session = capture(pipe, prompts, seeds, {n: layers[n] for n in names}, capture_budget(calib, 0),
                          prompts_per_batch=calib.prompts_per_batch)
    res["seconds"]["capture_pass_one_block"] = t.seconds
    res["captured_gb_one_block"] = sum(s.nbytes for n in names for s in session.stores[n].samples) / 2**30
    short = dataclasses.replace(recon, iters=int(cfg.probe_iters))
    out = res["probe"] = {}
    try:
        for mode in cfg.probe_modes:
            tf32, compiled, bf16 = PROBE_MODES[mode]
            opts = BatchOptions(enabled=True, gpu_gb=float(calib.batch.gpu_gb), tf32=tf32, compile=compiled,
                                checkpoint_s=None, bf16=bf16)  # the profile times learning alone
            compiled = compiled and device.type == "cuda"  # GPU only: the CPU runs the plain step
            runs = 2 if compiled else 1  # the first compiled run also compiles
            for run in range(runs):
                jobs = [LayerJob(n, layers[n], session.stores[n], unit_seed(recon, n)) for n in names]
                with Timer(device) as t:
                    stats = dict(reconstruct_layers(jobs, short, opts))
                learning = sum(s["seconds"] for s in stats.values())  # each unit's share of its group's time
                out[mode if run == runs - 1 else f"{mode}_first"] = {
                    "seconds_per_block_iter": learning / short.iters, "wall_seconds": t.seconds,
                    "tf32": device.type == "cuda" and tf32, "compiled": compiled, "bf16": bf16}
            if compiled:
                out[mode]["compile_seconds"] = out[f"{mode}_first"]["wall_seconds"] - out[mode]["wall_seconds"]
    finally:
        session.close()


def projection(res: dict, cfg: DictConfig) -> dict:
    """The whole model from the timed blocks, and per probe mode from its block-iteration rate."""
    sec, nb, iters = res["seconds"], res["arch"]["num_layers"], int(cfg.calib.iters)
    probe_iters = int(cfg.projection_iters or iters)  # a short timed run can still project the release's count
    act = sec.get("activation_init", float(cfg.cited_activation_init_seconds))
    init = sec["weight_init_all_layers"] + act
    out = {"blocks": nb, "activation_init_seconds": act, "activation_init": cfg.activation_init,
           "probe_projection_iters": probe_iters}
    timed = sec.get("reconstruction_timed_blocks")
    if timed is not None:
        full = init + timed * nb / int(cfg.blocks)
        out.update(method=f"weight init + activation init + {nb}/{cfg.blocks} x the {cfg.blocks} blocks timed end to "
                          f"end ({iters} iterations each, capture passes and the step's compile included)",
                   seconds_per_block=timed / int(cfg.blocks), full_calibration_seconds=full,
                   full_calibration_hours=full / 3600)
    for mode, p in res.get("probe", {}).items():  # one capture pass per block, the probe's rate, its compile once
        if not mode.endswith("_first"):
            per_block = sec["capture_pass_one_block"] + p["seconds_per_block_iter"] * probe_iters
            out[f"probe_{mode}_hours"] = (init + nb * per_block + p.get("compile_seconds", 0.0)) / 3600
    return out


def profile_batched_calibration(cfg: DictConfig) -> Path:
    """Run the stages (module doc); writes ``<out>/<name>.json`` after each and returns its path."""
    device = torch.device(cfg.device)
    path = Path(cfg.out) / f"{cfg.name}.json"
    torch.manual_seed(int(cfg.seed))
    arch = WanConfig(**SMALL) if cfg.small else WanConfig()
    latent = SMALL_LATENT if cfg.small else (16, 60, 104)
    if int(cfg.blocks) + (1 if cfg.probe_modes else 0) > arch.num_layers:
        raise ValueError(f"blocks={cfg.blocks} (+1 probe block) exceeds the model's {arch.num_layers} blocks")
    calib, bits = cfg.calib, cfg.bits
    recon = recon_config(calib, cfg.recipe.recon_skip_roles, seed=0)
    res: dict = {"device": torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or "cpu",
                 "torch": torch.__version__, "overrides": command_overrides(), "arch": arch.to_dict(),
                 "latent_frame": list(latent),
                 "bits": f"w{bits.w_bits}a{bits.a_bits}", "prompts": int(calib.num_prompts), "iters": int(calib.iters),
                 "blocks_timed": int(cfg.blocks), "outlier_columns": int(cfg.outlier_columns),
                 "calib_batch": OmegaConf.to_container(calib.batch), "ram_budget_gb": float(calib.capture.ram_gb),
                 "seconds": {}}
    sec = res["seconds"]
    model, sec["build"] = random_bf16_model(arch, device)
    res["parameters"] = count_parameters(model)
    rcfg = RolloutConfig()  # 21 frames, 3 per chunk, 4 steps + refresh
    res["forwards_per_prompt"] = len(rcfg.forward_infos())
    pipe = RandomContextPipeline(model, rcfg, latent)
    prompts = [f"prompt {i}" for i in range(int(calib.num_prompts))]
    seeds = list(range(len(prompts)))
    with Timer(device) as t:
        quantize_(model, QuantConfig(w_bits=bits.w_bits, a_bits=bits.a_bits, symmetric=bits.symmetric, init_weights=False))
        layers = quant_layers(model)
        for n, l in layers.items():
            if role_of(n) in BLOCK_ROLES:
                split_outlier_columns(l, int(cfg.outlier_columns))
            l.init_weights(calib.percentiles)
    sec["weight_init_all_layers"] = t.seconds
    res["quantized_layers"] = len(layers)
    res["dual_scale_layers"] = sum(len(l.groups) > 1 for l in layers.values())
    if cfg.activation_init == "histogram":
        with Timer(device) as t:
            calibrate_activations_(model, lambda: run_calibration(pipe, prompts, seeds, calib.prompts_per_batch),
                                   calib.percentiles, int(calib.hist_bins))
        sec["activation_init"] = t.seconds
    elif cfg.activation_init == "fixed":
        fixed_activation_steps(model, 6.0)
    else:
        raise ValueError(f"activation_init={cfg.activation_init!r}: choose histogram or fixed")
    res["peak_rss_gb_after_init"] = peak_rss_gb()
    atomic_write_json(path, res)

    if cfg.probe_modes:
        names = [n for n in layers if block_index(n) == int(cfg.blocks) and role_of(n) not in recon.skip_roles]
        probe(pipe, layers, names, prompts, seeds, recon, cfg, device, res)
        res["projection"] = projection(res, cfg)
        atomic_write_json(path, res)

    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    with Timer(device) as t:
        stats = reconstruct_model(pipe, prompts, seeds, recon, capture_budget(calib, 0),
                                  prompts_per_batch=calib.prompts_per_batch, blocks=list(range(int(cfg.blocks))))
    sec["reconstruction_timed_blocks"] = t.seconds
    res["units"] = {u: {k: s[k] for k in ("seconds", "group_size", "group_seconds", "loss_nearest", "loss_final",
                                          "samples", "tf32", "compiled", "bf16") if k in s} for u, s in stats["units"].items()}
    res["captured_ram_peak_gb"] = stats["captured_ram_peak_bytes"] / 2**30
    res["mean_final_over_nearest"] = stats["mean_final_over_nearest"]
    res["peak_rss_gb"] = peak_rss_gb()
    if device.type == "cuda":
        res["gpu_peak_gb_reconstruction"] = torch.cuda.max_memory_allocated(device) / 2**30
    res["projection"] = projection(res, cfg)
    return atomic_write_json(path, res)
