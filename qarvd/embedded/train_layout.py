"""Token layout of a teacher-forced training sequence ``[clean context | noisy video]`` and its attention rule.

Clean frames (timestep 0) attend chunk-causally to clean frames: what the rollout's refresh pass writes into the
KV cache. Noisy chunk c attends to the clean chunks before it and to itself: what denoising chunk c sees at
inference. The last chunk has no clean copy (no chunk attends to it).
"""
from __future__ import annotations

import torch

from qarvd.models.rollout import RolloutConfig


def context_frames(rc: RolloutConfig) -> int:
    """Clean frames a training sequence needs: every chunk but the last."""
    return rc.chunk_frames()[-1][0]


def frame_chunks(rc: RolloutConfig) -> torch.Tensor:
    """Chunk index of every latent frame."""
    return torch.cat([torch.full((n,), c) for c, (_, n) in enumerate(rc.chunk_frames())])


def token_layout(rc: RolloutConfig, tokens_per_frame: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(chunk id, is-noisy flag) of every token of the training sequence."""
    chunk = frame_chunks(rc)
    n_ctx = context_frames(rc)
    ids = torch.cat([chunk[:n_ctx], chunk]).repeat_interleave(tokens_per_frame)
    noisy = torch.cat([torch.zeros(n_ctx, dtype=torch.bool), torch.ones(len(chunk), dtype=torch.bool)])
    return ids, noisy.repeat_interleave(tokens_per_frame)


def allowed(q_chunk, k_chunk, q_noisy, k_noisy):
    """The teacher-forcing rule (True = the query token may attend to the key token); works elementwise."""
    return (~q_noisy & ~k_noisy & (k_chunk <= q_chunk)) | (q_noisy & ~k_noisy & (k_chunk < q_chunk)) | (
        q_noisy & k_noisy & (k_chunk == q_chunk))


def teacher_forcing_mask(rc: RolloutConfig, tokens_per_frame: int, device=None) -> torch.Tensor:
    """Dense bool [L, L] mask of the training sequence."""
    ids, noisy = token_layout(rc, tokens_per_frame)
    return allowed(ids[:, None], ids[None, :], noisy[:, None], noisy[None, :]).to(device)
