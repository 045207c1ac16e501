"""The paper's figures from plain data (lists, dicts, result records), for files and notebooks alike.

Fig. 2: chunk sensitivity alpha of several runs side by side (``sensitivity.json`` of scripts/sensitivity.py) and of
one run (drawn by :mod:`qarvd.app.sensitivity`). Figs. 3/4: sorted column norms with their outliers, and the share of
layers with outliers (drawn by :mod:`qarvd.app.outlier_report`). Fig. 6: FVD/LPIPS/PSNR/SSIM over the tau sweep with
interval error bars. Fig. 7: CV, BOA and DS per metric. Frontier: quality against weight memory per (method, bits).
Per-chunk curves: a metric over the rollout's chunks, one line per run. Chunk-adaptive precision: quality
against rollout seconds of the allocator's schedules and the measured ones.
Every function returns the Figure and, given ``path``, also saves it (PNG, atomically).
"""
from __future__ import annotations

import io
import os
from typing import Mapping, Optional, Sequence

import matplotlib.pyplot as plt
import numpy as np

from eval.records import higher_is_better
from eval.stats import cell_interval
from eval.tables import COLUMNS, METHODS, item_stat
from qarvd.utils.io import atomic_write_bytes


def png(fig) -> bytes:
    """``fig`` as PNG bytes (files, and the data: URIs of the HTML report)."""
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=120, bbox_inches="tight")
    return buf.getvalue()


def save(fig, path: Optional[str | os.PathLike]):
    """Write ``fig`` as PNG to ``path`` (temp file + rename) when a path is given; return the figure."""
    if path is not None:
        atomic_write_bytes(path, png(fig))
    return fig


def plot_sensitivity(alphas: Mapping[str, Sequence[float]], path=None):
    """Fig. 2: one bar group per chunk, one bar per series (model x bitwidth), each normalised to sum 1."""
    fig, ax = plt.subplots(figsize=(6, 3.2))
    n = max(len(v) for v in alphas.values())
    width = 0.8 / len(alphas)
    for i, (label, v) in enumerate(alphas.items()):
        a = np.asarray(v, dtype=float)
        ax.bar(np.arange(len(a)) + i * width, a / a.sum(), width, label=label)
    ax.set_xticks(np.arange(n) + 0.4 - width / 2, [str(k + 1) for k in range(n)])
    ax.set_xlabel("chunk")
    ax.set_ylabel("sensitivity (normalised)")
    ax.legend(fontsize=8)
    return save(fig, path)


SWEEP_METRICS = ("fvd_fp", "lpips_fp", "psnr_fp", "ssim_fp", "latent_mse")  # the panels of a sweep figure, in order


def plot_sweep(records: list[dict], tag: str, path=None, bits: str = "w4a8", n_boot: int = 1000, seed: int = 0):
    """Fig. 6 (tag='tau') and Table 5 as a figure (tag='outlier_ratio'): one panel per metric the records carry
    (FVD-FP, LPIPS-FP, PSNR-FP, SSIM-FP, latent MSE) over the swept value, with 95 % bootstrap intervals as error
    bars (over prompts / video pairs, as in the tables). Give the records of one stage (:func:`eval.tables.of_stage`)."""
    runs = sorted(((float(r["tags"][tag]), r) for r in records
                   if r["method"] == "qarvd" and r["bits"] == bits and r.get("tags", {}).get(tag) is not None),
                  key=lambda x: x[0])
    metrics = [m for m in SWEEP_METRICS if any(m in r["metrics"] for _, r in runs)]
    if not runs or not metrics:
        raise ValueError(f"no Q-ARVD {bits} results with a '{tag}' tag and one of {SWEEP_METRICS} to plot")
    fig, axes = plt.subplots(1, len(metrics), figsize=(3.2 * len(metrics), 2.8), squeeze=False)
    for ax, m in zip(axes[0], metrics):
        pts = [(x, r["metrics"][m], _interval(r, m, n_boot, seed)) for x, r in runs if m in r["metrics"]]
        y = np.array([p[1] for p in pts], dtype=float)
        err = np.array([[p[1] - p[2][0], p[2][1] - p[1]] if p[2] else [0.0, 0.0] for p in pts]).T
        ax.errorbar([p[0] for p in pts], y, yerr=err, fmt="o-", capsize=3, color="tab:blue")
        ax.set_xlabel(tag)
        ax.set_title(COLUMNS.get(m, (m,))[0], fontsize=9)
        ax.tick_params(labelsize=7)
    fig.tight_layout()
    return save(fig, path)


