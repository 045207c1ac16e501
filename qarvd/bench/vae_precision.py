"""How far the Wan VAE's bf16 decode is from its fp32 decode: same seeded weights, same latents, chunk by chunk
through the causal cache (qarvd.models.wan_vae.ChunkDecoder), errors in [-1, 1] units and in 8-bit levels."""
from __future__ import annotations

import time

import torch

from eval.strip import to_uint8
from qarvd.models.wan_vae import ChunkDecoder, WanVAE


def vae_bf16_error(arch: dict, latent_frames: int, height: int, width: int, frames_per_chunk: int, device: str,
                   seed: int = 0) -> dict:
    """Decode one random normalised latent video [1, F, C, h, w] in fp32 and in bf16 (seeded random weights of
    ``arch``, AutoencoderKLWan keywords) chunk by chunk; returns the error statistics and both decode times."""
    g = torch.Generator().manual_seed(seed)
    latents = None
    videos, seconds = {}, {}
    for dtype in ("float32", "bfloat16"):
        vae = WanVAE(None, device=device, dtype=dtype, arch=arch, random_init=True, init_seed=seed)
        if latents is None:
            latents = torch.randn(1, latent_frames, vae.latent_channels, height, width, generator=g)
        decode = ChunkDecoder(vae)
        sync = torch.cuda.synchronize if vae.device.type == "cuda" else (lambda: None)
        sync()
        t0 = time.perf_counter()
        chunks = [decode(latents[:, s : s + frames_per_chunk]) for s in range(0, latent_frames, frames_per_chunk)]
        sync()
        seconds[dtype] = time.perf_counter() - t0
        videos[dtype] = torch.cat(chunks, 1)[0].cpu()
        del vae, decode
    ref, low = videos["float32"], videos["bfloat16"]
    err = (low - ref).abs()
    levels = (torch.from_numpy(to_uint8(low)).int() - torch.from_numpy(to_uint8(ref)).int()).abs()
    return {"video_shape": list(ref.shape), "fp32_std": float(ref.std()), "max_abs": float(err.max()),
            "mean_abs": float(err.mean()), "rel_l2": float(err.norm() / ref.norm()),
            "uint8_levels_max": int(levels.max()), "uint8_levels_mean": float(levels.float().mean()),
            "uint8_changed_fraction": float((levels > 0).float().mean()), "seconds": seconds}
