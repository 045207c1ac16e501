"""Latency and size of the CausalWan DiT rollout: bf16 baselines against real W8A8 / W4A8 / FP8 kernels.

    python scripts/bench_latency.py --out benchmarks/results --tune          # H100: tune GEMM tiles, then everything
    python scripts/bench_latency.py --out /tmp/b --arch tiny --device cpu   # CPU smoke run (TRITON_INTERPRET=1)

Self-forcing inference at Wan2.1-1.3B dims (``WanConfig()`` defaults, seeded random weights): 21 latent frames of
60 x 104, 3 frames per chunk, 4 denoising steps + 1 K/V refresh per chunk, text context [B, 512, 4096]; batch 1 and
2; DiT only. Each row is one model/kernels/attention setting: one warm-up rollout, then the median of ``--repeats``
rollouts timed with CUDA events. All ratios in the output come from this one run.

Sections, each written to the JSON as soon as it finishes (a run cut short keeps what it measured):
``gemm`` (Triton INT8/INT4 GEMMs with their epilogues vs cuBLAS bf16, torch._int_mm and FP8 _scaled_mm at the
three Wan shapes, M = 9360 and 4680; ``--tune`` sweeps tile configs first and writes the winners, the table that
kernels/configs_sm90.py freezes), ``act_quant`` (fused LayerNorm + modulation + quantize vs eager),
``attention`` (SDPA backends over the growing KV cache), ``check`` (fused vs reference forwards) and ``rollout``
(the table, with the safetensors file size and GPU memory of each format). A Markdown table is written next to the JSON.
"""
from __future__ import annotations

import argparse
import copy
import gc
import os
import statistics
import sys
import tempfile
import time
import traceback
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import torch
import torch.nn.functional as F

TINY = dict(dim=128, ffn_dim=256, num_heads=2, num_layers=2, freq_dim=32, text_dim=64, text_len=16)
ROWS = ["bf16_eager_flash", "bf16_eager_cudnn", "bf16_fused", "w8a8", "w8a8_asymw", "w8a8_flash", "w8a8_dual_exact",
        "w8a8_dual_int_ratio", "w4a8", "fp8", "torchao_int8", "bf16_fused_graph", "w8a8_graph", "w4a8_graph",
        "fp8_graph", "bf16_fused_fp8attn_graph", "w8a8_fp8attn_graph", "fp8_fp8attn_graph", "w8a8_cutlass_graph",
        "w8a8_cutlass_fp8attn_graph", "w8a8_cutlass_unfused_graph", "w8a8_dual_exact_graph",
        "w8a8_dual_int_ratio_graph"]
GRAPH = "_graph"  # row suffix: the same row with backend graphs=true (each rollout forward replays a CUDA graph)
FP8ATTN = "_fp8attn"  # row infix: self-attention in FP8 through cuDNN (attention=cudnn_fp8), scales calibrated on
# one rollout of the same inputs with bf16 attention (qarvd.deploy.calibrate_attention_fp8_)

# Tile configs swept by --tune: (bm, bn, bk, warps, stages, persistent, occupancy[, subtile[, tma_store]])
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
GEMM_VARIANTS = [("w8_none", 8, 0, "exact"), ("w8_exact", 8, 128, "exact"), ("w8_int_ratio", 8, 128, "int_ratio"),
                 ("w4_none", 4, 0, "exact")]
# epilogue each rollout GEMM uses, by (K, N_total): qkv grouped store, o/cross-o/ffn.2 residual, ffn.0 gelu_quant


def gemm_shapes(arch: str) -> tuple[list, list]:
    """(K, N) of the attention projections, ffn.0 and ffn.2, and the (epilogue, K, N per linear, count) of every
    GEMM a rollout runs: q/k/v grouped store, cross q store, o / cross o / ffn.2 residual, ffn.0 gelu_quant."""
    d, f = (1536, 8960) if arch == "wan" else (TINY["dim"], TINY["ffn_dim"])
    return [(d, d), (d, f), (f, d)], [("store", d, d, 3), ("store", d, d, 1), ("residual", d, d, 1),
                                      ("gelu_quant", d, f, 1), ("residual", f, d, 1)]


SIZE_ROWS = ("w8a8", "w8a8_asymw", "w4a8", "w8a8_dual_exact", "fp8")


# ----------------------------------------------------------------------------------------------- helpers
def log(*a) -> None:
    print(f"[{time.strftime('%H:%M:%S')}]", *a, flush=True)


