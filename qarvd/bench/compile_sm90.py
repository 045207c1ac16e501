"""Offline sm_90 (H100/H200) compile check of every Triton kernel the rollout launches, on a machine without a GPU.

Why: the CPU tests run the kernels in Triton's interpreter, which accepts code the real compiler rejects and never
allocates shared memory, so both kinds of error used to surface only on the GPU. Here a compile-only driver (target
sm_90, device 0, stream 0) stands in for the CUDA driver and every launch becomes a warm-up (compile, do not run);
the real wrappers are then called with CPU tensors at one self-forcing Wan2.1-1.3B chunk at batch 2 (M = 9360
tokens, dim 1536, ffn 8960, 12 heads x 128, a 32760-token KV cache), as the fused block forward
(qarvd/deploy/fast.py) and the CUTLASS backend call them (plus the FP8 attention of kernels/attn_fp8.py, host TMA
descriptors included), so each kernel compiles with the constexprs, specialisations, warps and stages of its
production launch (GEMM tiles from kernels/configs_sm90.py). A launch passes when it yields a cubin whose shared
memory fits sm_90's 227 KB per block and whose registers fit 64K per block. Registers and local memory (spills) come
from cuobjdump, which Triton ships.

Triton picks interpreter or compiler when a kernel is decorated, so this module turns the interpreter off before it
imports kernels/: import it in a fresh process (scripts/compile_sm90.py; settings in conf/bench/compile_sm90.yaml).
"""
from __future__ import annotations

import contextlib
import os
import re
import subprocess
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from functools import partial
from pathlib import Path

os.environ.pop("TRITON_INTERPRET", None)  # before kernels is imported: Triton picks interpreter or compiler then

import torch  # noqa: E402
from omegaconf import DictConfig  # noqa: E402
from triton import knobs  # noqa: E402
from triton.backends.compiler import GPUTarget  # noqa: E402
from triton.runtime import driver  # noqa: E402
from triton.runtime.jit import JITFunction  # noqa: E402

from kernels import act_quant, attn_fp8, glue, qgemm  # noqa: E402
from kernels.layout import stack_acts  # noqa: E402
from kernels.qgemm import SMEM_LIMIT  # noqa: E402
from qarvd.deploy.modules import RealQuantLinear, stack_group  # noqa: E402
from qarvd.utils.io import atomic_write_json  # noqa: E402

TARGET = GPUTarget("cuda", 90, 32)
REGS_PER_BLOCK = 65536  # sm_90 register file available to one block
M, S, TOKENS, CACHE = 9360, 1560, 4680, 32760  # rows of a batch-2 chunk, tokens per frame, per sample, 7 chunks
DIM, FFN, HEADS, HD, EPS = 1536, 8960, 12, 128, 1e-6
BF16 = torch.bfloat16
# (family, weight bits, outlier columns, dual-scale mode, asymmetric weights): the int rows of conf/bench/latency.yaml
INT_FAMILIES = [("w8", 8, 0, "exact", False), ("w8_asymw", 8, 0, "exact", True),
                ("w8_dual_exact", 8, 128, "exact", False), ("w8_dual_int_ratio", 8, 128, "int_ratio", False),
                ("w4", 4, 0, "exact", True)]
FAMILIES = [f[0] for f in INT_FAMILIES] + ["bf16", "fp8", "glue", "attn_fp8"]


class CompileOnlyDriver:
    """Stands in for ``triton.runtime.driver.active``: the sm_90 target, device 0, stream 0; nothing is loaded."""

    def get_current_target(self):
        return TARGET

    def get_current_device(self):
        return 0

    def get_current_stream(self, device=None):
        return 0


@contextlib.contextmanager
def compile_only():
    """Inside, every Triton launch compiles for sm_90 and returns without running; yields the list of compiled
    kernels, appended to as launches happen."""
    # the driver in use before (None: Triton's lazy default); reset_active() would create a CUDA driver, which
    # fails on a machine without a GPU
    compiled, run, previous = [], JITFunction.run, driver._active

    def warmup_run(self, *args, grid, warmup, **kwargs):
        compiled.append(run(self, *args, grid=grid, warmup=True, **kwargs))
        return compiled[-1]

    driver.set_active(CompileOnlyDriver())
    JITFunction.run = warmup_run
    try:
        yield compiled
    finally:
        JITFunction.run = run
        driver.set_active(previous)


