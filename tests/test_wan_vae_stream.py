"""The Wan VAE decodes chunk by chunk through its causal cache exactly like the whole video; bf16 vs fp32 measured."""
from __future__ import annotations

import torch

from qarvd.bench.vae_precision import vae_bf16_error
from qarvd.models.wan_vae import ChunkDecoder, WanVAE

SMALL = dict(base_dim=8, z_dim=16, dim_mult=[1, 2, 4, 4], num_res_blocks=1, temperal_downsample=[False, True, True])


def test_chunk_by_chunk_decode_is_the_whole_video_decode_bitwise():
    vae = WanVAE(None, dtype="float32", arch=SMALL, decode_batch=2, random_init=True, init_seed=1)
    latents = torch.randn(2, 5, 16, 4, 6, generator=torch.Generator().manual_seed(0))
    whole = vae.decode(latents)
    assert whole.shape == (2, 17, 3, 32, 48)
    z = latents.transpose(1, 2) * vae.std + vae.mean  # the library's own decode of the same latents
    library = vae.model.decode(z, return_dict=False)[0].float().clamp(-1, 1).transpose(1, 2)
    assert torch.equal(whole, library)
    decode = ChunkDecoder(vae)  # the rollout's chunks: 1, 2, 2 latent frames -> 1, 8, 8 video frames
    chunks = [decode(latents[:, :1]), decode(latents[:, 1:3]), decode(latents[:, 3:])]
    assert [c.shape[1] for c in chunks] == [1, 8, 8]
    assert torch.equal(torch.cat(chunks, 1), whole)


def test_bf16_decode_error_is_measured():
    out = vae_bf16_error(SMALL, latent_frames=4, height=4, width=4, frames_per_chunk=2, device="cpu")
    assert out["video_shape"] == [13, 3, 32, 32] and out["fp32_std"] > 0.05
    assert 0 < out["mean_abs"] < 0.05 and out["uint8_levels_max"] <= 16 and 0 < out["uint8_changed_fraction"] < 1
