"""An ARVD pipeline: text encoder -> chunk-wise DiT rollout -> VAE decode, built from the ``model`` config group.

Every model of the project (the embedded one, self-forcing, causal-forcing) is the same :class:`CausalWanModel`
class; what differs is configuration: architecture dims, checkpoint layout, text encoder, VAE and rollout.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Optional, Sequence

import torch
from omegaconf import DictConfig, OmegaConf

from qarvd.models.checkpoint import load_generator
from qarvd.models.rollout import RolloutConfig, rollout
from qarvd.models.wan import CausalWanModel, WanConfig
from qarvd.utils.errors import require_file

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16, "float64": torch.float64}


def parse_dtype(name: str) -> torch.dtype:
    if name not in DTYPES:
        raise ValueError(f"unknown dtype '{name}'; choose one of {sorted(DTYPES)}")
    return DTYPES[name]


@dataclass
class ARVDPipeline:
    """The pieces of one autoregressive video diffusion model and how to run them."""

    name: str
    model: CausalWanModel
    text_encoder: Any  # has .encode(list[str]) -> [B, text_len, text_dim]
    vae: Any  # has .decode(latents [B,F,C,h,w]) -> video [B,T,3,H,W] in [-1,1]
    rollout_cfg: RolloutConfig
    latent_shape: tuple[int, int, int]  # (C, h, w) of one latent frame
    fps: int = 16

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    def encode_prompts(self, prompts: Sequence[str]) -> torch.Tensor:
        return self.text_encoder.encode(list(prompts)).to(self.device)

    @torch.no_grad()
    def generate_latents(
        self,
        prompts: Sequence[str],
        seeds: Sequence[int],
        on_chunk: Optional[Callable[[int, torch.Tensor], None]] = None,
        context: Optional[torch.Tensor] = None,
    ) -> torch.Tensor:
        """Latents [B, F, C, h, w] (float32, CPU); pass ``context`` to skip re-encoding the prompts.

        A rollout that produced NaN or Inf stops here, naming the prompts and seeds (a broken quantized model must
        not become an all-black video that is scored as if it were a result)."""
        ctx = self.encode_prompts(prompts) if context is None else context
        rc = self.rollout_cfg
        negative = self.encode_prompts([rc.negative_prompt] * len(ctx)) if rc.guided else None
        latents = rollout(self.model, ctx, seeds, self.latent_shape, rc, on_chunk=on_chunk, negative_context=negative)
        bad = (~torch.isfinite(latents.flatten(1))).any(1).nonzero().flatten().tolist()
        if bad:
            raise NonFiniteLatentsError("the rollout produced NaN/Inf latents for " + "; ".join(
                f"prompt {prompts[i]!r} (seed {seeds[i]})" for i in bad[:5]) + (f" and {len(bad) - 5} more" if len(bad) > 5 else ""))
        return latents

    @torch.no_grad()
    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        return self.vae.decode(latents)


class NonFiniteLatentsError(FloatingPointError):
    """A rollout whose latents hold NaN or Inf (the message names the prompts and seeds)."""


def build_model(arch: dict, dtype: str, checkpoint: DictConfig, init_seed: int) -> CausalWanModel:
    """The DiT with weights from the configured checkpoint, or seeded random weights if ``checkpoint.random_init``."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(int(init_seed))
        model = CausalWanModel(WanConfig(**arch))
    if not checkpoint.random_init:
        path = require_file(checkpoint.path, "model.checkpoint.path", checkpoint.published_at)
        load_generator(model, path, checkpoint.key, list(checkpoint.prefixes), bool(checkpoint.get("only_prefixed", False)))
    return model.to(parse_dtype(dtype)).eval().requires_grad_(False)


def build_pipeline(cfg: DictConfig, device: str | torch.device = "cpu") -> ARVDPipeline:
    """Build the pipeline described by the ``model`` config group on ``device``."""
    from hydra.utils import instantiate

    arch = OmegaConf.to_container(cfg.arch, resolve=True)
    model = build_model(arch, cfg.dtype, cfg.checkpoint, cfg.init_seed).to(device)
    text_encoder = instantiate(cfg.text_encoder, _convert_="all")
    if isinstance(text_encoder, torch.nn.Module):
        text_encoder = text_encoder.to(device).eval().requires_grad_(False)
    vae = instantiate(cfg.vae, _convert_="all")
    rollout_cfg = RolloutConfig(**OmegaConf.to_container(cfg.rollout, resolve=True))
    lat = cfg.latent
    if lat.channels != arch["in_dim"]:
        raise ValueError(f"model.latent.channels={lat.channels} must equal model.arch.in_dim={arch['in_dim']}")
    return ARVDPipeline(
        name=cfg.name,
        model=model,
        text_encoder=text_encoder,
        vae=vae,
        rollout_cfg=rollout_cfg,
        latent_shape=(int(lat.channels), int(lat.height), int(lat.width)),
        fps=int(cfg.fps),
    )
