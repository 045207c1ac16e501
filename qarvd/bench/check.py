"""The ``check`` section of the latency benchmark: one cached forward (chunk 0, full size) of each fused path against
its reference: the fused bf16 glue against the eager model, each ``check_rows`` row against the same converted model
on the torch reference kernel (``kernels.torch_ref``) and against bf16."""
from __future__ import annotations

import gc

import torch
from omegaconf import DictConfig

from qarvd.bench.report import Report, log, rel_err
from qarvd.bench.rows import Row, backend, build_row
from qarvd.deploy import accelerate_
from qarvd.deploy.backends import sdpa_context

FUSED_BF16 = "bf16_fused"  # the fused bf16 row checked against the eager model (JSON key bf16_fused_vs_eager_rel)


def check_section(cfg: DictConfig, rows: dict[str, Row], base, fastest: str, device, rep: Report) -> None:
    arch = base.cfg
    b, f = 1, cfg.frames_per_chunk
    g = torch.Generator().manual_seed(1)
    x = torch.randn(b, arch.in_dim, f, cfg.height, cfg.width, generator=g).to(device)
    t = torch.full((b, f), 937.5, device=device)
    ctx = torch.randn(b, arch.text_len, arch.text_dim, generator=g).to(device=device, dtype=torch.bfloat16)
    attention = fastest if device.type == "cuda" else "auto"

    def fwd(model):
        cache = model.new_cache(b, f, cfg.height, cfg.width)
        with sdpa_context(attention), torch.no_grad():
            return model(x, t, ctx, cache=cache).float()

    out = {}
    ref = fwd(base)
    fused, _ = build_row(rows[FUSED_BF16], cfg, base, fastest, device)
    out["bf16_fused_vs_eager_rel"] = rel_err(fwd(fused), ref)
    del fused
    for name in cfg.check_rows:
        model, _ = build_row(rows[name], cfg, base, fastest, device)
        y = fwd(model)
        accelerate_(model, backend(cfg, "torch_ref", attention=attention,
                                   dual_mode=model.blocks[0]._qarvd_plan.be.dual_mode))
        out[f"{name}_triton_vs_torch_ref_rel"] = rel_err(y, fwd(model))
        out[f"{name}_vs_bf16_rel"] = rel_err(y, ref)
        del model
        gc.collect()
    rep.put("check", out)
    log("check", out)
