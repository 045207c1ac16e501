"""Tables of latent MSE to the FP rollout from train_quant results (metrics.json), as Markdown.

    python scripts/latent_tables.py logs/latent_methods/multiruns/<a> logs/latent_ablation/multiruns/<b> \
        logs/latent_weighting/multiruns/<c> --out results/

Three tables, each only if its records exist: the six methods x bit-widths (overall and per-chunk MSE), the Q-ARVD
2x2 ablation (dual scale x frame weighting), and the frame-weighting strategies. Every row states its calib preset;
tables are grouped by calibration setting and by the sha256 of the weight files (runs of different models never mix).
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

from eval.tables import BITS, METHODS, STRATEGIES, Table, to_markdown
from qarvd.utils.io import atomic_write_text


def load_metrics(paths: list[str]) -> list[dict]:
    records = []
    for p in map(Path, paths):
        files = [p] if p.is_file() else sorted(p.rglob("*.json"))
        for f in files:
            r = json.loads(f.read_text())
            if isinstance(r, dict) and "latent_mse" in r:  # train_quant metrics (other JSONs are skipped)
                r["_source"] = str(f)
                records.append(r)
    if not records:
        raise SystemExit(f"no metrics.json under {paths}")
    return records


def _fmt(x: float) -> str:
    return f"{x:.3e}"


def _row(label: list[str], r: dict) -> list[str]:
    m = r["latent_mse"]
    return label + [_fmt(m["overall"])] + [_fmt(v) for v in m["per_chunk"]] + [r["calib"]]


def _header(first: list[str], records: list[dict]) -> list[str]:
    k = max((len(r["latent_mse"]["per_chunk"]) for r in records), default=0)
    return first + ["MSE (all)"] + [f"chunk {i + 1}" for i in range(k)] + ["calib"]


def _switch(r: dict, key: str):
    return r.get("method_config", {}).get(key)


def methods_table(records: list[dict]) -> Table:
    rows = [r for r in records if r["method"] in METHODS and _is_default_recipe(r)]
    t = Table("Latent MSE to the FP rollout: six methods (embedded model)", _header(["Method", "Bits"], rows))
    for bits in BITS:
        group = sorted((r for r in rows if r["bits"] == bits), key=lambda r: list(METHODS).index(r["method"]))
        t.rows += [_row([METHODS[r["method"]], BITS[bits]], r) for r in group]
        if group:
            t.groups_end.append(len(t.rows) - 1)
    return t


def _is_default_recipe(r: dict) -> bool:
    """Q-ARVD rows of the main table use its defaults (both components on)."""
    return r["method"] != "qarvd" or (_switch(r, "dual_scale") and _switch(r, "frame_weighting") == "final_quality")


def _weighting(r: dict) -> str:
    fw = _switch(r, "frame_weighting")
    return "uniform" if fw == "none" else fw  # no weighting = uniform weights


def ablation_table(records: list[dict]) -> Table:
    """Q-ARVD with components switched off; AdaRound is the both-off cell (the same recipe)."""
    rows = [r for r in records if r["method"] in ("qarvd", "adaround") and _weighting(r) in ("uniform", "final_quality")]
    t = Table("Q-ARVD ablation: dual scale x frame weighting (latent MSE to FP)",
              _header(["Dual scale", "Frame weighting", "Bits"], rows))
    for bits in ("w4a8", "w8a8"):
        for ds in (False, True):
            for fw in ("uniform", "final_quality"):
                for r in rows:
                    if r["bits"] == bits and bool(_switch(r, "dual_scale")) == ds and _weighting(r) == fw:
                        t.rows.append(_row(["✓" if ds else "✗", "✓" if fw == "final_quality" else "✗", BITS[bits]], r))
                        break
    return t


def strategy_table(records: list[dict]) -> Table:
    rows = [r for r in records if r["method"] == "qarvd" and _switch(r, "dual_scale") and r["bits"] == "w4a8"]
    t = Table("Frame-weighting strategies, Q-ARVD W4A8 (latent MSE to FP)", _header(["Strategy"], rows))
    for s, label in STRATEGIES.items():
        t.rows += [_row([label], r) for r in rows if _switch(r, "frame_weighting") == s]
    return t


def weights_label(r: dict) -> str:
    """The weight files of a run by short sha256 (``model.checkpoint`` first); 'unrecorded' for older results."""
    w = r.get("weights")
    if not w:
        return "random weights" if r.get("random_init") else "unrecorded"
    return ", ".join(f"{k} sha256 {v['sha256'][:12]}" for k, v in sorted(w.items()) if v.get("sha256"))


def render(records: list[dict]) -> str:
    """One set of tables per calibration setting (preset, number of calibration prompts) and weights."""
    models = sorted({r["model"] + (" (random weights)" if r.get("random_init") else "") for r in records})
    parts = [f"Model: {', '.join(models)}. Latent MSE of the quantized rollout to the FP rollout on held-out prompts "
             "(identical per-prompt noise); lower is better.\n"]
    key = lambda r: (r["calib"], r.get("calib_prompts") or 0, weights_label(r))  # noqa: E731
    for setting in sorted({key(r) for r in records}):
        group = [r for r in records if key(r) == setting]
        calib, n, weights = setting
        parts.append(f"### calib={calib}, {n} calibration prompt(s), {group[0].get('eval_prompts')} eval prompts; "
                     f"weights: {weights}\n")
        for table in (methods_table(group), ablation_table(group), strategy_table(group)):
            if table.rows:
                parts.append(to_markdown(table))
    return "\n".join(parts)


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("results", nargs="+", help="metrics JSON files or folders (searched recursively for train_quant metrics)")
    p.add_argument("--out", default=None, help="folder for latent_tables.md (default: print only)")
    args = p.parse_args(argv)
    text = render(load_metrics(args.results))
    if args.out:
        atomic_write_text(Path(args.out) / "latent_tables.md", text)
    print(text)


if __name__ == "__main__":
    main()
