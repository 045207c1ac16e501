"""Outlier patterns of the FP weights (paper Eq. 9-12, Fig. 3, Fig. 4).

    python scripts/outliers.py                                   # tiny model, tau 3.5, alpha 1.2
    python scripts/outliers.py model=self_forcing method.outlier.tau=3.0

For every block linear: the L2 norm of each input column, the Modified Z-score detection with the release's rounding
to a multiple of 32 and cap at in/2. Writes ``outliers.json`` (per-layer statistics, summaries by layer type and by
block), ``fig3_outlier_patterns.png`` (sorted column norms, detected outliers in red) and
``fig4_outlier_ratio.png`` (share of layers with outliers by layer type and by block depth).
"""
from __future__ import annotations

import logging
from collections import defaultdict
from pathlib import Path

import hydra
from omegaconf import DictConfig, OmegaConf
import torch
from torch import nn

import qarvd.utils.hydra_resolvers  # noqa: F401
from qarvd.models.pipeline import build_model
from qarvd.quant.outliers import OutlierConfig, column_norms, detect_outliers
from qarvd.quant.roles import BLOCK_ROLES, block_index, try_role
from qarvd.utils.io import atomic_write, atomic_write_json

log = logging.getLogger("outliers")


def layer_type(name: str) -> str:
    """``self_attn.q`` ... ``ffn.2``: the module path inside a block."""
    return name.split(".", 2)[2]


def outlier_stats(model: nn.Module, cfg: OutlierConfig) -> tuple[dict, dict]:
    """Per-layer detection results and the column norms (for plotting) of every block linear."""
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
    by_type, by_block = defaultdict(list), defaultdict(list)
    for s in stats.values():
        by_type[s["type"]].append(s["count"] > 0)
        by_block[s["block"]].append(s["count"] > 0)
    share = lambda d: {str(k): sum(v) / len(v) for k, v in sorted(d.items())}  # noqa: E731
    return {"layers": len(stats), "layers_with_outliers": sum(s["count"] > 0 for s in stats.values()),
            "share_by_type": share(by_type), "share_by_block": share(by_block)}


def _savefig(fig, path: Path) -> None:
    atomic_write(path, lambda tmp: fig.savefig(tmp, dpi=150, format="png"))


def plot_fig3(norms: dict, layers: list[str], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cols = min(5, len(layers))
    rows = -(-len(layers) // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(3.2 * cols, 2.4 * rows), squeeze=False)
    for ax, name in zip(axes.flat, layers):
        v, out = norms[name]
        order = v.argsort(descending=True)
        ranked = v[order].numpy()
        is_out = torch.zeros(v.numel(), dtype=torch.bool)
        is_out[out] = True
        pos = torch.nonzero(is_out[order]).flatten().numpy()
        ax.fill_between(range(len(ranked)), ranked, color="#1f77b4", step="mid", lw=0)
        ax.fill_between(pos, ranked[pos], color="#d62728", step="mid", lw=0)
        ax.set_ylim(bottom=0)
        ax.set_title(f"{name} ({len(pos)} outliers)", fontsize=8)
        ax.set_xlabel("input channel (sorted)", fontsize=7)
        ax.set_ylabel("L2 norm", fontsize=7)
        ax.tick_params(labelsize=6)
    for ax in list(axes.flat)[len(layers):]:
        ax.axis("off")
    fig.tight_layout()
    _savefig(fig, path)
    plt.close(fig)


def plot_fig4(summary: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (a, b) = plt.subplots(1, 2, figsize=(10, 3.2))
    t = summary["share_by_type"]
    a.bar(list(t), [100 * x for x in t.values()], color="#d9822b")
    a.set_ylabel("layers with outliers (%)")
    a.set_title("by layer type", fontsize=9)
    a.tick_params(axis="x", rotation=45, labelsize=7)
    d = summary["share_by_block"]
    b.bar([int(k) for k in d], [100 * x for x in d.values()], color="#1f77b4")
    b.set_xlabel("block")
    b.set_title("by block depth", fontsize=9)
    fig.tight_layout()
    _savefig(fig, path)
    plt.close(fig)


def default_fig3_layers(stats: dict) -> list[str]:
    """The paper's contrast: ffn.2 (prominent outliers) and cross_attn.v (smooth) of the first, middle and last block."""
    blocks = sorted({s["block"] for s in stats.values()})
    picks = sorted({blocks[0], blocks[len(blocks) // 2], blocks[-1]})
    return [f"blocks.{b}.{t}" for b in picks for t in ("ffn.2", "cross_attn.v") if f"blocks.{b}.{t}" in stats]


@hydra.main(version_base="1.3", config_path="../conf", config_name="outliers")
def main(cfg: DictConfig) -> int:
    out = Path(cfg.paths.output_dir)
    try:
        model = build_model(OmegaConf.to_container(cfg.model.arch, resolve=True), "float32", cfg.model.checkpoint,
                            cfg.model.init_seed)
        ocfg = OutlierConfig(**OmegaConf.to_container(cfg.method.outlier, resolve=True))
        stats, norms = outlier_stats(model, ocfg)
        summary = summarise(stats)
        atomic_write_json(out / "outliers.json", {"model": cfg.model.name, "outlier_config": ocfg.__dict__,
                                                  "summary": summary, "layers": stats})
        layers = list(cfg.fig3_layers) if cfg.fig3_layers else default_fig3_layers(stats)
        missing = [n for n in layers if n not in norms]
        if missing:
            raise ValueError(f"fig3_layers names layers that are not block linears: {missing}")
        plot_fig3(norms, layers, out / "fig3_outlier_patterns.png")
        plot_fig4(summary, out / "fig4_outlier_ratio.png")
    except Exception:
        log.exception("outliers failed (model=%s)", cfg.model.name)
        raise
    log.info("%d of %d block linears have outliers", summary["layers_with_outliers"], summary["layers"])
    print(f"statistics: {out / 'outliers.json'}\nfigures:    {out / 'fig3_outlier_patterns.png'}, {out / 'fig4_outlier_ratio.png'}")
    return summary["layers_with_outliers"]


if __name__ == "__main__":
    main()
