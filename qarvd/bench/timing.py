"""The benchmarks' clocks, one implementation each so that every benchmark's numbers mean the same thing: GPU time by
CUDA events or by replays of a captured CUDA graph, host launch cost, and the wall time and peak memory of a phase."""
from __future__ import annotations

import resource
import statistics
import time
from pathlib import Path

import torch


def bench_ms(fn, device: torch.device, graph: bool = False) -> float:
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
    """Median milliseconds per call of ``calls`` back-to-back calls captured in one CUDA graph, over ``replays``
    replays after a warm one (no host launch cost; no L2 flush between calls, the same for every kernel compared)."""
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


def host_us(fn, device: torch.device, calls: int = 200) -> float:
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


class Timer:
    """Wall seconds of a block of work (synchronised on CUDA) and, on CUDA, its peak GPU memory: since the block
    began with ``reset_peak``, else since the last reset (so one peak can span several blocks)."""

    def __init__(self, device: torch.device, reset_peak: bool = False) -> None:
        self.cuda, self.reset_peak = device.type == "cuda", reset_peak
        self.seconds, self.gpu = float("nan"), None

    def __enter__(self) -> "Timer":
        if self.cuda:
            torch.cuda.synchronize()
            if self.reset_peak:
                torch.cuda.reset_peak_memory_stats()
        self.t0 = time.perf_counter()
        return self

    def __exit__(self, *exc) -> None:
        if self.cuda:
            torch.cuda.synchronize()
        self.seconds = time.perf_counter() - self.t0
        self.gpu = ({"peak_allocated_gb": torch.cuda.max_memory_allocated() / 2**30,
                     "peak_reserved_gb": torch.cuda.max_memory_reserved() / 2**30} if self.cuda else None)


def peak_rss_gb() -> float:
    """Peak resident set size of this process so far (ru_maxrss is in KiB on Linux)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20


def host_rss_gb() -> dict:
    """Current and peak resident set size of this process (Linux /proc)."""
    out = {}
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(("VmRSS:", "VmHWM:")):
            out["current" if line.startswith("VmRSS") else "peak"] = int(line.split()[1]) / 2**20
    return out
