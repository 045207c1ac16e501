"""Errors for files the user must supply: they name the config key, the file and where it is published."""
from __future__ import annotations

import os
from pathlib import Path
from typing import Optional


class MissingWeightsError(FileNotFoundError):
    """A weight/data file configured by the user does not exist (nothing downloads at run time)."""

    def __init__(self, config_key: str, path: Optional[str | os.PathLike], published_at: str) -> None:
        self.config_key, self.path, self.published_at = config_key, path, published_at
        where = f"'{path}'" if path else "(not set)"
        super().__init__(
            f"{config_key} = {where} does not exist. Download it yourself from {published_at} "
            f"and point {config_key} at it (e.g. `{config_key}=/path/to/file` on the command line); "
            f"nothing is downloaded at run time."
        )


def require_file(path: Optional[str | os.PathLike], config_key: str, published_at: str) -> Path:
    """Return ``path`` as a Path if it exists, else raise :class:`MissingWeightsError`."""
    if not path or not Path(path).exists():
        raise MissingWeightsError(config_key, path, published_at)
    return Path(path)


def require_weights(path: Optional[str | os.PathLike], config_key: str, published_at: str) -> Path:
    """A weights file, or a Diffusers-format folder (which must hold config.json); else MissingWeightsError."""
    p = require_file(path, config_key, published_at)
    if p.is_dir():
        require_file(p / "config.json", config_key, published_at)
    return p
