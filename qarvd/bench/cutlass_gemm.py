"""INT8 GEMM with its dequantizing epilogue (CUTLASS, kernels/cutlass_gemm.py) against cuBLAS bf16 and FP8, one run.

The three Wan GEMM shapes (K, N = 1536, 1536 / 1536, 8960 / 8960, 1536) at each M of ``m`` (one chunk, batch 1 and
2). GPU time of 20 back-to-back calls captured in one CUDA graph (no launch cost, no L2 flush; the same for every
row), median of 5 replays. Each CUTLASS config is checked against float64 (relative error of the bf16 output) before
it is timed; a config that fails to run is recorded with its error. The int_ratio config runs the dual-scale
accumulator with one outlier k-tile (128 columns, Q-ARVD's setting here) and ratios in [1, 7]: its time against
config 0's is the cost of the ratio step.

Then one row per Wan layer with a consumer (:func:`epilogue_rows`): ffn.0 GELU -> ffn.2 codes, the gated residual of
self_attn.o and ffn.2 (one gate per 1560-token frame) and the un-gated one of cross_attn.o, each timed as CUTLASS
store + the separate Triton consumer pass (the unfused path, `kernel.fuse_epilogues=false`), the CUTLASS fused
epilogue in every config the library instantiates for it (the gated residual runs batched, one batch per frame: the
tile counts are in the row), and the Triton qgemm with its own fused epilogue. Settings: conf/bench/cutlass_gemm.yaml.
"""
from __future__ import annotations

import json
from pathlib import Path

import torch
from omegaconf import DictConfig

from kernels import act_quant, glue, qgemm
from kernels import cutlass_gemm as C
from qarvd.bench.report import Report, device_name
from qarvd.bench.timing import graph_ms
from qarvd.deploy.modules import RealQuantLinear

SHAPES = [(1536, 1536), (1536, 8960), (8960, 1536)]
TOKENS_PER_FRAME = 1560
REPLAYS = 5  # CUDA-graph replays timed per measurement
# (layer, epilogue, K, N, gated) of the Wan block (qarvd/deploy/fast.py)
LAYERS = [("ffn.0", "gelu_quant", 1536, 8960, False), ("self_attn.o", "residual", 1536, 1536, True),
          ("ffn.2", "residual", 8960, 1536, True), ("cross_attn.o", "residual", 1536, 1536, False)]


def _ms(fn) -> float:
    return graph_ms(fn, replays=REPLAYS)


def _layer(k: int, n: int, act_range=(-2.5, 4.0)):
    """A symmetric-weight W8A8 layer (the CUTLASS path's format) with random weights, on the GPU."""
    return RealQuantLinear.random(k, n, asym_w=False, act_range=act_range, device="cuda")


def gemm_rows(m: int) -> list[dict]:
    """Per Wan shape: every CUTLASS config against cuBLAS bf16 and FP8 _scaled_mm."""
    rows = []
    for k, n in SHAPES:
        a = torch.randint(-128, 128, (m, k), dtype=torch.int8, device="cuda")
        w = torch.randint(-128, 128, (n, k), dtype=torch.int8, device="cuda")
        scale = torch.rand(n, device="cuda") * 1e-4 + 1e-5
        bias = torch.randn(n, device="cuda")
        ab, wb = a.to(torch.bfloat16), w.to(torch.bfloat16)
        a8, w8 = a.to(torch.float8_e4m3fn), w.to(torch.float8_e4m3fn)
        one = torch.ones((), device="cuda")
        row = dict(m=m, k=k, n=n, gop=2 * m * n * k / 1e9)
        row["cublas_bf16_ms"] = _ms(lambda: ab @ wb.T)
        row["fp8_scaled_mm_ms"] = _ms(lambda: torch._scaled_mm(a8, w8.T, one, one, out_dtype=torch.bfloat16))
        ratio = torch.randint(1, 8, (C._tiles(n) * 128,), dtype=torch.int32, device="cuda")
        for i, name in enumerate(C.CONFIGS):
            kw = dict(ratio=ratio, outlier_k_tiles=1) if i == C.INT_RATIO_CONFIG else {}
            ref = C.int8_gemm_ref(a[:256], w, scale, bias, **kw)
            try:
                y = C.int8_gemm(a, w, scale, bias, config=i, **kw)
                row[f"{name}_rel_err"] = float((y[:256].double() - ref).norm() / ref.norm())
                row[f"{name}_ms"] = _ms(lambda: C.int8_gemm(a, w, scale, bias, config=i, **kw))
                row[f"{name}_x_cublas"] = row["cublas_bf16_ms"] / row[f"{name}_ms"]
            except Exception as e:  # noqa: BLE001 - a config that does not run is a result
                row[f"{name}_error"] = f"{type(e).__name__}: {str(e)[:300]}"
        plain = [nm for i, nm in enumerate(C.CONFIGS) if i != C.INT_RATIO_CONFIG]
        timed = {nm: row[f"{nm}_ms"] for nm in plain if f"{nm}_ms" in row}
        if timed:
            best = min(timed, key=timed.get)
            row["best"] = best
            row["best_x_cublas"] = row["cublas_bf16_ms"] / timed[best]
            row["best_tops"] = row["gop"] / timed[best]
        row["fp8_x_cublas"] = row["cublas_bf16_ms"] / row["fp8_scaled_mm_ms"]
        rows.append(row)
        print(json.dumps(row), flush=True)
    return rows