def resource_usage(cubin: bytes) -> tuple:
    """(registers per thread, local memory bytes per thread: spills and stack) from cuobjdump, or (None, None)."""
    with tempfile.NamedTemporaryFile(suffix=".cubin") as f:
        f.write(cubin)
        f.flush()
        try:
            out = subprocess.run([knobs.nvidia.cuobjdump.path, "-res-usage", f.name], capture_output=True, text=True,
                                 check=True).stdout
        except (OSError, subprocess.CalledProcessError):
            return None, None
    found = re.search(r"REG:(\d+) STACK:\d+ SHARED:\d+ LOCAL:(\d+)", out)
    return (int(found[1]), int(found[2])) if found else (None, None)


def check(name: str, launch, compiled: list) -> dict:
    """Run one wrapper call (inside :func:`compile_only`) and check the one kernel it compiled."""
    start, t = len(compiled), time.perf_counter()
    try:
        launch()
    except Exception as e:  # noqa: BLE001 - a kernel that does not compile is a result, reported with the others
        chain = []  # Triton's CompilationError names the call site; the reason is in the exceptions it chains
        while e is not None:
            chain.append(f"{type(e).__name__}: {e}")
            e = e.__cause__
        return dict(name=name, ok=False, error=" <- ".join(chain)[-3000:])
    if len(compiled) != start + 1:
        return dict(name=name, ok=False, error=f"expected one Triton launch, got {len(compiled) - start}")
    k = compiled[-1]
    cubin = k.asm.get("cubin", b"")
    regs, local = resource_usage(cubin) if cubin else (None, None)
    threads = k.metadata.num_warps * TARGET.warp_size
    problems = [p for p, bad in [
        ("no cubin", not cubin),
        (f"shared memory {k.metadata.shared} B > {SMEM_LIMIT} B", k.metadata.shared > SMEM_LIMIT),
        (f"{regs} registers x {threads} threads > {REGS_PER_BLOCK}", (regs or 0) * threads > REGS_PER_BLOCK),
    ] if bad]
    return dict(name=name, kernel=k.name, ok=not problems, shared=k.metadata.shared, num_warps=k.metadata.num_warps,
                num_stages=k.metadata.num_stages, regs=regs, local_bytes=local,
                seconds=round(time.perf_counter() - t, 2), error="; ".join(problems) or None)


# ----------------------------------------------------------------------------------------------- launches
def _linear(n: int, k: int, w_bits: int, outliers: int, dual: str, asym_w: bool):
    """A random min-max packed layer of the family's format (the values do not matter, the packing flags do)."""
    return RealQuantLinear.random(k, n, w_bits=w_bits, n_outliers=outliers, asym_w=asym_w, act_range=(-6.0, 6.0),
                                  dual_mode=dual)


def _gemm(group, **kw):
    """The GEMM on what its producer hands over: codes [C, M, Kp] int8 (+ row sums [C, M, 2], weight zero points)."""
    rs = torch.empty((group.count, M, 2), dtype=torch.int32) if group.has_wzp else None
    return qgemm.qgemm(torch.empty((group.count, M, group.kp), dtype=torch.int8), rs, group, M, out_dtype=BF16, **kw)


