"""Which layers get quantized: every nn.Linear except a configurable keep-list kept in the model's float dtype.

The release quantizes the 10 Linears of every block and ``text_embedding.{0,2}`` and keeps ``time_embedding.*``,
``time_projection.1``, ``head.head`` and ``patch_embedding`` (a Conv3d) in bf16: small layers that matter a lot.
"""
from __future__ import annotations

from fnmatch import fnmatchcase
from typing import Iterable, Sequence

from torch import nn

DEFAULT_KEEP = ("time_embedding.*", "time_projection.*", "head.*", "patch_embedding")


def is_kept(name: str, keep: Sequence[str]) -> bool:
    return any(fnmatchcase(name, pat) for pat in keep)


def select_linears(model: nn.Module, keep: Iterable[str] = DEFAULT_KEEP) -> list[str]:
    """Names of the nn.Linear modules to quantize, in module order."""
    keep = tuple(keep)
    return [n for n, m in model.named_modules() if type(m) is nn.Linear and not is_kept(n, keep)]


def set_module(model: nn.Module, name: str, new: nn.Module) -> None:
    """Replace the sub-module at dotted path ``name``."""
    parent_name, _, child = name.rpartition(".")
    parent = model.get_submodule(parent_name) if parent_name else model
    setattr(parent, child, new)
