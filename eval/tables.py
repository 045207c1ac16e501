"""The paper's tables rendered from run records, with paired bootstrap intervals: Markdown, LaTeX, CSV and JSON.

One table system for every record (calibration records carry latent MSE to the FP rollout, evaluation records
FVD-FP / LPIPS-FP / PSNR-FP / SSIM-FP / VBench): the metric columns are those the records carry.

Layouts: ``main`` (Tables 1/2: every method x bitwidth that was run), ``ablation`` (Table 3: dual scale x frame
weighting), ``strategies`` (Table 4), ``sweep`` (Table 5 over the outlier ratio, the tau sweep). Every cell shows
its value and a 95 % bootstrap interval over prompts (FVD-FP: over video pairs); in each comparison group (a metric
column within a bitwidth, a row of a sweep) the best value is marked only when the paired interval of its difference
to the runner-up excludes 0. The caption states n, the calib preset and the model. A cell without a record is "–";
a metric a run could not compute is "n/a" with the recorded reason as a footnote.
"""
from __future__ import annotations

import csv
import io
import json
from dataclasses import dataclass, field
from typing import Callable, Optional

import numpy as np

from eval.records import VBENCH_KEYS, fp_record, higher_is_better, load_fvd_features
from eval.stats import Interval, ItemStat, PooledStat, cell_interval, paired_difference

METHODS = {  # record name -> paper row label, in the paper's row order
    "minmax": "MinMax",
    "adaround": "Adaround",
    "smoothquant": "SmoothQuant",
    "ptq4dit": "PTQ4DiT",
    "svdquant": "SVDQuant",
    "qarvd": "Q-ARVD (Ours)",
    "smoothquant_published": "SmoothQuant (as published)",  # the baselines run as their originals: no reconstruction
    "svdquant_published": "SVDQuant (as published)",
    "ptq4dit_published": "PTQ4DiT (as published)",  # block reconstruction
}
BITS = {"w4a8": "W4A8", "w8a8": "W8A8", "w4a6": "W4A6", "w4a4": "W4A4"}  # paper group order first
COLUMNS = {  # metric -> (header, decimals)
    "subject_consistency": ("Subj. Cons.", 2),
    "background_consistency": ("Back. Cons.", 2),
    "motion_smoothness": ("Motion Smooth.", 2),
    "aesthetic_quality": ("Aesth. Qual.", 2),
    "imaging_quality": ("Imag. Qual.", 2),
    "vbench_avg": ("Avg.", 2),
    "fvd_fp": ("FVD-FP ↓", 2),
    "lpips_fp": ("LPIPS-FP ↓", 3),
    "psnr_fp": ("PSNR-FP ↑", 2),
    "ssim_fp": ("SSIM-FP ↑", 3),
    "latent_mse": ("Latent MSE ↓", None),  # None: scientific notation
}
STRATEGIES = {  # frame-weighting strategy -> Table 4 label
    "uniform": "Uniform (no weighting)",
    "exp2": "Heuristic Exp 2^-i",
    "reverse": "Reverse",
    "final_quality": "Ours",
}
MISSING, UNAVAILABLE = "–", "n/a"


def fmt(metric: str, value: float) -> str:
    decimals = COLUMNS.get(metric, ("", 3))[1]
    return f"{value:.3e}" if decimals is None else f"{value:.{decimals}f}"


@dataclass
class Cell:
    """One table value: the record's metric, its interval, and whether it is the marked winner of its group."""

    metric: str
    record: Optional[dict] = None
    value: Optional[float] = None
    interval: Optional[Interval] = None
    n: int = 0
    best: bool = False
    note: Optional[int] = None  # footnote number of an unavailable metric

    def text(self, with_interval: bool = True) -> str:
        if self.value is None:
            return MISSING if self.note is None else f"{UNAVAILABLE}[{self.note}]"
        s = fmt(self.metric, self.value)
        if with_interval and self.interval is not None:
            s += f" [{fmt(self.metric, self.interval.lo)}, {fmt(self.metric, self.interval.hi)}]"
        return f"**{s}**" if self.best else s


@dataclass
class Table:
    name: str
    caption: str
    header: list[str]
    labels: int  # leading label columns
    rows: list[list] = field(default_factory=list)  # label strings, then Cells
    groups_end: list[int] = field(default_factory=list)  # row indices after which a rule separates groups
    notes: list[str] = field(default_factory=list)
    comparisons: list[dict] = field(default_factory=list)  # winner vs runner-up of every group, with the interval


