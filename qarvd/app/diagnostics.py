"""Diagnostics behind the latent tables (scripts/latent_diagnostics.py's stage): does a calibrated model generalise,
and what does dual scale spend?

Per train_quant run folder (resolved_config.yaml, record.json, quant_artifact.safetensors):
  - ``eval_rerun``: the held-out latent MSE recomputed from the saved artifact, per prompt (so differences between
    runs get a paired bootstrap interval over prompts; the overall must reproduce the run record);
  - ``generalization``: latent MSE to FP (overall and per chunk) on the first ``prompts`` prompts of the calibration
    pool with the calibration seeds, split into the prompts the run calibrated on ("seen") and the rest ("unseen",
    same pool), next to the held-out eval MSE of the run record. A reconstruction that fits its calibration data but
    not new prompts shows a large seen/unseen gap.
  - ``recon_fit``: mean final / nearest-rounding loss of the reconstructed layers on their calibration samples.
  - ``weights_vs_acts`` (``split_runs``): seen / unseen MSE with only the weights or only the activations quantized;
  - ``outliers`` (runs with dual scale): per split layer the columns passing Eq. 12 against the rounded group.
Once per model (``outlier_multiples``): the weight error of every block linear with one scale and with the
dual-scale split at each rounding multiple, as equivalent bits ``0.5 * log2(mse_single / mse_dual)`` (percentile init).
The tables are rendered by :func:`eval.diagnostics.diagnostics_markdown`.
"""
from __future__ import annotations

import copy
import dataclasses
import glob
import json
import logging
from pathlib import Path

import torch
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

from eval.diagnostics import diagnostics_markdown
from eval.records import RECORD_FILE, load_records
from qarvd.app.provenance import calibration_seed, weights_identity
from qarvd.data.prompts import select
from qarvd.models.pipeline import build_pipeline
from qarvd.quant.api import QuantConfig, quantize_, split_outliers
from qarvd.quant.artifact import load_artifact
from qarvd.quant.linear import quant_layers, quant_state
from qarvd.quant.outliers import OutlierConfig
from qarvd.quant.roles import BLOCK_ROLES, role_of
from qarvd.quant.sensitivity import generate, latent_mse_by_chunk
from qarvd.utils.io import atomic_write_json, atomic_write_text

log = logging.getLogger(__name__)


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
            base = calibration_seed(cfg) if split == "calib" else int(cfg.seed)  # as train_quant seeds each set
            seeds = [base + i for i in range(n)]
            self.latents[(key, split, n)] = (prompts, seeds, generate(pipe, prompts, seeds, int(cfg.calib.prompts_per_batch)))
        return (pipe, state, *self.latents[(key, split, n)])


def _quantized(run: Path, cfg, ref: Reference, split: str, n: int, weights: bool = True, acts: bool = True):
    pipe, state, prompts, seeds, fp = ref.get(cfg, split, n)
    model = copy.deepcopy(pipe.model)
    model.load_state_dict(state)
    load_artifact(model, run)
    with quant_state(model, weights=weights, acts=acts):
        q = generate(dataclasses.replace(pipe, model=model), prompts, seeds, int(cfg.calib.prompts_per_batch))
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


def analyse_run(r: Path, ref: Reference, n_prompts: int) -> dict:
    cfg = OmegaConf.load(r / "resolved_config.yaml")
    metrics = load_records([r / RECORD_FILE])[0]
    _, pipe, _ = ref.pipeline(cfg)
    widths = {n: m.in_features for n, m in pipe.model.named_modules() if isinstance(m, torch.nn.Linear)}
    return {"run": str(r), "method": metrics["method"], "bits": metrics["bits"], "calib": metrics["calib"],
            "calib_prompts": metrics["provenance"].get("calib_prompts"), "weights": weights_identity(cfg),
            "eval": held_out_mse(metrics), "eval_rerun": eval_per_prompt(r, cfg, ref, int(metrics["num_items"])),
            "generalization": generalization(r, cfg, ref, n_prompts),
            "recon_fit": recon_fit(metrics), "outliers": outlier_use(metrics, widths)}


def held_out_mse(record: dict) -> dict:
    """The run's held-out latent MSE as these diagnostics report it: overall and per chunk."""
    return {"overall": record["metrics"]["latent_mse"], "per_chunk": record["per_chunk"]["latent_mse"]}


def run_folders(patterns) -> list[Path]:
    """The folders of ``runs``: each entry a path or a glob pattern, expanded in sorted order (as a shell would)."""
    folders = []
    for pattern in patterns:
        hits = sorted(glob.glob(str(pattern)))
        if not hits:
            raise FileNotFoundError(f"runs: {pattern!r} matches no run folder")
        folders += map(Path, hits)
    return folders


def latent_diagnostics(cfg: DictConfig, out: str | Path) -> dict:
    """Diagnose the train_quant runs ``cfg.runs`` (conf/latent_diagnostics.yaml); write the JSON ``out`` and its tables
    (``out`` with suffix .md); runs already in ``out`` with the same metrics and prompt count are reused."""
    out = Path(out)
    n_prompts = int(cfg.prompts)
    multiples = [int(m) for m in cfg.outlier_multiples]
    split_runs = set(cfg.split_runs)
    old = json.loads(out.read_text())["runs"] if out.exists() else {}
    ref = Reference()
    runs, first_cfg = {}, None
    for r in run_folders(cfg.runs):
        if not (r / RECORD_FILE).exists():
            log.info("skip %s: no %s (unfinished run)", r, RECORD_FILE)
            continue
        first_cfg = first_cfg or OmegaConf.load(r / "resolved_config.yaml")
        prev = old.get(r.name)
        metrics = load_records([r / RECORD_FILE])[0]
        if prev and prev["eval"] == held_out_mse(metrics) and prev["generalization"]["seen_prompts"] + \
                prev["generalization"]["unseen_prompts"] == n_prompts:
            runs[r.name] = prev
        else:
            runs[r.name] = analyse_run(r, ref, n_prompts)
        x = runs[r.name]
        if r.name in split_runs and "weights_vs_acts" not in x:
            x["weights_vs_acts"] = weights_vs_acts(r, OmegaConf.load(r / "resolved_config.yaml"), ref, n_prompts)
        log.info("%s: eval %.3e (rerun %.3e) seen %.3e unseen %.3e", r.name, x["eval"]["overall"],
                 x["eval_rerun"]["overall"], x["generalization"]["seen"].get("overall", float("nan")),
                 x["generalization"]["unseen"].get("overall", float("nan")))
    result = {"prompts": n_prompts, "outlier_multiples": multiples, "runs": runs}
    if first_cfg is not None and multiples:
        result["weight_error_w4"] = weight_error_bits(first_cfg, (4, 8), multiples)
    atomic_write_json(out, result)
    atomic_write_text(out.with_suffix(".md"), diagnostics_markdown(result, list(cfg.baseline)))
    return result
