"""Loading generator checkpoints in the public layouts, strictly and with errors that name the offending key.

Layouts (reference-notes §1):
- self-forcing ``self_forcing_dmd.pt``: dict, key ``generator_ema`` (fp32), parameter names prefixed ``model.``;
- causal-forcing ``causal_forcing.pt``: key ``generator``, prefix ``model.`` or ``model._fsdp_wrapped_module.``;
- Wan base ``diffusion_pytorch_model.safetensors``: original Wan names, no prefix;
- this project's bundles (``.safetensors`` with ``model.``-prefixed keys and JSON metadata).
``.pt``/``.pth`` files are read with ``torch.load(weights_only=True)``: no pickled code ever runs.
"""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Mapping, Optional, Sequence

import torch
from torch import nn


class CheckpointError(RuntimeError):
    """A checkpoint that exists but cannot be used (corrupt, wrong model, missing key)."""


def read_state_dict(path: str | os.PathLike, key: Optional[str] = None) -> dict[str, torch.Tensor]:
    """Tensors of a checkpoint file; ``key`` selects a sub-dict of a ``.pt`` file (e.g. ``generator_ema``)."""
    path = Path(path)
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            sd = load_file(str(path))
        else:
            sd = torch.load(str(path), map_location="cpu", weights_only=True, mmap=True)
    except Exception as e:  # corrupt or truncated file, or a pickle that weights_only refuses
        raise CheckpointError(f"cannot read checkpoint '{path}': {type(e).__name__}: {e}. "
                              "Is the file complete (re-download it) and in a supported format (.pt/.pth/.safetensors)?") from e
    if key:
        if not isinstance(sd, Mapping) or key not in sd:
            have = sorted(sd.keys())[:10] if isinstance(sd, Mapping) else type(sd).__name__
            raise CheckpointError(f"checkpoint '{path}' has no entry '{key}' (top-level entries: {have})")
        sd = sd[key]
    if not isinstance(sd, Mapping) or not all(isinstance(v, torch.Tensor) for v in sd.values()):
        raise CheckpointError(f"checkpoint '{path}' (entry {key!r}) is not a flat name -> tensor state dict")
    return dict(sd)


def read_metadata(path: str | os.PathLike) -> dict:
    """JSON-decoded metadata of a safetensors file (values that are not JSON stay strings)."""
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as f:
        meta = f.metadata() or {}
    out = {}
    for k, v in meta.items():
        try:
            out[k] = json.loads(v)
        except json.JSONDecodeError:
            out[k] = v
    return out


def strip_prefix(sd: Mapping[str, torch.Tensor], prefixes: Sequence[str]) -> dict[str, torch.Tensor]:
    """Remove the longest matching prefix of ``prefixes`` from each key (keys without one are kept)."""
    ordered = sorted(prefixes, key=len, reverse=True)
    out = {}
    for k, v in sd.items():
        for p in ordered:
            if p and k.startswith(p):
                k = k[len(p):]
                break
        out[k] = v
    return out


def select_prefix(sd: Mapping[str, torch.Tensor], prefix: str) -> dict[str, torch.Tensor]:
    """The sub-dict of keys under ``prefix`` with the prefix removed (e.g. a bundle's ``text_encoder.``)."""
    return {k[len(prefix):]: v for k, v in sd.items() if k.startswith(prefix)}


def load_strict(module: nn.Module, sd: Mapping[str, torch.Tensor], source: str) -> None:
    """Copy ``sd`` into ``module``; any missing, unexpected or wrong-shape key stops the load, named."""
    own = module.state_dict()
    for k, v in own.items():
        if k not in sd:
            raise CheckpointError(f"{source}: missing key '{k}' (expected shape {tuple(v.shape)}); "
                                  f"{len(set(own) - set(sd))} missing in total")
    for k, v in sd.items():
        if k not in own:
            raise CheckpointError(f"{source}: unexpected key '{k}' (shape {tuple(v.shape)}): "
                                  "wrong model config, or a prefix that was not stripped?")
        if tuple(v.shape) != tuple(own[k].shape):
            raise CheckpointError(f"{source}: key '{k}' has shape {tuple(v.shape)} in the checkpoint but "
                                  f"{tuple(own[k].shape)} in the model (wrong model config?)")
    module.load_state_dict(dict(sd), strict=True)


def load_generator(module: nn.Module, path: str | os.PathLike, key: Optional[str], prefixes: Sequence[str],
                   only_prefixed: bool = False) -> None:
    """Read a checkpoint in one of the public layouts and load it strictly into ``module``.

    ``only_prefixed`` keeps just the keys under one of ``prefixes``: a bundle that also holds other modules
    (the embedded model's ``text_encoder.*``) then loads its DiT part strictly.
    """
    sd = read_state_dict(path, key)
    if only_prefixed:
        sd = {k: v for k, v in sd.items() if any(p and k.startswith(p) for p in prefixes)}
    sd = strip_prefix(sd, prefixes)
    load_strict(module, sd, f"checkpoint '{path}'" + (f" [{key}]" if key else ""))
