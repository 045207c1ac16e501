"""The ``gemm`` section of the latency benchmark: the Triton INT8/INT4 GEMMs with their epilogues against cuBLAS bf16,
torch._int_mm and FP8 _scaled_mm at the Wan shapes; ``tune`` first sweeps tile configs and keeps the winners (the
table kernels/configs_sm90.py freezes)."""
from __future__ import annotations

import time
from concurrent.futures import ProcessPoolExecutor
from functools import partial

import torch
import torch.nn.functional as F
from omegaconf import DictConfig

from kernels import configs_sm90
from kernels.configs_sm90 import GemmConfig
from kernels.fp8 import fp8_linear
from kernels.layout import stack_acts
from kernels.qgemm import qgemm, qgemm_ref
from qarvd.bench.dit import arch_config
from qarvd.bench.report import Report, log, rel_err
from qarvd.bench.timing import bench_ms, host_us
from qarvd.deploy.modules import RealQuantLinear, stack_group
from qarvd.deploy.packing import minmax_spec

# Tile configs swept by ``tune``: (bm, bn, bk, warps, stages, persistent, occupancy[, subtile[, tma_store]])
SPACE = {
    "w8_none": [(128, 256, 128, 8, 3, 0, 1), (128, 256, 128, 8, 4, 0, 1), (256, 128, 128, 8, 3, 0, 1),
                (256, 128, 128, 8, 4, 0, 1), (128, 128, 128, 4, 4, 0, 1), (128, 128, 128, 8, 4, 0, 1),
                (128, 256, 64, 8, 4, 0, 1), (128, 256, 64, 8, 5, 0, 1), (128, 256, 128, 8, 3, 1, 1),
                (128, 256, 128, 8, 4, 1, 1), (128, 128, 128, 4, 4, 1, 2), (256, 128, 128, 8, 3, 1, 1),
                (256, 128, 128, 8, 3, 0, 1, 1), (128, 256, 128, 8, 3, 0, 1, 1), (256, 128, 128, 8, 4, 0, 1, 2, 0),
                (128, 128, 128, 8, 5, 0, 1), (256, 128, 64, 8, 6, 0, 1)],
    "w8_exact": [(128, 128, 128, 8, 4, 0, 1), (128, 128, 128, 4, 4, 0, 1), (128, 256, 128, 8, 3, 0, 1),
                 (256, 128, 128, 8, 3, 0, 1), (128, 128, 64, 4, 5, 0, 1), (128, 128, 128, 8, 4, 1, 1),
                 (64, 256, 128, 4, 4, 0, 1), (128, 128, 128, 4, 4, 1, 2)],
    "w8_int_ratio": [(128, 256, 128, 8, 3, 0, 1), (128, 256, 128, 8, 4, 0, 1), (256, 128, 128, 8, 3, 0, 1),
                     (128, 128, 128, 4, 4, 0, 1), (128, 256, 128, 8, 4, 1, 1), (256, 128, 128, 8, 4, 0, 1),
                     (128, 256, 64, 8, 4, 0, 1), (128, 128, 128, 4, 4, 1, 2)],
    "w4_none": [(128, 128, 128, 8, 3, 0, 1), (128, 128, 128, 4, 3, 0, 1), (128, 256, 128, 8, 3, 0, 1),
                (256, 128, 128, 8, 3, 0, 1), (128, 128, 128, 8, 4, 0, 1), (64, 128, 128, 4, 4, 0, 1),
                (128, 64, 128, 4, 4, 0, 1), (128, 128, 128, 8, 3, 1, 1)],
}
# (name, weight bits, outlier columns, dual-scale mode) of every GEMM variant timed
GEMM_VARIANTS = [("w8_none", 8, 0, "exact"), ("w8_exact", 8, 128, "exact"), ("w8_int_ratio", 8, 128, "int_ratio"),
                 ("w4_none", 4, 0, "exact")]


