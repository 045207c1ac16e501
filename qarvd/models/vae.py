"""VAEs map between videos [B, T, 3, H, W] in [-1, 1] and latents [B, F, C, h, w].

The embedded model works in pixel space through :class:`IdentityVAE` (an explicit choice, saved with the
checkpoint); the real models use the Wan2.1 VAE (``qarvd.models.wan_vae``).
"""
from __future__ import annotations

import torch


class IdentityVAE:
    """Pixel-space "VAE": latents are the video itself (C = 3, no spatial or temporal compression)."""

    latent_channels = 3
    spatial_factor = 1
    temporal_factor = 1

    def encode(self, video: torch.Tensor) -> torch.Tensor:
        return video.float()

    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        return latents.float().clamp(-1, 1)

    def num_video_frames(self, latent_frames: int) -> int:
        return latent_frames

    def config(self) -> dict:
        return {"kind": "identity"}
