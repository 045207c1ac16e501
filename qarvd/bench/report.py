"""The result file of a benchmark, rewritten after every section (a run cut short keeps what it measured), and the
small helpers every section's rows share."""
from __future__ import annotations

import sys
import time
from pathlib import Path

import torch
from omegaconf import DictConfig, OmegaConf

from qarvd.utils.io import atomic_write_json


def log(*a) -> None:
    print(f"[{time.strftime('%H:%M:%S')}]", *a, flush=True)


class Report:
    """The JSON result ``<out>/<name>.json``."""

    def __init__(self, out: Path, name: str) -> None:
        self.path = Path(out) / f"{name}.json"
        self.data: dict = {}

    def put(self, key: str, value) -> None:
        self.data[key] = value
        atomic_write_json(self.path, self.data)


def rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    """Relative Frobenius error of a to the reference b, in float64."""
    a, b = a.double(), b.double()
    return float((a - b).norm() / b.norm().clamp_min(1e-30))


def device_name(device: torch.device) -> str:
    return torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"


def settings(cfg: DictConfig) -> dict:
    """The benchmark's resolved settings for its record (``paths`` and Hydra's own keys left out: machine-specific)."""
    out = {}
    for key in cfg:
        if key not in ("paths", "hydra"):
            value = cfg[key]
            out[key] = OmegaConf.to_container(value, resolve=True) if OmegaConf.is_config(value) else value
    return out


def environment(device: torch.device, cfg: DictConfig) -> dict:
    """Versions, device, the settings, and the code that ran (commit, dirty flag, source hash): a timing is only
    comparable with another of the same code."""
    import triton

    from qarvd.app.provenance import code_identity

    return dict(torch=torch.__version__, triton=triton.__version__, python=sys.version.split()[0],
                device=device_name(device), **code_identity(), args=settings(cfg))
