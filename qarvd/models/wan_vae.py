"""Wan2.1 VAE (z 16, x8 spatial, x4 causal temporal) run as ``diffusers.AutoencoderKLWan``.

Weights come from either public layout (nothing downloads at run time):
- Wan's ``Wan2.1_VAE.pth`` (Wan's module names, renamed here by :func:`wan_vae_name`; the architecture is the
  ``AutoencoderKLWan`` default, which is the Wan2.1 VAE, unless ``arch`` overrides it);
- a Diffusers-format ``vae/`` folder (``config.json`` + ``diffusion_pytorch_model.safetensors``).

The DiT works on normalised latents: ``(mu - mean) / std`` with Wan's fixed per-channel mean/std (carried in the
diffusers config as ``latents_mean`` / ``latents_std``). Decoding un-normalises and returns video frames
``[B, 1 + 4 (F - 1), 3, 8h, 8w]`` in [-1, 1] (81 x 480 x 832 for 21 x 60 x 104 latents).

Memory: the decoder runs one latent frame at a time through its causal feature cache (as ``AutoencoderKLWan.decode``
does), so activation memory is that of one frame; we additionally decode ``decode_batch`` videos at a time and move
each result to host memory at once, so GPU memory does not grow with the batch. :class:`ChunkDecoder` exposes that
loop chunk by chunk: the frames of a chunk are final as soon as the rollout has made it, and the chunks' frames are
exactly the whole video's decode.
"""
from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Optional

import torch

from qarvd.models.checkpoint import CheckpointError, read_state_dict
from qarvd.models.remap import to_own_names
from qarvd.utils.errors import require_weights

# Residual block: Wan keeps an nn.Sequential `residual` (0 RMS_norm, 1 SiLU, 2 conv, 3 RMS_norm, 4 SiLU, 5 Dropout,
# 6 conv) and `shortcut`; diffusers names the same layers norm1/conv1/norm2/conv2/conv_shortcut.
_RESNET = {"norm1.gamma": "residual.0.gamma", "conv1.weight": "residual.2.weight", "conv1.bias": "residual.2.bias",
           "norm2.gamma": "residual.3.gamma", "conv2.weight": "residual.6.weight", "conv2.bias": "residual.6.bias",
           "conv_shortcut.weight": "shortcut.weight", "conv_shortcut.bias": "shortcut.bias"}


def wan_vae_name(name: str, num_res_blocks: int = 2) -> str:
    """The name an ``AutoencoderKLWan`` (Wan2.1 variant) parameter has in Wan's ``Wan2.1_VAE.pth``.

    Wan's decoder is one flat ``upsamples`` Sequential: per level ``num_res_blocks + 1`` residual blocks, then one
    resample (none after the last level); diffusers groups the same modules into ``up_blocks.i.{resnets,upsamplers}``.
    """
    per_level = num_res_blocks + 2
    rules = [
        (r"quant_conv\.(\w+)", lambda m: f"conv1.{m[1]}"),
        (r"post_quant_conv\.(\w+)", lambda m: f"conv2.{m[1]}"),
        (r"(encoder|decoder)\.conv_in\.(\w+)", lambda m: f"{m[1]}.conv1.{m[2]}"),
        (r"(encoder|decoder)\.norm_out\.gamma", lambda m: f"{m[1]}.head.0.gamma"),
        (r"(encoder|decoder)\.conv_out\.(\w+)", lambda m: f"{m[1]}.head.2.{m[2]}"),
        (r"(encoder|decoder)\.mid_block\.resnets\.(\d+)\.(.+)",
         lambda m: f"{m[1]}.middle.{2 * int(m[2])}.{_RESNET.get(m[3], m[3])}"),
        (r"(encoder|decoder)\.mid_block\.attentions\.0\.(.+)", lambda m: f"{m[1]}.middle.1.{m[2]}"),
        (r"encoder\.down_blocks\.(\d+)\.(.+)", lambda m: f"encoder.downsamples.{m[1]}.{_RESNET.get(m[2], m[2])}"),
        (r"decoder\.up_blocks\.(\d+)\.resnets\.(\d+)\.(.+)",
         lambda m: f"decoder.upsamples.{int(m[1]) * per_level + int(m[2])}.{_RESNET.get(m[3], m[3])}"),
        (r"decoder\.up_blocks\.(\d+)\.upsamplers\.0\.(.+)",
         lambda m: f"decoder.upsamples.{int(m[1]) * per_level + num_res_blocks + 1}.{m[2]}"),
    ]
    for pattern, fn in rules:
        m = re.fullmatch(pattern, name)
        if m:
            return fn(m)
    raise CheckpointError(f"no Wan VAE name for AutoencoderKLWan parameter '{name}'")