class _Builder:
    """Makes cells from records (values, intervals, footnotes) and marks winners group by group."""

    def __init__(self, n_boot: int, seed: int) -> None:
        self.n_boot, self.seed = n_boot, seed
        self.notes: list[str] = []
        self.comparisons: list[dict] = []

    def cell(self, record: Optional[dict], metric: str) -> Cell:
        c = Cell(metric, record)
        if record is None:
            return c
        value = record.get("metrics", {}).get(metric)
        if value is None:
            reason = record.get("unavailable", {}).get(metric)
            if reason is not None:
                if reason not in self.notes:
                    self.notes.append(reason)
                c.note = self.notes.index(reason) + 1
            return c
        c.value = float(value)
        stat = item_stat(record, metric)
        if stat is not None and len(stat.names) >= 2:
            c.interval, c.n = cell_interval(stat, self.n_boot, self.seed), len(stat.names)
        return c

    def mark(self, cells: list[Cell], group: str) -> None:
        """Mark the best cell of ``cells`` if its paired difference to the runner-up excludes 0."""
        scored = [c for c in cells if c.value is not None]
        if len(scored) < 2:
            return
        sign = 1 if higher_is_better(scored[0].metric) else -1
        scored.sort(key=lambda c: -sign * c.value)
        best, second = scored[0], scored[1]
        a, b = item_stat(best.record, best.metric), item_stat(second.record, second.metric)
        entry = {"group": group, "metric": best.metric, "best": record_label(best.record), "runner_up": record_label(second.record),
                 "difference": best.value - second.value, "interval": None, "n": 0, "marked": False}
        if a is not None and b is not None and len(set(a.names) & set(b.names)) >= 2:
            iv, n = paired_difference(a, b, self.n_boot, self.seed)
            entry.update(interval=[iv.lo, iv.hi], n=n, marked=iv.excludes_zero())
            best.best = iv.excludes_zero()
        self.comparisons.append(entry)

    def finish(self, table: Table) -> Table:
        table.notes, table.comparisons = self.notes, self.comparisons
        return table


def record_label(r: dict) -> str:
    tags = ", ".join(f"{k}={v}" for k, v in sorted(r.get("tags", {}).items()) if v is not None)
    return f"{r['method']} {r['bits']}" + (f" ({tags})" if tags else "")


def item_stat(record: Optional[dict], metric: str) -> Optional[ItemStat]:
    """How ``metric`` of ``record`` resamples: per-item values, or for FVD-FP the saved feature pairs; None if the
    record kept neither (then its cell has no interval and it cannot be marked)."""
    if record is None:
        return None
    if "members" in record:
        stats = [item_stat(m, metric) for m in record["members"]]
        return None if any(x is None for x in stats) else PooledStat(stats)
    if metric == "fvd_fp":
        feats = load_fvd_features(record)
        return None if feats is None else ItemStat(feats["names"], features=(feats["fp"], feats["quant"]))
    items = {k: v[metric] for k, v in record.get("per_item", {}).items() if v.get(metric) is not None}
    if not items:
        return None
    names = sorted(items)
    return ItemStat(names, values=[items[k] for k in names])


def default_metrics(records: list[dict]) -> list[str]:
    """The metric columns the records carry, in the paper's column order (VBench, FVD, LPIPS, PSNR, SSIM, latent)."""
    have = {m for r in records for m in (*r.get("metrics", {}), *r.get("unavailable", {}))}
    order = list(VBENCH_KEYS) + ["fvd_fp", "lpips_fp", "psnr_fp", "ssim_fp", "latent_mse"]
    return [m for m in order if m in have]


def caption(title: str, records: list[dict]) -> str:
    """``title`` plus n (items per cell), the calib preset(s), the video encoding preset(s) of evaluation records (the
    metrics were read from those files: lossless or the release's lossy encoding) and the model(s) of the records."""
    ns = sorted({n for r in records if r.get("bits") != "bf16" and (n := int(r.get("num_items") or len(r.get("per_item", {}))))})
    n = "n/a" if not ns else (str(ns[0]) if len(ns) == 1 else f"{ns[0]}-{ns[-1]}")
    calib = ", ".join(sorted({str(r.get("calib")) for r in records if r.get("calib")})) or "n/a"
    models = ", ".join(sorted({str(r.get("model")) for r in records})) or "no results"
    unit = "prompts" if all(r.get("stage") == "calibrate" for r in records) else "videos"
    video = ", ".join(sorted({str(r["video"]["name"]) for r in records if r.get("video")}))
    video = f"videos: {video}; " if video else ""
    return (f"{title} Model: {models}; calib: {calib}; {video}{devices(records)}{seeds_note(records)}n = {n} {unit} per cell; "
            f"[95 % bootstrap interval over {unit}]; bold: better than the runner-up (paired interval excludes 0).")


