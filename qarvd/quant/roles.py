"""Canonical roles of the DiT's Linear layers (deepcompressor-style), so methods and configs speak roles.

Roles: ``attn_qkv`` (self_attn.q/k/v), ``attn_out`` (self_attn.o, cross_attn.o), ``cross_q``, ``cross_kv``
(cross_attn.k/v, fed by the text context), ``ffn_up`` (ffn.0), ``ffn_down`` (ffn.2), ``embed``
(text_embedding.*), ``time`` (time_embedding.*, time_projection.*), ``head`` (head.head).
"""
from __future__ import annotations

import re
from typing import Optional

ROLES = ("attn_qkv", "attn_out", "cross_q", "cross_kv", "ffn_up", "ffn_down", "embed", "time", "head")
BLOCK_ROLES = ("attn_qkv", "attn_out", "cross_q", "cross_kv", "ffn_up", "ffn_down")

_BLOCK = re.compile(r"^blocks\.(\d+)\.(self_attn\.[qkvo]|cross_attn\.[qkvo]|ffn\.[02])$")
_IN_BLOCK = {
    "self_attn.q": "attn_qkv", "self_attn.k": "attn_qkv", "self_attn.v": "attn_qkv", "self_attn.o": "attn_out",
    "cross_attn.q": "cross_q", "cross_attn.k": "cross_kv", "cross_attn.v": "cross_kv", "cross_attn.o": "attn_out",
    "ffn.0": "ffn_up", "ffn.2": "ffn_down",
}


def block_index(name: str) -> Optional[int]:
    """Transformer block of a layer name, or None outside the blocks."""
    m = _BLOCK.match(name)
    return int(m.group(1)) if m else None


def role_of(name: str) -> str:
    """Canonical role of a Linear's module name; unknown names raise (a new architecture needs a mapping)."""
    m = _BLOCK.match(name)
    if m:
        return _IN_BLOCK[m.group(2)]
    if name.startswith("text_embedding."):
        return "embed"
    if name.startswith(("time_embedding.", "time_projection.")):
        return "time"
    if name == "head.head":
        return "head"
    raise KeyError(f"no quantization role for layer '{name}': extend qarvd.quant.roles for this architecture")


def try_role(name: str) -> Optional[str]:
    """Role of a layer name, or None for names outside the CausalWan map (a user's own architecture)."""
    try:
        return role_of(name)
    except KeyError:
        return None


def input_group(name: str) -> str:
    """Layers that read the same tensor share a key (self_attn q/k/v; cross_attn k/v); others are alone.

    Smoothing factors must be shared inside a group (SmoothQuant's max over every Linear reading the input).
    """
    m = _BLOCK.match(name)
    if m:
        sub = m.group(2)
        prefix = f"blocks.{m.group(1)}."
        if sub in ("self_attn.q", "self_attn.k", "self_attn.v"):
            return prefix + "self_attn.qkv"
        if sub in ("cross_attn.k", "cross_attn.v"):
            return prefix + "cross_attn.kv"
    return name
