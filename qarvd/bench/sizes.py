"""Sizes of a deployed model: bytes it holds (parameters and buffers) and bytes of its safetensors file."""
from __future__ import annotations

import os
import tempfile
from pathlib import Path

from qarvd.deploy import save_real
from qarvd.utils.io import save_safetensors_atomic


def model_bytes(model) -> int:
    return sum(t.numel() * t.element_size() for t in list(model.parameters()) + list(model.buffers()))


def file_bytes(model, bf16: bool = False) -> int:
    """Bytes of the model's safetensors file (bf16: the plain state dict; else the deployment format)."""
    with tempfile.TemporaryDirectory() as tmp:
        if bf16:
            save_safetensors_atomic(Path(tmp) / "model.safetensors", model.state_dict())
        else:
            save_real(model, tmp)
        return os.path.getsize(Path(tmp) / "model.safetensors")


def format_sizes(model, bf16_file_bytes: int) -> dict:
    """The ``sizes`` entry of one format: file and GPU bytes, and how many times smaller than the bf16 file."""
    out = dict(file_bytes=file_bytes(model), gpu_bytes=model_bytes(model))
    out["x_smaller_than_bf16"] = bf16_file_bytes / out["file_bytes"]
    return out
