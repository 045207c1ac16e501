"""The paper's Tables 1-5 rendered from result records, as Markdown and LaTeX.

Tables 1/2: every method x bitwidth with the five VBench dimensions, their plain mean, FVD-FP and LPIPS-FP
(PSNR-FP / SSIM-FP columns are added when the records carry them). Table 3: dual scale x frame weighting at W4A8
and W8A8. Table 4: frame-weighting strategies. Table 5: the outlier threshold's minimum ratio alpha. A cell without a
record is "–"; a metric a run could not compute is "n/a" with the recorded reason as a footnote.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Optional

from eval.results import VBENCH_KEYS, fp_record

METHODS = {  # record name -> paper row label, in the paper's row order
    "minmax": "MinMax",
    "adaround": "Adaround",
    "smoothquant": "SmoothQuant",
    "ptq4dit": "PTQ4DiT",
    "svdquant": "SVDQuant",
    "qarvd": "Q-ARVD (Ours)",
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
}
STRATEGIES = {  # frame-weighting strategy -> Table 4 label
    "uniform": "Uniform (no weighting)",
    "exp2": "Heuristic Exp 2^-i",
    "reverse": "Reverse",
    "final_quality": "Ours",
}
MISSING, UNAVAILABLE = "–", "n/a"


@dataclass
class Table:
    caption: str
    header: list[str]
    rows: list[list[str]] = field(default_factory=list)
    groups_end: list[int] = field(default_factory=list)  # row indices after which a rule separates groups
    notes: list[str] = field(default_factory=list)


class _Cells:
    """Formats metric cells and collects the reasons of unavailable ones as numbered footnotes."""

    def __init__(self) -> None:
        self.notes: list[str] = []

    def __call__(self, record: Optional[dict], metric: str) -> str:
        if record is None:
            return MISSING
        value = record.get("metrics", {}).get(metric)
        if value is not None:
            return f"{float(value):.{COLUMNS.get(metric, ('', 3))[1]}f}"
        reason = record.get("unavailable", {}).get(metric)
        if reason is None:
            return MISSING
        if reason not in self.notes:
            self.notes.append(reason)
        return f"{UNAVAILABLE}[{self.notes.index(reason) + 1}]"


def _index(records: list[dict], key: Callable[[dict], object]) -> dict:
    """Records by ``key``; two records for one cell is an error (which one would the table show?)."""
    out: dict = {}
    for r in records:
        k = key(r)
        if k in out:
            raise ValueError(f"two results for the same table cell {k}: {out[k].get('_source')} and {r.get('_source')}")
        out[k] = r
    return out


def main_table(records: list[dict], caption: str) -> Table:
    """Table 1 / Table 2 layout: BF16, then each bitwidth group of methods."""
    quant = [r for r in records if r["bits"] in BITS]
    cells = _index(quant, lambda r: (r["method"], r["bits"]))
    extra = [m for m in ("psnr_fp", "ssim_fp") if any(m in r.get("metrics", {}) or m in r.get("unavailable", {}) for r in quant)]
    metrics = list(VBENCH_KEYS) + ["fvd_fp", "lpips_fp"] + extra
    table = Table(caption, ["Method", "Bitwidth"] + [COLUMNS[m][0] for m in metrics])
    cell = _Cells()
    fp = fp_record(records)
    if fp is not None:
        table.rows.append(["Bfloat16", "16/16"] + [cell(fp, m) for m in metrics])
        table.groups_end.append(0)
    methods = list(METHODS) + sorted({r["method"] for r in quant} - set(METHODS))
    for bits in [b for b in BITS if any(r["bits"] == b for r in quant)]:
        for i, method in enumerate(methods):
            label = BITS[bits] if i == 0 else ""
            table.rows.append([METHODS.get(method, method), label] + [cell(cells.get((method, bits)), m) for m in metrics])
        table.groups_end.append(len(table.rows) - 1)
    table.notes = cell.notes
    return table


def _on(value) -> bool:
    """Ablation tags may be booleans or strategy names; 'uniform'/'none'/false mean off."""
    return value not in (None, False, "uniform", "none", "off", 0)


def ablation_table(records: list[dict], caption: str, bits: tuple[str, ...] = ("w4a8", "w8a8")) -> Table:
    """Table 3: dual scale x frame weighting (Q-ARVD runs), FVD and LPIPS at each bitwidth."""
    runs = [r for r in records if r["method"] == "qarvd" and r["bits"] in bits]
    cells = _index(runs, lambda r: (_on(r["tags"].get("dual_scale")), _on(r["tags"].get("frame_weighting")), r["bits"]))
    header = ["Dual Scale", "Frame Weighting"] + [f"{BITS[b]} {COLUMNS[m][0]}" for b in bits for m in ("fvd_fp", "lpips_fp")]
    table, cell = Table(caption, header), _Cells()
    for ds in (False, True):
        for fw in (False, True):
            row = ["✓" if ds else "✗", "✓" if fw else "✗"]
            table.rows.append(row + [cell(cells.get((ds, fw, b)), m) for b in bits for m in ("fvd_fp", "lpips_fp")])
    table.notes = cell.notes
    return table


def strategy_table(records: list[dict], caption: str, bits: str = "w4a8") -> Table:
    """Table 4: frame-weighting strategies of Q-ARVD (dual scale on) at one bitwidth."""
    runs = [r for r in records if r["method"] == "qarvd" and r["bits"] == bits and _on(r["tags"].get("dual_scale", True))]
    cells = _index(runs, lambda r: _strategy(r["tags"].get("frame_weighting")))
    table, cell = Table(caption, ["Strategy", COLUMNS["fvd_fp"][0], COLUMNS["lpips_fp"][0]]), _Cells()
    for key, label in STRATEGIES.items():
        table.rows.append([label] + [cell(cells.get(key), m) for m in ("fvd_fp", "lpips_fp")])
    table.notes = cell.notes
    return table


def sweep_table(records: list[dict], caption: str, tag: str, label: str, bits: str = "w4a8") -> Table:
    """Table 5 (alpha) and the tau sweep: one column per value of ``tag``, rows FVD and LPIPS."""
    runs = [r for r in records if r["method"] == "qarvd" and r["bits"] == bits and r["tags"].get(tag) is not None]
    cells = _index(runs, lambda r: float(r["tags"][tag]))
    values = sorted(cells)
    table, cell = Table(caption, [label] + [f"{v:.2f}" for v in values]), _Cells()
    for metric, name in (("fvd_fp", "FVD"), ("lpips_fp", "LPIPS")):
        table.rows.append([name] + [cell(cells[v], metric) for v in values])
    table.notes = cell.notes
    return table


def _strategy(value) -> str:
    if value is True:
        return "final_quality"
    if value in (False, None, "none"):
        return "uniform"
    return str(value)


def _models(records: list[dict]) -> str:
    return ", ".join(sorted({str(r.get("model")) for r in records})) or "no results"


TABLES: dict[str, Callable[[list[dict]], Table]] = {
    "table1": lambda r: main_table(r, f"Table 1 layout: quantitative results of {_models(r)}."),
    "table2": lambda r: main_table(r, f"Table 2 layout: quantitative results of {_models(r)}."),
    "table3": lambda r: ablation_table(r, "Table 3: Ablation study of frame weighting and dual scale quantization."),
    "table4": lambda r: strategy_table(r, "Table 4: Comparison of different frame-weighting strategies."),
    "table5": lambda r: sweep_table(r, "Table 5: Ablation of minimum constraint alpha.", "alpha", "alpha"),
    "tau_sweep": lambda r: sweep_table(r, "Sensitivity to the Modified Z-score threshold tau (Fig. 6).", "tau", "tau"),
}


def to_markdown(table: Table) -> str:
    lines = [f"**{table.caption}**", "", "| " + " | ".join(table.header) + " |", "|" + "---|" * len(table.header)]
    lines += ["| " + " | ".join(row) + " |" for row in table.rows]
    lines += [""] + [f"[{i}] {note}" for i, note in enumerate(table.notes, 1)] if table.notes else []
    return "\n".join(lines) + "\n"


_LATEX_ESCAPES = {"\\": r"\textbackslash{}", "&": r"\&", "%": r"\%", "$": r"\$", "#": r"\#", "_": r"\_",
                  "{": r"\{", "}": r"\}", "~": r"\textasciitilde{}", "^": r"\^{}",
                  "↓": r"$\downarrow$", "↑": r"$\uparrow$", "✓": r"\checkmark", "✗": r"$\times$", "–": "--"}


def _tex(s: str) -> str:
    return "".join(_LATEX_ESCAPES.get(c, c) for c in s)


def to_latex(table: Table) -> str:
    """A booktabs table (needs \\usepackage{booktabs} and amssymb for \\checkmark)."""
    lines = [r"\begin{table}[t]", r"\centering", f"\\caption{{{_tex(table.caption)}}}",
             r"\begin{tabular}{" + "l" * 2 + "c" * (len(table.header) - 2) + "}", r"\toprule",
             " & ".join(_tex(h) for h in table.header) + r" \\", r"\midrule"]
    for i, row in enumerate(table.rows):
        lines.append(" & ".join(_tex(c) for c in row) + r" \\")
        if i in table.groups_end and i != len(table.rows) - 1:
            lines.append(r"\midrule")
    lines += [r"\bottomrule", r"\end{tabular}"]
    lines += [f"\\\\[2pt]{{\\footnotesize [{i}] {_tex(n)}}}" for i, n in enumerate(table.notes, 1)]
    lines.append(r"\end{table}")
    return "\n".join(lines) + "\n"


def ds_table(ds: dict, caption: str) -> Table:
    """Fig. 7 as a table: CV, BOA and DS of every metric (``eval.ds.ds_from_records`` output)."""
    table = Table(caption, ["Metric", "CV", "BOA", "DS"])
    for metric, v in ds.items():
        table.rows.append([COLUMNS.get(metric, (metric,))[0], f"{v['cv']:.4f}", f"{v['boa']:.3f}", f"{v['ds']:.4f}"])
    return table