def bench(fn, device, graph: bool = False) -> float:
    """Median milliseconds of fn: CUDA events via triton.testing.do_bench on GPU (``graph``: replays of a captured
    CUDA graph, i.e. GPU time without the Python launch cost, which exceeds a 60 us GEMM); wall clock on CPU."""
    if device.type == "cuda":
        import triton

        if graph:
            return graph_ms(fn)
        return float(triton.testing.do_bench(fn, warmup=25, rep=100, return_mode="median"))
    fn()
    ts = []
    for _ in range(3):
        t = time.perf_counter()
        fn()
        ts.append((time.perf_counter() - t) * 1e3)
    return statistics.median(ts)


def graph_ms(fn, calls: int = 20, replays: int = 7) -> float:
    """Median milliseconds per call of ``calls`` back-to-back calls captured in one CUDA graph (no host launch cost;
    no L2 flush between calls, the same for every GEMM compared)."""
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        fn(), fn()
    torch.cuda.current_stream().wait_stream(side)
    g = torch.cuda.CUDAGraph()
    with torch.cuda.graph(g):
        for _ in range(calls):
            fn()
    g.replay()
    times = []
    for _ in range(replays):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        g.replay()
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end) / calls)
    del g
    return statistics.median(times)


def host_us(fn, device, calls: int = 200) -> float:
    """Microseconds of host (Python + launch) time per call, the GPU never waited for (queue deeper than calls)."""
    if device.type != "cuda":
        return float("nan")
    fn()
    torch.cuda.synchronize()
    t = time.perf_counter()
    for _ in range(calls):
        fn()
    dt = time.perf_counter() - t
    torch.cuda.synchronize()
    return dt / calls * 1e6


class Report:
    """The JSON result, rewritten after every section."""

    def __init__(self, out: Path, name: str) -> None:
        self.path = out / f"{name}.json"
        self.data: dict = {}

    def put(self, key: str, value) -> None:
        from qarvd.utils.io import atomic_write_json

        self.data[key] = value
        atomic_write_json(self.path, self.data)


def cfg_of(t) -> "GemmConfig":
    from kernels.configs_sm90 import GemmConfig

    bm, bn, bk, w, s, p, occ, *rest = t
    sub, tma = (tuple(rest) + (2, 1)[len(rest):])[:2]
    return GemmConfig(bm, bn, bk, 8, w, s, bool(p), occ, subtile=sub, tma_store=bool(tma))


def rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    a, b = a.double(), b.double()
    return float((a - b).norm() / b.norm().clamp_min(1e-30))


# ----------------------------------------------------------------------------------------------- GEMMs
ASYM_W8 = False  # --w8-weights: int8 weights with zero points (row sums) instead of symmetric ones


def gemm_problem(k: int, n: int, m: int, variant: tuple, count: int, device, seed: int = 0, asym_w=None):
    """Random packed layer(s) of one variant and random activation codes (row sums included)."""
    from kernels.layout import stack_acts
    from qarvd.deploy.modules import RealQuantLinear, stack_group
    from qarvd.deploy.packing import minmax_spec

    _, w_bits, outliers, dual = variant
    asym_w = (ASYM_W8 if asym_w is None else asym_w) or w_bits == 4  # int4 keeps its in-kernel zero point
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
    from kernels.qgemm import qgemm

    kw = dict(config=cfg, epilogue=epilogue)
    if epilogue == "residual":
        kw.update(residual=residual, gate=gate, tokens_per_frame=1560)
    if epilogue == "gelu_quant":
        kw.update(next_act=next_mod.stacked_act(), next_rowsum=next_mod.group().has_wzp)
    return qgemm(a, rs, group, m, **kw)


def _compile_job(job) -> str:
    """Worker: compile one (variant, epilogue, shape, config) by running it once (fills Triton's disk cache)."""
    key, cfg_t = job
    vname, epi, k, n, count = key
    variant = next(v for v in GEMM_VARIANTS if v[0] == vname)
    dev = torch.device("cuda")
    try:
        group, acts, a, rs, nxt = gemm_problem(k, n, 256, variant, count, dev)
        res = torch.randn(256, n * count, device=dev, dtype=torch.bfloat16)
        gate = torch.randn(1, n * count, device=dev)
        run_gemm(group, a, rs, 256, epi, cfg_of(cfg_t), nxt, res, gate)
        torch.cuda.synchronize()
        return "ok"
    except Exception as e:  # noqa: BLE001 - a config that does not compile is a result, not a crash
        return f"{type(e).__name__}: {str(e)[-1500:]}"


def precompile(jobs: list, workers: int) -> dict:
    if not jobs:
        return {}
    import multiprocessing as mp

    t = time.time()
    with ProcessPoolExecutor(max_workers=workers, mp_context=mp.get_context("spawn")) as ex:
        out = dict(zip([str(j) for j in jobs], ex.map(_compile_job, jobs)))
    log(f"precompiled {len(jobs)} kernels in {time.time() - t:.0f} s with {workers} workers")
    return out