def gemm_shapes(arch: str) -> tuple[list, list]:
    """(K, N) of the attention projections, ffn.0 and ffn.2, and the (epilogue, K, N per linear, count) of every
    GEMM a rollout runs: q/k/v grouped store, cross q store, o / cross o / ffn.2 residual, ffn.0 gelu_quant."""
    a = arch_config(arch)
    d, f = a.dim, a.ffn_dim
    return [(d, d), (d, f), (f, d)], [("store", d, d, 3), ("store", d, d, 1), ("residual", d, d, 1),
                                      ("gelu_quant", d, f, 1), ("residual", f, d, 1)]


def cfg_of(t) -> GemmConfig:
    bm, bn, bk, w, s, p, occ, *rest = t
    sub, tma = (tuple(rest) + (2, 1)[len(rest):])[:2]
    return GemmConfig(bm, bn, bk, 8, w, s, bool(p), occ, subtile=sub, tma_store=bool(tma))


def gemm_problem(k: int, n: int, m: int, variant: tuple, count: int, device, asym_w: bool, seed: int = 0):
    """Random packed layer(s) of one variant and random activation codes (row sums included); ``asym_w``: int8
    weights with zero points (int4 always keeps its in-kernel zero point)."""
    _, w_bits, outliers, dual = variant
    asym_w = asym_w or w_bits == 4
    outliers = outliers if k > 256 else min(outliers, 32)
    g = torch.Generator(device="cpu").manual_seed(seed)
    mods = []
    for _ in range(count):
        w = (torch.randn(n, k, generator=g) / k**0.5).to(device)
        if outliers:
            w[:, torch.randperm(k, generator=g)[:outliers].to(device)] *= 6
        spec = minmax_spec(w, torch.randn(n, generator=g).to(device) * 0.1, w_bits=w_bits, n_outliers=outliers,
                           asym_w=asym_w)
        mods.append(RealQuantLinear.from_spec(spec, dual))
    group = stack_group(mods)
    acts = stack_acts([mo.act() for mo in mods])
    a = torch.randint(acts.lo, acts.hi + 1, (count, m, group.kp), dtype=torch.int8, generator=g).to(device)
    rs = None
    if group.has_wzp:
        rs = torch.zeros(count, m, 2, dtype=torch.int32, device=device)
        kop = acts.kops[0]
        rs[..., 0] = a[..., :kop].int().sum(-1)
        rs[..., 1] = a[..., kop:].int().sum(-1)
    next_mod = None
    if n > k:  # ffn.0 feeds ffn.2: its gelu_quant epilogue writes ffn.2's codes
        wn = (torch.randn(k, n, generator=g) / n**0.5).to(device)
        if outliers:
            wn[:, torch.randperm(n, generator=g)[:outliers].to(device)] *= 6
        next_mod = RealQuantLinear.from_spec(minmax_spec(wn, None, w_bits=w_bits, n_outliers=outliers,
                                                         asym_w=asym_w), dual)
    return group, acts, a, rs, next_mod


def run_gemm(group, a, rs, m, epilogue, cfg, next_mod=None, residual=None, gate=None):
    kw = dict(config=cfg, epilogue=epilogue)
    if epilogue == "residual":
        kw.update(residual=residual, gate=gate, tokens_per_frame=1560)
    if epilogue == "gelu_quant":
        kw.update(next_act=next_mod.stacked_act(), next_rowsum=next_mod.group().has_wzp)
    return qgemm(a, rs, group, m, **kw)


def _compile_job(job, asym_w: bool) -> str:
    """Worker: compile one (variant, epilogue, shape, config) by running it once (fills Triton's disk cache)."""
    key, cfg_t = job
    vname, epi, k, n, count = key
    variant = next(v for v in GEMM_VARIANTS if v[0] == vname)
    dev = torch.device("cuda")
    try:
        group, acts, a, rs, nxt = gemm_problem(k, n, 256, variant, count, dev, asym_w)
        res = torch.randn(256, n * count, device=dev, dtype=torch.bfloat16)
        gate = torch.randn(1, n * count, device=dev)
        run_gemm(group, a, rs, 256, epi, cfg_of(cfg_t), nxt, res, gate)
        torch.cuda.synchronize()
        return "ok"
    except Exception as e:  # noqa: BLE001 - a config that does not compile is a result, not a crash
        return f"{type(e).__name__}: {str(e)[-1500:]}"


