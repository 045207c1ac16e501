"""The ``profile`` section of the latency benchmark: where the GPU time of one rollout goes, CUDA kernel time summed by
kernel name (torch.profiler), per ``profile_rows`` row and batch; eager forwards (kernels inside replayed CUDA graphs
are the same kernels, but not attributed)."""
from __future__ import annotations

import gc

import torch
from omegaconf import DictConfig

from qarvd.bench.dit import rollout_once
from qarvd.bench.report import Report, log
from qarvd.bench.rollout import calibrated
from qarvd.bench.rows import Row, build_row
from qarvd.deploy.backends import sdpa_context


def profile_section(cfg: DictConfig, rows: dict[str, Row], base, fastest: str, device, rep: Report,
                    top: int = 25) -> None:
    from torch.profiler import ProfilerActivity, profile

    if device.type != "cuda":
        raise RuntimeError("the profile section times CUDA kernels: run it with device=cuda")
    out = []
    for name in cfg.profile_rows:
        for batch in cfg.batches:
            model, att = build_row(rows[name], cfg, base, fastest, device)
            calibrated(model, att, batch, cfg)
            with sdpa_context(att):
                rollout_once(model, batch, cfg)  # warm-up
                torch.cuda.synchronize()
                with profile(activities=[ProfilerActivity.CUDA]) as prof:
                    rollout_once(model, batch, cfg)
                    torch.cuda.synchronize()
            times = [(e.key, e.device_time_total / 1e6, e.count) for e in prof.key_averages()
                     if e.device_time_total > 0]
            times.sort(key=lambda r: -r[1])
            total = sum(r[1] for r in times)
            entry = dict(row=name, batch=batch, attention=att, kernel_seconds=total,
                         top=[dict(kernel=k[:160], seconds=t, share=t / total, calls=c) for k, t, c in times[:top]])
            out.append(entry)
            rep.put("profile", out)
            log("profile", {k: entry[k] for k in ("row", "batch", "kernel_seconds")})
            del model
            gc.collect()
            torch.cuda.empty_cache()
