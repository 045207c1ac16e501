"""Diagnostics behind the latent tables: does a calibrated model generalise, and what does dual scale spend?

    python scripts/latent_diagnostics.py logs/latent_tables/w4a8_* logs/latent_analysis/* \
        --prompts 8 --out results/latent_tables/diagnostics.json

Per train_quant run folder (resolved_config.yaml, metrics.json, quant_artifact.safetensors):
  - ``generalization``: latent MSE to FP (overall and per chunk) on the first ``--prompts`` prompts of the calibration
    pool with the calibration seeds, split into the prompts the run calibrated on ("seen") and the rest ("unseen",
    same pool), next to the held-out eval MSE of metrics.json. A reconstruction that fits its calibration data but
    not new prompts shows a large seen/unseen gap.
  - ``recon_fit``: mean final / nearest-rounding loss of the reconstructed layers on their calibration samples.
  - ``outliers`` (runs with dual scale): per split layer the columns passing Eq. 12 against the rounded group.
Once per model (``--outlier-multiples``): the weight error of every block linear with one scale and with the
dual-scale split at each rounding multiple, as equivalent bits ``0.5 * log2(mse_single / mse_dual)`` (percentile init).
"""
from __future__ import annotations

import argparse
import copy
import dataclasses
import json
from pathlib import Path

import torch
from hydra.utils import instantiate
from omegaconf import OmegaConf

import qarvd.utils.hydra_resolvers  # noqa: F401  (resolvers of resolved configs are inert; kept for safety)
from qarvd.data.prompts import select
from qarvd.methods.runner import weights_identity
from qarvd.models.pipeline import build_pipeline
from qarvd.quant.api import QuantConfig, quantize_, split_outliers
from qarvd.quant.artifact import load_artifact
from qarvd.quant.linear import quant_layers
from qarvd.quant.outliers import OutlierConfig
from qarvd.quant.roles import BLOCK_ROLES, role_of
from qarvd.quant.sensitivity import generate, latent_mse_by_chunk
from qarvd.utils.io import atomic_write_json, atomic_write_text


def _mse(q: torch.Tensor, ref: torch.Tensor, chunks) -> dict:
    return latent_mse_by_chunk(q, ref, chunks) if len(q) else {}


class Reference:
    """FP latents of the calibration-pool prompts, one per distinct model (weights and rollout)."""

    def __init__(self, n_prompts: int) -> None:
        self.n = n_prompts
        self.cache: dict[str, tuple] = {}

    def get(self, cfg):
        key = json.dumps([weights_identity(cfg), OmegaConf.to_container(cfg.model, resolve=True)], sort_keys=True, default=str)
        if key not in self.cache:
            pipe = build_pipeline(cfg.model, "cpu")
            pool = instantiate(cfg.model.prompts.calib)
            start = int(cfg.calib.prompt_start)
            prompts = select(pool, start, self.n)
            seeds = [int(cfg.seed) + i for i in range(self.n)]
            fp = generate(pipe, prompts, seeds, int(cfg.calib.prompt_batch))
            self.cache[key] = (pipe, copy.deepcopy(pipe.model.state_dict()), prompts, seeds, fp)
        return self.cache[key]


def generalization(run: Path, cfg, ref: Reference) -> dict:
    pipe, fp_state, prompts, seeds, fp = ref.get(cfg)
    model = copy.deepcopy(pipe.model)
    model.load_state_dict(fp_state)
    load_artifact(model, run)
    q = generate(dataclasses.replace(pipe, model=model), prompts, seeds, int(cfg.calib.prompt_batch))
    seen = min(int(cfg.calib.num_prompts), len(prompts))
    chunks = pipe.rollout_cfg.chunk_frames()
    return {"seen_prompts": seen, "unseen_prompts": len(prompts) - seen,
            "seen": _mse(q[:seen], fp[:seen], chunks), "unseen": _mse(q[seen:], fp[seen:], chunks)}


