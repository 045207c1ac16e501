"""Outlier patterns of the FP weights (paper Eq. 9-12, Fig. 3, Fig. 4): scripts/outliers.py's stage.

For every block linear: the L2 norm of each input column and the Modified Z-score detection with the release's
rounding to a multiple and cap at in/2 (:mod:`qarvd.quant.outliers`), summarised by layer type and by block depth.
"""
from __future__ import annotations

from collections import defaultdict
from pathlib import Path

from omegaconf import DictConfig, OmegaConf
from torch import nn

from eval.plots import plot_outlier_patterns, plot_outlier_ratio
from qarvd.models.pipeline import build_model
from qarvd.quant.outliers import OutlierConfig, column_norms, detect_outliers
from qarvd.quant.roles import BLOCK_ROLES, block_index, try_role
from qarvd.utils.io import atomic_write_json


def layer_type(name: str) -> str:
    """``self_attn.q`` ... ``ffn.2``: the module path inside a block."""
    return name.split(".", 2)[2]


def outlier_stats(model: nn.Module, cfg: OutlierConfig) -> tuple[dict, dict]:
    """Per-layer detection results and the column norms with the outlier indices (for Fig. 3) of every block linear."""
    stats, norms = {}, {}
    for name, m in model.named_modules():
        if isinstance(m, nn.Linear) and try_role(name) in BLOCK_ROLES:
            v = column_norms(m.weight)
            res = detect_outliers(v, cfg)
            stats[name] = {"role": try_role(name), "block": block_index(name), "type": layer_type(name),
                           "in_features": m.in_features, "out_features": m.out_features, **res.stats(),
                           "max_over_median": float(v.max()) / max(res.median, 1e-12)}
            norms[name] = (v, res.outliers)
    return stats, norms


def summarise(stats: dict) -> dict:
    """How many layers have outliers, and their share by layer type and by block (Fig. 4)."""
    by_type, by_block = defaultdict(list), defaultdict(list)
    for s in stats.values():
        by_type[s["type"]].append(s["count"] > 0)
        by_block[s["block"]].append(s["count"] > 0)
    share = lambda d: {str(k): sum(v) / len(v) for k, v in sorted(d.items())}  # noqa: E731
    return {"layers": len(stats), "layers_with_outliers": sum(s["count"] > 0 for s in stats.values()),
            "share_by_type": share(by_type), "share_by_block": share(by_block)}


def default_fig3_layers(stats: dict) -> list[str]:
    """The paper's contrast: ffn.2 (prominent outliers) and cross_attn.v (smooth) of the first, middle and last block."""
    blocks = sorted({s["block"] for s in stats.values()})
    picks = sorted({blocks[0], blocks[len(blocks) // 2], blocks[-1]})
    return [f"blocks.{b}.{t}" for b in picks for t in ("ffn.2", "cross_attn.v") if f"blocks.{b}.{t}" in stats]


def outlier_report(cfg: DictConfig, out_dir: str | Path) -> dict:
    """Detect the outliers of ``cfg.model``'s FP weights with ``cfg.method.outlier`` (conf/outliers.yaml); write
    ``outliers.json`` (per-layer statistics and summaries), ``fig3_outlier_patterns.png`` (the ``cfg.fig3_layers``)
    and ``fig4_outlier_ratio.png`` into ``out_dir``; return the summary."""
    out = Path(out_dir)
    model = build_model(OmegaConf.to_container(cfg.model.arch, resolve=True), "float32", cfg.model.checkpoint,
                        cfg.model.init_seed)
    ocfg = OutlierConfig(**OmegaConf.to_container(cfg.method.outlier, resolve=True))
    stats, norms = outlier_stats(model, ocfg)
    layers = list(cfg.fig3_layers) if cfg.fig3_layers else default_fig3_layers(stats)
    missing = [n for n in layers if n not in norms]
    if missing:
        raise ValueError(f"fig3_layers names layers that are not block linears: {missing}")
    summary = summarise(stats)
    atomic_write_json(out / "outliers.json", {"model": cfg.model.name, "outlier_config": ocfg.__dict__,
                                              "summary": summary, "layers": stats})
    plot_outlier_patterns(norms, layers, out / "fig3_outlier_patterns.png")
    plot_outlier_ratio(summary, out / "fig4_outlier_ratio.png")
    return summary