def precompile(jobs: list, workers: int, asym_w: bool) -> dict:
    if not jobs:
        return {}
    import multiprocessing as mp

    t = time.time()
    with ProcessPoolExecutor(max_workers=workers, mp_context=mp.get_context("spawn")) as ex:
        out = dict(zip([str(j) for j in jobs], ex.map(partial(_compile_job, asym_w=asym_w), jobs)))
    log(f"precompiled {len(jobs)} kernels in {time.time() - t:.0f} s with {workers} workers")
    return out


def tune(cfg: DictConfig, device, rep: Report, asym_w: bool) -> dict:
    """Time every rollout GEMM at every M (sweeping SPACE at the largest M when ``tune``); returns the winners
    {(variant, epi, K, N, count): cfg tuple}, also written into kernels.configs_sm90.TABLE for this process."""
    ms = sorted(cfg.gemm_m, reverse=True)  # tune at the largest M first; smaller M reuse its winner
    sweep = cfg.tune and device.type == "cuda"
    table, tuning = {}, []
    shapes, rollout_gemms = gemm_shapes(cfg.arch)
    keys = sorted({(v[0], e, k, n, c) for v in GEMM_VARIANTS for (e, k, n, c) in rollout_gemms}
                  | {(v[0], "store", k, n, 1) for v in GEMM_VARIANTS for (k, n) in shapes})
    if sweep:
        rep.put("precompile", precompile([(key, c) for key in keys for c in SPACE[key[0]]], cfg.workers, asym_w))
    for key in keys:
        vname, epi, k, n, count = key
        variant = next(v for v in GEMM_VARIANTS if v[0] == vname)
        for m in ms:
            try:
                group, acts, a, rs, nxt = gemm_problem(k, n, m, variant, count, device, asym_w)
                res = torch.randn(m, n * count, device=device, dtype=torch.bfloat16)
                gate = torch.randn(max(1, m // 1560 + 1), n * count, device=device)
                ref = qgemm_ref(a, rs, group, m).float().to(torch.bfloat16) if epi == "store" else None
                for c in SPACE[vname] if (sweep and m == max(ms)) else [None]:
                    conf = cfg_of(c) if c is not None else (cfg_of(table[key][0]) if key in table else None)
                    try:
                        out = run_gemm(group, a, rs, m, epi, conf, nxt, res, gate)
                        err = rel_err(out, ref) if ref is not None else None
                        t = bench_ms(lambda: run_gemm(group, a, rs, m, epi, conf, nxt, res, gate), device, graph=True)
                    except Exception as e:  # noqa: BLE001
                        tuning.append(dict(key=list(key), m=m, cfg=c, error=f"{type(e).__name__}: {str(e)[-1500:]}"))
                        continue
                    tuning.append(dict(key=list(key), m=m, cfg=c, ms=t, rel_err=err))
                    if c is not None and (key not in table or t < table[key][1]):
                        table[key] = (c, t)
            except Exception as e:  # noqa: BLE001
                tuning.append(dict(key=list(key), m=m, error=f"{type(e).__name__}: {str(e)[:300]}"))
            finally:
                torch.cuda.empty_cache() if device.type == "cuda" else None
        log("gemm", key, "best", table.get(key))
        rep.put("gemm_tuning", tuning)
    frozen = {key: v[0] for key, v in table.items()}
    configs_sm90.TABLE.update({(kk[0], kk[1], kk[2], kk[3] * kk[4]): cfg_of(c) for kk, c in frozen.items()})
    rep.put("gemm_tuning", tuning)
    rep.put("gemm_table", [dict(variant=k[0], epilogue=k[1], kp=k[2], n_total=k[3] * k[4], cfg=list(c))
                           for k, c in frozen.items()])
    return frozen


def comparison_row(k: int, n: int, m: int, frozen: dict, device, asym_w: bool) -> dict:
    """One (M, K, N) of the comparison table: every Triton variant at its frozen config (plus w8 with weight zero
    points) against cuBLAS bf16, torch._int_mm and FP8 _scaled_mm."""
    x = torch.randn(m, k, device=device, dtype=torch.bfloat16)
    w = torch.randn(n, k, device=device, dtype=torch.bfloat16) / k**0.5
    b = torch.randn(n, device=device, dtype=torch.bfloat16)
    row = dict(m=m, k=k, n=n, tflop=2 * m * n * k / 1e12)
    row["cublas_bf16_ms"] = bench_ms(lambda: F.linear(x, w, b), device, graph=True)
    row["cublas_bf16_events_ms"] = bench_ms(lambda: F.linear(x, w, b), device)
    if device.type == "cuda":
        a8 = torch.randint(-128, 127, (m, k), dtype=torch.int8, device=device)
        w8 = torch.randint(-128, 127, (n, k), dtype=torch.int8, device=device)
        try:
            row["torch_int_mm_ms"] = bench_ms(lambda: torch._int_mm(a8, w8.t()), device, graph=True)
        except Exception as e:  # noqa: BLE001
            row["torch_int_mm_error"] = str(e)[:200]
        try:
            h8, wf8 = x.to(torch.float8_e4m3fn), w.to(torch.float8_e4m3fn)
            sa, sw = torch.ones(1, device=device), torch.ones(n, device=device)
            row["fp8_scaled_mm_ms"] = bench_ms(lambda: fp8_linear(h8, wf8, sa, sw, b), device, graph=True)
        except Exception as e:  # noqa: BLE001
            row["fp8_error"] = str(e)[:200]
    asym_row = (("w8_none_asymw",) + GEMM_VARIANTS[0][1:], True)  # the same GEMM with weight zero points
    for variant, asym in [(v, asym_w) for v in GEMM_VARIANTS] + [asym_row]:
        key = (variant[0].removesuffix("_asymw"), "store", k, n, 1)
        try:
            group, acts, a, rs, nxt = gemm_problem(k, n, m, variant, 1, device, asym)
            conf = cfg_of(frozen[key]) if key in frozen else None
            out = run_gemm(group, a, rs, m, "store", conf)
            row[f"{variant[0]}_rel_err"] = rel_err(out, qgemm_ref(a, rs, group, m))
            fn = lambda: run_gemm(group, a, rs, m, "store", conf)  # noqa: E731
            row[f"{variant[0]}_ms"] = bench_ms(fn, device, graph=True)
            row[f"{variant[0]}_events_ms"] = bench_ms(fn, device)  # with the host launch cost
            row[f"{variant[0]}_host_us"] = host_us(fn, device)
            row[f"{variant[0]}_speedup_vs_cublas"] = row["cublas_bf16_ms"] / row[f"{variant[0]}_ms"]
        except Exception as e:  # noqa: BLE001
            row[f"{variant[0]}_error"] = f"{type(e).__name__}: {str(e)[:200]}"
    for name in ("torch_int_mm", "fp8_scaled_mm", "cublas_bf16"):
        if f"{name}_ms" in row:
            row[f"{name}_tflops"] = row["tflop"] / row[f"{name}_ms"] * 1e3
    return row


def gemm_section(cfg: DictConfig, device, rep: Report) -> dict:
    """Tune (optionally) and time the GEMMs; returns the tuned table {(variant, epi, K, N, count): cfg tuple}."""
    asym_w = cfg.w8_weights == "artifact"
    frozen = tune(cfg, device, rep, asym_w)
    rows = []
    for (k, n) in gemm_shapes(cfg.arch)[0]:
        for m in sorted(cfg.gemm_m, reverse=True):
            rows.append(comparison_row(k, n, m, frozen, device, asym_w))
            log("gemm table", {kk: (round(v, 4) if isinstance(v, float) else v) for kk, v in rows[-1].items()})
    rep.put("gemm", rows)
    return frozen
