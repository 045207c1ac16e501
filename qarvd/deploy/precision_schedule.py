"""Chunk-adaptive precision: which attention kernel each chunk of the rollout runs, chosen from measurements.

The paper's frame sensitivity (Eq. 3-4) says how much an error in chunk c costs the final video; it decays over the
chunks. The cost of attention runs the other way: chunk c attends over c + 1 chunks of keys. So a cheap, lossy
attention belongs in the late chunks. A schedule is one option per chunk; :func:`allocate` picks it as a
multiple-choice knapsack over the chunks: minimise the summed quality cost (the latent-MSE increase measured with
the option in that chunk alone) under a latency budget (the summed measured seconds of each chunk under its
option), or the reverse. Both sums assume the chunks' contributions add up; the chosen schedule is then measured
as a whole (quality on the embedded model, latency on the GPU), so the assumption is checked, not trusted.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Mapping, Optional, Sequence


@dataclass(frozen=True)
class ChunkCosts:
    """Per-chunk measurements of one option: ``seconds[c]`` of chunk c's forwards with it, ``quality[c]`` the
    latent-MSE increase over the reference when only chunk c uses it (0 for the reference option itself)."""

    seconds: Sequence[float]
    quality: Sequence[float]


def _frontier(points: list[tuple[float, float, tuple]]) -> list[tuple[float, float, tuple]]:
    """The Pareto-optimal (seconds, quality, choice) points: none is slower and worse than another."""
    out: list[tuple[float, float, tuple]] = []
    for s, q, choice in sorted(points, key=lambda p: (p[0], p[1])):
        if not out or q < out[-1][1]:
            out.append((s, q, choice))
    return out


def schedule_frontier(options: Mapping[str, ChunkCosts]) -> list[tuple[float, float, tuple[str, ...]]]:
    """Every Pareto-optimal schedule: (predicted seconds, predicted quality cost, option per chunk), fastest first.

    Dynamic programming over the chunks keeping only the frontier after each chunk: exact for additive costs, and
    small (a frontier never holds more points than distinct time sums)."""
    names = list(options)
    chunks = {len(c.seconds) for c in options.values()} | {len(c.quality) for c in options.values()}
    if len(chunks) != 1:
        raise ValueError(f"every option needs one value per chunk; got lengths {sorted(chunks)}")
    frontier = [(0.0, 0.0, ())]
    for c in range(chunks.pop()):
        frontier = _frontier([(s + options[n].seconds[c], q + options[n].quality[c], choice + (n,))
                              for s, q, choice in frontier for n in names])
    return frontier


def allocate(options: Mapping[str, ChunkCosts], frame_alpha: Optional[Sequence[float]],
             latency_budget: Optional[float] = None, quality_budget: Optional[float] = None) -> dict:
    """The schedule for one budget: with ``latency_budget`` (seconds) the best-quality schedule that fits it, with
    ``quality_budget`` (latent-MSE increase) the fastest that fits it. Returns the choice and its reasoning (per chunk:
    alpha, option, seconds and quality cost against the slowest-safest option) for the run record."""
    if (latency_budget is None) == (quality_budget is None):
        raise ValueError("give exactly one of latency_budget (seconds) and quality_budget (latent MSE increase)")
    frontier = schedule_frontier(options)
    if latency_budget is not None:
        fits = [p for p in frontier if p[0] <= latency_budget]
        if not fits:
            raise ValueError(f"no schedule fits {latency_budget:.4g} s: the fastest takes {frontier[0][0]:.4g} s")
        seconds, quality, choice = min(fits, key=lambda p: (p[1], p[0]))
    else:
        fits = [p for p in frontier if p[1] <= quality_budget]
        if not fits:
            raise ValueError(f"no schedule stays within a quality cost of {quality_budget:.4g}")
        seconds, quality, choice = min(fits, key=lambda p: (p[0], p[1]))
    if frame_alpha is None:  # recorded beside each chunk's choice when known (sensitivity.json)
        frame_alpha = [None] * len(choice)
    if len(frame_alpha) != len(choice):
        raise ValueError(f"frame_alpha has {len(frame_alpha)} chunks, the measurements {len(choice)}")
    return {
        "schedule": list(choice),
        "predicted_seconds": seconds,
        "predicted_quality_cost": quality,
        "budget": {"latency_seconds": latency_budget, "quality_cost": quality_budget},
        "per_chunk": [{"chunk": c, "frame_alpha": None if frame_alpha[c] is None else float(frame_alpha[c]), "option": n,
                       "seconds": float(options[n].seconds[c]), "quality_cost": float(options[n].quality[c])}
                      for c, n in enumerate(choice)],
        "frontier": [{"seconds": s, "quality_cost": q, "schedule": list(ch)} for s, q, ch in frontier],
    }