def recon_fit(metrics: dict) -> dict:
    units = (metrics.get("calibration", {}).get("recon") or {}).get("units", {})
    ratios = {u: s["loss_final"] / s["loss_nearest"] for u, s in units.items() if s.get("loss_nearest")}
    return {"layers": len(ratios), "mean_final_over_nearest": sum(ratios.values()) / len(ratios) if ratios else None}


def outlier_use(metrics: dict, widths: dict) -> dict:
    ds = metrics.get("calibration", {}).get("dual_scale") or {}
    split = {n: s for n, s in ds.items() if s["count"] > 0}
    rows = {n: {"raw": s["raw_count"], "group": s["count"], "in": widths[n], "share": s["count"] / widths[n]} for n, s in split.items()}
    raw, group = sum(r["raw"] for r in rows.values()), sum(r["group"] for r in rows.values())
    return {"split_layers": len(rows), "checked_layers": len(ds), "raw_columns": raw, "group_columns": group,
            "eq12_share_of_group": raw / group if group else None, "layers": rows}


@torch.no_grad()
def weight_error_bits(cfg, bits: tuple[int, int], multiples: list[int]) -> dict:
    """Per block linear: weight MSE with one scale vs dual scale at each multiple, and the equivalent bits gained."""
    pipe = build_pipeline(cfg.model, "cpu")
    pct = tuple(cfg.calib.percentiles)
    quantize_(pipe.model, QuantConfig(w_bits=bits[0], a_bits=bits[1], symmetric=bool(cfg.bits.symmetric),
                                      percentiles=pct, init_weights=False))
    base = {k: v for k, v in OmegaConf.to_container(cfg.method.outlier, resolve=True).items()}
    out = {}
    for name, layer in quant_layers(pipe.model).items():
        if role_of(name) not in BLOCK_ROLES:
            continue
        t = layer.target_weight()

        def err() -> float:
            layer.init_weights(pct)
            return sum(float((g.dequantized_weight(t) - g.columns(t)).pow(2).sum()) for g in layer.groups) / t.numel()

        layer.set_groups(None)
        row = {"single": err()}
        for m in multiples:
            res = split_outliers(layer, OutlierConfig(**{**base, "multiple": int(m)}))
            e = err() if res.count else row["single"]
            row[f"m{m}"] = {"count": res.count, "mse": e, "bits_gained": 0.5 * float(torch.log2(torch.tensor(row["single"] / e)))}
        layer.set_groups(None)
        out[name] = row
    return out


def _e(x) -> str:
    return "–" if x is None else f"{x:.3e}"


