"""Chunk-adaptive precision from measurements (issue 20): the allocator's schedules beside the schedules measured
as a whole, for one deployment (e.g. W8A8 CUTLASS with bf16 or FP8 self-attention).

Two measurements go in:

- quality: ``deploy_quality.json`` of the embedded model (scripts/deploy_quality.py) with the attention rows
  ``default`` (bf16 everywhere), the quantized attention everywhere (``cudnn_fp8``) and ``cudnn_fp8@k`` (bf16 before
  chunk k): the latent MSE to FP per held-out prompt;
- latency: a ``bench_latency`` JSON (scripts/bench_latency.py, the GPU) with rollout rows of the same deployment:
  the two uniform rows give each chunk's seconds under either option (``chunk_seconds``), the switch rows
  (``kernel.attention_chunks``) the measured seconds of the schedules.

The per-chunk quality cost of the quantized option follows from the switch rows by differences,
``cost(c) = MSE(@c) - MSE(@c+1)`` (``@0`` the uniform quantized row, ``@C`` the bf16 one): the additive model
:func:`qarvd.deploy.precision_schedule.allocate` assumes, exact for the switch schedules themselves. The report
gives the allocator's frontier over latency budgets, its choice for the quality budget (``quality_budget_ratio``
x the bf16 row's MSE), and for every measured schedule: its MSE ratio to the bf16 row with a paired bootstrap
interval over prompts, its measured seconds, and the share of the uniform quantized row's speed gain it recovers.
"""
from __future__ import annotations

import json
import logging
from pathlib import Path

from omegaconf import DictConfig, OmegaConf

from eval.plots import plot_schedule_frontier
from eval.stats import paired_ratio_interval
from qarvd.deploy.precision_schedule import ChunkCosts, allocate, schedule_frontier
from qarvd.utils.io import atomic_write_json, atomic_write_text

log = logging.getLogger(__name__)
INFRA = ("paths", "hydra", "task_name", "out")  # config keys that say where, not what: not recorded


def _plain(value):
    return OmegaConf.to_container(value, resolve=True) if OmegaConf.is_config(value) else value


def _rows(quality: dict, kernel: str) -> dict[str, dict]:
    rows = {r["attention"]: r for r in quality["rows"] if r["kernel"] == kernel}
    if not rows:
        raise ValueError(f"the quality file has no rows of kernel {kernel!r}; it has "
                         f"{sorted({r['kernel'] for r in quality['rows']})}")
    return rows


def _joined(rows: dict[str, dict], extra: dict, path: str, cfg: DictConfig) -> dict[str, dict]:
    """The rows of another deploy_quality file of the same run, once its reference row equals ours prompt by prompt
    (same run, prompts, seeds and kernels: the rows are then paired with ours)."""
    more = _rows(extra, cfg.kernel)
    ref = cfg.reference.quality
    if ref not in more or more[ref]["latent_mse"]["per_prompt"] != rows[ref]["latent_mse"]["per_prompt"]:
        raise ValueError(f"extra_quality {path}: its {ref!r} row is missing or differs from the quality file's "
                         f"per prompt (another run, prompts or seeds); its rows cannot be paired")
    return more


def _bench_row(latency: dict, name: str, batch: int) -> dict:
    for e in latency.get("rollout", []):
        if e["row"] == name and e["batch"] == batch:
            if "error" in e or "seconds" not in e:
                raise ValueError(f"bench row {name} at batch {batch} did not run: {e.get('error')}")
            return e
    raise ValueError(f"the latency file has no rollout row {name!r} at batch {batch}")


def suffix_mse(rows: dict[str, dict], reference: str, quantized: str, chunks: int) -> list[float]:
    """MSE of the schedules 'quantized from chunk k on' for k = 0..chunks (k = chunks: the reference row)."""
    out = []
    for k in range(chunks + 1):
        name = quantized if k == 0 else reference if k == chunks else f"{quantized}@{k}"
        if name not in rows:
            raise ValueError(f"the quality file has no attention row {name!r}: run scripts/deploy_quality.py with "
                             f"'attention=[{reference},{quantized},{','.join(f'{quantized}@{i}' for i in range(1, chunks))}]'")
        out.append(float(rows[name]["latent_mse"]["overall"]))
    return out


def chunk_options(rows: dict[str, dict], latency: dict, cfg: DictConfig) -> dict[str, ChunkCosts]:
    """The allocator's two options per chunk: the reference (bf16) attention and the quantized one."""
    ref = _bench_row(latency, cfg.reference.latency, cfg.batch)["chunk_seconds"]
    fast = _bench_row(latency, cfg.quantized.latency, cfg.batch)["chunk_seconds"]
    if len(ref) != len(fast):
        raise ValueError(f"chunk_seconds of {cfg.reference.latency} and {cfg.quantized.latency} differ in length")
    mse = suffix_mse(rows, cfg.reference.quality, cfg.quantized.quality, len(ref))
    return {cfg.reference.quality: ChunkCosts(seconds=ref, quality=[0.0] * len(ref)),
            cfg.quantized.quality: ChunkCosts(seconds=fast, quality=[mse[c] - mse[c + 1] for c in range(len(ref))])}