def epilogue_rows(m: int) -> list[dict]:
    """Per Wan layer with a consumer: unfused (CUTLASS store + Triton pass) vs fused CUTLASS vs Triton qgemm."""
    rows = []
    for name, epilogue, k, n, gated in LAYERS:
        lin = _layer(k, n).group()
        a = torch.randint(-128, 128, (1, m, k), dtype=torch.int8, device="cuda")
        scale, bias = C._columns(lin, 0)[:2]
        row = dict(layer=name, epilogue=epilogue, m=m, k=k, n=n, gated=gated)
        if epilogue == "gelu_quant":
            act = _layer(n, 32, act_range=(-0.2, 6.0)).stacked_act()
            fused_kw = dict(quant=(act.col_scale, act.col_zero, act.lo, act.hi))
            out = torch.empty((m, n), dtype=torch.int8, device="cuda")
            kw = dict(epilogue=epilogue, next_act=act)

            def consumer(y, dst):
                return act_quant.norm_quant(y, act, pre_gelu=True)[0][0][:, :n]
        else:
            res = torch.randn(m, n, device="cuda").to(torch.bfloat16)
            s = TOKENS_PER_FRAME if gated else 1
            gate = torch.randn(m // TOKENS_PER_FRAME, 6, n, device="cuda")[:, 2] if gated else None
            fused_kw = dict(residual=res, gate=gate, tokens_per_frame=s)
            out = res  # timed in place, as the block runs it
            kw = dict(epilogue=epilogue, residual=res, out=res, gate=gate, tokens_per_frame=s)
            row["m_tiles"] = C._tiles(m)
            row["m_tiles_batched"] = C._tiles(s) * (m // s) if gated else C._tiles(m)

            def consumer(y, dst):
                return glue.residual_update(res, y, gate, s, out=dst)
        store_cfg = C.config_for("store", k, n)
        y = torch.empty((m, n), dtype=torch.bfloat16, device="cuda")

        def unfused(dst):
            return consumer(C.int8_gemm(a[0], lin.weight, scale, bias, out=y, config=store_cfg), dst)

        def fused(cfg, dst):
            return C.int8_gemm(a[0], lin.weight, scale, bias, out=dst, config=cfg, **fused_kw)

        reason = C.unfused_reason(epilogue, lin, m, **{x: v for x, v in kw.items() if x != "epilogue"})
        row["fused_by_qgemm_cutlass"] = reason is None
        row["config_by_shape"] = C.CONFIGS[C.config_for(epilogue, k, n)]
        row["unfused_ms"] = _ms(lambda: unfused(out))
        for cfg, nm in enumerate(C.CONFIGS):
            if (cfg, epilogue) not in C.INSTANCES or cfg == C.INT_RATIO_CONFIG:  # a plain layer: no ratios
                continue
            try:  # bit-exactness against the unfused path (fresh outputs), before timing
                row[f"fused_{nm}_differ"] = int((fused(cfg, None) != unfused(None)).sum())
                row[f"fused_{nm}_ms"] = _ms(lambda: fused(cfg, out))
                row[f"fused_{nm}_x_unfused"] = row["unfused_ms"] / row[f"fused_{nm}_ms"]
            except Exception as e:  # noqa: BLE001 - a config that does not run is a result
                row[f"fused_{nm}_error"] = f"{type(e).__name__}: {str(e)[:300]}"
        row["triton_qgemm_ms"] = _ms(lambda: qgemm.qgemm(a, None, lin, m, **kw))
        rows.append(row)
        print(json.dumps(row), flush=True)
    return rows


def bench_cutlass_gemm(cfg: DictConfig) -> Path:
    """Every M of ``m``: the shape rows, then the epilogue rows; ``<out>/<name>.json`` rewritten after each M."""
    if not torch.cuda.is_available():
        raise RuntimeError("bench_cutlass_gemm times CUDA kernels: it needs a GPU")
    torch.manual_seed(cfg.seed)
    Path(cfg.out).mkdir(parents=True, exist_ok=True)
    rep = Report(Path(cfg.out), cfg.name)
    rep.data.update(device=device_name(torch.device("cuda")), torch=torch.__version__, configs=list(C.CONFIGS))
    rows, epilogues = [], []
    for m in cfg.m:
        rows += gemm_rows(m)
        rep.put("rows", rows)
        epilogues += epilogue_rows(m)
        rep.put("epilogue_rows", epilogues)
    return rep.path