def devices(records: list[dict]) -> str:
    """Which device computed the cells (``provenance.environment.device``): one name when all agree, else each device
    with the cells it computed, "not recorded" for records older than the field. Quantization amplifies the last-bit
    differences between CPU and GPU arithmetic, so a mixed table must say which row is which."""
    by: dict[str, list[str]] = {}
    for r in records:
        if r.get("bits") == "bf16":
            continue
        name = (r.get("provenance") or {}).get("environment", {}).get("device") or "not recorded"
        method, bits = r.get("method"), r.get("bits")
        by.setdefault(name, []).append(f"{METHODS.get(method, method)} {BITS.get(bits, bits)}")
    if not by or set(by) == {"not recorded"}:
        return ""
    if len(by) == 1:
        return f"device: {next(iter(by))}; "
    return "devices: " + "; ".join(f"{d} ({_counted(cells)})" for d, cells in sorted(by.items())) + "; "


def _counted(labels: list[str]) -> str:
    """``a, b x2``: each label once, with its count where it repeats (ablation rows share method and bits)."""
    return ", ".join(c if labels.count(c) == 1 else f"{c} x{labels.count(c)}" for c in sorted(set(labels)))


def calib_seed(r: dict) -> int:
    """The seed of a record's calibration (records older than ``calib_seed`` calibrated with the run's seed)."""
    return int(r.get("calib_seed", r.get("seed", 0)) or 0)


def _index(records: list[dict], key: Callable[[dict], object]) -> dict:
    """Records by ``key``. Several calibrations of one cell (each its own ``calib_seed``) become one pooled cell
    (:func:`pooled`); two records of one cell and one calibration seed is an error (which one would the table show?)."""
    groups: dict = {}
    for r in records:
        groups.setdefault(key(r), []).append(r)
    return {k: pooled(v, f"table cell {k}") for k, v in groups.items()}


def pooled(records: list[dict], what: str = "cell") -> dict:
    """One cell from its calibrations: the first record's identity, each metric the mean over the calibrations that
    have it all (``members`` keeps them for the intervals, :func:`item_stat`). One record is returned as it is; two
    of one calibration seed are an error naming both files (``what`` names the cell)."""
    seen: dict[int, dict] = {}
    for r in records:
        other = seen.setdefault(calib_seed(r), r)
        if other is not r:
            raise ValueError(f"two results for the same {what} and calibration seed {calib_seed(r)}: "
                             f"{other.get('_source')} and {r.get('_source')}")
    if len(records) == 1:
        return records[0]
    records = sorted(records, key=calib_seed)
    keys = set.intersection(*(set(r.get("metrics", {})) for r in records))
    metrics = {m: float(np.mean([r["metrics"][m] for r in records])) for m in keys
               if all(r["metrics"][m] is not None for r in records)}
    return {**records[0], "metrics": metrics, "members": records, "calib_seeds": [calib_seed(r) for r in records],
            "_source": "; ".join(str(r.get("_source")) for r in records)}


def seeds_note(records: list[dict]) -> str:
    """Caption part for cells that pool several calibrations: which (row label, and the tags that tell cells of one
    method and bits apart), and how many."""
    def varying(method, bits) -> list[str]:  # the tags that tell apart cells of one method and bits (ablations)
        same = [r for r in records if (r.get("method"), r.get("bits")) == (method, bits)]
        keys = {k for r in same for k in r.get("tags", {})}
        return sorted(k for k in keys if len({str(r.get("tags", {}).get(k)) for r in same}) > 1)

    by: dict[str, set] = {}
    for r in records:
        method, bits = r.get("method"), r.get("bits")  # caption() also serves records without them
        tags = ", ".join(f"{k}={r.get('tags', {}).get(k)}" for k in varying(method, bits))
        label = f"{METHODS.get(method, method)} {BITS.get(bits, bits)}" + (f" ({tags})" if tags else "")
        by.setdefault(label, set()).add(calib_seed(r))
    many = {label: len(s) for label, s in by.items() if len(s) > 1}
    if not many:
        return ""
    return ("calibration seeds: " + ", ".join(f"{label} x{k}" for label, k in sorted(many.items()))
            + " (the mean over them; interval over calibrations and videos); ")


