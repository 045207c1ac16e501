"""Does FP8 attention beat cuDNN's bf16 attention at the rollout's shapes? Time and error, one run (GPU).

Self-attention of one DiT layer-forward per chunk c = 1..``chunks`` of a ``batch`` video (queries: the chunk's
``tokens`` tokens; keys: the ``tokens`` * c cached ones; 12 heads of 128): cuDNN bf16 SDPA (the rollout's attention)
against the FP8 E4M3 Triton kernel of kernels/attn_fp8.py (``triton``: per-chunk-and-head scales, V^T layout, at its
fastest tile config at the largest cache) and cuDNN's own FP8 SDPA through cudnn-frontend (``cudnn``:
kernels/attn_cudnn.py, per-tensor scales from the inputs' amax, FP8 output; its time includes quantizing q, as the
fused glue kernel would). Error: relative Frobenius error to float64 attention on 256 query rows, inputs shaped like
the model's (q and k RMS-normalised with a spread of head scales so the softmax is not flat). FP8 times include
quantizing q; writing the chunk's K/V into the FP8 copy (once per layer-forward, as the fused block does) is timed
separately. Settings: conf/bench/attention_fp8.yaml.
"""
from __future__ import annotations

import json
import statistics
from pathlib import Path

import torch
import torch.nn.functional as F
from omegaconf import DictConfig

from kernels import attn_cudnn as C
from kernels import attn_fp8 as A
from qarvd.bench.report import Report, device_name
from qarvd.bench.timing import bench_ms
from qarvd.deploy.backends import sdpa_context

CONFIGS = [(64, 128, 4, 3), (128, 128, 8, 3), (64, 128, 4, 4), (128, 64, 4, 4), (64, 64, 4, 4)]  # Triton tiles tried
HEADS, HEAD_DIM = 12, 128  # Wan2.1-1.3B self-attention
FORWARDS = 5 * 30  # per chunk and video: (4 denoising steps + refresh) x 30 layers
IMPLS = ("triton", "cudnn")
CUDA = torch.device("cuda")


def _ms(fn) -> float:
    return bench_ms(fn, CUDA)


def inputs(b, lq, lk, h, d, g):
    """q, k RMS-normalised per token with per-head gains (peaked softmax), v Gaussian; bf16 [B, L, H, D]."""
    gain = torch.linspace(0.5, 2.5, h, device="cuda")[None, None, :, None]

    def normed(n):
        x = torch.randn(b, n, h, d, device="cuda", generator=g)
        return (x / x.pow(2).mean(-1, keepdim=True).sqrt() * gain).to(torch.bfloat16)

    q, k = normed(lq), normed(lk)
    k = k + q[:, torch.randint(0, lq, (lk,), device="cuda", generator=g)] * 0.5  # keys correlated with queries
    return q, k.to(torch.bfloat16), torch.randn(b, lk, h, d, device="cuda", generator=g).to(torch.bfloat16)


def attention_err(out, q, k, v, rows: int = 256) -> float:
    """Relative error of ``out`` to float64 attention on the first ``rows`` queries."""
    sl = slice(0, rows)
    ref = F.scaled_dot_product_attention(q[:, sl].transpose(1, 2).double(), k.transpose(1, 2).double(),
                                         v.transpose(1, 2).double()).transpose(1, 2)
    return float((out[:, sl].double() - ref).norm() / ref.norm())


def fp8_cache(k, v, lq: int):
    """The Triton kernel's FP8 K/V cache, written chunk by chunk as the rollout does (one scale per chunk and head)."""
    b, n, h, d = k.shape
    kv = A.Fp8KV(b, n, h, d, "cuda")
    for s in range(0, n, lq):
        kv.write(k[:, s:s + lq], v[:, s:s + lq], s)
    return kv


def tune_triton(q, k, v, lq: int, res: dict):
    """Time every Triton tile config at the largest cache into res["tuning"]; returns the fastest config."""
    kv = fp8_cache(k, v, lq)
    best = None
    for cfg in CONFIGS:
        try:
            kv.attend(q, k.shape[1], config=cfg)
            t = _ms(lambda: kv.attend(q, k.shape[1], config=cfg))
        except Exception as e:  # noqa: BLE001 - a config that does not compile is a result
            res["tuning"][str(cfg)] = f"{type(e).__name__}: {str(e)[-300:]}"
            continue
        res["tuning"][str(cfg)] = t
        if best is None or t < best[1]:
            best = (cfg, t)
    if best is None:
        raise RuntimeError(f"no FP8 attention config compiled: {res['tuning']}")
    return best[0]


def cudnn_fp8_times(cud, q, k, v, row: dict, graph_check: bool) -> None:
    """cuDNN FP8 SDPA at per-tensor amax scales: time (with and without quantizing q), error to float64 and to its
    float32 emulation; ``graph_check``: a replay inside a CUDA graph gives the eager output."""
    amax = [t.abs().amax().float() / C.FP8_MAX for t in (q, k, v)]
    k8, v8 = C.quantize_fp8(k, amax[1]), C.quantize_fp8(v, amax[2])
    o_scale = v.abs().amax().float() / C.FP8_MAX  # |o| <= max |v|
    scalars = C.fp8_scalars(torch.stack(amax + [o_scale]))
    out8 = torch.empty(q.shape, dtype=torch.float8_e4m3fn, device="cuda")

    def cudnn_fp8():
        return cud(C.quantize_fp8(q, amax[0]), k8, v8, scalars, out8)

    row["cudnn_fp8_ms"] = _ms(cudnn_fp8)
    q8 = C.quantize_fp8(q, amax[0])
    row["cudnn_fp8_kernel_ms"] = _ms(lambda: cud(q8, k8, v8, scalars, out8))  # without quantizing q
    row["cudnn_fp8_err"] = attention_err(cudnn_fp8().float() * o_scale, q, k, v)
    ref = C.fp8_attention_ref(q[:, :256].float(), k.float(), v.float(), torch.stack(amax + [o_scale])).float() \
        * o_scale
    row["cudnn_fp8_vs_emulation"] = float((cudnn_fp8()[:, :256].float() * o_scale - ref).norm() / ref.norm())
    if graph_check:
        graph = torch.cuda.CUDAGraph()
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):
            cudnn_fp8()
        torch.cuda.current_stream().wait_stream(side)
        with torch.cuda.graph(graph):
            cudnn_fp8()
        eager = out8.float().clone()
        out8.zero_()
        graph.replay()
        torch.cuda.synchronize()
        row["cudnn_fp8_graph_replay_equal"] = bool(torch.equal(out8.float(), eager))


