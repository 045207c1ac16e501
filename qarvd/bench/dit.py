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


def rollout_once(model, batch: int, cfg: DictConfig, on_chunk=None) -> torch.Tensor:
    """One rollout of the benchmark's inputs (random context, seeds 0..batch-1); returns the latents."""
    rc = RolloutConfig(num_frames=cfg.frames, frames_per_chunk=cfg.frames_per_chunk,
                       denoising_steps=[1000, 750, 500, 250][: cfg.steps], refresh_last=not cfg.skip_last_refresh)
    g = torch.Generator().manual_seed(cfg.seed)
    ctx = torch.randn(batch, model.cfg.text_len, model.cfg.text_dim, generator=g).to(torch.bfloat16)
    with torch.no_grad():
        return rollout(model, ctx, list(range(batch)), (model.cfg.in_dim, cfg.height, cfg.width), rc, on_chunk=on_chunk)


def time_rollout(model, batch: int, attention: str, cfg: DictConfig, device: torch.device) -> dict:
    """One warm-up rollout (compiles, cuDNN plans), then the median of ``repeats`` timed ones (CUDA events on GPU).

    On the GPU an event is also recorded as each chunk becomes final: ``chunk_seconds[c]`` (median over the runs) is
    chunk c's denoising forwards and its K/V refresh, the per-chunk cost that chunk-adaptive precision allocates
    (qarvd.deploy.precision_schedule)."""
    times, chunks = [], []
    with sdpa_context(attention), torch.no_grad():
        latents = rollout_once(model, batch, cfg)
        for _ in range(cfg.repeats):
            if device.type == "cuda":
                torch.cuda.synchronize()
                marks = [torch.cuda.Event(enable_timing=True)]
                marks[0].record()

                def mark(c, x0):
                    marks.append(torch.cuda.Event(enable_timing=True))
                    marks[-1].record()

                rollout_once(model, batch, cfg, on_chunk=mark)
                end = torch.cuda.Event(enable_timing=True)
                end.record()
                torch.cuda.synchronize()
                times.append(marks[0].elapsed_time(end) / 1e3)
                chunks.append([a.elapsed_time(b) / 1e3 for a, b in zip(marks, marks[1:])])
            else:
                t = time.perf_counter()
                rollout_once(model, batch, cfg)
                times.append(time.perf_counter() - t)
    out = dict(seconds=statistics.median(times), runs=times, finite=bool(torch.isfinite(latents).all()),
               latent_std=float(latents.float().std()), latents=latents)
    if chunks:
        out["chunk_seconds"] = [statistics.median(c) for c in zip(*chunks)]
    return out