def main_table(records: list[dict], title: str, metrics: Optional[list[str]] = None, n_boot: int = 1000,
               seed: int = 0, name: str = "main") -> Table:
    """Tables 1/2: BF16 (evaluation records), then each bitwidth group of the methods that were run."""
    quant = [r for r in records if r["bits"] in BITS or (r["bits"] != "bf16" and r["method"] != "bf16")]
    metrics = metrics or default_metrics(quant)
    cells = _index(quant, lambda r: (r["method"], r["bits"]))
    b = _Builder(n_boot, seed)
    table = Table(name, caption(title, quant), ["Method", "Bitwidth"] + [COLUMNS.get(m, (m,))[0] for m in metrics], 2)
    fp = fp_record(records) if any(r.get("stage") == "evaluate" for r in records) else None
    if fp is not None:
        table.rows.append(["Bfloat16", "16/16"] + [b.cell(fp, m) for m in metrics])
        table.groups_end.append(0)
    run = {r["method"] for r in quant}
    methods = [m for m in METHODS if m in run] + sorted(run - set(METHODS))
    bits_run = [x for x in BITS if any(r["bits"] == x for r in quant)] + sorted({r["bits"] for r in quant} - set(BITS))
    for bits in bits_run:
        first = len(table.rows)
        for method in methods:
            label = BITS.get(bits, bits) if len(table.rows) == first else ""
            table.rows.append([METHODS.get(method, method), label] + [b.cell(cells.get((method, bits)), m) for m in metrics])
        for j, m in enumerate(metrics):
            b.mark([row[2 + j] for row in table.rows[first:]], f"{bits} {m}")
        table.groups_end.append(len(table.rows) - 1)
    return b.finish(table)


def _on(value) -> bool:
    """Ablation tags may be booleans or strategy names; 'uniform'/'none'/false mean off."""
    return value not in (None, False, "uniform", "none", "off", 0)


def ablation_table(records: list[dict], title: str, metrics: Optional[list[str]] = None, n_boot: int = 1000,
                   seed: int = 0, name: str = "ablation") -> Table:
    """Table 3: dual scale x frame weighting (Q-ARVD runs; AdaRound, the same recipe with both off, fills the
    both-off cell when no Q-ARVD run has it), one column group per bitwidth that was run."""
    runs = [r for r in records if r["method"] in ("qarvd", "adaround") and r["bits"] in BITS]
    qarvd = _index([r for r in runs if r["method"] == "qarvd"],
                   lambda r: (_on(r["tags"].get("dual_scale")), _on(r["tags"].get("frame_weighting")), r["bits"]))
    base = _index([r for r in runs if r["method"] == "adaround"], lambda r: r["bits"])
    metrics = metrics or [m for m in default_metrics(runs) if m in ("fvd_fp", "lpips_fp", "psnr_fp", "ssim_fp", "latent_mse")]
    bits_run = [x for x in BITS if any(r["bits"] == x for r in runs)]
    b = _Builder(n_boot, seed)
    header = ["Dual Scale", "Frame Weighting"] + [f"{BITS[x]} {COLUMNS.get(m, (m,))[0]}" for x in bits_run for m in metrics]
    table = Table(name, caption(title, runs), header, 2)
    for ds in (False, True):
        for fw in (False, True):
            rec = {x: qarvd.get((ds, fw, x)) or (base.get(x) if not (ds or fw) else None) for x in bits_run}
            if any(rec.values()):
                table.rows.append(["✓" if ds else "✗", "✓" if fw else "✗"] + [b.cell(rec[x], m) for x in bits_run for m in metrics])
    for j in range(len(header) - 2):
        b.mark([row[2 + j] for row in table.rows], header[2 + j])
    return b.finish(table)


