"""How good is the embedded model? Caption accuracy and Fréchet distances on its procedural domain.

Sets (all ``num_videos`` long, features from the domain's feature network):
- ``real_a``: eval-split videos 0..N-1; the generated set uses their captions as prompts (prompt i, seed base+i);
- ``real_b``: test-split videos 0..N-1, an independent real set: FD(real_a, real_b) is the floor;
- ``noisy@s``: ``real_a`` plus Gaussian pixel noise of std ``s`` (clamped to [-1, 1]), a ladder of known damage.
The check of issue 3 is FD(real_a, real_b) < FD(real_a, generated) < FD(real_a, noisy@s) for the reported s.
Caption accuracy = fraction of videos whose four attributes the feature network reads as the prompt says.
"""
from __future__ import annotations

from typing import Callable, Sequence

import torch

from qarvd.embedded.procedural import ProceduralVideos
from qarvd.embedded.featnet import caption_matches
from qarvd.utils.progress import progress_bar

GenerateFn = Callable[[list[str], list[int]], torch.Tensor]  # (prompts, seeds) -> videos [B, T, 3, H, W] in [-1, 1]
FrechetFn = Callable[[torch.Tensor, torch.Tensor], float]  # (features A [N, D], features B [M, D]) -> distance


def real_set(split: str, count: int, num_frames: int, size: int, batch_size: int = 256) -> tuple[torch.Tensor, list[str]]:
    data = ProceduralVideos(split, count, num_frames, size)
    videos, captions = [], []
    for s in range(0, count, batch_size):
        v, c, _ = data.batch(range(s, min(count, s + batch_size)))
        videos.append(v)
        captions += c
    return torch.cat(videos), captions


def generated_set(generate: GenerateFn, prompts: Sequence[str], seed: int, prompts_per_batch: int) -> torch.Tensor:
    out = []
    for s in progress_bar(range(0, len(prompts), prompts_per_batch), desc="generate", leave=False):
        p = list(prompts[s : s + prompts_per_batch])
        out.append(generate(p, [seed + s + i for i in range(len(p))]).float().cpu())
    return torch.cat(out)


def accuracy(backbone, videos: torch.Tensor, captions: Sequence[str]) -> dict[str, float]:
    """Fraction right per attribute and for the whole caption (``all``)."""
    hits = caption_matches(backbone.predict(videos), captions)
    return {k: float(v.float().mean()) for k, v in hits.items()}


def add_noise(videos: torch.Tensor, std: float, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(int(seed))
    return (videos + std * torch.randn(videos.shape, generator=g)).clamp(-1, 1)


def evaluate_domain(generate: GenerateFn, backbone, frechet: FrechetFn, num_videos: int, num_frames: int, size: int, seed: int = 0,
                    prompts_per_batch: int = 64, noise_stds: Sequence[float] = (0.1, 0.2, 0.4)) -> dict:
    """Caption accuracy (generated, real held-out) and Fréchet distances of the generated and reference sets.

    ``frechet`` is the metric layer's distance (``eval.fvd.fvd_from_features``), handed in by the application layer
    so that the embedded domain does not import the evaluation package."""
    real_a, prompts = real_set("eval", num_videos, num_frames, size)
    real_b, captions_b = real_set("test", num_videos, num_frames, size)
    generated = generated_set(generate, prompts, seed, prompts_per_batch)
    feats = {name: backbone.features(v) for name, v in [("real_a", real_a), ("real_b", real_b), ("generated", generated)]}
    fd = {"real_b": frechet(feats["real_a"], feats["real_b"]),
          "generated": frechet(feats["real_a"], feats["generated"])}
    for s in noise_stds:
        fd[f"noisy@{s:g}"] = frechet(feats["real_a"], backbone.features(add_noise(real_a, s, seed + 1)))
    return {
        "num_videos": num_videos,
        "seed": seed,
        "caption_accuracy": {"generated": accuracy(backbone, generated, prompts),
                             "real_heldout": accuracy(backbone, real_b, captions_b)},
        "frechet_distance_to_real_eval": fd,
    }
