"""Render the paper's tables (Markdown + LaTeX) and figures from result JSONs.

    python scripts/make_tables.py --table table2 --results logs/evaluate/multiruns/<sweep>   # Table 2 + DS + figures
    python scripts/make_tables.py --table table1 --results tests/data/paper_table1.json       # the paper's own numbers
    python scripts/make_tables.py --sensitivity runs/*/sensitivity.json --out figs            # Fig. 2 of several runs

--results takes results.json files, folders (searched recursively) or JSON lists of records. Writes <out>/<table>.md
and .tex, <out>/ds.md/.tex (Tables 1/2), and figures: ds.png (Fig. 7), frontier.png (quality vs weight memory),
tau_sweep.png (Fig. 6) / alpha_sweep.png, fig2_sensitivity.png (Fig. 2, from scripts/sensitivity.py outputs); prints
the Markdown.
"""
import argparse
import json
from pathlib import Path

from eval import plots
from eval.ds import ds_from_records, scorable_metrics
from eval.results import REFERENCE_METRICS, VBENCH_KEYS, load_results
from eval.tables import TABLES, ds_table, to_latex, to_markdown
from qarvd.utils.io import atomic_write_text


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--table", choices=sorted(TABLES), help="which paper table to render (needs --results)")
    p.add_argument("--results", nargs="+", default=[], help="results.json files, sweep folders or record lists")
    p.add_argument("--sensitivity", nargs="+", default=[], help="sensitivity.json files of scripts/sensitivity.py (Fig. 2)")
    p.add_argument("--out", default=None, help="output folder (default: the first --results folder, or its parent)")
    p.add_argument("--model", default=None, help="keep only records of this model")
    p.add_argument("--ds-include-bf16", action="store_true", help="let the BF16 value enter sigma and mu of CV")
    p.add_argument("--ds-ddof", type=int, default=0, choices=(0, 1), help="0: population sigma (default), 1: sample sigma")
    args = p.parse_args(argv)
    if not (args.table or args.sensitivity):
        p.error("nothing to do: give --table with --results, and/or --sensitivity")
    if args.table and not args.results:
        p.error("--table needs --results")
    first = Path((args.results or args.sensitivity)[0])
    out = Path(args.out) if args.out else (first if first.is_dir() else first.parent)
    if args.sensitivity:
        runs = [json.loads(Path(f).read_text()) for f in args.sensitivity]
        plots.plot_sensitivity({f"{r.get('model')} {str(r.get('bits')).upper()}": r["alpha"] for r in runs},
                               out / "fig2_sensitivity.png")
    if args.table:
        render(args, out)
    print(f"written to {out}")


def render(args, out: Path) -> None:
    """The table (+ DS and figures for Tables 1/2, the sweep figure for tau / alpha) into ``out``."""
    records = load_results(args.results)
    if args.model:
        records = [r for r in records if r.get("model") == args.model]
    models = sorted({str(r.get("model")) for r in records})
    if len(models) > 1:
        raise SystemExit(f"results of several models {models}: choose one with --model")
    rendered = [TABLES[args.table](records)]
    if args.table in ("table1", "table2"):
        metrics = scorable_metrics(records, list(VBENCH_KEYS) + list(REFERENCE_METRICS))
        if metrics:
            ds = ds_from_records(records, metrics, args.ds_include_bf16, args.ds_ddof)
            sigma = "sample" if args.ds_ddof else "population"
            rendered.append(ds_table(ds, f"Discriminability Score (BF16 in sigma/mu: {args.ds_include_bf16}; {sigma} sigma)"))
            plots.plot_ds(ds, out / "ds.png")
        if any(r.get("weight_bytes") for r in records):
            plots.plot_frontier(records, "fvd_fp", out / "frontier.png")
    sweep_tag = {"tau_sweep": "tau", "table5": "alpha"}.get(args.table)
    if sweep_tag:
        plots.plot_sweep(records, sweep_tag, out / f"{sweep_tag}_sweep.png")
    for name, table in zip([args.table, "ds"], rendered):
        atomic_write_text(out / f"{name}.md", to_markdown(table))
        atomic_write_text(out / f"{name}.tex", to_latex(table))
        print(to_markdown(table))


if __name__ == "__main__":
    main()
