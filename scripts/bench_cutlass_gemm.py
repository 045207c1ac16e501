"""INT8 GEMM with its dequantizing epilogue (CUTLASS, kernels/cutlass_gemm.py) against cuBLAS bf16 and FP8, one run.

    python scripts/bench_cutlass_gemm.py --out benchmarks/results --name cutlass_gemm

The three Wan GEMM shapes (K, N = 1536, 1536 / 1536, 8960 / 8960, 1536) at M = 4680 and 9360 (one chunk, batch 1
and 2). GPU time of 20 back-to-back calls captured in one CUDA graph (no launch cost, no L2 flush; the same for every
row), median of 5 replays. Each CUTLASS config is checked against float64 (relative error of the bf16 output) before
it is timed; a config that fails to run is recorded with its error.
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path

import torch

SHAPES = [(1536, 1536), (1536, 8960), (8960, 1536)]


def graph_ms(fn, calls: int = 20, replays: int = 5) -> float:
    fn()
    torch.cuda.synchronize()
    s = torch.cuda.Stream()
    s.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(s):
        fn()
    torch.cuda.current_stream().wait_stream(s)
    g = torch.cuda.CUDAGraph()
    with torch.cuda.graph(g):
        for _ in range(calls):
            fn()
    times = []
    for _ in range(replays + 1):
        a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        a.record()
        g.replay()
        b.record()
        torch.cuda.synchronize()
        times.append(a.elapsed_time(b) / calls)
    return statistics.median(times[1:])


def main(argv=None) -> int:
    from kernels import cutlass_gemm as C

    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", required=True)
    p.add_argument("--name", default="cutlass_gemm")
    p.add_argument("--m", nargs="+", type=int, default=[4680, 9360])
    args = p.parse_args(argv)
    torch.manual_seed(0)
    res = dict(device=torch.cuda.get_device_name(), torch=torch.__version__, configs=list(C.CONFIGS), rows=[])
    for m in args.m:
        for k, n in SHAPES:
            a = torch.randint(-128, 128, (m, k), dtype=torch.int8, device="cuda")
            w = torch.randint(-128, 128, (n, k), dtype=torch.int8, device="cuda")
            scale = torch.rand(n, device="cuda") * 1e-4 + 1e-5
            bias = torch.randn(n, device="cuda")
            ab, wb = a.to(torch.bfloat16), w.to(torch.bfloat16)
            a8, w8 = a.to(torch.float8_e4m3fn), w.to(torch.float8_e4m3fn)
            one = torch.ones((), device="cuda")
            row = dict(m=m, k=k, n=n, gop=2 * m * n * k / 1e9)
            row["cublas_bf16_ms"] = graph_ms(lambda: ab @ wb.T)
            row["fp8_scaled_mm_ms"] = graph_ms(lambda: torch._scaled_mm(a8, w8.T, one, one, out_dtype=torch.bfloat16))
            ref = C.int8_gemm_ref(a[:256], w, scale, bias)
            for i, name in enumerate(C.CONFIGS):
                try:
                    y = C.int8_gemm(a, w, scale, bias, config=i)
                    row[f"{name}_rel_err"] = float((y[:256].double() - ref).norm() / ref.norm())
                    row[f"{name}_ms"] = graph_ms(lambda: C.int8_gemm(a, w, scale, bias, config=i))
                    row[f"{name}_x_cublas"] = row["cublas_bf16_ms"] / row[f"{name}_ms"]
                except Exception as e:  # noqa: BLE001 - a config that does not run is a result
                    row[f"{name}_error"] = f"{type(e).__name__}: {str(e)[:300]}"
            timed = {nm: row[f"{nm}_ms"] for nm in C.CONFIGS if f"{nm}_ms" in row}
            if timed:
                best = min(timed, key=timed.get)
                row["best"] = best
                row["best_x_cublas"] = row["cublas_bf16_ms"] / timed[best]
                row["best_tops"] = row["gop"] / timed[best]
            row["fp8_x_cublas"] = row["cublas_bf16_ms"] / row["fp8_scaled_mm_ms"]
            res["rows"].append(row)
            print(json.dumps(row), flush=True)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / f"{args.name}.json").write_text(json.dumps(res, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