def _int_launches(family: str, t: dict) -> list:
    """IntPlan's launches (qarvd/deploy/fast.py), one per distinct kernel (o, cross q and cross o share a format, so
    one layer stands for the three), the plain-store ffn GEMMs of the module path (TritonInt8Backend.module_forward:
    blocks left unfused, e.g. with low-rank branches; its producers compile like ``attn->o_int8``) and, in ``w8``, the
    CUTLASS backend's GELU -> int8 producer."""
    fmt = next(f[1:] for f in INT_FAMILIES if f[0] == family)
    qkv = [_linear(DIM, DIM, *fmt) for _ in range(3)]
    sq, f0, f2 = (_linear(n, k, *fmt) for n, k in ((DIM, DIM), (FFN, DIM), (DIM, FFN)))
    g_qkv, x2, mod, ln = stack_group(qkv), t["x2"], t["mod"], t["ln"]

    def quant(x, lin, **kw):
        return partial(act_quant.norm_quant, x, lin.stacked_act(), rowsum=lin.group().has_wzp, **kw)

    out = [
        ("norm1_mod->qkv_int8", partial(act_quant.norm_quant, x2, stack_acts([m.act() for m in qkv]), ln=ln,
                                        mod=(mod, 0, 1, S), rowsum=g_qkv.has_wzp)),
        ("gemm_qkv_store", partial(_gemm, g_qkv)),
        ("attn->o_int8", quant(t["attn2"], sq, act_dtype=BF16)),
        ("attn_fp8codes->o_int8", quant(t["attn8"], sq, in_scale=t["in_scale"], act_dtype=BF16)),
        ("gemm_o_residual_gate", partial(_gemm, sq.group(), epilogue="residual", residual=x2, gate=mod[:, 2],
                                         tokens_per_frame=S)),
        ("norm3->cross_q_int8", quant(x2, sq, ln=t["ln3"])),
        ("gemm_cross_q_store", partial(_gemm, sq.group())),
        ("gemm_cross_o_residual", partial(_gemm, sq.group(), epilogue="residual", residual=x2, out=x2)),
        ("norm2_mod->ffn0_int8", quant(x2, f0, ln=ln, mod=(mod, 3, 4, S))),
        ("gemm_ffn0_gelu_quant", partial(_gemm, f0.group(), epilogue="gelu_quant", next_act=f2.stacked_act(),
                                         next_rowsum=f2.group().has_wzp)),
        ("gemm_ffn2_residual_gate", partial(_gemm, f2.group(), epilogue="residual", residual=x2, out=x2,
                                            gate=mod[:, 5], tokens_per_frame=S)),
        ("gemm_ffn0_store_module", partial(_gemm, f0.group())),
        ("gemm_ffn2_store_module", partial(_gemm, f2.group())),
    ]
    if family == "w8":  # kernels/cutlass_gemm.py: ffn.0's bf16 output -> GELU -> ffn.2 codes in a Triton pass
        out.append(("cutlass_ffn0_out->ffn2_int8", quant(t["ffn_y"], f2, pre_gelu=True)))
    return out


def _float_launches(family: str, t: dict) -> list:
    """Bf16Plan's or Fp8Plan's producers (qarvd/deploy/fast.py); ``attn_fp8codes``: the cuDNN FP8 attention's output
    codes, dequantized by the o projection's producer."""
    nq, x2, mod, ln, ln3 = act_quant.norm_quant, t["x2"], t["mod"], t["ln"], t["ln3"]
    if family == "bf16":
        return [("norm1_mod->bf16", partial(nq, x2, ln=ln, mod=(mod, 0, 1, S))),
                ("norm3->bf16", partial(nq, x2, ln=ln3)),
                ("norm2_mod->bf16", partial(nq, x2, ln=ln, mod=(mod, 3, 4, S))),
                ("attn_fp8codes->bf16", partial(nq, t["attn8"], in_scale=t["in_scale"], act_dtype=BF16))]
    fp8 = dict(fp8_scale=torch.ones(1))
    return [("norm1_mod->fp8", partial(nq, x2, ln=ln, mod=(mod, 0, 1, S), **fp8)),
            ("attn->fp8", partial(nq, t["attn2"], act_dtype=BF16, **fp8)),
            ("attn_fp8codes->fp8", partial(nq, t["attn8"], in_scale=t["in_scale"], act_dtype=BF16, **fp8)),
            ("norm3->fp8", partial(nq, x2, ln=ln3, **fp8)),
            ("norm2_mod->fp8", partial(nq, x2, ln=ln, mod=(mod, 3, 4, S), **fp8)),
            ("ffn0_out_gelu->fp8", partial(nq, t["ffn_y"], pre_gelu=True, **fp8))]