def strategy_table(records: list[dict], title: str, metrics: Optional[list[str]] = None, n_boot: int = 1000,
                   seed: int = 0, name: str = "strategies", bits: str = "w4a8") -> Table:
    """Table 4: frame-weighting strategies of Q-ARVD (dual scale on) at one bitwidth."""
    runs = [r for r in records if r["method"] == "qarvd" and r["bits"] == bits and _on(r["tags"].get("dual_scale", True))]
    cells = _index(runs, lambda r: _strategy(r["tags"].get("frame_weighting")))
    metrics = metrics or [m for m in default_metrics(runs) if m in ("fvd_fp", "lpips_fp", "psnr_fp", "ssim_fp", "latent_mse")]
    b = _Builder(n_boot, seed)
    table = Table(name, caption(f"{title} ({BITS.get(bits, bits)})", runs), ["Strategy"] + [COLUMNS.get(m, (m,))[0] for m in metrics], 1)
    for key in [k for k in STRATEGIES if k in cells] + sorted(set(cells) - set(STRATEGIES)):
        table.rows.append([STRATEGIES.get(key, key)] + [b.cell(cells[key], m) for m in metrics])
    for j, m in enumerate(metrics):
        b.mark([row[1 + j] for row in table.rows], m)
    return b.finish(table)


def sweep_table(records: list[dict], title: str, tag: str, label: str, metrics: Optional[list[str]] = None,
                n_boot: int = 1000, seed: int = 0, name: str = "sweep", bits: str = "w4a8") -> Table:
    """Table 5 (outlier ratio) and the tau sweep: one column per swept value, one row per metric."""
    runs = [r for r in records if r["method"] == "qarvd" and r["bits"] == bits and r["tags"].get(tag) is not None]
    cells = _index(runs, lambda r: float(r["tags"][tag]))
    values = sorted(cells)
    metrics = metrics or [m for m in default_metrics(runs) if m in ("fvd_fp", "lpips_fp", "psnr_fp", "ssim_fp", "latent_mse")]
    b = _Builder(n_boot, seed)
    table = Table(name, caption(f"{title} ({BITS.get(bits, bits)})", runs), [label] + [f"{v:.2f}" for v in values], 1)
    for m in metrics:
        row = [COLUMNS.get(m, (m,))[0]] + [b.cell(cells[v], m) for v in values]
        b.mark(row[1:], f"{tag} {m}")
        table.rows.append(row)
    return b.finish(table)


def _strategy(value) -> str:
    if value is True:
        return "final_quality"
    if value in (False, None, "none"):
        return "uniform"
    return str(value)


def of_stage(records: list[dict], stage: Optional[str]) -> list[dict]:
    """The records a table shows: those of ``stage``; with None, the evaluation records if any, else the calibration
    records (an evaluation sweep also holds the calibration record of every job, which must not fill the same cells)."""
    if stage is None:
        stage = "evaluate" if any(r.get("stage") == "evaluate" for r in records) else "calibrate"
    return [r for r in records if r.get("stage") == stage]


_MAIN = "Quantitative results (Table {} layout)."
# table name -> builder; every experiment preset (conf/experiment/*.yaml) has its table here
TABLES: dict[str, Callable[..., Table]] = {
    "table1": lambda r, **kw: main_table(of_stage(r, None), _MAIN.format(1), name="table1", **kw),
    "table2": lambda r, **kw: main_table(of_stage(r, None), _MAIN.format(2), name="table2", **kw),
    "table3": lambda r, **kw: ablation_table(of_stage(r, None), "Table 3: ablation of frame weighting and dual scale.",
                                             name="table3", **kw),
    "table4": lambda r, **kw: strategy_table(of_stage(r, None), "Table 4: frame-weighting strategies.", name="table4", **kw),
    "table5": lambda r, **kw: sweep_table(of_stage(r, None), "Table 5: minimum outlier ratio (alpha in the paper).",
                                          "outlier_ratio", "outlier ratio", name="table5", **kw),
    "tau_sweep": lambda r, **kw: sweep_table(of_stage(r, None), "Modified Z-score threshold tau (Fig. 6).", "tau", "tau",
                                             name="tau_sweep", **kw),
    "latent_methods": lambda r, **kw: main_table(of_stage(r, "calibrate"), "Latent MSE to the FP rollout: methods x bits.",
                                                 name="latent_methods", **kw),
    "latent_ablation": lambda r, **kw: ablation_table(of_stage(r, "calibrate"), "Q-ARVD ablation (latent MSE).",
                                                      name="latent_ablation", **kw),
    "latent_weighting": lambda r, **kw: strategy_table(of_stage(r, "calibrate"), "Frame-weighting strategies (latent MSE).",
                                                       name="latent_weighting", **kw),
}
TABLES["alpha_sweep"] = lambda r, **kw: TABLES["table5"](r, **kw)  # preset alpha_sweep: the Table 5 layout


def _texts(row: list, with_interval: bool = True) -> list[str]:
    return [c.text(with_interval) if isinstance(c, Cell) else c for c in row]


