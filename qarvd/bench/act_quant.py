"""The ``act_quant`` section of the latency benchmark: the fused LayerNorm + modulation + quantize producer kernels
against eager torch at one chunk of batch 2; picks the division mode (exact x / s or x * (1/s)) for the run."""
from __future__ import annotations

import torch
import torch.nn.functional as F

from kernels import _common
from kernels.act_quant import norm_quant
from kernels.layout import stack_acts
from qarvd.bench.report import Report, log
from qarvd.bench.timing import bench_ms
from qarvd.deploy.modules import RealQuantLinear
from qarvd.deploy.packing import minmax_spec


def act_quant_section(device, rep: Report, m: int, d: int) -> None:
    x = torch.randn(m, d, device=device, dtype=torch.bfloat16)
    s = 1560 if m >= 1560 else m
    mod = torch.randn(m // s + 1, 6, d, device=device)
    out = {}
    acts = {}
    for outliers in (0, 128 if d > 256 else 32):
        mods = []
        for i in range(3):
            w = torch.randn(d, d, device=device) / d**0.5
            mods.append(RealQuantLinear.from_spec(minmax_spec(w, None, n_outliers=outliers)))
        acts[outliers] = (stack_acts([mo.act() for mo in mods]), stack_acts([mods[0].act()]))
    scale = torch.tensor([0.02], device=device)
    for exact in (True, False):
        _common.EXACT_DIVISION = exact
        tag = "exactdiv" if exact else "recip"
        for outliers, (a3, a1) in acts.items():
            for name, a in (("3consumers", a3), ("1consumer", a1)):
                for rowsum in (False, True):
                    out[f"ln_mod_quant_{name}_{outliers}outliers_rowsum{int(rowsum)}_{tag}_ms"] = bench_ms(
                        lambda: norm_quant(x, a, ln=(None, None, 1e-6), mod=(mod, 0, 1, s), rowsum=rowsum), device,
                        graph=True)
        out[f"ln_mod_fp8_{tag}_ms"] = bench_ms(
            lambda: norm_quant(x, ln=(None, None, 1e-6), mod=(mod, 0, 1, s), fp8_scale=scale), device, graph=True)
    key = "ln_mod_quant_3consumers_0outliers_rowsum1_{}_ms"
    _common.EXACT_DIVISION = out[key.format("exactdiv")] <= 1.2 * out[key.format("recip")]
    out["exact_division_used"] = _common.EXACT_DIVISION

    def eager():
        h = F.layer_norm(x.float(), (d,), eps=1e-6).to(x.dtype)
        r = torch.arange(m, device=device) // s
        return (h * (1 + mod[r, 1]) + mod[r, 0]).to(x.dtype)

    out["eager_ln_mod_ms"] = bench_ms(eager, device, graph=True)
    out["fused_ln_mod_bf16_ms"] = bench_ms(lambda: norm_quant(x, ln=(None, None, 1e-6), mod=(mod, 0, 1, s)), device,
                                           graph=True)
    out["bytes_fused_quant_3"] = m * d * (2 + 3)
    rep.put("act_quant", dict(m=m, d=d, **out))
    log("act_quant", out)
