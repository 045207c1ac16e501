"""Prompt files (one prompt per line), read from a configured path: the lists are not copied into the repository."""
from __future__ import annotations

import os
from pathlib import Path
from typing import Optional, Sequence

from qarvd.utils.errors import require_file

PROMPTS_PUBLISHED_AT = "the Self-Forcing release (prompts/MovieGenVideoBench_extended.txt, prompts/vbench/*.txt)"


def read_prompt_file(path: str | os.PathLike) -> list[str]:
    """Non-empty, stripped lines of a prompt file."""
    p = require_file(path, "model.prompts.*.path", PROMPTS_PUBLISHED_AT)
    prompts = [line.strip() for line in Path(p).read_text(encoding="utf-8").splitlines() if line.strip()]
    if not prompts:
        raise ValueError(f"prompt file '{p}' contains no prompts")
    return prompts


def select(prompts: Sequence[str], start: int, count: Optional[int], key: str = "count") -> list[str]:
    """``count`` prompts from index ``start`` (None: all from start); ``key`` names the setting in errors. A count
    below 1 is an error, not "all": a sweep that asked for 0 prompts must not silently run every prompt."""
    if start < 0 or start >= len(prompts):
        raise ValueError(f"prompt start index {start} outside a pool of {len(prompts)} prompts")
    if count is not None and (isinstance(count, bool) or int(count) != count or count < 1):
        raise ValueError(f"{key}={count!r}: give a prompt count >= 1, or null for all prompts from the start index")
    end = len(prompts) if count is None else start + int(count)
    if end > len(prompts):
        raise ValueError(f"asked for prompts [{start}, {end}) but the pool has {len(prompts)}")
    return list(prompts[start:end])