def build_vae(arch: Optional[dict] = None):
    """``AutoencoderKLWan`` of the Wan2.1 VAE architecture (library defaults), dims overridable by ``arch``."""
    from diffusers import AutoencoderKLWan

    vae = AutoencoderKLWan(**(arch or {}))
    cfg = vae.config
    if cfg.attn_scales or cfg.is_residual or cfg.patch_size is not None:
        raise ValueError("only the Wan2.1 VAE variant is supported (attn_scales=[], is_residual=false, patch_size=null)")
    return vae


def load_wan_vae(path: str | os.PathLike, arch: Optional[dict] = None):
    """``AutoencoderKLWan`` holding the weights of a Wan-layout ``Wan2.1_VAE.pth``."""
    vae = build_vae(arch)
    nrb = int(vae.config.num_res_blocks)
    sd = to_own_names(vae.state_dict(), read_state_dict(path), lambda k: wan_vae_name(k, nrb), f"VAE checkpoint '{path}'")
    vae.load_state_dict(sd, strict=True)
    return vae


class WanVAE:
    """Normalised Wan latents [B, F, 16, h, w] <-> video [B, T, 3, H, W] in [-1, 1] (float32 on the host)."""

    def __init__(
        self,
        weights: Optional[str],
        device: str = "cpu",
        published_at: str = "",
        dtype: str = "bfloat16",
        arch: Optional[dict] = None,
        decode_batch: int = 1,
        random_init: bool = False,
        init_seed: int = 0,
    ) -> None:
        from qarvd.models.pipeline import parse_dtype

        if int(decode_batch) < 1:
            raise ValueError(f"model.vae.decode_batch must be >= 1, got {decode_batch}")
        self.device, self.dtype = torch.device(device), parse_dtype(dtype)
        self.arch, self.decode_batch = dict(arch or {}), int(decode_batch)
        self.random_init, self.init_seed = bool(random_init), int(init_seed)
        self.weights = None if self.random_init else self._check_weights(weights, published_at)
        self._model = None

    @staticmethod
    def _check_weights(weights: Optional[str], published_at: str) -> Path:
        key = "model.vae.weights"
        where = f"{published_at} (file Wan2.1_VAE.pth of the Wan repo, or folder vae/ of the Diffusers repo)"
        return require_weights(weights, key, where)

    @property
    def model(self):
        """The ``AutoencoderKLWan`` on ``device``, loaded on first use (calibration never needs it)."""
        if self._model is None:
            self._model = self._load().to(self.device, self.dtype).eval().requires_grad_(False)
            z = int(self._model.config.z_dim)
            self.mean = torch.tensor(self._model.config.latents_mean, dtype=torch.float32).view(1, z, 1, 1, 1)
            self.std = torch.tensor(self._model.config.latents_std, dtype=torch.float32).view(1, z, 1, 1, 1)
        return self._model

    def _load(self):
        if self.random_init:
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(self.init_seed)
                return build_vae(self.arch)
        if self.weights.is_dir():
            from diffusers import AutoencoderKLWan

            vae = AutoencoderKLWan.from_pretrained(str(self.weights), local_files_only=True)
            for k, v in self.arch.items():
                if getattr(vae.config, k) != v:
                    raise CheckpointError(f"VAE folder '{self.weights}' has {k}={getattr(vae.config, k)} in config.json "
                                          f"but model.vae.arch.{k}={v}: wrong model (or drop the arch override)")
            return vae
        return load_wan_vae(self.weights, self.arch)

    # -- geometry (same interface as qarvd.models.vae.IdentityVAE) -----------------------------------------------
    @property
    def latent_channels(self) -> int:
        return int(self.model.config.z_dim)

    @property
    def spatial_factor(self) -> int:
        return int(self.model.config.scale_factor_spatial)

    @property
    def temporal_factor(self) -> int:
        return int(self.model.config.scale_factor_temporal)

    def num_video_frames(self, latent_frames: int) -> int:
        """Causal temporal x4: the first latent frame is one video frame, every later one four (21 -> 81)."""
        return 1 + self.temporal_factor * (latent_frames - 1)

    # -- encode / decode ----------------------------------------------------------------------------------------
    @torch.no_grad()
    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        """Normalised latents [B, F, C, h, w] -> video [B, T, 3, H, W] in [-1, 1], float32 on the host."""
        if latents.dim() != 5 or latents.shape[2] != self.latent_channels:
            raise ValueError(f"expected latents [B, F, {self.latent_channels}, h, w], got {tuple(latents.shape)}")
        b, f, _, h, w = latents.shape
        s = self.spatial_factor
        out = torch.empty(b, self.num_video_frames(f), 3, h * s, w * s, dtype=torch.float32)
        for i in range(0, b, self.decode_batch):
            out[i : i + self.decode_batch] = ChunkDecoder(self)(latents[i : i + self.decode_batch]).cpu()
        return out

    @torch.no_grad()
    def encode(self, video: torch.Tensor) -> torch.Tensor:
        """Video [B, T, 3, H, W] in [-1, 1] -> normalised latent means [B, F, C, h, w] (float32, host)."""
        model = self.model
        x = video.to(self.device, self.dtype).transpose(1, 2)
        mu = model.encode(x).latent_dist.mode().float()
        mean, std = self.mean.to(mu.device), self.std.to(mu.device)
        return ((mu - mean) / std).transpose(1, 2).cpu()

    def config(self) -> dict:
        return {"kind": "wan_vae", "weights": str(self.weights) if self.weights else None, "arch": self.arch,
                "dtype": str(self.dtype), "random_init": self.random_init}


