"""Tables, figures and the HTML report of a sweep from its run records (scripts/make_tables.py).

Writes, per table, ``<name>.md`` / ``.tex`` / ``.csv`` / ``.json`` (cells with their intervals, n and the winner
comparisons), and for Tables 1/2 the Discriminability Score table and figures (Fig. 7, the quality/size frontier);
for the tau / outlier-ratio sweeps the sweep figure; Fig. 2 from ``sensitivity.json`` files. With ``html=true``
also ``report.html`` (:mod:`eval.report`): the tables, the quality/size frontier, per-chunk curves per run, the sweep
curves with error bars and each evaluation run's FP | quantized samples, in one file that opens offline.
"""
from __future__ import annotations

import json
from pathlib import Path

import matplotlib.pyplot as plt
from omegaconf import DictConfig

from eval import plots
from eval.compare import compare
from eval.ds import ds_from_records, scorable_metrics
from eval.records import REFERENCE_METRICS, VBENCH_KEYS, load_records
from eval.report import Report, render as render_html
from eval.tables import TABLES, Table, ds_table, of_stage, to_csv, to_json, to_latex, to_markdown
from qarvd.app.evaluate import SAMPLES_DIR
from qarvd.utils.io import atomic_write_json, atomic_write_text

REPORT_FILE = "report.html"

SWEEP_TAGS = {"tau_sweep": "tau", "table5": "outlier_ratio", "alpha_sweep": "outlier_ratio"}  # swept tag per table
DS_TABLES = ("table1", "table2")  # the tables with a Discriminability Score (it compares methods)


def output_folder(cfg: DictConfig) -> Path:
    """``cfg.out``, else the first records folder (or the folder of the first records file)."""
    if cfg.out:
        return Path(cfg.out)
    first = Path((list(cfg.records) or list(cfg.sensitivity))[0])
    return first if first.is_dir() else first.parent


def write_table(table: Table, out: Path, name: str) -> None:
    for suffix, render in ((".md", to_markdown), (".tex", to_latex), (".csv", to_csv), (".json", to_json)):
        atomic_write_text(out / f"{name}{suffix}", render(table))


def make_tables(cfg: DictConfig) -> tuple[Path, list[Table]]:
    """Render ``cfg.table`` from ``cfg.records`` (and Fig. 2 from ``cfg.sensitivity``) into the output folder."""
    if not (cfg.table or cfg.sensitivity):
        raise ValueError("nothing to do: set table=<name> with records=[...], and/or sensitivity=[...]")
    if cfg.table and cfg.table not in TABLES:
        raise ValueError(f"table={cfg.table!r}; choose from {sorted(TABLES)}")
    if cfg.table and not cfg.records:
        raise ValueError("table=... needs records=[<record files or sweep folders>]")
    out = output_folder(cfg)
    if cfg.sensitivity:
        runs = [json.loads(Path(f).read_text()) for f in cfg.sensitivity]
        plots.plot_sensitivity({f"{r.get('model')} {str(r.get('bits')).upper()}": r["frame_alpha"] for r in runs},
                               out / "fig2_sensitivity.png")
    if not cfg.table:
        return out, []
    records = load_records(list(cfg.records), stage=cfg.stage)
    if cfg.model:
        records = [r for r in records if r.get("model") == cfg.model]
    models = sorted({str(r.get("model")) for r in records})
    if len(models) != 1:
        raise ValueError(f"records of {len(models)} models {models}: choose one with model=<name>")
    table = TABLES[cfg.table](records, n_boot=int(cfg.n_boot), seed=int(cfg.seed))
    write_table(table, out, cfg.table)
    rendered = [table]
    if cfg.table in DS_TABLES:
        metrics = scorable_metrics(records, list(VBENCH_KEYS) + list(REFERENCE_METRICS))
        if metrics:
            ds = ds_from_records(records, metrics, bool(cfg.ds.include_bf16), int(cfg.ds.ddof))
            sigma = "sample" if cfg.ds.ddof else "population"
            rendered.append(ds_table(ds, f"Discriminability Score (BF16 in sigma/mu: {cfg.ds.include_bf16}; {sigma} sigma)"))
            write_table(rendered[-1], out, "ds")
            plots.plot_ds(ds, out / "ds.png")
        if any(r.get("weight_bytes") for r in records):
            plots.plot_frontier(records, "fvd_fp" if any("fvd_fp" in r["metrics"] for r in records) else "psnr_fp",
                                out / "frontier.png")
    tag = SWEEP_TAGS.get(cfg.table)
    if tag:
        plots.plot_sweep(of_stage(records, cfg.stage), tag, out / f"{tag}_sweep.png", n_boot=int(cfg.n_boot),
                         seed=int(cfg.seed))
    if cfg.html:
        atomic_write_text(out / REPORT_FILE, render_html(sweep_report(cfg, records, rendered)))
    return out, rendered


def sweep_report(cfg: DictConfig, records: list[dict], tables: list[Table]) -> Report:
    """The HTML report's content: tables, figures (frontier, per-chunk curves, sweep curves, DS) and samples."""
    shown = of_stage(records, cfg.stage)
    sources = sorted({str(Path(r["_source"]).parent) for r in shown if r.get("_source")})
    report = Report(f"{cfg.table}: {len(shown)} runs of {shown[0]['model'] if shown else 'no model'}",
                    [f"Records: {', '.join(map(str, cfg.records))} ({len(shown)} {shown[0]['stage'] if shown else ''} "
                     f"records, {len(records)} in all).", f"Runs: {len(sources)} folders."], tables)
    figures = report.figures
    metric = next((m for m in ("fvd_fp", "psnr_fp", "latent_mse") if any(m in r["metrics"] for r in shown)), None)
    if metric and any(r.get("weight_bytes") for r in shown):
        figures.append((f"quality / weight memory ({metric})", plots.png(plots.plot_frontier(shown, metric))))
    for m in sorted({m for r in records for m in r.get("per_chunk", {})}):
        figures.append((f"{m} per chunk", plots.png(plots.plot_chunk_curves(records, m))))
    tag = SWEEP_TAGS.get(cfg.table)
    if tag:
        figures.append((f"{tag} sweep (95 % bootstrap intervals)",
                        plots.png(plots.plot_sweep(shown, tag, n_boot=int(cfg.n_boot), seed=int(cfg.seed)))))
    tags = plots.varying_tags(shown)
    for r in sorted(shown, key=lambda r: plots.run_label(r, tags)):
        folder = Path(r.get("_source", ".")).parent / SAMPLES_DIR
        for i, video in enumerate(sorted(folder.glob("*.mp4"))[: int(cfg.videos_per_run)]):
            report.videos.append((f"{plots.run_label(r, tags)}, sample {i}", video.read_bytes()))
    plt.close("all")
    return report


def compare_runs(cfg: DictConfig) -> dict:
    """scripts/compare_runs.py: the paired difference of the cells ``cfg.a`` and ``cfg.b`` (each one run or several
    calibrations of it), from their evaluation records (calibration records where a side has none); written to
    ``cfg.out`` when set."""
    if not cfg.a or not cfg.b:
        raise ValueError("give both sides: a=[<record or run folder>, ...] b=[...]")

    def side(paths) -> list[dict]:
        return load_records(list(paths), stage="evaluate") or load_records(list(paths))

    result = compare(side(cfg.a), side(cfg.b), list(cfg.metrics) if cfg.metrics else None, int(cfg.n_boot), int(cfg.seed))
    if cfg.out:
        atomic_write_json(Path(cfg.out), result)
    return result
