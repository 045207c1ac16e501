"""Renaming a checkpoint written by one implementation into another implementation's module names.

Wan ships its umT5 encoder and VAE as ``.pth`` files in its own module names; we run them as the library classes
(``transformers.UMT5EncoderModel``, ``diffusers.AutoencoderKLWan``). One function per model maps *our* parameter
name to the name it has in the Wan file. Loading walks our names (so tied parameters such as umT5's ``shared`` and
``encoder.embed_tokens`` both find the one Wan tensor); writing the Wan layout (tests, benchmarks) applies the same
function the other way. A name that cannot be mapped is an error, never silently dropped.
"""
from __future__ import annotations

from typing import Callable, Mapping

import torch

from qarvd.models.checkpoint import CheckpointError

NameMap = Callable[[str], str]  # our parameter name -> its name in the foreign file


def to_own_names(own: Mapping[str, torch.Tensor], foreign: Mapping[str, torch.Tensor], name_of: NameMap,
                 source: str) -> dict[str, torch.Tensor]:
    """A state dict in our names built from ``foreign`` (a file in the other layout).

    ``own`` is our module's state dict (meta tensors are fine: only names and shapes are read). Every foreign key
    must be used, every own key found, and shapes must agree; the first offender is named with both shapes.
    """
    out, used = {}, set()
    for k, ref in own.items():
        fk = name_of(k)
        if fk not in foreign:
            raise CheckpointError(f"{source}: missing key '{fk}' (loaded into '{k}', expected shape "
                                  f"{tuple(ref.shape)}); is this the right file for this model?")
        v = foreign[fk]
        if tuple(v.shape) != tuple(ref.shape):
            raise CheckpointError(f"{source}: key '{fk}' has shape {tuple(v.shape)} in the checkpoint but "
                                  f"{tuple(ref.shape)} in the model ('{k}'): wrong model config or a different file?")
        out[k] = v
        used.add(fk)
    extra = sorted(set(foreign) - used)
    if extra:
        v = foreign[extra[0]]
        raise CheckpointError(f"{source}: unexpected key '{extra[0]}' (shape {tuple(v.shape)}); "
                              f"{len(extra)} unexpected in total: wrong model config or a different file?")
    return out


def to_foreign_names(own: Mapping[str, torch.Tensor], name_of: NameMap) -> dict[str, torch.Tensor]:
    """Our state dict in the foreign layout (tied parameters collapse onto their one foreign name)."""
    out: dict[str, torch.Tensor] = {}
    for k, v in own.items():
        fk = name_of(k)
        if fk in out and not torch.equal(out[fk], v):
            raise ValueError(f"'{k}' and another parameter both map to '{fk}' but hold different values")
        out[fk] = v
    return out
