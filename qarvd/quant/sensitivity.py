"""Final-quality guided frame weighting (paper Eq. 3-5): how much quantizing one chunk hurts the whole video.

For chunk k, only the forwards of chunk k (its denoising steps and its K/V refresh) run quantized; every other
forward is FP but conditioned on the cache the quantized chunk left behind. ``alpha_k`` is the latent MSE of that
rollout to the FP rollout over all frames (same per-prompt noise), averaged over prompts and normalised to sum 1.
The quantized model is percentile-initialised only (no reconstruction).

In the loss (activation init and reconstruction) Eq. 5 draws the chunk uniformly: chunk c's calls together carry the
share ``alpha_c / sum(alpha)`` of the loss weight, whatever its number of forward calls (the embedded model's chunk
0 and causal-forcing's few-step variants denoise their first chunk longer), so one call of chunk c weighs
``alpha_c / mean(alpha) * mean(calls) / calls_c`` (:func:`call_weights`; ``alpha_c / mean(alpha)`` when every chunk
has the same number of calls, as in the release).
"""
from __future__ import annotations

import json
from collections import Counter
from pathlib import Path
from typing import Optional, Sequence

import torch
from tqdm.auto import tqdm

from qarvd.quant.linear import chunk_gate, quant_state

STRATEGIES = ("final_quality", "uniform", "exp2", "reverse", "none")


def latent_mse_by_chunk(q: torch.Tensor, ref: torch.Tensor, chunk_frames: Sequence[tuple[int, int]]) -> dict:
    """MSE of latents [B, F, C, H, W] overall, per chunk ((start, frames) per chunk) and per prompt (the paired
    items of a comparison's interval)."""
    d = (q.double() - ref.double()).pow(2)
    per_chunk = [float(d[:, s : s + n].mean()) for s, n in chunk_frames]
    return {"overall": float(d.mean()), "per_chunk": per_chunk, "per_prompt": d.flatten(1).mean(1).tolist()}


def generate(pipeline, prompts: Sequence[str], seeds: Sequence[int], prompts_per_batch: int,
             contexts: Optional[list] = None) -> torch.Tensor:
    """Latents of all prompts, in batches (``contexts``: pre-encoded prompt batches to reuse)."""
    out = []
    for i, start in enumerate(range(0, len(prompts), prompts_per_batch)):
        batch = list(prompts[start : start + prompts_per_batch])
        ctx = contexts[i] if contexts is not None else None
        out.append(pipeline.generate_latents(batch, list(seeds[start : start + prompts_per_batch]), context=ctx))
    return torch.cat(out)


def frame_sensitivity(pipeline, prompts: Sequence[str], seeds: Sequence[int], prompts_per_batch: int = 8,
                      progress: bool = True) -> dict:
    """alpha per chunk for a quantized (percentile-initialised) ``pipeline.model``."""
    model = pipeline.model
    cfg = pipeline.rollout_cfg
    contexts = [pipeline.encode_prompts(list(prompts[s : s + prompts_per_batch])) for s in range(0, len(prompts), prompts_per_batch)]
    with quant_state(model, weights=False, acts=False):
        fp = generate(pipeline, prompts, seeds, prompts_per_batch, contexts)
    mse = []
    for k in tqdm(range(cfg.num_chunks), desc="chunk sensitivity", disable=not progress):
        with quant_state(model, weights=True, acts=True), chunk_gate(model, [k]):
            q = generate(pipeline, prompts, seeds, prompts_per_batch, contexts)
        mse.append(latent_mse_by_chunk(q, fp, cfg.chunk_frames())["overall"])
    total = sum(mse)
    if not total > 0:
        raise RuntimeError("quantizing any single chunk left the latents unchanged: cannot normalise the sensitivity")
    return {"frame_alpha": [m / total for m in mse], "mse": mse, "num_prompts": len(prompts), "num_chunks": cfg.num_chunks}


def load_sensitivity(path: str | Path) -> list[float]:
    """The ``frame_alpha`` vector of a sensitivity JSON (written by scripts/sensitivity.py), or a plain JSON list."""
    p = Path(path)
    if not p.exists():
        raise FileNotFoundError(f"method.sensitivity_file = '{p}' does not exist; compute it with "
                                "`python scripts/sensitivity.py` (same model and bits) or set it to null")
    data = json.loads(p.read_text())
    if isinstance(data, dict) and "frame_alpha" not in data:
        raise ValueError(f"'{path}' has no 'frame_alpha' (keys: {sorted(data)}); write it with scripts/sensitivity.py")
    alpha = data["frame_alpha"] if isinstance(data, dict) else data
    return [float(a) for a in alpha]


def chunk_weights(strategy: str, num_chunks: int, alpha: Optional[Sequence[float]] = None) -> torch.Tensor:
    """Loss weight per chunk, normalised to mean 1: ``alpha_c / mean(alpha)`` for the strategy's alpha.

    final_quality: measured alpha; reverse: measured alpha reversed; exp2: alpha_i = 2^-i; uniform/none: ones.
    """
    if strategy not in STRATEGIES:
        raise ValueError(f"unknown frame weighting '{strategy}'; choose one of {list(STRATEGIES)}")
    if strategy in ("uniform", "none"):
        return torch.ones(num_chunks)
    if strategy == "exp2":
        a = torch.tensor([2.0**-i for i in range(num_chunks)])
    else:
        if alpha is None:
            raise ValueError(f"frame weighting '{strategy}' needs a sensitivity vector (alpha)")
        if len(alpha) != num_chunks:
            raise ValueError(f"the sensitivity vector has {len(alpha)} entries but the rollout has {num_chunks} chunks")
        a = torch.tensor([float(x) for x in alpha])
        if strategy == "reverse":
            a = a.flip(0)
    if not bool((a >= 0).all()) or float(a.sum()) <= 0:
        raise ValueError(f"sensitivity vector must be non-negative with a positive sum, got {a.tolist()}")
    return a / a.mean()


def calls_per_chunk(cfg) -> list[int]:
    """Forward calls of every chunk of one rollout of ``cfg`` (a RolloutConfig): denoising steps + refresh."""
    counts = Counter(info.chunk for info in cfg.forward_infos())
    return [counts[c] for c in range(cfg.num_chunks)]


def call_weights(chunk_w: torch.Tensor, calls: Sequence[int]) -> torch.Tensor:
    """Loss weight of ONE forward call of each chunk, so that chunk c's calls together carry the share
    ``chunk_w[c] / sum(chunk_w)`` of the total weight; the mean weight over all calls is 1 (the loss keeps its scale).
    """
    n = torch.tensor([float(c) for c in calls])
    if n.numel() != chunk_w.numel() or bool((n < 1).any()):
        raise ValueError(f"need one positive call count per chunk: {chunk_w.numel()} chunks, calls {list(calls)}")
    return chunk_w.double() / chunk_w.double().sum() * n.double().sum() / n.double()
