"""OmegaConf resolvers used by conf/: registered once, on import, by every entry point."""
from __future__ import annotations

from pathlib import Path

from omegaconf import OmegaConf

ASSET_DIR = Path(__file__).resolve().parents[1] / "assets"
REPO_ROOT = Path(__file__).resolve().parents[2]


def register() -> None:
    if not OmegaConf.has_resolver("qarvd_asset"):
        # ${qarvd_asset:name}: a file shipped inside the package (the embedded model's checkpoints)
        OmegaConf.register_new_resolver("qarvd_asset", lambda name: str(ASSET_DIR / name))
    if not OmegaConf.has_resolver("qarvd_repo"):
        # ${qarvd_repo:}: the repository root (for defaults that point next to the checkout, e.g. ../shared)
        OmegaConf.register_new_resolver("qarvd_repo", lambda: str(REPO_ROOT))


register()
