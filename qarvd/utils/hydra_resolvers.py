"""OmegaConf resolvers used by conf/: registered once, on import, by every entry point."""
from __future__ import annotations

from pathlib import Path

from omegaconf import OmegaConf

ASSET_DIR = Path(__file__).resolve().parents[1] / "assets"
REPO_ROOT = Path(__file__).resolve().parents[2]


def bits_name(w_bits, a_bits, symmetric) -> str:
    """``bits.name`` derived from the widths it names (never typed twice): w<W>a<A>, plus ``_sym`` for symmetric.

    Also the earliest check of the three values: widths are integers in 2..8 and ``symmetric`` is a real boolean
    (the string 'false' would otherwise read as true)."""
    for key, v in (("bits.w_bits", w_bits), ("bits.a_bits", a_bits)):
        if isinstance(v, bool) or not isinstance(v, int) or not 2 <= v <= 8:
            raise ValueError(f"{key}={v!r}: a bit-width is an integer from 2 to 8")
    if not isinstance(symmetric, bool):
        raise ValueError(f"bits.symmetric={symmetric!r}: give true or false (unquoted)")
    return f"w{w_bits}a{a_bits}" + ("_sym" if symmetric else "")


def register() -> None:
    if not OmegaConf.has_resolver("qarvd_asset"):
        # ${qarvd_asset:name}: a file shipped inside the package (the embedded model's checkpoints)
        OmegaConf.register_new_resolver("qarvd_asset", lambda name: str(ASSET_DIR / name))
    if not OmegaConf.has_resolver("qarvd_repo"):
        # ${qarvd_repo:}: the repository root (for defaults that point next to the checkout, e.g. ../shared)
        OmegaConf.register_new_resolver("qarvd_repo", lambda: str(REPO_ROOT))
    if not OmegaConf.has_resolver("qarvd_bits_name"):
        # ${qarvd_bits_name:${.w_bits},${.a_bits},${.symmetric}}: conf/bits/*.yaml's name, derived and validated
        OmegaConf.register_new_resolver("qarvd_bits_name", bits_name)


register()
