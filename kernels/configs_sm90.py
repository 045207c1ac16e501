"""Frozen launch configurations of the quantized GEMM for sm_90 (H100/H200): no autotuning at run time.

The table was produced offline by ``scripts/bench_latency.py tune=true`` on an H100 (see kernels/NOTES.md) and pasted
here; keys are (variant, epilogue, Kp, total N) with variant ``w8``/``w4`` + dual mode. Shapes not in the table
use the variant's default. Under the Triton interpreter (CPU tests) small tiles keep the tests fast.
"""
from __future__ import annotations

from dataclasses import dataclass, replace

from kernels._common import interpreting


@dataclass(frozen=True)
class GemmConfig:
    bm: int = 128
    bn: int = 256
    bk: int = 128
    group_m: int = 8
    num_warps: int = 8
    num_stages: int = 4
    persistent: bool = False
    occupancy: int = 1  # persistent grid = SMs x occupancy
    flatten: bool = False  # flatten the persistent tile loop into the K loop (cross-tile pipelining)
    subtile: int = 2  # epilogue in column halves (2) or whole (1): halves the live epilogue registers
    tma_store: bool = True  # store/residual epilogues write through a TMA descriptor (no per-element addresses)

    def to_dict(self) -> dict:
        return dict(bm=self.bm, bn=self.bn, bk=self.bk, group_m=self.group_m, num_warps=self.num_warps,
                    num_stages=self.num_stages, persistent=self.persistent, occupancy=self.occupancy,
                    flatten=self.flatten, subtile=self.subtile, tma_store=self.tma_store)


DEFAULTS = {  # shapes not in the table (other models); 3 stages leave shared memory for an fp32 TMA-store tile
    "w8_none": GemmConfig(128, 256, 128, 8, 8, 3),
    "w8_int_ratio": GemmConfig(128, 256, 128, 8, 8, 3),
    "w8_exact": GemmConfig(128, 128, 128, 8, 8, 3),
    "w4_none": GemmConfig(128, 128, 128, 8, 8, 3),
    "w4_int_ratio": GemmConfig(128, 128, 128, 8, 8, 3),
    "w4_exact": GemmConfig(128, 128, 128, 8, 4, 3),
}

# (variant, epilogue, Kp, N_total) -> config. Tuned offline at M = 9360 (one chunk, batch 2) on an H100 80GB HBM3,
# Triton 3.6, timing 20 back-to-back calls in one CUDA graph (benchmarks/results/h100_run4.json, "gemm_table");
# M is not specialised, smaller M reuse the entry.
TABLE: dict[tuple[str, str, int, int], GemmConfig] = {
    ("w4_none", "gelu_quant", 1536, 8960): GemmConfig(256, 128, 128, 8, 8, 3, False, 1),
    ("w4_none", "residual", 1536, 1536): GemmConfig(128, 128, 128, 8, 4, 3, False, 1),
    ("w4_none", "residual", 8960, 1536): GemmConfig(256, 128, 128, 8, 8, 3, False, 1),
    ("w4_none", "store", 1536, 1536): GemmConfig(256, 128, 128, 8, 8, 3, False, 1),
    ("w4_none", "store", 1536, 4608): GemmConfig(256, 128, 128, 8, 8, 3, False, 1),
    ("w4_none", "store", 1536, 8960): GemmConfig(256, 128, 128, 8, 8, 3, False, 1),
    ("w4_none", "store", 8960, 1536): GemmConfig(256, 128, 128, 8, 8, 3, False, 1),
    ("w8_exact", "gelu_quant", 1536, 8960): GemmConfig(256, 128, 128, 8, 8, 3, False, 1),
    ("w8_exact", "residual", 1536, 1536): GemmConfig(128, 128, 64, 8, 4, 5, False, 1),
    ("w8_exact", "residual", 8960, 1536): GemmConfig(128, 128, 128, 8, 8, 4, False, 1),
    ("w8_exact", "store", 1536, 1536): GemmConfig(128, 128, 64, 8, 4, 5, False, 1),
    ("w8_exact", "store", 1536, 4608): GemmConfig(128, 128, 64, 8, 4, 5, False, 1),
    ("w8_exact", "store", 1536, 8960): GemmConfig(128, 128, 64, 8, 4, 5, False, 1),
    ("w8_exact", "store", 8960, 1536): GemmConfig(128, 128, 128, 8, 8, 4, False, 1),
    ("w8_int_ratio", "gelu_quant", 1536, 8960): GemmConfig(256, 128, 128, 8, 8, 4, False, 1),
    ("w8_int_ratio", "residual", 1536, 1536): GemmConfig(128, 256, 128, 8, 8, 4, True, 1),
    ("w8_int_ratio", "residual", 8960, 1536): GemmConfig(128, 256, 128, 8, 8, 4, False, 1),
    ("w8_int_ratio", "store", 1536, 1536): GemmConfig(256, 128, 128, 8, 8, 3, False, 1),
    ("w8_int_ratio", "store", 1536, 4608): GemmConfig(128, 256, 128, 8, 8, 4, True, 1),
    ("w8_int_ratio", "store", 1536, 8960): GemmConfig(128, 256, 128, 8, 8, 4, True, 1),
    ("w8_int_ratio", "store", 8960, 1536): GemmConfig(128, 256, 128, 8, 8, 4, False, 1),
    ("w8_none", "gelu_quant", 1536, 8960): GemmConfig(128, 256, 128, 8, 8, 3, False, 1, subtile=1),
    ("w8_none", "residual", 1536, 1536): GemmConfig(256, 128, 128, 8, 8, 4, False, 1, subtile=2, tma_store=False),
    ("w8_none", "residual", 8960, 1536): GemmConfig(256, 128, 128, 8, 8, 4, False, 1),
    ("w8_none", "store", 1536, 1536): GemmConfig(128, 256, 128, 8, 8, 3, False, 1, subtile=1),
    ("w8_none", "store", 1536, 4608): GemmConfig(128, 256, 128, 8, 8, 3, False, 1, subtile=1),
    ("w8_none", "store", 1536, 8960): GemmConfig(128, 256, 128, 8, 8, 4, True, 1),
    ("w8_none", "store", 8960, 1536): GemmConfig(128, 256, 128, 8, 8, 3, False, 1, subtile=1),
}

INTERPRETER = GemmConfig(32, 32, 128, 2, 4, 1)


def variant(lin) -> str:
    return f"{'w4' if lin.int4 else 'w8'}_{lin.dual}"


def lookup(lin, m: int, epilogue: str) -> GemmConfig:
    if interpreting():
        return INTERPRETER
    v = variant(lin)
    cfg = TABLE.get((v, epilogue, lin.kp, lin.n * lin.count), DEFAULTS[v])
    while lin.count > 1 and lin.n % cfg.bn and cfg.bn > 32:  # grouped launches need tiles that do not straddle
        cfg = replace(cfg, bn=cfg.bn // 2)
    return cfg