def _interval(record: dict, metric: str, n_boot: int, seed: int) -> Optional[tuple[float, float]]:
    stat = item_stat(record, metric)
    if stat is None or len(stat.names) < 2:
        return None
    iv = cell_interval(stat, n_boot, seed)
    return iv.lo, iv.hi


def run_label(record: dict, tags: Sequence[str] = ()) -> str:
    """``Q-ARVD (Ours) W4A8 tau=3.0``: method and bits as the tables name them, plus the given tags' values."""
    label = f"{METHODS.get(record['method'], record['method'])} {str(record['bits']).upper()}"
    extra = [f"{t}={record.get('tags', {}).get(t)}" for t in tags if record.get("tags", {}).get(t) is not None]
    return " ".join([label, *extra])


def varying_tags(records: list[dict]) -> list[str]:
    """The tags whose values differ between the records (what tells runs of one method and bits apart)."""
    keys = sorted({k for r in records for k in r.get("tags", {})})
    return [k for k in keys if len({str(r.get("tags", {}).get(k)) for r in records}) > 1]


def plot_chunk_curves(records: list[dict], metric: str, path=None):
    """A metric over the rollout's chunks (``per_chunk``), one line per run (method, bits and the tags that vary)."""
    runs = [r for r in records if r.get("per_chunk", {}).get(metric)]
    if not runs:
        raise ValueError(f"no record has a per-chunk '{metric}' curve")
    tags = varying_tags(runs)
    fig, ax = plt.subplots(figsize=(5.5, 3.2))
    for r in sorted(runs, key=lambda r: run_label(r, tags)):
        v = r["per_chunk"][metric]
        ax.plot(range(1, len(v) + 1), v, "o-", ms=3, lw=1, label=run_label(r, tags))
    ax.set_xlabel("chunk")
    ax.set_xticks(range(1, max(len(r["per_chunk"][metric]) for r in runs) + 1))
    ax.set_ylabel(COLUMNS.get(metric, (metric,))[0])
    if metric == "latent_mse":
        ax.set_yscale("log")
    ax.legend(fontsize=6, ncol=2 if len(runs) > 6 else 1)
    fig.tight_layout()
    return save(fig, path)


def plot_ds(ds: Mapping[str, Mapping[str, float]], path=None):
    """Fig. 7: CV, BOA and DS of each metric (``eval.ds.ds_from_records`` output); log scale, zeros left blank."""
    metrics = list(ds)
    x = np.arange(len(metrics))
    fig, ax = plt.subplots(figsize=(1.1 * len(metrics) + 2, 3.2))
    for i, key in enumerate(("cv", "boa", "ds")):
        ax.bar(x + (i - 1) * 0.27, [ds[m][key] if ds[m][key] > 0 else np.nan for m in metrics], 0.27, label=key.upper())
    ax.set_xticks(x, [COLUMNS.get(m, (m,))[0] for m in metrics], rotation=30, ha="right", fontsize=8)
    ax.set_yscale("log")
    ax.legend(fontsize=8)
    return save(fig, path)


