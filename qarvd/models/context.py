"""The forward context: which chunk, denoising step and timestep the current DiT forward belongs to.

The rollout publishes a :class:`ForwardInfo` around every model call; quantizers, capture hooks and the
chunk-only sensitivity analysis read it instead of counting calls, so nothing hard-codes 7 chunks or 4 steps.
"""
from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import Iterator, Optional


@dataclass(frozen=True)
class ForwardInfo:
    """Identity of one DiT forward inside an autoregressive rollout."""

    chunk: int  # index of the chunk being generated (0-based)
    step: int  # index into the denoising list; equals len(list) for the KV-cache refresh pass
    timestep: float  # warped timestep fed to the model (0.0 for the refresh pass)
    refresh: bool  # True for the t=0 forward that writes the clean chunk's K/V into the cache
    num_chunks: int  # total number of chunks of this rollout


_STACK: list[ForwardInfo] = []


@contextlib.contextmanager
def forward_context(info: ForwardInfo) -> Iterator[ForwardInfo]:
    """Publish ``info`` for the duration of one model forward."""
    _STACK.append(info)
    try:
        yield info
    finally:
        _STACK.pop()


def current_forward() -> Optional[ForwardInfo]:
    """The innermost published forward, or None outside a rollout (e.g. a plain unit-test call)."""
    return _STACK[-1] if _STACK else None