def to_markdown(result: dict, baseline: str | None) -> str:
    """Generalisation table (with per-chunk ratios to ``baseline``) and the per-layer outlier / weight-bits table."""
    runs = result["runs"]
    base = runs.get(baseline) if baseline else None
    k = max((len(r["eval"]["per_chunk"]) for r in runs.values()), default=0)
    lines = [f"Seen = calibration prompt(s) of the run, unseen = the other of the first {result['prompts']} "
             "calibration-pool prompts (same seeds as calibration), eval = held-out prompts of metrics.json.\n",
             "| run | calib prompts | eval MSE | seen | unseen | unseen / seen | final / nearest (calib loss) | "
             + " | ".join(f"c{i + 1}" for i in range(k)) + " |",
             "|---|---|---|---|---|---|---|" + "---|" * k]
    for name, r in runs.items():
        g = r["generalization"]
        s_, u = g["seen"].get("overall"), g["unseen"].get("overall")
        ratio = [f"{a / b:.2f}" for a, b in zip(r["eval"]["per_chunk"], base["eval"]["per_chunk"])] if base else ["–"] * k
        fit = r["recon_fit"]["mean_final_over_nearest"]
        lines.append(f"| {name} | {r['calib_prompts']} | {_e(r['eval']['overall'])} | {_e(s_)} | {_e(u)} | "
                     f"{u / s_:.2f} | {'–' if fit is None else f'{fit:.3f}'} | " + " | ".join(ratio) + " |"
                     if s_ and u else f"| {name} | {r['calib_prompts']} | {_e(r['eval']['overall'])} | {_e(s_)} | {_e(u)} | – | "
                     f"{'–' if fit is None else f'{fit:.3f}'} | " + " | ".join(ratio) + " |")
    if base:
        lines.append(f"\nc1..c{k}: eval MSE per chunk divided by that of `{baseline}`.\n")
    we = result.get("weight_error_w4")
    if we:
        ms = [f"m{m}" for m in result["outlier_multiples"]]
        lines += ["\n| layer | " + " | ".join(f"{m} cols" for m in ms) + " | " + " | ".join(f"{m} bits" for m in ms) + " |",
                  "|---|" + "---|" * (2 * len(ms))]
        for n, row in we.items():
            if any(row[m]["count"] for m in ms):
                lines.append(f"| {n} | " + " | ".join(str(row[m]["count"]) for m in ms) + " | "
                             + " | ".join(f"{row[m]['bits_gained']:.3f}" for m in ms) + " |")
        lines.append("\nWeight error at 4 bits with one scale per output row vs the dual-scale split, percentile init; "
                     "cols = outlier-group width, bits = 0.5 log2(MSE single / MSE split). m1 = the Eq. 12 count unrounded.")
    return "\n".join(lines) + "\n"


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("runs", nargs="+", help="train_quant run folders (with metrics.json and the artifact)")
    p.add_argument("--prompts", type=int, default=8, help="calibration-pool prompts scored (seen + unseen)")
    p.add_argument("--outlier-multiples", type=int, nargs="*", default=[32, 16, 8, 1],
                   help="rounding multiples compared in the weight-error table (32 = release)")
    p.add_argument("--baseline", default=None, help="run folder name the per-chunk ratios are taken against")
    p.add_argument("--out", required=True, help="JSON file to write (and a .md next to it)")
    args = p.parse_args(argv)
    ref = Reference(args.prompts)
    runs, first_cfg = {}, None
    for r in map(Path, args.runs):
        if not (r / "metrics.json").exists():
            print(f"skip {r}: no metrics.json (unfinished run)")
            continue
        cfg = OmegaConf.load(r / "resolved_config.yaml")
        metrics = json.loads((r / "metrics.json").read_text())
        first_cfg = first_cfg or cfg
        pipe = ref.get(cfg)[0]
        widths = {n: m.in_features for n, m in pipe.model.named_modules() if isinstance(m, torch.nn.Linear)}
        runs[r.name] = {"run": str(r), "method": metrics["method"], "bits": metrics["bits"], "calib": metrics["calib"],
                        "calib_prompts": metrics.get("calib_prompts"), "weights": weights_identity(cfg),
                        "eval": metrics["latent_mse"], "generalization": generalization(r, cfg, ref),
                        "recon_fit": recon_fit(metrics), "outliers": outlier_use(metrics, widths)}
        g = runs[r.name]["generalization"]
        print(f"{r.name}: eval {metrics['latent_mse']['overall']:.3e} seen {g['seen'].get('overall', float('nan')):.3e} "
              f"unseen {g['unseen'].get('overall', float('nan')):.3e}")
    result = {"prompts": args.prompts, "outlier_multiples": args.outlier_multiples, "runs": runs}
    if first_cfg is not None and args.outlier_multiples:
        result["weight_error_w4"] = weight_error_bits(first_cfg, (4, 8), args.outlier_multiples)
    atomic_write_json(args.out, result)
    atomic_write_text(Path(args.out).with_suffix(".md"), to_markdown(result, args.baseline))
    print(f"diagnostics: {args.out} and {Path(args.out).with_suffix('.md')}")


if __name__ == "__main__":
    main()
