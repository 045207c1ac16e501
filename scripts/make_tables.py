"""Render the paper's tables (Markdown, LaTeX, CSV, JSON, with paired bootstrap intervals), figures and one HTML
report per sweep from run records.

    python scripts/make_tables.py table=table2 records=[logs/evaluate/multiruns/<time>_table2]   # Table 2 + DS + figures
    python scripts/make_tables.py table=tau_sweep records=[logs/evaluate/multiruns/<time>_tau_sweep]  # + report.html
    python scripts/make_tables.py table=latent_methods records=[logs/train_quant/multiruns/<time>_latent_methods]
    python scripts/make_tables.py table=table1 records=[tests/data/paper_table1.json]        # the paper's own numbers
    python scripts/make_tables.py sensitivity=[runs/a/sensitivity.json,runs/b/sensitivity.json] out=figs  # Fig. 2

Tables: table1..table5, tau_sweep, alpha_sweep and the latent_* presets (one per conf/experiment preset). Writes
<out>/<table>.{md,tex,csv,json}, ds.* and figures for Tables 1/2, the sweep figure for tau / outlier ratio, and
<out>/report.html (tables, frontier, per-chunk and sweep curves, FP | quantized samples; one file, opens offline).
"""
import hydra
from omegaconf import DictConfig

import qarvd.utils.hydra_resolvers  # noqa: F401  (registers ${qarvd_repo:} etc.)
from eval.tables import to_markdown
from qarvd.app.report import make_tables


@hydra.main(version_base="1.3", config_path="../conf", config_name="make_tables")
def main(cfg: DictConfig) -> None:
    out, tables = make_tables(cfg)
    for table in tables:
        print(to_markdown(table))
    print(f"written to {out}" + (f"; report: {out / 'report.html'}" if cfg.html and cfg.table else ""))


if __name__ == "__main__":
    main()