def _glue_launches(t: dict) -> list:
    """q/k RMSNorm + RoPE + cache write (bf16 and float8 caches, cross-attention q) and the residual updates."""
    w = torch.ones(DIM, dtype=BF16)
    rope = dict(wq=w, wk=w, eps=EPS, cos=torch.empty(TOKENS, HD // 2), sin=torch.empty(TOKENS, HD // 2),
                start=CACHE - TOKENS)

    def self_qk(dtype, **kw):
        k, v = (torch.empty(2, CACHE, HEADS, HD, dtype=dtype) for _ in range(2))
        return partial(glue.qk_norm_rope, torch.empty(M, 3 * DIM, dtype=BF16), (0, DIM, 2 * DIM), DIM, TOKENS,
                       cache_k=k, cache_v=v, **rope, **kw)

    return [("qk_norm_rope_self_bf16_cache", self_qk(BF16)),
            ("qk_norm_rope_self_fp8_cache", self_qk(torch.float8_e4m3fn, fp8_scales=t["steps"])),
            ("qk_norm_rope_cross_q", partial(glue.qk_norm_rope, t["attn2"], (0,), DIM, TOKENS, wq=w, eps=EPS)),
            ("residual_gate", partial(glue.residual_update, t["x2"], t["attn2"], t["mod"][:, 2], S)),
            ("residual", partial(glue.residual_update, t["x2"], t["attn2"], out=t["x2"]))]


def _attn_launches() -> list:
    """The FP8 attention over the first chunk (one segment: Triton specialises n_seg == 1) and the full cache."""
    kv = attn_fp8.Fp8KV(2, CACHE, HEADS, HD, "cpu")
    q = torch.zeros(2, TOKENS, HEADS, HD, dtype=BF16)
    kv.write(q, q, 0)
    return [("attend_first_chunk", partial(kv.attend, q, TOKENS)), ("attend_full_cache", partial(kv.attend, q, CACHE))]


def launches(family: str) -> list:
    """(name, thunk) of every distinct Triton launch of ``family`` at the production shapes (CPU tensors: only
    shapes, strides, dtypes and alignment reach the compiler, so nothing is initialised)."""
    steps = torch.ones(4)  # the FP8 attention's steps of q, k, v, o; its consumer reads the view [3:4], as fast.py does
    t = dict(x2=torch.empty(M, DIM, dtype=BF16), attn2=torch.empty(M, DIM, dtype=BF16),
             attn8=torch.empty(M, DIM, dtype=torch.float8_e4m3fn), ffn_y=torch.empty(M, FFN, dtype=BF16),
             mod=torch.empty(2 * 3, 6, DIM), steps=steps, in_scale=steps[3:4], ln=(None, None, EPS),
             ln3=(torch.ones(DIM, dtype=BF16), torch.zeros(DIM, dtype=BF16), EPS))
    if family in ("bf16", "fp8"):
        return _float_launches(family, t)
    if family == "glue":
        return _glue_launches(t)
    if family == "attn_fp8":
        return _attn_launches()
    return _int_launches(family, t)


def run_family(family: str) -> list:
    """One worker's share: the checked launches of one family."""
    with compile_only() as compiled:
        return [check(f"{family}/{name}", fn, compiled) for name, fn in launches(family)]


def compile_sm90(cfg: DictConfig) -> tuple[Path, list[str]]:
    """Check every launch of ``families`` (one worker process per family, ``jobs`` at a time); writes the rows (one
    dict per launch) to ``<out>/<name>.json`` and returns its path and the names of the launches that failed."""
    unknown = [f for f in cfg.families if f not in FAMILIES]
    if unknown:
        raise ValueError(f"families: unknown {unknown}; choose from {FAMILIES}")
    if not isinstance(qgemm._qgemm_kernel, JITFunction):
        raise RuntimeError("kernels/ was imported with TRITON_INTERPRET=1 before qarvd.bench.compile_sm90: run the "
                           "check in a fresh process (scripts/compile_sm90.py)")
    t = time.perf_counter()
    with ProcessPoolExecutor(cfg.jobs or os.cpu_count() or 1) as ex:
        rows = [r for rs in ex.map(run_family, cfg.families) for r in rs]
    bad = [r["name"] for r in rows if not r["ok"]]
    print(f"{len(rows) - len(bad)}/{len(rows)} launches compiled for sm_90 in {time.perf_counter() - t:.0f} s"
          + (f"; failed: {bad}" if bad else ""), flush=True)
    return atomic_write_json(Path(cfg.out) / f"{cfg.name}.json", rows), bad
