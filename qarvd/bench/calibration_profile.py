"""Calibration cost at Wan2.1-T2V-1.3B dims (random weights): capture + layer-wise reconstruction of one block.

Runs the real stages of the released procedure on the 1.42 B-parameter architecture (bf16, 21 latent frames of
60 x 104, 7 chunks x (4 steps + refresh) = 35 forwards per prompt, random umT5-sized text context): percentile weight
init of every quantized layer, the two-pass activation init over a W-quantized rollout, one streamed capture pass of
one block's layers under a host-RAM budget, and AdaRound + activation-step reconstruction of that block's layers for
``iters`` iterations. Reports peak host RSS, peak GPU memory, seconds per layer and per iteration, and projects the
full calibration (all blocks, ``calib.iters`` iterations per layer, one capture pass per RAM-budget group of blocks).
Settings: conf/bench/profile_calibration.yaml, with the calibration settings of the ``calib`` and ``bits`` groups.
"""
from __future__ import annotations

import dataclasses
import platform
from dataclasses import dataclass
from pathlib import Path

import torch
from omegaconf import DictConfig

from qarvd.bench.timing import Timer, peak_rss_gb
from qarvd.methods.base import capture_budget, recon_config
from qarvd.models.rollout import RolloutConfig, rollout
from qarvd.models.wan import CausalWanModel, WanConfig, count_parameters
from qarvd.quant.api import QuantConfig, calibrate_activations_, quantize_
from qarvd.quant.capture import CaptureBudget, capture, run_calibration
from qarvd.quant.linear import quant_layers
from qarvd.quant.reconstruct import reconstruct_layer
from qarvd.quant.roles import block_index, role_of
from qarvd.utils.io import atomic_write_json

SMALL = dict(dim=256, ffn_dim=512, num_heads=2, num_layers=2, text_dim=64, text_len=16)  # ``small``: a smoke run


@dataclass
class RandomContextPipeline:
    """The pieces of ARVDPipeline that calibration touches, with a seeded random text context (no umT5 needed)."""

    model: CausalWanModel
    rollout_cfg: RolloutConfig
    latent_shape: tuple

    def encode_prompts(self, prompts):
        g = torch.Generator().manual_seed(len(prompts))
        cfg = self.model.cfg
        device = next(self.model.parameters()).device
        return torch.randn(len(prompts), cfg.text_len, cfg.text_dim, generator=g).to(device)

    @torch.no_grad()
    def generate_latents(self, prompts, seeds, on_chunk=None, context=None):
        ctx = self.encode_prompts(prompts) if context is None else context
        return rollout(self.model, ctx, seeds, self.latent_shape, self.rollout_cfg, on_chunk=on_chunk)


def random_bf16_model(arch, device: torch.device):
    """(the CausalWan of ``arch`` with seeded random bf16 weights built on ``device``, seconds it took)."""
    with Timer(device) as t:
        with torch.device(device):
            model = CausalWanModel(arch)
        model = model.to(torch.bfloat16).eval().requires_grad_(False)
    return model, t.seconds

