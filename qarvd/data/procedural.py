"""Procedural captions for the embedded model (the video generator that renders them is issue 3's).

Captions come from a small grammar of colour, shape, direction and speed; a split's captions are drawn with a
split-specific seed, so calibration and evaluation prompts never depend on anything else.
"""
from __future__ import annotations

import random

COLORS = ["red", "green", "blue", "yellow", "white", "purple"]
SHAPES = ["square", "circle", "triangle"]
DIRECTIONS = ["left", "right", "up", "down"]
SPEEDS = ["slowly", "quickly"]
SPLIT_SEEDS = {"train": 0, "calib": 1, "eval": 2, "test": 3}


def caption(rng: random.Random) -> str:
    return f"a {rng.choice(COLORS)} {rng.choice(SHAPES)} moving {rng.choice(DIRECTIONS)} {rng.choice(SPEEDS)}"


def caption_prompts(split: str, count: int) -> list[str]:
    """``count`` captions of the named split (train | calib | eval | test)."""
    if split not in SPLIT_SEEDS:
        raise ValueError(f"unknown split '{split}'; choose one of {sorted(SPLIT_SEEDS)}")
    rng = random.Random(1000 + SPLIT_SEEDS[split])
    return [caption(rng) for _ in range(int(count))]
