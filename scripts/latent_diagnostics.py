"""Diagnostics behind the latent tables: does a calibrated model generalise, and what does dual scale spend?

    python scripts/latent_diagnostics.py logs/latent_tables/w4a8_* logs/latent_analysis/* \
        --prompts 8 --baseline w4a8_adaround w8a8_adaround --out results/latent_tables/diagnostics.json

Per train_quant run folder (resolved_config.yaml, metrics.json, quant_artifact.safetensors):
  - ``eval_rerun``: the held-out latent MSE recomputed from the saved artifact, per prompt (so differences between
    runs get a paired bootstrap interval over prompts; the overall must reproduce metrics.json);
  - ``generalization``: latent MSE to FP (overall and per chunk) on the first ``--prompts`` prompts of the calibration
    pool with the calibration seeds, split into the prompts the run calibrated on ("seen") and the rest ("unseen",
    same pool), next to the held-out eval MSE of metrics.json. A reconstruction that fits its calibration data but
    not new prompts shows a large seen/unseen gap.
  - ``recon_fit``: mean final / nearest-rounding loss of the reconstructed layers on their calibration samples.
  - ``weights_vs_acts`` (``--split-runs``): seen / unseen MSE with only the weights or only the activations quantized;
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
from qarvd.app.calibrate import weights_identity
from qarvd.models.pipeline import build_pipeline
from qarvd.quant.api import QuantConfig, quantize_, split_outliers
from qarvd.quant.artifact import load_artifact
from qarvd.quant.linear import quant_layers, quant_state
from qarvd.quant.outliers import OutlierConfig
from qarvd.quant.roles import BLOCK_ROLES, role_of
from qarvd.quant.sensitivity import generate, latent_mse_by_chunk
from qarvd.utils.io import atomic_write_json, atomic_write_text


def _mse(q: torch.Tensor, ref: torch.Tensor, chunks) -> dict:
    return latent_mse_by_chunk(q, ref, chunks) if len(q) else {}


class Reference:
    """FP latents of a prompt set (calibration pool or held-out eval prompts), one per distinct model."""

    def __init__(self) -> None:
        self.pipes: dict[str, tuple] = {}
        self.latents: dict[tuple, tuple] = {}

    def pipeline(self, cfg):
        key = json.dumps([weights_identity(cfg), OmegaConf.to_container(cfg.model, resolve=True)], sort_keys=True, default=str)
        if key not in self.pipes:
            pipe = build_pipeline(cfg.model, "cpu")
            self.pipes[key] = (pipe, copy.deepcopy(pipe.model.state_dict()))
        return key, *self.pipes[key]

    def get(self, cfg, split: str, n: int):
        """(pipeline, FP state, prompts, seeds, FP latents) for the first ``n`` prompts of ``split`` (calib | eval)."""
        key, pipe, state = self.pipeline(cfg)
        if (key, split, n) not in self.latents:
            start = int(cfg.calib.prompt_start) if split == "calib" else 0
            prompts = select(instantiate(cfg.model.prompts[split]), start, n)
            seeds = [int(cfg.seed) + i for i in range(n)]  # the seeds train_quant uses for both sets
            self.latents[(key, split, n)] = (prompts, seeds, generate(pipe, prompts, seeds, int(cfg.calib.prompt_batch)))
        return (pipe, state, *self.latents[(key, split, n)])


def _quantized(run: Path, cfg, ref: Reference, split: str, n: int, weights: bool = True, acts: bool = True):
    pipe, state, prompts, seeds, fp = ref.get(cfg, split, n)
    model = copy.deepcopy(pipe.model)
    model.load_state_dict(state)
    load_artifact(model, run)
    with quant_state(model, weights=weights, acts=acts):
        q = generate(dataclasses.replace(pipe, model=model), prompts, seeds, int(cfg.calib.prompt_batch))
    return q, fp, pipe.rollout_cfg.chunk_frames()


def weights_vs_acts(run: Path, cfg, ref: Reference, n: int) -> dict:
    """Seen / unseen calibration-pool MSE with only the weights or only the activations quantized."""
    seen = min(int(cfg.calib.num_prompts), n)
    out = {}
    for label, w, a in (("weights_only", True, False), ("acts_only", False, True)):
        q, fp, _ = _quantized(run, cfg, ref, "calib", n, weights=w, acts=a)
        d = (q.double() - fp.double()).pow(2)
        out[label] = {"seen": float(d[:seen].mean()), "unseen": float(d[seen:].mean()) if seen < n else None}
    return out


def generalization(run: Path, cfg, ref: Reference, n: int) -> dict:
    q, fp, chunks = _quantized(run, cfg, ref, "calib", n)
    seen = min(int(cfg.calib.num_prompts), n)
    return {"seen_prompts": seen, "unseen_prompts": n - seen,
            "seen": _mse(q[:seen], fp[:seen], chunks), "unseen": _mse(q[seen:], fp[seen:], chunks)}


def eval_per_prompt(run: Path, cfg, ref: Reference, n: int) -> dict:
    """The held-out evaluation of train_quant redone from the saved artifact, kept per prompt."""
    q, fp, chunks = _quantized(run, cfg, ref, "eval", n)
    d = (q.double() - fp.double()).pow(2)
    return {"overall": float(d.mean()), "per_prompt": d.mean(dim=tuple(range(1, d.dim()))).tolist()}


def paired_ratio(a: list[float], b: list[float], draws: int = 2000, seed: int = 0) -> tuple[float, float, float]:
    """mean(a) / mean(b) over the same prompts, with a 90 % paired bootstrap interval (prompts resampled)."""
    x, y = torch.tensor(a, dtype=torch.float64), torch.tensor(b, dtype=torch.float64)
    idx = torch.randint(0, len(x), (draws, len(x)), generator=torch.Generator().manual_seed(seed))
    r = x[idx].mean(1) / y[idx].mean(1)
    return float(x.mean() / y.mean()), float(r.quantile(0.05)), float(r.quantile(0.95))


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


def _baseline_for(r: dict, runs: dict, baselines: list[str]) -> str | None:
    """The first named baseline run with the same calib preset, bits and held-out prompts as ``r``."""
    for name in baselines:
        b = runs.get(name)
        if b and (b["calib"], b["bits"], len(b["eval_rerun"]["per_prompt"])) == (
                r["calib"], r["bits"], len(r["eval_rerun"]["per_prompt"])):
            return name
    return None


def to_markdown(result: dict, baselines: list[str]) -> str:
    """Generalisation table (ratios to a baseline, per chunk and overall with a paired bootstrap interval) and the
    per-layer outlier / weight-bits table."""
    runs = result["runs"]
    k = max((len(r["eval"]["per_chunk"]) for r in runs.values()), default=0)
    lines = ["eval = held-out prompts (metrics.json; 'rerun' = recomputed here from the saved artifact); ratio = eval MSE "
             "/ the baseline's on the same prompts and noise, [90 % paired bootstrap over prompts]; seen = the run's "
             f"calibration prompt(s), unseen = the other of the first {result['prompts']} calibration-pool prompts; "
             "fit = mean final / nearest-rounding loss on the calibration samples; c1..ck = per-chunk eval MSE / baseline's.\n",
             "| run | calib | calib prompts | eval MSE | rerun | baseline | ratio [90 % CI] | seen | unseen | unseen / seen | fit | "
             + " | ".join(f"c{i + 1}" for i in range(k)) + " |",
             "|---|---|---|---|---|---|---|---|---|---|---|" + "---|" * k]
    for name, r in runs.items():
        g = r["generalization"]
        s_, u = g["seen"].get("overall"), g["unseen"].get("overall")
        bname = _baseline_for(r, runs, baselines)
        if bname and bname != name:
            b = runs[bname]
            m, lo, hi = paired_ratio(r["eval_rerun"]["per_prompt"], b["eval_rerun"]["per_prompt"])
            ratio = f"{m:.2f} [{lo:.2f}, {hi:.2f}]"
            chunks = [f"{x / y:.2f}" for x, y in zip(r["eval"]["per_chunk"], b["eval"]["per_chunk"])]
        else:
            ratio, chunks = ("1 (baseline)" if bname == name else "–"), ["–"] * k
        fit = r["recon_fit"]["mean_final_over_nearest"]
        lines.append(f"| {name} | {r['calib']} | {r['calib_prompts']} | {_e(r['eval']['overall'])} | "
                     f"{_e(r['eval_rerun']['overall'])} | {bname or '–'} | {ratio} | {_e(s_)} | {_e(u)} | "
                     f"{f'{u / s_:.2f}' if s_ and u else '–'} | {'–' if fit is None else f'{fit:.3f}'} | "
                     + " | ".join(chunks) + " |")
    wa = {n: r["weights_vs_acts"] for n, r in runs.items() if r.get("weights_vs_acts")}
    if wa:
        lines += ["\n| run | weights only: seen | unseen | activations only: seen | unseen |", "|---|---|---|---|---|"]
        lines += [f"| {n} | {_e(x['weights_only']['seen'])} | {_e(x['weights_only']['unseen'])} | "
                  f"{_e(x['acts_only']['seen'])} | {_e(x['acts_only']['unseen'])} |" for n, x in wa.items()]
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


def analyse_run(r: Path, ref: Reference, n_prompts: int) -> dict:
    cfg = OmegaConf.load(r / "resolved_config.yaml")
    metrics = json.loads((r / "metrics.json").read_text())
    _, pipe, _ = ref.pipeline(cfg)
    widths = {n: m.in_features for n, m in pipe.model.named_modules() if isinstance(m, torch.nn.Linear)}
    return {"run": str(r), "method": metrics["method"], "bits": metrics["bits"], "calib": metrics["calib"],
            "calib_prompts": metrics.get("calib_prompts"), "weights": weights_identity(cfg),
            "eval": metrics["latent_mse"], "eval_rerun": eval_per_prompt(r, cfg, ref, int(metrics["eval_prompts"])),
            "generalization": generalization(r, cfg, ref, n_prompts),
            "recon_fit": recon_fit(metrics), "outliers": outlier_use(metrics, widths)}


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("runs", nargs="+", help="train_quant run folders (with metrics.json and the artifact)")
    p.add_argument("--prompts", type=int, default=8, help="calibration-pool prompts scored (seen + unseen)")
    p.add_argument("--outlier-multiples", type=int, nargs="*", default=[32, 16, 8, 1],
                   help="rounding multiples compared in the weight-error table (32 = release)")
    p.add_argument("--baseline", nargs="*", default=[], help="run folder names ratios are taken against (first match "
                   "with the same calib preset, bits and eval prompts)")
    p.add_argument("--split-runs", nargs="*", default=[], help="run folder names also scored with only the weights "
                   "or only the activations quantized (seen / unseen calibration-pool prompts)")
    p.add_argument("--out", required=True, help="JSON file to write (and a .md next to it); runs already in it with "
                   "the same metrics are reused")
    args = p.parse_args(argv)
    out = Path(args.out)
    old = json.loads(out.read_text())["runs"] if out.exists() else {}
    ref = Reference()
    runs, first_cfg = {}, None
    for r in map(Path, args.runs):
        if not (r / "metrics.json").exists():
            print(f"skip {r}: no metrics.json (unfinished run)")
            continue
        first_cfg = first_cfg or OmegaConf.load(r / "resolved_config.yaml")
        prev = old.get(r.name)
        metrics = json.loads((r / "metrics.json").read_text())
        if prev and prev["eval"] == metrics["latent_mse"] and prev["generalization"]["seen_prompts"] + \
                prev["generalization"]["unseen_prompts"] == args.prompts:
            runs[r.name] = prev
        else:
            runs[r.name] = analyse_run(r, ref, args.prompts)
        x = runs[r.name]
        if r.name in args.split_runs and "weights_vs_acts" not in x:
            x["weights_vs_acts"] = weights_vs_acts(r, OmegaConf.load(r / "resolved_config.yaml"), ref, args.prompts)
        print(f"{r.name}: eval {x['eval']['overall']:.3e} (rerun {x['eval_rerun']['overall']:.3e}) "
              f"seen {x['generalization']['seen'].get('overall', float('nan')):.3e} "
              f"unseen {x['generalization']['unseen'].get('overall', float('nan')):.3e}", flush=True)
    result = {"prompts": args.prompts, "outlier_multiples": args.outlier_multiples, "runs": runs}
    if first_cfg is not None and args.outlier_multiples:
        result["weight_error_w4"] = weight_error_bits(first_cfg, (4, 8), args.outlier_multiples)
    atomic_write_json(out, result)
    atomic_write_text(out.with_suffix(".md"), to_markdown(result, args.baseline))
    print(f"diagnostics: {out} and {out.with_suffix('.md')}")


if __name__ == "__main__":
    main()