def projection(res: dict, per_layer: dict, block_bytes: int, budget: CaptureBudget, cfg: DictConfig) -> dict:
    """The full calibration if every block costs what the measured one did, capture passes grouped under the RAM
    budget, ``calib.iters`` reconstruction iterations per layer."""
    sec, nb = res["seconds"], res["arch"]["num_layers"]
    blocks_per_pass = max(1, int(budget.ram_bytes // max(block_bytes, 1)))
    passes = -(-nb // blocks_per_pass)
    recon_block = sum(v["seconds_per_iter"] * cfg.calib.iters + (v["seconds"] - v["seconds_per_iter"] * cfg.iters)
                      for v in per_layer.values())
    full = (sec["weight_init_all_layers"] + sec["activation_init_two_passes"] + passes * sec["capture_pass_one_block"]
            + nb * recon_block)
    return {
        "blocks": nb, "blocks_per_capture_pass": blocks_per_pass, "capture_passes": passes,
        "reconstruction_seconds_per_block": recon_block, "full_calibration_seconds": full,
        "full_calibration_hours": full / 3600,
        "captured_gb_all_blocks_inputs": block_bytes * nb / 2**30,
        "note": "release keeps inputs and outputs of every layer in RAM at once; here one budget group at a time",
    }


def profile_calibration(cfg: DictConfig) -> Path:
    """Run the stages, timed; writes ``<out>/<name>.json`` and returns its path."""
    device = torch.device(cfg.device)
    torch.manual_seed(cfg.seed)
    arch = WanConfig(**SMALL) if cfg.small else WanConfig()
    latent = (16, 8, 8) if cfg.small else (16, 60, 104)
    rcfg = RolloutConfig()  # 21 frames, 3 per chunk, 4 steps + refresh
    calib, bits = cfg.calib, cfg.bits
    budget = capture_budget(calib, seed=0)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or "cpu"
    res: dict = {"device": name,
                 "torch": torch.__version__, "arch": arch.to_dict(), "latent_frame": list(latent),
                 "forwards_per_prompt": len(rcfg.forward_infos()), "prompts": calib.num_prompts,
                 "bits": f"w{bits.w_bits}a{bits.a_bits}", "ram_budget_gb": calib.capture.ram_gb,
                 "iters_measured": cfg.iters, "iters_projected": calib.iters, "seconds": {}}
    sec = res["seconds"]
    model, sec["build"] = random_bf16_model(arch, device)
    res["parameters"] = count_parameters(model)
    pipe = RandomContextPipeline(model, rcfg, latent)
    prompts, seeds = [f"prompt {i}" for i in range(calib.num_prompts)], list(range(calib.num_prompts))
    with Timer(device) as t:
        pipe.generate_latents(prompts, seeds)
    sec["fp_rollout"] = t.seconds
    with Timer(device) as t:
        quantize_(model, QuantConfig(w_bits=bits.w_bits, a_bits=bits.a_bits, symmetric=bits.symmetric))
    sec["weight_init_all_layers"] = t.seconds
    layers = quant_layers(model)
    res["quantized_layers"] = len(layers)
    contexts: dict = {}
    with Timer(device) as t:
        calibrate_activations_(model, lambda: run_calibration(pipe, prompts, seeds, calib.prompts_per_batch, contexts))
    sec["activation_init_two_passes"] = t.seconds
    res["peak_rss_gb_after_init"] = peak_rss_gb()
    if device.type == "cuda":
        res["gpu_peak_gb_init"] = torch.cuda.max_memory_allocated(device) / 2**30
        torch.cuda.reset_peak_memory_stats(device)

    recon = dataclasses.replace(recon_config(calib, cfg.recipe.recon_skip_roles, seed=0), iters=cfg.iters)
    names = [n for n in layers if block_index(n) == cfg.block and role_of(n) not in recon.skip_roles]
    with Timer(device) as t:
        session = capture(pipe, prompts, seeds, {n: layers[n] for n in names}, budget,
                          prompts_per_batch=calib.prompts_per_batch, context_cache=contexts)
    sec["capture_pass_one_block"] = t.seconds
    captured = {n: sum(s.nbytes for s in session.stores[n].samples) for n in names}
    res["captured_bytes_per_layer"] = captured
    res["captured_gb_one_block"] = sum(captured.values()) / 2**30
    res["spilled_gb"] = sum(session.stores[n].spilled_bytes for n in names) / 2**30
    res["peak_rss_gb_after_capture"] = peak_rss_gb()
    per_layer = {}
    try:
        for n in names:
            with Timer(device) as t:
                st = reconstruct_layer(layers[n], session.stores[n], recon, seed=0, desc=n)
            per_layer[n] = {"seconds": t.seconds, "seconds_per_iter": st["seconds_per_iter"],
                            "loss_nearest": st["loss_nearest"], "loss_final": st["loss_final"],
                            "in_features": layers[n].in_features, "out_features": layers[n].out_features,
                            "samples": st["samples"]}
            session.stores[n].clear()
    finally:
        session.close()
    res["per_layer"] = per_layer
    res["peak_rss_gb"] = peak_rss_gb()
    if device.type == "cuda":
        res["gpu_peak_gb_reconstruction"] = torch.cuda.max_memory_allocated(device) / 2**30
    res["projection"] = projection(res, per_layer, sum(captured.values()), budget, cfg)
    return atomic_write_json(Path(cfg.out) / f"{cfg.name}.json", res)
