"""Paired comparison of two cells, each one run or several calibrations of it (``calib.seed``): per metric, both
values and their difference with its 95 % bootstrap interval over the shared videos (and over the calibrations of a
pooled cell). The sentence "A beats B by x [lo, hi]" of a README or a paper comes from here, not from two table cells.
"""
from __future__ import annotations

from typing import Optional, Sequence

from eval.stats import N_BOOT, paired_difference
from eval.tables import COLUMNS, calib_seed, default_metrics, fmt, item_stat, pooled, record_label


def compare(a: Sequence[dict], b: Sequence[dict], metrics: Optional[Sequence[str]] = None, n_boot: int = N_BOOT,
            seed: int = 0) -> dict:
    """``a`` minus ``b``: {"a", "b" (labels), "calib_seeds", "metrics": {metric: {a, b, difference, interval, n}}}.
    A metric without per-video values (or FVD features) on both sides gets the difference and no interval."""
    if not a or not b:
        raise ValueError("compare needs at least one record on each side (a=[...] and b=[...])")
    ca, cb = pooled(list(a), "side a"), pooled(list(b), "side b")
    both = [m for m in default_metrics([ca, cb]) if m in ca["metrics"] and m in cb["metrics"]]
    metrics = list(metrics) if metrics else both
    missing = [m for m in metrics if m not in both]
    if missing:
        raise ValueError(f"metrics {missing} are not in both sides' records; they have {both}")
    out = {"a": record_label(ca), "b": record_label(cb), "calib_seeds": {"a": sorted(map(calib_seed, a)), "b": sorted(map(calib_seed, b))},
           "sources": {"a": [r.get("_source") for r in a], "b": [r.get("_source") for r in b]}, "metrics": {}}
    for m in metrics:
        va, vb = float(ca["metrics"][m]), float(cb["metrics"][m])
        entry = {"a": va, "b": vb, "difference": va - vb, "interval": None, "n": 0}
        sa, sb = item_stat(ca, m), item_stat(cb, m)
        if sa is not None and sb is not None and len(set(sa.names) & set(sb.names)) >= 2:
            iv, n = paired_difference(sa, sb, n_boot, seed)
            entry.update(interval=[iv.lo, iv.hi], n=n)
        out["metrics"][m] = entry
    return out


def comparison_markdown(result: dict) -> str:
    """The comparison as a Markdown table (values at the metric's table precision)."""
    seeds = result["calib_seeds"]
    lines = [f"**{result['a']} (calibration seeds {seeds['a']}) minus {result['b']} (seeds {seeds['b']}); "
             f"95 % paired bootstrap interval over videos{' and calibrations' if max(map(len, seeds.values())) > 1 else ''}.**",
             "", "| metric | a | b | a - b | interval | n |", "|---|---|---|---|---|---|"]
    for m, e in result["metrics"].items():
        iv = "n/a" if e["interval"] is None else f"[{fmt(m, e['interval'][0])}, {fmt(m, e['interval'][1])}]"
        lines.append(f"| {COLUMNS.get(m, (m,))[0]} | {fmt(m, e['a'])} | {fmt(m, e['b'])} | {fmt(m, e['difference'])} | "
                     f"{iv} | {e['n']} |")
    return "\n".join(lines)
