"""OmegaConf resolvers used by conf/: registered once, on import, by every entry point."""
from __future__ import annotations

import hashlib
import re
import sys
from pathlib import Path
from typing import Iterable, Optional

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


JOB_DIR_MAX = 100  # characters of a job folder name
HEADLINE_KEYS = ("method", "bits", "model")  # shown first, value only: what a job folder is mostly looked up by
_UNSAFE = re.compile(r"[^A-Za-z0-9._+-]+")  # kept: characters an unquoted override value may hold


def job_dir_name(overrides: Iterable[str], swept: Optional[Iterable[str]] = None, exclude: Iterable[str] = (),
                 max_len: int = JOB_DIR_MAX) -> str:
    """A sweep job's folder name: readable ``key-value`` items, then an 8-hex hash of the full override set.

    Why not Hydra's ``override_dirname``: a preset plus nine overrides overflows the 255-byte file-name limit, and
    its '=' and ',' make the folder unusable as an override value (``eval.artifact=<job dir>``). Here the items are
    ``method``, ``bits`` and ``model`` (value only), then the keys the sweep varies (``swept``: the sweeper's
    params), then the other overrides sorted by key, each ``<last key segment>-<value>``, as many as fit in
    ``max_len``; ``exclude`` keys (and hydra's own) are hashed but not shown. Characters an unquoted override value
    cannot hold become '_'. The same override set gives the same name, whatever its order or the job's number."""
    overrides = [str(o) for o in overrides]
    digest = hashlib.sha256("\n".join(sorted(overrides)).encode()).hexdigest()[:8]
    swept = [k.lstrip("+~") for k in (swept or ())]
    items: dict[str, str] = {}
    for o in overrides:
        key, _, value = o.partition("=")
        key = key.lstrip("+~")
        if key.startswith("hydra") or key in set(exclude):
            continue
        value = _UNSAFE.sub("_", value.strip("'\"[]")).strip("_") or "null"
        items[key] = value if key in HEADLINE_KEYS else f"{_UNSAFE.sub('_', key.rsplit('.', 1)[-1])}-{value}"
    order = [k for k in HEADLINE_KEYS if k in items] + [k for k in swept if k in items and k not in HEADLINE_KEYS]
    order += sorted(k for k in items if k not in order)
    budget = max_len - len(digest) - 1
    shown: list[str] = []
    for k in order:
        if len("_".join([*shown, items[k]])) <= budget:
            shown.append(items[k])
    return "_".join([*shown, digest]) if shown else f"job_{digest}"


def sweep_suffix(preset: Optional[str]) -> str:
    """``_<preset>`` for the sweep folder of an ``experiment=`` preset, '' without one."""
    return f"_{_UNSAFE.sub('_', str(preset))}" if preset else ""


def entry_doc() -> str:
    """The running script's docstring (its description and example commands): the header of ``--help``, written once
    in the script ('$' doubled: Hydra fills the help template with ``string.Template``)."""
    doc = getattr(sys.modules.get("__main__"), "__doc__", None)
    return (doc or "").strip().replace("$", "$$")


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
    if not OmegaConf.has_resolver("qarvd_job_dir"):
        # ${qarvd_job_dir:<job overrides>,<swept params>,<excluded keys>}: short, stable sweep job folder names
        OmegaConf.register_new_resolver("qarvd_job_dir", lambda o, s, e: job_dir_name(
            list(o or ()), list(s or ()), list(e or ())))
    if not OmegaConf.has_resolver("qarvd_sweep_suffix"):
        # ${qarvd_sweep_suffix:<experiment preset or null>}: the preset's name at the end of its sweep folder
        OmegaConf.register_new_resolver("qarvd_sweep_suffix", sweep_suffix)
    if not OmegaConf.has_resolver("qarvd_entry_doc"):
        # ${qarvd_entry_doc:}: the entry point's docstring, shown by --help
        OmegaConf.register_new_resolver("qarvd_entry_doc", entry_doc)


register()
