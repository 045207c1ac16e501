"""The ``rollout`` section of the latency benchmark: every row of ``rows`` at every batch size, timed (one warm-up,
median of ``repeats``), with the size of its format, its latents compared bit for bit with its twin row and against
the fused bf16 row; then the speedups against the paper's bf16 setting and against the strongest bf16 row."""
from __future__ import annotations

import gc
import time
import traceback

import torch
from omegaconf import DictConfig

from qarvd.bench.dit import rollout_once, time_rollout
from qarvd.bench.report import Report, log, rel_err
from qarvd.bench.rows import Row, build_row
from qarvd.bench.sizes import file_bytes, format_sizes, model_bytes
from qarvd.deploy import calibrate_attention_fp8_

FLASH_ROW = "bf16_eager_flash"  # the paper's setting: the reference of speedup_vs_bf16_flash
LATENT_REF_ROW = "bf16_fused"  # same seeds: latent_rel_diff_to_bf16_fused measures how far a format moves the latents


def calibrated(model, attention: str, batch: int, cfg: DictConfig) -> dict:
    """FP8 self-attention (attention=cudnn_fp8) takes static scales: calibrated on one rollout of the benchmark's inputs
    with bf16 attention (qarvd.deploy.calibrate_attention_fp8_); returns the per-layer amax medians for the record."""
    if attention != "cudnn_fp8":
        return {}
    amax = calibrate_attention_fp8_(model, lambda: rollout_once(model, batch, cfg))
    return {"fp8_attention_amax_median": amax.median(0).values.tolist()}  # q, k, v, o


def rollout_section(cfg: DictConfig, rows: dict[str, Row], base, fastest: str, device, rep: Report) -> None:
    table = []
    sizes = dict(params=sum(p.numel() for p in base.parameters()),
                 bf16=dict(file_bytes=file_bytes(base, bf16=True), gpu_bytes=model_bytes(base)))
    rep.put("sizes", sizes)
    latents = {}
    for name in cfg.rows:
        row = rows[name]
        for batch in cfg.batches:
            entry = dict(row=name, batch=batch)
            try:
                t0 = time.time()
                model, att = build_row(row, cfg, base, fastest, device)
                entry["attention"] = att
                entry.update(calibrated(model, att, batch, cfg))
                entry["build_s"] = time.time() - t0
                if row.sizes is not None and row.sizes not in sizes:  # the first row of a format measures it
                    sizes[row.sizes] = format_sizes(model, sizes["bf16"]["file_bytes"])
                    rep.put("sizes", sizes)
                entry.update(time_rollout(model, batch, att, cfg, device))
                latents[(name, batch)] = entry.pop("latents")
                if (row.twin, batch) in latents:  # the same arithmetic in another schedule: should be bit-identical
                    twin = latents[(row.twin, batch)]
                    entry["twin_row"] = row.twin
                    entry["equal_to_twin_row"] = bool(torch.equal(twin, latents[(name, batch)]))
                    entry["max_abs_diff_to_twin_row"] = float((twin - latents[(name, batch)]).abs().max())
                ref = latents.get((LATENT_REF_ROW, batch))
                if ref is not None:  # same seeds: how far the format moves the latents (random weights)
                    entry["latent_rel_diff_to_bf16_fused"] = rel_err(latents[(name, batch)], ref)
                if device.type == "cuda":
                    entry["peak_gpu_bytes"] = torch.cuda.max_memory_allocated()
                    torch.cuda.reset_peak_memory_stats()
                if model is not base:
                    del model
            except Exception as e:  # noqa: BLE001
                entry["error"] = f"{type(e).__name__}: {str(e)[:400]}"
                traceback.print_exc()
            gc.collect()
            torch.cuda.empty_cache() if device.type == "cuda" else None
            table.append(entry)
            rep.put("rollout", table)
            log("rollout", entry)
    rep.put("rollout_ratios", ratios(table, rows, cfg.batches))


def ratios(table: list[dict], rows: dict[str, Row], batches) -> dict:
    """Per row and batch: seconds, speedup against the flash row and against the fastest bf16 baseline row."""
    by = {(e["row"], e["batch"]): e.get("seconds") for e in table}
    out = {}
    for batch in batches:
        flash = by.get((FLASH_ROW, batch))
        bf16 = {row: v for (row, b), v in by.items() if b == batch and v and rows[row].bf16_baseline}
        strongest = min(bf16, key=bf16.get) if bf16 else None
        for (row, b), s in by.items():
            if b == batch and s:
                out[f"{row}@b{batch}"] = dict(
                    seconds=s, speedup_vs_bf16_flash=(flash / s) if flash else None, strongest_bf16=strongest,
                    speedup_vs_strongest_bf16=(bf16[strongest] / s) if strongest else None)
    return out
