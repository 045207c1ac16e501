"""Pieces shared by the training loops: device and precision choice, the LR schedule, EMA, resumable state.

Resumability and determinism go together: batch ``s`` of a run is rendered from fixed dataset indices and its
random numbers come from a generator seeded with ``(seed, s)``, so a run resumed at step ``s`` continues exactly as
the uninterrupted run would have.
"""
from __future__ import annotations

import contextlib
import math
import os
import subprocess
from pathlib import Path
from typing import Optional

import torch
from torch import nn

from qarvd.utils.io import atomic_write

AMP_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16, "none": None}


def resolve_device(name: str) -> torch.device:
    """``auto`` picks CUDA when present; an explicit ``cuda`` without a GPU fails loudly rather than crawling on CPU.
    On CUDA, fp32 matmuls may use TF32 (training-time evaluation rollouts run in fp32)."""
    dev = torch.device(("cuda" if torch.cuda.is_available() else "cpu") if name == "auto" else name)
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise RuntimeError(f"device={name} but CUDA is not available (use device=cpu or device=auto)")
        torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = True
    return dev


def device_name(device: torch.device) -> str:
    return torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"


def peak_memory_gb(device: torch.device) -> float:
    return torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else 0.0


def autocast(device: torch.device, amp: str):
    """Mixed precision for the forward passes (weights and optimizer stay fp32); ``none`` or CPU: full precision."""
    if amp not in AMP_DTYPES:
        raise ValueError(f"amp='{amp}' is not one of {sorted(AMP_DTYPES)}")
    if AMP_DTYPES[amp] is None or device.type != "cuda":
        return contextlib.nullcontext()
    return torch.autocast("cuda", dtype=AMP_DTYPES[amp])


def lr_at(step: int, base_lr: float, warmup: int, total: int, final_fraction: float = 0.05) -> float:
    """Linear warm-up, then cosine decay to ``final_fraction * base_lr`` at ``total``."""
    if step < warmup:
        return base_lr * (step + 1) / warmup
    p = min(1.0, (step - warmup) / max(1, total - warmup))
    return base_lr * (final_fraction + (1 - final_fraction) * 0.5 * (1 + math.cos(math.pi * p)))


def step_generator(seed: int, step: int, device: torch.device) -> torch.Generator:
    """The random source of one training step (independent of everything that ran before it)."""
    return torch.Generator(device=device).manual_seed(int(seed) * 1_000_003 + int(step))


@torch.no_grad()
def ema_update(ema: nn.Module, model: nn.Module, decay: float) -> None:
    for e, p in zip(ema.parameters(), model.parameters()):
        e.lerp_(p.detach().to(e.dtype), 1 - decay)


def save_state(path: str | os.PathLike, state: dict) -> None:
    """Write a training state (tensors, state dicts, numbers) atomically; read back with :func:`load_state`."""
    atomic_write(path, lambda tmp: torch.save(state, tmp))


def load_state(path: str | os.PathLike) -> dict:
    return torch.load(str(path), map_location="cpu", weights_only=True)


def find_resume(resume: Optional[str]) -> Optional[Path]:
    """``resume`` is a state file or a run folder holding ``state.pt``; None starts fresh."""
    if not resume:
        return None
    p = Path(resume)
    p = p / "state.pt" if p.is_dir() else p
    if not p.exists():
        raise FileNotFoundError(f"resume={resume}: no training state at '{p}'")
    return p


def git_commit() -> str:
    """The checkout's commit (recorded in every trained bundle): env ``QARVD_GIT_COMMIT`` (set it where the tree
    travels without ``.git``, e.g. to a GPU machine), else ``git rev-parse HEAD``, else 'unknown'."""
    if os.environ.get("QARVD_GIT_COMMIT"):
        return os.environ["QARVD_GIT_COMMIT"]
    try:
        root = Path(__file__).resolve().parents[2]
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True, timeout=10)
        return out.stdout.strip() or "unknown"
    except (OSError, subprocess.SubprocessError):
        return "unknown"