def bench_attention_fp8(cfg: DictConfig) -> Path:
    """Tune the Triton kernel, then one row per chunk and the sums; writes ``<out>/<name>.json``."""
    impls = list(cfg.impls)
    if not set(impls) <= set(IMPLS):
        raise ValueError(f"impls={impls}; choose from {IMPLS}")
    if not torch.cuda.is_available():
        raise RuntimeError("bench_attention_fp8 times CUDA kernels: it needs a GPU")
    b, lq, h, d = cfg.batch, cfg.tokens, HEADS, HEAD_DIM
    g = torch.Generator(device="cuda").manual_seed(cfg.seed)
    Path(cfg.out).mkdir(parents=True, exist_ok=True)
    rep = Report(Path(cfg.out), cfg.name)
    res = rep.data
    res.update(device=device_name(CUDA), torch=torch.__version__, shape=dict(b=b, lq=lq, h=h, d=d), tuning={},
               chunks=[])
    q, k, v = inputs(b, lq, lq * cfg.chunks, h, d, g)
    best = tune_triton(q, k, v, lq, res) if "triton" in impls else None
    res["best"] = list(best) if best else None
    cud = None
    if "cudnn" in impls:
        cud = C.CudnnFp8Attention(CUDA)
        res["cudnn_frontend"] = C._cudnn().__version__ if hasattr(C._cudnn(), "__version__") else "?"
        res["cudnn_backend"] = C._cudnn().backend_version()
    rep.put("tuning", res["tuning"])
    print("tuning", res["tuning"], flush=True)

    tot = dict(cudnn=0.0, fp8=0.0, write=0.0, cudnn_fp8=0.0)
    flop_total = 0.0
    for c in range(1, cfg.chunks + 1):
        q, k, v = inputs(b, lq, lq * c, h, d, g)
        kv = fp8_cache(k, v, lq) if "triton" in impls else None
        flop = 4 * b * h * lq * lq * c * d
        flop_total += flop
        row = dict(chunk=c, lk=lq * c)

        def cudnn():
            with sdpa_context("cudnn"):
                return F.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2),
                                                      v.transpose(1, 2)).transpose(1, 2)

        row["cudnn_ms"] = _ms(cudnn)
        row["cudnn_err"] = attention_err(cudnn(), q, k, v)
        timed = [("cudnn_ms", "cudnn")]
        if kv is not None:  # the FP8 time includes quantizing q (attend); the chunk's K/V write is timed on its own
            row["triton_fp8_ms"] = _ms(lambda: kv.attend(q, k.shape[1], config=best))
            row["triton_fp8_err"] = attention_err(kv.attend(q, k.shape[1], config=best), q, k, v)
            row["write_chunk_ms"] = _ms(lambda: kv.write(k[:, -lq:], v[:, -lq:], lq * (c - 1)))
            timed += [("triton_fp8_ms", "fp8"), ("write_chunk_ms", "write")]
        if cud is not None:
            cudnn_fp8_times(cud, q, k, v, row, graph_check=c == cfg.chunks)
            timed += [("cudnn_fp8_ms", "cudnn_fp8")]
        for key, name in timed:
            tot[name] += row[key]
        row["tflops"] = {kk: flop / row[kk] / 1e9 for kk, _ in timed if kk != "write_chunk_ms"}
        res["chunks"].append(row)
        rep.put("chunks", res["chunks"])
        print(row, flush=True)
    res["sum_ms"] = tot
    res["tflops_sum"] = {kk: flop_total / tot[kk] / 1e9 for kk in ("cudnn", "fp8", "cudnn_fp8") if tot[kk]}
    res["est_video_s"] = {kk: v * FORWARDS / 1e3 for kk, v in tot.items()}
    if tot["fp8"]:
        res["fp8_speedup_vs_cudnn"] = tot["cudnn"] / tot["fp8"]
        res["fp8_with_write_speedup_vs_cudnn"] = tot["cudnn"] / (tot["fp8"] + tot["write"])
    if tot["cudnn_fp8"]:
        res["cudnn_fp8_speedup_vs_cudnn"] = tot["cudnn"] / tot["cudnn_fp8"]
    rep.put("err_median", {kk: statistics.median(r[f"{kk}_err"] for r in res["chunks"])
                           for kk in ("cudnn", "triton_fp8", "cudnn_fp8") if f"{kk}_err" in res["chunks"][0]})
    print(json.dumps({k: res.get(k) for k in ("best", "sum_ms", "tflops_sum", "est_video_s", "fp8_speedup_vs_cudnn",
                                              "fp8_with_write_speedup_vs_cudnn", "cudnn_fp8_speedup_vs_cudnn",
                                              "err_median")}, indent=1))
    return rep.path
