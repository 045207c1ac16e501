"""Chunk-adaptive precision: the allocator's schedule is the brute-force optimum of the additive costs."""
from __future__ import annotations

import itertools
import random

import pytest

from qarvd.deploy.precision_schedule import ChunkCosts, allocate, schedule_frontier


def _brute(options, budget):
    best = None
    for choice in itertools.product(options, repeat=len(next(iter(options.values())).seconds)):
        s = sum(options[n].seconds[c] for c, n in enumerate(choice))
        q = sum(options[n].quality[c] for c, n in enumerate(choice))
        if s <= budget and (best is None or (q, s) < (best[1], best[0])):
            best = (s, q, choice)
    return best


def test_lossy_attention_goes_to_the_late_chunks():
    # chunk c attends over c + 1 chunks: attention time grows with c; an error costs less the later it happens
    bf16 = ChunkCosts(seconds=[1.0 * (c + 1) for c in range(7)], quality=[0.0] * 7)
    fp8 = ChunkCosts(seconds=[0.6 * (c + 1) for c in range(7)], quality=[8.0, 1.0, 0.8, 0.6, 0.4, 0.2, 0.1])
    out = allocate({"cudnn": bf16, "cudnn_fp8": fp8}, [0.73, 0.08, 0.07, 0.05, 0.04, 0.02, 0.01], latency_budget=22.0)
    assert out["schedule"][0] == "cudnn" and out["schedule"][-1] == "cudnn_fp8"
    assert out["predicted_seconds"] <= 22.0 and out["per_chunk"][0]["frame_alpha"] == 0.73
    fastest = allocate({"cudnn": bf16, "cudnn_fp8": fp8}, [0.1] * 7, quality_budget=100.0)
    assert fastest["schedule"] == ["cudnn_fp8"] * 7


@pytest.mark.parametrize("seed", range(5))
def test_frontier_choice_equals_brute_force(seed):
    rng = random.Random(seed)
    options = {n: ChunkCosts([rng.uniform(0.1, 2) for _ in range(5)], [rng.uniform(0, 1) for _ in range(5)])
               for n in ("a", "b", "c")}
    front = schedule_frontier(options)
    assert all(f[0] < g[0] and f[1] > g[1] for f, g in zip(front, front[1:]))  # strictly a Pareto front
    for budget in (2.0, 4.0, 6.0):
        brute = _brute(options, budget)
        if brute is None:
            with pytest.raises(ValueError, match="no schedule fits"):
                allocate(options, [0.2] * 5, latency_budget=budget)
            continue
        out = allocate(options, [0.2] * 5, latency_budget=budget)
        assert out["predicted_quality_cost"] == pytest.approx(brute[1]) and out["predicted_seconds"] <= budget


def test_bad_inputs():
    with pytest.raises(ValueError, match="exactly one"):
        allocate({"a": ChunkCosts([1.0], [0.0])}, [1.0])
    with pytest.raises(ValueError, match="one value per chunk"):
        schedule_frontier({"a": ChunkCosts([1.0, 2.0], [0.0]), "b": ChunkCosts([1.0], [0.0])})