def plot_frontier(records: list[dict], metric: str = "fvd_fp", path=None):
    """Quality against weight memory: one point per (method, bits) with ``weight_bytes``; the Pareto front drawn."""
    pts = [(r["weight_bytes"] / 2**20, r["metrics"][metric], r["method"], r["bits"]) for r in records
           if r.get("weight_bytes") and metric in r.get("metrics", {})]
    if not pts:
        raise ValueError(f"no results with both 'weight_bytes' and '{metric}' to plot")
    fig, ax = plt.subplots(figsize=(5, 3.5))
    for method in dict.fromkeys(p[2] for p in pts):
        mine = [p for p in pts if p[2] == method]
        ax.scatter([p[0] for p in mine], [p[1] for p in mine], label=METHODS.get(method, method))
        for p in mine:
            ax.annotate(p[3].upper(), (p[0], p[1]), fontsize=6)
    sign = 1 if higher_is_better(metric) else -1
    front, best = [], -np.inf
    for p in sorted(pts, key=lambda p: p[0]):  # the smallest model reaching each new best quality
        if sign * p[1] > best:
            best = sign * p[1]
            front.append(p)
    ax.step([p[0] for p in front], [p[1] for p in front], where="post", color="k", lw=1, label="Pareto front")
    ax.set_xlabel("weight memory (MiB)")
    ax.set_ylabel(COLUMNS.get(metric, (metric,))[0])
    ax.legend(fontsize=7)
    return save(fig, path)


def plot_schedule_frontier(frontier: Sequence[Mapping], measured: Sequence[Mapping], title: str,
                           budget: Optional[float] = None, path=None):
    """Chunk-adaptive precision: latent-MSE ratio to the bf16-attention row against rollout seconds. The allocator's
    predicted frontier (additive per-chunk costs) as a step line; the schedules measured as a whole as points with
    their paired interval, labelled; hollow squares where the seconds are predicted (qarvd.app.schedule_report)."""
    fig, ax = plt.subplots(figsize=(5.5, 3.6))
    ax.step([p["seconds"] for p in frontier], [p["mse_ratio"] for p in frontier], where="post", color="0.5", lw=1,
            label="allocator frontier (predicted)")
    for m in measured:
        lo, hi = m["mse_ratio_interval"]
        ax.errorbar(m["seconds"], m["mse_ratio"], yerr=[[m["mse_ratio"] - lo], [hi - m["mse_ratio"]]],
                    fmt="o" if m.get("seconds_measured", True) else "s", mfc=None if m.get("seconds_measured", True) else "none",
                    ms=4, capsize=2)
        ax.annotate(m["schedule"], (m["seconds"], m["mse_ratio"]), fontsize=6, xytext=(3, 3), textcoords="offset points")
    if budget is not None:
        ax.axhline(budget, ls=":", color="k", lw=0.8, label=f"quality budget {budget:.2f}x")
    ax.set_xlabel(f"rollout seconds ({title})")
    ax.set_ylabel("latent MSE / bf16 attention's")
    ax.legend(fontsize=7)
    return save(fig, path)


def plot_chunk_alpha(alpha: Sequence[float], title: str, path=None):
    """Fig. 2 of one run: the sensitivity of each chunk (``alpha``, summing to 1) as bars joined by a line."""
    fig, ax = plt.subplots(figsize=(4.5, 3.0))
    chunks = list(range(1, len(alpha) + 1))
    ax.bar(chunks, alpha, color="#d9822b")
    ax.plot(chunks, alpha, "o-", color="#333333", lw=1)
    ax.set_xlabel("chunk")
    ax.set_ylabel("sensitivity (sum = 1)")
    ax.set_xticks(chunks)
    ax.set_title(title, fontsize=9)
    fig.tight_layout()
    return save(fig, path)


def plot_outlier_patterns(norms: Mapping[str, tuple], layers: Sequence[str], path=None):
    """Fig. 3: per layer, its input-column L2 norms sorted in descending order, the outlier columns in red.

    ``norms[name] = (column norms, indices of the outlier columns)``, arrays or CPU tensors.
    """
    cols = min(5, len(layers))
    rows = -(-len(layers) // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(3.2 * cols, 2.4 * rows), squeeze=False)
    for ax, name in zip(axes.flat, layers):
        v, out = (np.asarray(x) for x in norms[name])
        order = np.argsort(-v, kind="stable")
        ranked = v[order]
        is_out = np.zeros(v.size, dtype=bool)
        is_out[out] = True
        pos = np.flatnonzero(is_out[order])
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
    return save(fig, path)


def plot_outlier_ratio(summary: Mapping[str, Mapping], path=None):
    """Fig. 4: the share of layers with outliers by layer type and by block depth (``share_by_type`` and
    ``share_by_block`` of an outlier summary, fractions)."""
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
    return save(fig, path)
