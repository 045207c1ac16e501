"""Chunk-wise autoregressive rollout with self-forcing / causal-forcing inference semantics.

Per chunk: for each timestep of the (warped) denoising list the model predicts the flow of the noisy chunk,
``x0 = x_t - sigma_t * v`` (float64); unless it is the last step, ``x0`` is re-noised to the next timestep with
fresh noise (``sampler: euler`` instead takes a deterministic Euler step of the flow ODE, ``x += (sigma_next -
sigma) * v``, the sampler of an undistilled flow-matching model). Then the model runs once more on the clean ``x0`` at ``t = 0`` to write the chunk's clean K/V into
the cache (the refresh pass). Every forward is published through :func:`qarvd.models.context.forward_context`.

Classifier-free guidance (``guidance_scale != 1``, for undistilled models such as the embedded one; the distilled
self-forcing / causal-forcing generators run without it): every forward runs the prompt and the negative prompt
as one doubled batch, ``v = v_neg + w * (v_prompt - v_neg)``. Both halves keep their own K/V cache and both are
refreshed with the same guided ``x0``, so the negative branch conditions on the video actually generated.

Noise comes from one CPU generator per sample, seeded by that sample's seed, so an FP rollout and a quantized
rollout of the same prompt see identical noise whatever else draws random numbers.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Optional, Sequence

import torch

from qarvd.models.context import ForwardInfo, forward_context
from qarvd.models.wan import CausalWanModel


class FlowMatchSchedule:
    """Flow-matching schedule of Wan / self-forcing: sigma = shift*s / (1 + (shift-1)*s), s = linspace(1, 0, T+1)[:-1]."""

    def __init__(self, shift: float = 5.0, num_train_timesteps: int = 1000) -> None:
        s = torch.linspace(1.0, 0.0, num_train_timesteps + 1, dtype=torch.float64)[:-1]
        self.num_train_timesteps = num_train_timesteps
        self.sigmas = shift * s / (1 + (shift - 1) * s)
        self.timesteps = self.sigmas * num_train_timesteps

    def warp(self, steps: Sequence[float]) -> list[float]:
        """Map a denoising list on the 0..T grid (e.g. [1000, 750, 500, 250]) to the shifted timesteps."""
        out = []
        for t in steps:
            idx = self.num_train_timesteps - int(round(float(t)))
            if not 0 <= idx < self.num_train_timesteps:
                raise ValueError(f"denoising step {t} is outside (0, {self.num_train_timesteps}]")
            out.append(float(self.timesteps[idx]))
        return out

    def sigma(self, timestep: float) -> float:
        if timestep <= 0:
            return 0.0
        return float(self.sigmas[torch.argmin((self.timesteps - timestep).abs())])


@dataclass
class RolloutConfig:
    """How a video is generated; defaults are self-forcing chunk-wise (21 latent frames, 3 per chunk, 4 steps)."""

    num_frames: int = 21
    frames_per_chunk: int = 3
    denoising_steps: list = field(default_factory=lambda: [1000, 750, 500, 250])
    first_chunk_steps: Optional[list] = None  # causal-forcing 1-/2-step variants: a longer list for chunk 0
    warp: bool = True
    shift: float = 5.0
    num_train_timesteps: int = 1000
    refresh_timestep: float = 0.0  # self-forcing's context_noise: timestep of the K/V refresh pass
    refresh_last: bool = True  # refresh the last chunk too, as self-forcing's code does; nothing reads that cache
    guidance_scale: float = 1.0  # classifier-free guidance weight w (1: no guidance, one forward per step)
    negative_prompt: str = ""  # prompt of the unconditional branch when guided
    sampler: str = "renoise"  # renoise: x0 guess re-noised with fresh noise (self-forcing); euler: flow ODE step

    def __post_init__(self) -> None:
        if self.num_frames < 1 or self.frames_per_chunk < 1:
            raise ValueError("num_frames and frames_per_chunk must be >= 1")
        if self.sampler not in ("renoise", "euler"):
            raise ValueError(f"sampler must be 'renoise' (self-forcing) or 'euler' (flow ODE), got '{self.sampler}'")
        if not isinstance(self.refresh_last, bool):
            raise ValueError(f"refresh_last must be true or false, got {self.refresh_last!r}")
        if self.guidance_scale < 0:
            raise ValueError(f"guidance_scale must be >= 0 (1 = no guidance), got {self.guidance_scale}")
        self.denoising_steps = list(self.denoising_steps)
        if self.first_chunk_steps is not None:
            self.first_chunk_steps = list(self.first_chunk_steps)

    @property
    def guided(self) -> bool:
        return float(self.guidance_scale) != 1.0

    @property
    def num_chunks(self) -> int:
        return -(-self.num_frames // self.frames_per_chunk)

    def chunk_frames(self) -> list[tuple[int, int]]:
        """(first latent frame, number of frames) of every chunk."""
        return [(s, min(self.frames_per_chunk, self.num_frames - s)) for s in range(0, self.num_frames, self.frames_per_chunk)]

    def timesteps(self, chunk: int) -> list[float]:
        steps = self.first_chunk_steps if (chunk == 0 and self.first_chunk_steps) else self.denoising_steps
        if not self.warp:
            return [float(s) for s in steps]
        return FlowMatchSchedule(self.shift, self.num_train_timesteps).warp(steps)

    def refreshes(self, chunk: int) -> bool:
        """Whether chunk ``chunk`` gets its K/V refresh pass (every chunk but, with refresh_last=False, the last:
        its clean K/V would only serve a chunk that never comes, so skipping it leaves the video unchanged)."""
        return self.refresh_last or chunk < self.num_chunks - 1

    def forward_infos(self) -> list[ForwardInfo]:
        """The sequence of forwards a rollout makes: every denoising step of every chunk, then its refresh."""
        infos = []
        for c in range(self.num_chunks):
            ts = self.timesteps(c)
            infos += [ForwardInfo(c, i, t, False, self.num_chunks) for i, t in enumerate(ts)]
            if self.refreshes(c):
                infos.append(ForwardInfo(c, len(ts), float(self.refresh_timestep), True, self.num_chunks))
        return infos


def _randn(gens: list[torch.Generator], shape: Sequence[int]) -> torch.Tensor:
    return torch.stack([torch.randn(tuple(shape), generator=g, dtype=torch.float32) for g in gens])


def _to_device(t: torch.Tensor, device: torch.device) -> torch.Tensor:
    """Host noise onto ``device`` without a host sync: a copy from pageable memory waits for the GPU to drain its
    queue first, a copy from pinned memory is queued behind the running forward (same values)."""
    if device.type != "cuda":
        return t.to(device)
    return t.pin_memory().to(device, non_blocking=True)


@torch.no_grad()
def rollout(
    model: CausalWanModel,
    context: torch.Tensor,
    seeds: Sequence[int],
    latent_shape: Sequence[int],
    cfg: RolloutConfig,
    on_chunk: Optional[Callable[[int, torch.Tensor], None]] = None,
    negative_context: Optional[torch.Tensor] = None,
) -> torch.Tensor:
    """Generate latents [B, F, C, H, W] for text ``context`` [B, L, text_dim] with one seed per sample.

    ``latent_shape`` is (C, H, W) of one latent frame. ``on_chunk(c, x0)`` is called after each chunk is final.
    ``negative_context`` (same shape as ``context``) is the unconditional branch; required when ``cfg.guided``.
    """
    if len(seeds) != context.shape[0]:
        raise ValueError(f"got {len(seeds)} seeds for a batch of {context.shape[0]} prompts")
    if cfg.guided and (negative_context is None or negative_context.shape != context.shape):
        raise ValueError(f"guidance_scale={cfg.guidance_scale} needs a negative_context of shape {tuple(context.shape)}, "
                         f"got {None if negative_context is None else tuple(negative_context.shape)}")
    c_, h_, w_ = latent_shape
    device = next(model.parameters()).device
    b = context.shape[0]
    gens = [torch.Generator().manual_seed(int(s)) for s in seeds]
    noise = _randn(gens, (cfg.num_frames, c_, h_, w_))  # self-forcing draws the whole video's noise first
    sched = FlowMatchSchedule(cfg.shift, cfg.num_train_timesteps)
    copies = 2 if cfg.guided else 1  # guided: [prompt half | negative half] in one batch
    cache = model.new_cache(copies * b, cfg.num_frames, h_, w_)
    noise = _to_device(noise, device)
    out = torch.empty(b, cfg.num_frames, c_, h_, w_, dtype=torch.float32, device=device)  # one device-to-host copy
    context = torch.cat([context, negative_context]) if cfg.guided else context
    context = context.to(device)

    def call(x: torch.Tensor, t: float, start: int) -> torch.Tensor:
        x = x.to(device) if copies == 1 else x.to(device).repeat(copies, 1, 1, 1, 1)
        tt = torch.full((copies * b, x.shape[1]), float(t), device=device)
        v = model(x.transpose(1, 2), tt, context, cache=cache, frame_offset=start).transpose(1, 2)
        if not cfg.guided:
            return v
        v_pos, v_neg = v.float().chunk(2)
        return v_neg + cfg.guidance_scale * (v_pos - v_neg)

    for c, (start, n) in enumerate(cfg.chunk_frames()):
        x = noise[:, start : start + n]
        ts = cfg.timesteps(c)
        x0 = x
        for i, t in enumerate(ts):
            with forward_context(ForwardInfo(c, i, t, False, cfg.num_chunks)):
                v = call(x, t, start)
            sigma = sched.sigma(t) if cfg.warp else t / cfg.num_train_timesteps
            x0 = (x.double() - sigma * v.double()).float()
            if i < len(ts) - 1:
                t_next = ts[i + 1]
                s_next = sched.sigma(t_next) if cfg.warp else t_next / cfg.num_train_timesteps
                if cfg.sampler == "euler":
                    x = (x.double() + (s_next - sigma) * v.double()).float()
                else:
                    eps = _to_device(_randn(gens, (n, c_, h_, w_)), device)
                    x = ((1 - s_next) * x0.double() + s_next * eps.double()).float()
        if cfg.refreshes(c):
            with forward_context(ForwardInfo(c, len(ts), float(cfg.refresh_timestep), True, cfg.num_chunks)):
                call(x0, cfg.refresh_timestep, start)
        out[:, start : start + n] = x0
        if on_chunk is not None:
            on_chunk(c, x0)
    return out.cpu()