def gemm_section(args, device, rep: Report) -> dict:
    """Tune (optionally) and time the GEMMs; returns the tuned table {(variant, epi, K, N_total): cfg tuple}."""
    from kernels import configs_sm90
    from kernels.fp8 import fp8_linear
    from kernels.qgemm import qgemm_ref

    ms = sorted(args.gemm_m, reverse=True)  # tune at the largest M first; smaller M reuse its winner
    table, tuning = {}, []
    shapes, rollout_gemms = gemm_shapes(args.arch)
    keys = sorted({(v[0], e, k, n, c) for v in GEMM_VARIANTS for (e, k, n, c) in rollout_gemms}
                  | {(v[0], "store", k, n, 1) for v in GEMM_VARIANTS for (k, n) in shapes})
    if args.tune and device.type == "cuda":
        jobs = [(key, c) for key in keys for c in SPACE[key[0]]]
        rep.put("precompile", precompile(jobs, args.workers))
    for key in keys:
        vname, epi, k, n, count = key
        variant = next(v for v in GEMM_VARIANTS if v[0] == vname)
        for m in ms:
            try:
                group, acts, a, rs, nxt = gemm_problem(k, n, m, variant, count, device)
                res = torch.randn(m, n * count, device=device, dtype=torch.bfloat16)
                gate = torch.randn(max(1, m // 1560 + 1), n * count, device=device)
                ref = qgemm_ref(a, rs, group, m).float().to(torch.bfloat16) if epi == "store" else None
                space = SPACE[vname] if (args.tune and device.type == "cuda" and m == max(ms)) else [None]
                for c in space:
                    cfg = cfg_of(c) if c is not None else (cfg_of(table[key][0]) if key in table else None)
                    try:
                        out = run_gemm(group, a, rs, m, epi, cfg, nxt, res, gate)
                        err = rel_err(out, ref) if ref is not None else None
                        t = bench(lambda: run_gemm(group, a, rs, m, epi, cfg, nxt, res, gate), device, graph=True)
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

    # the comparison table: every Triton variant with the frozen configs vs cuBLAS bf16 / _int_mm / FP8
    rows = []
    for (k, n) in shapes:
        for m in ms:
            x = torch.randn(m, k, device=device, dtype=torch.bfloat16)
            w = torch.randn(n, k, device=device, dtype=torch.bfloat16) / k**0.5
            b = torch.randn(n, device=device, dtype=torch.bfloat16)
            row = dict(m=m, k=k, n=n, tflop=2 * m * n * k / 1e12)
            row["cublas_bf16_ms"] = bench(lambda: F.linear(x, w, b), device, graph=True)
            row["cublas_bf16_events_ms"] = bench(lambda: F.linear(x, w, b), device)
            if device.type == "cuda":
                a8 = torch.randint(-128, 127, (m, k), dtype=torch.int8, device=device)
                w8 = torch.randint(-128, 127, (n, k), dtype=torch.int8, device=device)
                try:
                    row["torch_int_mm_ms"] = bench(lambda: torch._int_mm(a8, w8.t()), device, graph=True)
                except Exception as e:  # noqa: BLE001
                    row["torch_int_mm_error"] = str(e)[:200]
                try:
                    h8, wf8 = x.to(torch.float8_e4m3fn), w.to(torch.float8_e4m3fn)
                    sa, sw = torch.ones(1, device=device), torch.ones(n, device=device)
                    row["fp8_scaled_mm_ms"] = bench(lambda: fp8_linear(h8, wf8, sa, sw, b), device, graph=True)
                except Exception as e:  # noqa: BLE001
                    row["fp8_error"] = str(e)[:200]
            asym_row = (("w8_none_asymw",) + GEMM_VARIANTS[0][1:], True)  # the same GEMM with weight zero points
            for variant, asym in [(v, None) for v in GEMM_VARIANTS] + [asym_row]:
                key = (variant[0].removesuffix("_asymw"), "store", k, n, 1)
                try:
                    group, acts, a, rs, nxt = gemm_problem(k, n, m, variant, 1, device, asym_w=asym)
                    cfg = cfg_of(frozen[key]) if key in frozen else None
                    out = run_gemm(group, a, rs, m, "store", cfg)
                    row[f"{variant[0]}_rel_err"] = rel_err(out, qgemm_ref(a, rs, group, m))
                    fn = lambda: run_gemm(group, a, rs, m, "store", cfg)  # noqa: E731
                    row[f"{variant[0]}_ms"] = bench(fn, device, graph=True)
                    row[f"{variant[0]}_events_ms"] = bench(fn, device)  # with the host launch cost
                    row[f"{variant[0]}_host_us"] = host_us(fn, device)
                    row[f"{variant[0]}_speedup_vs_cublas"] = row["cublas_bf16_ms"] / row[f"{variant[0]}_ms"]
                except Exception as e:  # noqa: BLE001
                    row[f"{variant[0]}_error"] = f"{type(e).__name__}: {str(e)[:200]}"
            for name in ("torch_int_mm", "fp8_scaled_mm", "cublas_bf16"):
                if f"{name}_ms" in row:
                    row[f"{name}_tflops"] = row["tflop"] / row[f"{name}_ms"] * 1e3
            rows.append(row)
            log("gemm table", {kk: (round(v, 4) if isinstance(v, float) else v) for kk, v in row.items()})
    rep.put("gemm", rows)
    return frozen


# ----------------------------------------------------------------------------------------------- activation quant
def act_quant_section(device, rep: Report, m: int, d: int) -> None:
    """Producer kernels at one chunk of batch 2; picks the division mode (exact x / s or x * (1/s)) for the run."""
    from kernels import _common
    from kernels.act_quant import norm_quant
    from kernels.layout import stack_acts
    from qarvd.deploy.modules import RealQuantLinear
    from qarvd.deploy.packing import minmax_spec

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
                    out[f"ln_mod_quant_{name}_{outliers}outliers_rowsum{int(rowsum)}_{tag}_ms"] = bench(
                        lambda: norm_quant(x, a, ln=(None, None, 1e-6), mod=(mod, 0, 1, s), rowsum=rowsum), device,
                        graph=True)
        out[f"ln_mod_fp8_{tag}_ms"] = bench(
            lambda: norm_quant(x, ln=(None, None, 1e-6), mod=(mod, 0, 1, s), fp8_scale=scale), device, graph=True)
    key = "ln_mod_quant_3consumers_0outliers_rowsum1_{}_ms"
    _common.EXACT_DIVISION = out[key.format("exactdiv")] <= 1.2 * out[key.format("recip")]
    out["exact_division_used"] = _common.EXACT_DIVISION

    def eager():
        h = F.layer_norm(x.float(), (d,), eps=1e-6).to(x.dtype)
        r = torch.arange(m, device=device) // s
        return (h * (1 + mod[r, 1]) + mod[r, 0]).to(x.dtype)

    out["eager_ln_mod_ms"] = bench(eager, device, graph=True)
    out["fused_ln_mod_bf16_ms"] = bench(lambda: norm_quant(x, ln=(None, None, 1e-6), mod=(mod, 0, 1, s)), device,
                                        graph=True)
    out["bytes_fused_quant_3"] = m * d * (2 + 3)
    rep.put("act_quant", dict(m=m, d=d, **out))
    log("act_quant", out)


def kernel_resources() -> dict:
    """Registers and spills of every compiled kernel variant (the compiler's resource report)."""
    from kernels import act_quant, glue, qgemm

    out = {}
    for name, fn in (("norm_quant", act_quant._norm_quant_kernel), ("qgemm", qgemm._qgemm_kernel),
                     ("qk_rope", glue._qk_kernel), ("residual", glue._residual_kernel)):
        try:
            for dev_cache in fn.device_caches.values():
                for key, k in dev_cache[0].items():
                    out.setdefault(name, []).append(dict(regs=k.n_regs, spills=k.n_spills, shared=k.metadata.shared,
                                                         warps=k.metadata.num_warps, key=str(key)[-300:]))
        except Exception as e:  # noqa: BLE001 - a Triton version without this introspection
            out[name] = f"unavailable: {type(e).__name__}: {e}"
    return out


# ----------------------------------------------------------------------------------------------- attention
def attention_section(args, device, rep: Report, cfg) -> str:
    from qarvd.deploy.backends import sdpa_context

    tokens = args.frames_per_chunk * (args.height // 2) * (args.width // 2)
    chunks = args.frames // args.frames_per_chunk
    res = {}
    for name in args.attention_backends:
        total, per = 0.0, []
        try:
            for c in range(1, chunks + 1):
                q = torch.randn(2, tokens, cfg.num_heads, cfg.head_dim, device=device, dtype=torch.bfloat16)
                kv = torch.randn(2, tokens * c, cfg.num_heads, cfg.head_dim, device=device, dtype=torch.bfloat16)
                with sdpa_context(name):
                    t = bench(lambda: F.scaled_dot_product_attention(q.transpose(1, 2), kv.transpose(1, 2),
                                                                     kv.transpose(1, 2)), device)
                per.append(t)
                total += t
            flop = sum(4 * 2 * cfg.num_heads * tokens * tokens * c * cfg.head_dim for c in range(1, chunks + 1))
            res[name] = dict(ms_per_chunk=per, ms_sum=total, tflops=flop / total / 1e9,
                             est_video_s=total * (args.steps + 1) * cfg.num_layers / 1e3)
        except Exception as e:  # noqa: BLE001
            res[name] = dict(error=f"{type(e).__name__}: {str(e)[:200]}")
    ok = {k: v["ms_sum"] for k, v in res.items() if "ms_sum" in v}
    fastest = min(ok, key=ok.get) if ok else "auto"
    rep.put("attention", dict(batch=2, tokens_per_chunk=tokens, backends=res, fastest=fastest))
    log("attention", {k: v.get("ms_sum", v.get("error")) for k, v in res.items()}, "fastest", fastest)
    return fastest


# ----------------------------------------------------------------------------------------------- models
def base_model(args, device):
    from qarvd.models.wan import CausalWanModel, WanConfig, rope_angles

    cfg = WanConfig(**(TINY if args.arch == "tiny" else {}))
    torch.manual_seed(args.seed)
    with torch.device(device):
        model = CausalWanModel(cfg)
    model._rope = rope_angles(cfg.head_dim, cfg.rope_max_positions, cfg.rope_theta)  # host tables, as built normally
    return model.to(torch.bfloat16 if args.dtype == "bfloat16" else torch.float32).eval().requires_grad_(False)


def real_model(base, kind: str, backend, w_bits: int = 8, outliers: int = 0, asym_w: bool = True):
    """A converted copy of ``base``: min-max specs of every quantized linear (block linears get ``outliers``)."""
    from qarvd.deploy import accelerate_, convert_to_real
    from qarvd.deploy.packing import minmax_spec
    from qarvd.quant.select import select_linears

    model = copy.deepcopy(base)
    specs = {}
    for name in select_linears(model):
        lin = model.get_submodule(name)
        k = lin.in_features
        specs[name] = minmax_spec(lin.weight, lin.bias, w_bits=w_bits, act_range=(-6.0, 6.0), asym_w=asym_w,
                                  n_outliers=outliers if name.startswith("blocks.") and k > 2 * outliers else 0)
    convert_to_real(model, specs, backend)
    del specs
    return accelerate_(model, backend)


def build_row(name: str, base, fastest: str, device):
    from qarvd.deploy.backends import Bf16Backend, CutlassInt8Backend, Fp8Backend, TritonInt8Backend

    graphs = name.endswith(GRAPH)
    name = name[: -len(GRAPH)] if graphs else name
    fp8attn = name.endswith(FP8ATTN)
    name = name[: -len(FP8ATTN)] if fp8attn else name
    att = "cudnn_fp8" if fp8attn else "flash" if name.endswith("_flash") else fastest
    if graphs and (name.startswith("bf16_eager") or name == "torchao_int8"):
        raise ValueError(f"row {name!r} has no {GRAPH} variant (only rows built through accelerate_)")
    if name.startswith("bf16_eager"):
        return base, name.rsplit("_", 1)[1] if device.type == "cuda" else "auto"
    if name == "bf16_fused":
        from qarvd.deploy import accelerate_

        return accelerate_(copy.deepcopy(base), Bf16Backend(attention=att, graphs=graphs)), att
    if name.startswith("w8a8") or name == "w4a8":
        dual = "int_ratio" if name.endswith("int_ratio") else "exact"
        outliers = 128 if "dual" in name else 0
        if outliers and base.cfg.dim <= 256:
            outliers = 32
        asym = name == "w8a8_asymw" or ASYM_W8 or name == "w4a8"
        kw = dict(attention=att, dual_mode=dual, weights="artifact" if asym else "symmetric", graphs=graphs)
        if name.startswith("w8a8_cutlass"):  # _unfused: the ablation of the CUTLASS epilogue fusion
            be = CutlassInt8Backend(**kw, fuse_epilogues="unfused" not in name)
        else:
            be = TritonInt8Backend(**kw)
        return real_model(base, "int", be, w_bits=4 if name == "w4a8" else 8, outliers=outliers, asym_w=asym), att
    if name == "fp8":
        return real_model(base, "fp8", Fp8Backend(attention=att, graphs=graphs)), att
    if name == "torchao_int8":
        from torchao.quantization import Int8DynamicActivationInt8WeightConfig
        from torchao.quantization import quantize_ as ao_quantize_

        from qarvd.quant.select import select_linears

        model = copy.deepcopy(base)
        names = set(select_linears(model))
        ao_quantize_(model, Int8DynamicActivationInt8WeightConfig(), filter_fn=lambda m, fqn: fqn in names)
        return model, att
    raise ValueError(f"unknown row {name!r}; choose from {ROWS}")


def rollout_once(model, batch: int, args):
    """One rollout of the benchmark's inputs (random context, seeds 0..batch-1); returns the latents."""
    from qarvd.models.rollout import RolloutConfig, rollout

    rc = RolloutConfig(num_frames=args.frames, frames_per_chunk=args.frames_per_chunk,
                       denoising_steps=[1000, 750, 500, 250][: args.steps], refresh_last=not args.skip_last_refresh)
    g = torch.Generator().manual_seed(args.seed)
    ctx = torch.randn(batch, model.cfg.text_len, model.cfg.text_dim, generator=g).to(torch.bfloat16)
    with torch.no_grad():
        return rollout(model, ctx, list(range(batch)), (model.cfg.in_dim, args.height, args.width), rc)


def time_rollout(model, batch: int, attention: str, args, device) -> dict:
    from qarvd.deploy.backends import sdpa_context

    times = []
    with sdpa_context(attention), torch.no_grad():
        latents = rollout_once(model, batch, args)  # warm-up (compiles, cuDNN plans)
        for _ in range(args.repeats):
            if device.type == "cuda":
                torch.cuda.synchronize()
                start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
                start.record()
                rollout_once(model, batch, args)
                end.record()
                torch.cuda.synchronize()
                times.append(start.elapsed_time(end) / 1e3)
            else:
                t = time.perf_counter()
                rollout_once(model, batch, args)
                times.append(time.perf_counter() - t)
    return dict(seconds=statistics.median(times), runs=times, finite=bool(torch.isfinite(latents).all()),
                latent_std=float(latents.float().std()), latents=latents)


def model_bytes(model) -> int:
    return sum(t.numel() * t.element_size() for t in list(model.parameters()) + list(model.buffers()))


def file_bytes(model, bf16: bool = False) -> int:
    """Bytes of the model's safetensors file (bf16: the plain state dict; else the deployment format)."""
    from qarvd.deploy import save_real
    from qarvd.utils.io import save_safetensors_atomic

    with tempfile.TemporaryDirectory() as tmp:
        if bf16:
            save_safetensors_atomic(Path(tmp) / "model.safetensors", model.state_dict())
        else:
            save_real(model, tmp)
        return os.path.getsize(Path(tmp) / "model.safetensors")


def check_section(base, fastest, args, device, rep: Report) -> None:
    """One cached forward (chunk 0) of each fused path against its reference, full size."""
    from qarvd.deploy.backends import TorchRefBackend
    from qarvd.deploy import accelerate_

    cfg = base.cfg
    b, f = 1, args.frames_per_chunk
    g = torch.Generator().manual_seed(1)
    x = torch.randn(b, cfg.in_dim, f, args.height, args.width, generator=g).to(device)
    t = torch.full((b, f), 937.5, device=device)
    ctx = torch.randn(b, cfg.text_len, cfg.text_dim, generator=g).to(device=device, dtype=torch.bfloat16)

    def fwd(model):
        from qarvd.deploy.backends import sdpa_context

        cache = model.new_cache(b, f, args.height, args.width)
        with sdpa_context(fastest if device.type == "cuda" else "auto"), torch.no_grad():
            return model(x, t, ctx, cache=cache).float()

    out = {}
    ref = fwd(base)
    fused, _ = build_row("bf16_fused", base, fastest, device)
    out["bf16_fused_vs_eager_rel"] = rel_err(fwd(fused), ref)
    del fused
    for name in ("w8a8", "w8a8_dual_exact", "w8a8_dual_int_ratio", "w4a8"):
        model, _ = build_row(name, base, fastest, device)
        y = fwd(model)
        accelerate_(model, TorchRefBackend(attention=fastest if device.type == "cuda" else "auto",
                                           dual_mode=model.blocks[0]._qarvd_plan.be.dual_mode))
        out[f"{name}_triton_vs_torch_ref_rel"] = rel_err(y, fwd(model))
        out[f"{name}_vs_bf16_rel"] = rel_err(y, ref)
        del model
        gc.collect()
    rep.put("check", out)
    log("check", out)


def twin_row(name: str):
    """The row whose latents ``name`` must reproduce bit for bit, if any: the eager rollout of a graph row, the fused
    CUTLASS epilogues of their unfused ablation (codes and residuals equal by construction)."""
    if "_unfused" in name:
        return name.replace("_unfused", "")
    return name[: -len(GRAPH)] if name.endswith(GRAPH) else None


def rollout_section(args, base, fastest, device, rep: Report) -> None:
    table = []
    sizes = dict(params=sum(p.numel() for p in base.parameters()),
                 bf16=dict(file_bytes=file_bytes(base, bf16=True), gpu_bytes=model_bytes(base)))
    rep.put("sizes", sizes)
    latents = {}
    for name in args.rows:
        for batch in args.batches:
            entry = dict(row=name, batch=batch)
            try:
                t0 = time.time()
                model, att = build_row(name, base, fastest, device)
                entry["attention"] = att
                if att == "cudnn_fp8":
                    from qarvd.deploy import calibrate_attention_fp8_

                    amax = calibrate_attention_fp8_(model, lambda: rollout_once(model, batch, args))
                    entry["fp8_attention_amax_median"] = amax.median(0).values.tolist()  # q, k, v, o
                entry["build_s"] = time.time() - t0
                fmt = name.removesuffix(GRAPH)  # a graph row stores the same modules as its eager row
                if fmt in SIZE_ROWS and fmt not in sizes:
                    sizes[fmt] = dict(file_bytes=file_bytes(model), gpu_bytes=model_bytes(model))
                    sizes[fmt]["x_smaller_than_bf16"] = sizes["bf16"]["file_bytes"] / sizes[fmt]["file_bytes"]
                    rep.put("sizes", sizes)
                entry.update(time_rollout(model, batch, att, args, device))
                latents[(name, batch)] = entry.pop("latents")
                twin = twin_row(name)
                if (twin, batch) in latents:  # the same arithmetic in another schedule: should be bit-identical
                    entry["twin_row"] = twin
                    entry["equal_to_twin_row"] = bool(torch.equal(latents[(twin, batch)], latents[(name, batch)]))
                    entry["max_abs_diff_to_twin_row"] = float((latents[(twin, batch)] - latents[(name, batch)])
                                                              .abs().max())
                ref = latents.get(("bf16_fused", batch))
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
    by = {(e["row"], e["batch"]): e.get("seconds") for e in table}
    ratios = {}
    for batch in args.batches:
        flash = by.get(("bf16_eager_flash", batch))
        bf16 = {row: v for (row, b), v in by.items()  # bf16 baselines: bf16 linears and bf16 attention
                if b == batch and v and row.startswith("bf16_") and FP8ATTN not in row}
        strongest = min(bf16, key=bf16.get) if bf16 else None
        for (row, b), s in by.items():
            if b == batch and s:
                ratios[f"{row}@b{batch}"] = dict(
                    seconds=s, speedup_vs_bf16_flash=(flash / s) if flash else None, strongest_bf16=strongest,
                    speedup_vs_strongest_bf16=(bf16[strongest] / s) if strongest else None)
    rep.put("rollout_ratios", ratios)


def profile_section(args, base, fastest, device, rep: Report, top: int = 25) -> None:
    """Where the GPU time of one rollout goes: CUDA kernel time summed by kernel name (torch.profiler), per row and
    batch, eager forwards (kernels inside replayed CUDA graphs are the same kernels, but not attributed)."""
    from torch.profiler import ProfilerActivity, profile

    from qarvd.deploy.backends import sdpa_context

    if device.type != "cuda":
        raise RuntimeError("the profile section times CUDA kernels: run it with --device cuda")
    out = []
    for name in args.profile_rows:
        for batch in args.batches:
            model, att = build_row(name, base, fastest, device)
            if att == "cudnn_fp8":
                from qarvd.deploy import calibrate_attention_fp8_

                calibrate_attention_fp8_(model, lambda: rollout_once(model, batch, args))
            with sdpa_context(att):
                rollout_once(model, batch, args)  # warm-up
                torch.cuda.synchronize()
                with profile(activities=[ProfilerActivity.CUDA]) as prof:
                    rollout_once(model, batch, args)
                    torch.cuda.synchronize()
            rows = [(e.key, e.device_time_total / 1e6, e.count) for e in prof.key_averages()
                    if e.device_time_total > 0]
            rows.sort(key=lambda r: -r[1])
            total = sum(r[1] for r in rows)
            entry = dict(row=name, batch=batch, attention=att, kernel_seconds=total,
                         top=[dict(kernel=k[:160], seconds=t, share=t / total, calls=c) for k, t, c in rows[:top]])
            out.append(entry)
            rep.put("profile", out)
            log("profile", {k: entry[k] for k in ("row", "batch", "kernel_seconds")})
            del model
            gc.collect()
            torch.cuda.empty_cache()


def markdown(rep: Report, out: Path, name: str) -> None:
    d = rep.data
    lines = [f"# DiT rollout latency ({d.get('env', {}).get('device', '?')})", "",
             "| row | batch | attention | seconds | vs bf16 flash | vs strongest bf16 | latent rel diff to bf16_fused "
             "|",
             "|---|---|---|---|---|---|---|"]
    for e in d.get("rollout", []):
        r = d.get("rollout_ratios", {}).get(f"{e['row']}@b{e['batch']}", {})
        fmt = lambda v: f"{v:.3f}" if isinstance(v, float) else "-"  # noqa: E731
        lines.append(f"| {e['row']} | {e['batch']} | {e.get('attention', '-')} | {fmt(e.get('seconds'))} | "
                     f"{fmt(r.get('speedup_vs_bf16_flash'))} | {fmt(r.get('speedup_vs_strongest_bf16'))} | "
                     f"{fmt(e.get('latent_rel_diff_to_bf16_fused'))} |"
                     + (f" error: {e['error'][:80]}" if "error" in e else ""))
    lines += ["", "| M | K | N | cuBLAS bf16 ms | W8 ms (x) | W8 asym-w ms | W8 dual exact ms | W8 dual int-ratio ms | "
              "W4 ms | _int_mm ms | FP8 ms |", "|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in d.get("gemm", []):
        g = lambda k: f"{r[k]:.4f}" if k in r else "-"  # noqa: E731
        lines.append(f"| {r['m']} | {r['k']} | {r['n']} | {g('cublas_bf16_ms')} | {g('w8_none_ms')} "
                     f"({r.get('w8_none_speedup_vs_cublas', 0):.2f}x) | {g('w8_none_asymw_ms')} | {g('w8_exact_ms')} | "
                     f"{g('w8_int_ratio_ms')} | "
                     f"{g('w4_none_ms')} | {g('torch_int_mm_ms')} | {g('fp8_scaled_mm_ms')} |")
    if "sizes" in d:
        lines += ["", "| format | file bytes | x smaller than bf16 |", "|---|---|---|"]
        for k, v in d["sizes"].items():
            if isinstance(v, dict):
                lines.append(f"| {k} | {v['file_bytes']} | {v.get('x_smaller_than_bf16', 1.0):.3f} |")
    (out / f"{name}.md").write_text("\n".join(lines) + "\n")


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", required=True, help="folder for <name>.json and <name>.md")
    p.add_argument("--name", default="bench_latency", help="file stem of the outputs")
    p.add_argument("--device", default="cuda")
    p.add_argument("--arch", choices=["wan", "tiny"], default="wan", help="wan: WanConfig() defaults; tiny: smoke")
    p.add_argument("--dtype", default="bfloat16")
    p.add_argument("--rows", nargs="+", default=ROWS, help=f"rollout rows, from {ROWS}")
    p.add_argument("--batches", nargs="+", type=int, default=[1, 2])
    p.add_argument("--repeats", type=int, default=3, help="timed rollouts per row (after one warm-up)")
    p.add_argument("--frames", type=int, default=21)
    p.add_argument("--frames-per-chunk", type=int, default=3)
    p.add_argument("--steps", type=int, default=4)
    p.add_argument("--skip-last-refresh", action="store_true",
                   help="drop the last chunk's K/V refresh forward (nothing reads it; same latents, 34 of 35 forwards)")
    p.add_argument("--height", type=int, default=60)
    p.add_argument("--width", type=int, default=104)
    p.add_argument("--gemm-m", nargs="+", type=int, default=[4680, 9360])
    p.add_argument("--tune", action="store_true", help="sweep GEMM tile configs (offline tuning) before timing")
    p.add_argument("--workers", type=int, default=12, help="processes compiling kernels in parallel for --tune")
    p.add_argument("--attention-backends", nargs="+", default=["flash", "cudnn", "efficient"])
    p.add_argument("--sections", nargs="+", default=["gemm", "act_quant", "attention", "check", "rollout"])
    p.add_argument("--w8-weights", choices=["symmetric", "asymmetric"], default="symmetric",
                   help="int8 weights of the GEMM problems and w8a8 rows (w8a8_asymw is always asymmetric)")
    p.add_argument("--profile-rows", nargs="+", default=["w8a8_fp8attn", "w8a8"],
                   help="rows (without _graph) whose GPU kernel times the 'profile' section breaks down")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    global ASYM_W8
    ASYM_W8 = args.w8_weights == "asymmetric"
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    device = torch.device(args.device)
    rep = Report(out, args.name)
    import triton

    env = dict(torch=torch.__version__, triton=triton.__version__, python=sys.version.split()[0],
               device=torch.cuda.get_device_name() if device.type == "cuda" else "cpu", args=vars(args))
    rep.put("env", env)
    log("env", env)
    torch.backends.cuda.matmul.allow_tf32 = True
    if "gemm" in args.sections:
        gemm_section(args, device, rep)
    if "act_quant" in args.sections:
        act_quant_section(device, rep, max(args.gemm_m), 1536 if args.arch == "wan" else TINY["dim"])
    base = base_model(args, device)
    fastest = "auto"
    if "attention" in args.sections and device.type == "cuda":
        fastest = attention_section(args, device, rep, base.cfg)
    for section, fn in (("check", lambda: check_section(base, fastest, args, device, rep)),
                        ("rollout", lambda: rollout_section(args, base, fastest, device, rep)),
                        ("profile", lambda: profile_section(args, base, fastest, device, rep))):
        if section in args.sections:
            try:
                fn()
            except Exception as e:  # noqa: BLE001
                rep.put(f"{section}_error", f"{type(e).__name__}: {e}")
                traceback.print_exc()
            markdown(rep, out, args.name)
    rep.put("kernel_resources", kernel_resources())
    markdown(rep, out, args.name)
    log("done", rep.path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