def to_markdown(table: Table) -> str:
    lines = [f"**{table.caption}**", "", "| " + " | ".join(table.header) + " |", "|" + "---|" * len(table.header)]
    lines += ["| " + " | ".join(_texts(row)) + " |" for row in table.rows]
    lines += [""] + [f"[{i}] {note}" for i, note in enumerate(table.notes, 1)] if table.notes else []
    return "\n".join(lines) + "\n"


_LATEX_ESCAPES = {"\\": r"\textbackslash{}", "&": r"\&", "%": r"\%", "$": r"\$", "#": r"\#", "_": r"\_",
                  "{": r"\{", "}": r"\}", "~": r"\textasciitilde{}", "^": r"\^{}",
                  "↓": r"$\downarrow$", "↑": r"$\uparrow$", "✓": r"\checkmark", "✗": r"$\times$", "–": "--"}


def _tex(s: str) -> str:
    return "".join(_LATEX_ESCAPES.get(c, c) for c in s)


def _tex_cell(c) -> str:
    if not isinstance(c, Cell):
        return _tex(c)
    if c.value is None:
        return _tex(c.text())
    s = fmt(c.metric, c.value)
    s = rf"\textbf{{{s}}}" if c.best else s
    if c.interval is not None:
        s += rf"{{\tiny [{fmt(c.metric, c.interval.lo)}, {fmt(c.metric, c.interval.hi)}]}}"
    return s


def to_latex(table: Table) -> str:
    """A booktabs table (needs \\usepackage{booktabs} and amssymb for \\checkmark)."""
    lines = [r"\begin{table}[t]", r"\centering", f"\\caption{{{_tex(table.caption)}}}",
             r"\begin{tabular}{" + "l" * table.labels + "c" * (len(table.header) - table.labels) + "}", r"\toprule",
             " & ".join(_tex(h) for h in table.header) + r" \\", r"\midrule"]
    for i, row in enumerate(table.rows):
        lines.append(" & ".join(_tex_cell(c) for c in row) + r" \\")
        if i in table.groups_end and i != len(table.rows) - 1:
            lines.append(r"\midrule")
    lines += [r"\bottomrule", r"\end{tabular}"]
    lines += [f"\\\\[2pt]{{\\footnotesize [{i}] {_tex(n)}}}" for i, n in enumerate(table.notes, 1)]
    lines.append(r"\end{table}")
    return "\n".join(lines) + "\n"


def cell_rows(table: Table) -> list[dict]:
    """One flat dict per value cell (labels, column, metric, value, interval, n, marked, source record)."""
    out = []
    for row in table.rows:
        labels = [c for c in row[: table.labels]]
        for col, c in zip(table.header[table.labels:], row[table.labels:]):
            if isinstance(c, Cell) and c.record is not None and (c.value is not None or c.note is not None):
                out.append({"table": table.name, "row": " / ".join(x for x in labels if x), "column": col,
                            "metric": c.metric, "value": c.value, "lo": c.interval.lo if c.interval else None,
                            "hi": c.interval.hi if c.interval else None, "n": c.n, "best": c.best,
                            "method": c.record.get("method"), "bits": c.record.get("bits"),
                            "source": c.record.get("_source")})
    return out


def to_csv(table: Table) -> str:
    rows = cell_rows(table)
    buf = io.StringIO()
    cols = ["table", "row", "column", "metric", "value", "lo", "hi", "n", "best", "method", "bits", "source"]
    w = csv.DictWriter(buf, fieldnames=cols, lineterminator="\n")
    w.writeheader()
    w.writerows(rows)
    return buf.getvalue()


def to_json(table: Table) -> str:
    return json.dumps({"name": table.name, "caption": table.caption, "header": table.header, "notes": table.notes,
                       "rows": [_texts(r) for r in table.rows], "cells": cell_rows(table),
                       "comparisons": table.comparisons}, indent=2) + "\n"


def ds_table(ds: dict, caption: str) -> Table:
    """Fig. 7 as a table: CV, BOA and DS of every metric (``eval.ds.ds_from_records`` output)."""
    table = Table("ds", caption, ["Metric", "CV", "BOA", "DS"], 4)
    for metric, v in ds.items():
        table.rows.append([COLUMNS.get(metric, (metric,))[0], f"{v['cv']:.4f}", f"{v['boa']:.3f}", f"{v['ds']:.4f}"])
    return table
