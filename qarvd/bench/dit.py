"""The benchmarked DiT and its timed rollout: self-forcing inference at Wan2.1-1.3B dims (``arch: wan``, seeded
random weights) or a 2-block smoke size (``arch: tiny``), driven by the benchmark's own frame/step settings."""
from __future__ import annotations

import statistics
import time

import torch
from omegaconf import DictConfig

from qarvd.deploy.backends import sdpa_context
from qarvd.models.rollout import RolloutConfig, rollout
from qarvd.models.wan import CausalWanModel, WanConfig, rope_angles

TINY = dict(dim=128, ffn_dim=256, num_heads=2, num_layers=2, freq_dim=32, text_dim=64, text_len=16)
ARCHS = ("wan", "tiny")


def arch_config(arch: str) -> WanConfig:
    if arch not in ARCHS:
        raise ValueError(f"arch={arch!r}; choose from {ARCHS}")
    return WanConfig(**(TINY if arch == "tiny" else {}))


def base_model(cfg: DictConfig, device: torch.device) -> CausalWanModel:
    """The bf16 (``dtype``) model every row starts from, random weights seeded by ``seed``."""
    arch = arch_config(cfg.arch)
    torch.manual_seed(cfg.seed)
    with torch.device(device):
        model = CausalWanModel(arch)
    model._rope = rope_angles(arch.head_dim, arch.rope_max_positions, arch.rope_theta)  # host tables, as built normally
    return model.to(torch.bfloat16 if cfg.dtype == "bfloat16" else torch.float32).eval().requires_grad_(False)


def rollout_once(model, batch: int, cfg: DictConfig) -> torch.Tensor:
    """One rollout of the benchmark's inputs (random context, seeds 0..batch-1); returns the latents."""
    rc = RolloutConfig(num_frames=cfg.frames, frames_per_chunk=cfg.frames_per_chunk,
                       denoising_steps=[1000, 750, 500, 250][: cfg.steps], refresh_last=not cfg.skip_last_refresh)
    g = torch.Generator().manual_seed(cfg.seed)
    ctx = torch.randn(batch, model.cfg.text_len, model.cfg.text_dim, generator=g).to(torch.bfloat16)
    with torch.no_grad():
        return rollout(model, ctx, list(range(batch)), (model.cfg.in_dim, cfg.height, cfg.width), rc)


def time_rollout(model, batch: int, attention: str, cfg: DictConfig, device: torch.device) -> dict:
    """One warm-up rollout (compiles, cuDNN plans), then the median of ``repeats`` timed ones (CUDA events on GPU)."""
    times = []
    with sdpa_context(attention), torch.no_grad():
        latents = rollout_once(model, batch, cfg)
        for _ in range(cfg.repeats):
            if device.type == "cuda":
                torch.cuda.synchronize()
                start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
                start.record()
                rollout_once(model, batch, cfg)
                end.record()
                torch.cuda.synchronize()
                times.append(start.elapsed_time(end) / 1e3)
            else:
                t = time.perf_counter()
                rollout_once(model, batch, cfg)
                times.append(time.perf_counter() - t)
    return dict(seconds=statistics.median(times), runs=times, finite=bool(torch.isfinite(latents).all()),
                latent_std=float(latents.float().std()), latents=latents)