def measured(rows: dict[str, dict], latency: dict, options: dict[str, ChunkCosts], cfg: DictConfig) -> list[dict]:
    """Every schedule of the quality file (bf16 everywhere, quantized everywhere, each switch chunk, any other chunk
    set ``<quantized>@a+b+...``): its MSE ratio to
    the reference row (paired), its seconds (measured as a whole where a bench row ran it, else the sum of the
    per-chunk seconds, flagged), and the share of the uniform quantized row's speed gain it recovers."""
    ref, quant = cfg.reference.quality, cfg.quantized.quality
    ref_q = rows[ref]["latent_mse"]["per_prompt"]
    t_ref = _bench_row(latency, cfg.reference.latency, cfg.batch)["seconds"]
    t_fast = _bench_row(latency, cfg.quantized.latency, cfg.batch)["seconds"]
    bench = {ref: cfg.reference.latency, quant: cfg.quantized.latency,
             **{f"{quant}@{k}": row for row, k in cfg.schedules.items()}}
    chunks = len(options[ref].seconds)
    named = {ref: (), quant: tuple(range(chunks)), **{f"{quant}@{k}": tuple(range(k, chunks)) for k in range(1, chunks)}}
    for name in rows:  # any other schedule of the quality file: <quantized>@<chunk>+<chunk>...
        if name.startswith(f"{quant}@") and "+" in name:
            named[name] = tuple(int(c) for c in name.partition("@")[2].split("+"))
    out = []
    for name, picked in named.items():
        if name not in rows:
            raise ValueError(f"the quality file has no attention row {name!r}")
        ratio, ci = paired_ratio_interval(rows[name]["latent_mse"]["per_prompt"], ref_q, cfg.n_boot, cfg.seed)
        if name in bench:
            seconds = _bench_row(latency, bench[name], cfg.batch)["seconds"]
        else:  # the per-chunk seconds of each chunk's option, summed
            seconds = sum(options[quant if c in picked else ref].seconds[c] for c in range(chunks))
        out.append({"schedule": name, "quantized_chunks": list(picked), "bench_row": bench.get(name),
                    "seconds_measured": name in bench,
                    "latent_mse": rows[name]["latent_mse"]["overall"], "mse_ratio": ratio,
                    "mse_ratio_interval": [ci.lo, ci.hi], "seconds": seconds,
                    "speed_gain_recovered": (t_ref - seconds) / (t_ref - t_fast),
                    "within_quality_budget": {"point": ratio <= cfg.quality_budget_ratio,
                                              "interval": ci.hi <= cfg.quality_budget_ratio}})
    return out


def _markdown(res: dict) -> str:
    m = res["measured"]
    lines = [f"Quality: {res['quality_file']} ({res['prompts']} prompts, paired bootstrap {res['level']:.0%}); "
             f"latency: {res['latency_file']} ({res['device']}, batch {res['batch']}).\n",
             "Seconds in italics are predicted (the per-chunk seconds of the two uniform rows, summed); the others "
             "were measured as a whole.\n",
             "| schedule | latent MSE to FP | vs bf16 attention | seconds | speed gain recovered |", "|---|---|---|---|---|"]
    for r in m:
        lo, hi = r["mse_ratio_interval"]
        sec = f"{r['seconds']:.3f}" if r["seconds_measured"] else f"*{r['seconds']:.3f}*"
        lines.append(f"| {r['schedule']} | {r['latent_mse']:.4e} | {r['mse_ratio']:.3f}x [{lo:.3f}, {hi:.3f}] | "
                     f"{sec} | {r['speed_gain_recovered']:.1%} |")
    a = res["allocation"]
    lines += ["", f"Allocator (quality budget {res['quality_budget_ratio']:.2f}x the bf16 row's MSE): "
                  f"{' '.join(a['schedule'])}; predicted {a['predicted_seconds']:.3f} s, MSE +{a['predicted_quality_cost']:.3e}."]
    return "\n".join(lines) + "\n"


def schedule_report(cfg: DictConfig) -> dict:
    """Write ``<out>/schedule_report.{json,md,png}`` (module doc); returns the result."""
    quality = json.loads(Path(cfg.quality).read_text())
    latency = json.loads(Path(cfg.latency).read_text())
    rows = _rows(quality, cfg.kernel)
    for extra in cfg.extra_quality:
        rows.update(_joined(rows, json.loads(Path(extra).read_text()), extra, cfg))
    options = chunk_options(rows, latency, cfg)
    ref_mse = float(rows[cfg.reference.quality]["latent_mse"]["overall"])
    alpha = json.loads(Path(cfg.sensitivity).read_text())["frame_alpha"] if cfg.sensitivity else None
    choice = allocate(options, alpha, quality_budget=(cfg.quality_budget_ratio - 1) * ref_mse)
    frontier = [{"seconds": s, "mse_ratio": 1 + q / ref_mse, "schedule": list(ch)} for s, q, ch in schedule_frontier(options)]
    res = {"quality_file": str(cfg.quality), "latency_file": str(cfg.latency), "device": latency.get("env", {}).get("device"),
           "batch": int(cfg.batch), "prompts": quality.get("prompts"), "level": 0.95, "kernel": cfg.kernel,
           "quality_budget_ratio": float(cfg.quality_budget_ratio), "reference_mse": ref_mse,
           "options": {n: {"seconds": list(o.seconds), "quality_cost": list(o.quality)} for n, o in options.items()},
           "allocation": choice, "frontier": frontier, "measured": measured(rows, latency, options, cfg),
           "settings": {k: _plain(cfg[k]) for k in cfg if k not in INFRA}}
    out = Path(cfg.out)
    atomic_write_json(out / "schedule_report.json", res)
    atomic_write_text(out / "schedule_report.md", _markdown(res))
    plot_schedule_frontier(frontier, res["measured"], f"{res['device']}, batch {res['batch']}",
                           budget=res["quality_budget_ratio"], path=out / "schedule_report.png")
    log.info("schedule report: %s", out / "schedule_report.md")
    return res