class ChunkDecoder:
    """Decodes one batch of videos chunk by chunk, in order, through the VAE's causal feature cache (one per decoder).

    Each call takes the next latent frames [b, f, C, h, w] (normalised) and returns their video frames
    [b, t, 3, H, W] in [-1, 1] (float32, on the VAE's device): the first latent frame gives one video frame, every
    later one ``temporal_factor``. The decoder runs frame by frame with the cache, as ``AutoencoderKLWan.decode``
    does, so the concatenated chunks equal the whole video's decode (tests/test_wan_vae_stream.py).
    """

    def __init__(self, vae: WanVAE) -> None:
        from diffusers.models.autoencoders.autoencoder_kl_wan import WanCausalConv3d

        self.vae, self.model = vae, vae.model
        self.cache = [None] * sum(isinstance(m, WanCausalConv3d) for m in self.model.decoder.modules())
        self.frames = 0  # latent frames decoded so far

    @torch.no_grad()
    def __call__(self, latents: torch.Tensor) -> torch.Tensor:
        vae = self.vae
        z = latents.to(vae.device, torch.float32).transpose(1, 2)  # [b, C, f, h, w]
        z = (z * vae.std.to(vae.device) + vae.mean.to(vae.device)).to(vae.dtype)
        x = self.model.post_quant_conv(z)
        out = []
        for i in range(x.shape[2]):
            out.append(self.model.decoder(x[:, :, i : i + 1], feat_cache=self.cache, feat_idx=[0],
                                          first_chunk=self.frames == 0))
            self.frames += 1
        return torch.cat(out, 2).float().clamp(-1, 1).transpose(1, 2)
