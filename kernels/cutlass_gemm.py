"""CUTLASS 3 INT8 GEMM for Hopper (kernels/csrc/int8_gemm_sm90.cu) through ctypes: ``y = col_scale * (a @ w.T) +
col_bias`` in bf16, int32 accumulation on the wgmma tensor cores, warp-specialized TMA mainloop and epilogue, with
the layer's consumer fused into the epilogue: the (gated) residual update, or GELU -> the next layer's int8 codes.
Q-ARVD's dual-scale layers in the ``int_ratio`` form (one accumulator, the outlier group's sum times an integer ratio
per output channel) run on the same persistent ping-pong kernel with a mainloop that applies the ratio in registers
(kernels/csrc/int_ratio_mma_sm90.hpp); the ``exact`` form (two accumulators) stays on the Triton GEMM.

Why next to the Triton kernel (kernels/qgemm.py): at the Wan shapes Triton's int8 kernel reaches 1.15-1.4x of cuBLAS
bf16 while cuBLAS's own FP8 GEMM (same tensor-core rate as int8 on Hopper) reaches 1.6-1.95x (kernels/NOTES.md); the
gap is the mainloop/epilogue overlap of CUTLASS's warp-specialized schedules, which Triton does not express on sm_90.

The library is a plain C API compiled once by ``nvcc`` (sm_90a) against the CUTLASS headers of the ``nvidia-cutlass``
package (or ``QARVD_CUTLASS_INCLUDE``); :func:`library` builds it into ``QARVD_KERNEL_CACHE`` (default
``~/.cache/qarvd``) on first use, or loads a prebuilt one named by ``QARVD_INT8_GEMM_LIB``.
"""
from __future__ import annotations

import ctypes
import os
import shutil
import subprocess
import tempfile
from pathlib import Path
from typing import NamedTuple, Optional

import torch

SOURCE = Path(__file__).with_name("csrc") / "int8_gemm_sm90.cu"
SOURCES = (SOURCE, SOURCE.with_name("int_ratio_mma_sm90.hpp"))  # what the library is compiled from
CONFIGS = ("pingpong_128x128", "coop_128x256", "coop_256x128", "pingpong_128x128_c2x1", "pingpong_128x128_int_ratio")
INT_RATIO_CONFIG = 4  # config 0 with the int_ratio mainloop: the one config of dual-scale layers
BK = 128  # K of every config's tile: the outlier group (a multiple of kernels.layout.PAD) is whole k-tiles
# The C API's epilogue kinds (the index): gelu_quant reads one step and zero point of the next layer, gelu_quant_cols
# one per column (a dual-scale next layer whose outlier run the producer writes first).
EPILOGUES = ("store", "residual", "gelu_quant", "gelu_quant_cols")
# (config, epilogue) pairs the library instantiates: every config stores; the fused kinds in config 0 (the default)
# and 3 (the 2x1 cluster: CONFIG_BY_SHAPE's for ffn.0's GELU -> int8; its residual is kept for
# scripts/bench_cutlass_gemm.py's comparison, measured slower); the int_ratio config stores, updates residuals and
# feeds a dual-scale ffn.2 (gelu_quant_cols, also in config 3 for a plain ffn.0 before a dual ffn.2), since each
# instance adds ~20 s of nvcc. Checked against the library when it loads.
INSTANCES = frozenset([(c, "store") for c in range(len(CONFIGS))]
                      + [(c, e) for c in (0, 3) for e in ("residual", "gelu_quant")]
                      + [(3, "gelu_quant_cols"), (INT_RATIO_CONFIG, "residual"), (INT_RATIO_CONFIG, "gelu_quant_cols")])
_LIB = None


class GemmArgs(ctypes.Structure):
    """Mirror of ``QarvdGemmArgs`` in the .cu (its size is checked when the library loads). ``m`` is the rows of one
    batch; batch l covers rows [l*m, (l+1)*m) of A, C and D and reads gate row ``gate + l * gate_stride``."""

    _fields_ = [("a", ctypes.c_void_p), ("lda", ctypes.c_int64), ("w", ctypes.c_void_p), ("ldw", ctypes.c_int64),
                ("d", ctypes.c_void_p), ("ldd", ctypes.c_int64), ("col_scale", ctypes.c_void_p),
                ("col_bias", ctypes.c_void_p), ("c", ctypes.c_void_p), ("ldc", ctypes.c_int64),
                ("gate", ctypes.c_void_p), ("gate_stride", ctypes.c_int64), ("q_scale", ctypes.c_void_p),
                ("q_zero", ctypes.c_void_p), ("q_lo", ctypes.c_float), ("q_hi", ctypes.c_float),
                ("m", ctypes.c_int), ("n", ctypes.c_int), ("k", ctypes.c_int), ("batches", ctypes.c_int),
                ("ratio", ctypes.c_void_p), ("outlier_k_tiles", ctypes.c_int)]


def cutlass_include() -> list[Path]:
    """Include folders of CUTLASS (headers + tools/util) from QARVD_CUTLASS_INCLUDE or the nvidia-cutlass package."""
    root = os.environ.get("QARVD_CUTLASS_INCLUDE")
    if root is None:
        try:
            import cutlass_library  # noqa: PLC0415 - the nvidia-cutlass wheel ships the C++ sources here
        except ImportError as e:
            raise ImportError("the CUTLASS INT8 GEMM needs CUTLASS headers: pip install nvidia-cutlass, or set "
                              "QARVD_CUTLASS_INCLUDE to a CUTLASS checkout") from e
        root = str(Path(cutlass_library.__file__).parent / "source")
    base = Path(root)
    dirs = [base / "include", base / "tools" / "util" / "include"]
    missing = [d for d in dirs if not d.is_dir()]
    if missing:
        raise FileNotFoundError(f"CUTLASS include folder not found: {missing[0]} (set QARVD_CUTLASS_INCLUDE to the "
                                f"CUTLASS root that holds include/ and tools/util/include/)")
    return dirs


def build(out: Path) -> Path:
    """Compile the shared library to ``out`` (atomic: a temp file renamed into place). Takes ~4 min (12 kernel
    instances, nvcc on 2 cores)."""
    nvcc = shutil.which("nvcc")
    if nvcc is None:
        raise RuntimeError("building the CUTLASS INT8 GEMM needs nvcc (CUDA >= 12.3) on PATH")
    out.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.NamedTemporaryFile(dir=out.parent, suffix=".so", delete=False) as tmp:
        tmp_path = Path(tmp.name)
    cmd = [nvcc, "-std=c++17", "-O3", "-DNDEBUG", "-gencode=arch=compute_90a,code=sm_90a",
           "--expt-relaxed-constexpr", "-Xcompiler", "-fPIC", "-shared", "-o", str(tmp_path), str(SOURCE)]
    cmd[1:1] = [f"-I{d}" for d in cutlass_include()]
    try:
        subprocess.run(cmd, check=True, capture_output=True, text=True)
    except subprocess.CalledProcessError as e:
        tmp_path.unlink(missing_ok=True)
        raise RuntimeError(f"nvcc failed building {SOURCE.name}:\n{e.stderr[-3000:]}") from e
    tmp_path.replace(out)
    return out


def library():
    """The loaded C library (built on first use when no prebuilt one is named)."""
    global _LIB
    if _LIB is None:
        path = os.environ.get("QARVD_INT8_GEMM_LIB")
        if path is None:
            cache = Path(os.environ.get("QARVD_KERNEL_CACHE", Path.home() / ".cache" / "qarvd"))
            path = cache / "libqarvd_int8_gemm.so"
            if not path.exists() or path.stat().st_mtime < max(f.stat().st_mtime for f in SOURCES):
                build(path)
        if not Path(path).exists():
            raise FileNotFoundError(f"QARVD_INT8_GEMM_LIB names {path}, which does not exist")
        lib = ctypes.CDLL(str(path))
        missing = [f for f in _SYMBOLS if not hasattr(lib, f)]
        if missing:  # a library from an older source version: say so instead of ctypes' undefined symbol
            raise RuntimeError(f"{path} lacks {', '.join(missing)}: it was built from another version of "
                               f"{SOURCE.name}; {_rebuild_hint()}")
        args_p = ctypes.POINTER(GemmArgs)
        lib.qarvd_int8_gemm.restype = ctypes.c_int
        lib.qarvd_int8_gemm.argtypes = [ctypes.c_int, ctypes.c_int, args_p, ctypes.c_void_p, ctypes.c_void_p]
        lib.qarvd_int8_gemm_workspace.restype = ctypes.c_size_t
        lib.qarvd_int8_gemm_workspace.argtypes = [ctypes.c_int, ctypes.c_int, args_p]
        for name in ("qarvd_int8_gemm_configs", "qarvd_int8_gemm_has"):
            getattr(lib, name).restype = ctypes.c_int
        lib.qarvd_int8_gemm_has.argtypes = [ctypes.c_int, ctypes.c_int]
        lib.qarvd_int8_gemm_args_size.restype = ctypes.c_size_t
        lib.qarvd_int8_gemm_error.restype = ctypes.c_char_p
        _check_library(lib, path)
        _LIB = lib
    return _LIB


_SYMBOLS = ("qarvd_int8_gemm", "qarvd_int8_gemm_workspace", "qarvd_int8_gemm_configs", "qarvd_int8_gemm_has",
            "qarvd_int8_gemm_args_size", "qarvd_int8_gemm_error")


def _rebuild_hint() -> str:
    if os.environ.get("QARVD_INT8_GEMM_LIB"):
        return "rebuild it (kernels.cutlass_gemm.build) or unset QARVD_INT8_GEMM_LIB"
    return "delete it so that the next call rebuilds it from the current source"


def _check_library(lib, path) -> None:
    """A prebuilt library from another source version fails here, not with wrong results: same config count, same
    argument struct, same (config, epilogue) instances."""
    if lib.qarvd_int8_gemm_configs() != len(CONFIGS):
        raise RuntimeError(f"{path} has {lib.qarvd_int8_gemm_configs()} GEMM configs, this source {len(CONFIGS)}: "
                           f"{_rebuild_hint()}")
    has = {(c, e) for c in range(len(CONFIGS)) for i, e in enumerate(EPILOGUES) if lib.qarvd_int8_gemm_has(c, i)}
    if lib.qarvd_int8_gemm_args_size() != ctypes.sizeof(GemmArgs) or has != INSTANCES:
        raise RuntimeError(f"{path} was built from another version of {SOURCE.name} (argument struct or epilogue "
                           f"instances differ): {_rebuild_hint()}")


_WORKSPACE: dict = {}


def int8_gemm(a: torch.Tensor, w: torch.Tensor, col_scale: torch.Tensor, col_bias: Optional[torch.Tensor] = None,
              out: Optional[torch.Tensor] = None, config: int = 0, *, residual: Optional[torch.Tensor] = None,
              gate: Optional[torch.Tensor] = None, tokens_per_frame: int = 1, quant: Optional[tuple] = None,
              quant_per_column: bool = False, ratio: Optional[torch.Tensor] = None, outlier_k_tiles: int = 0
              ) -> torch.Tensor:
    """y = bf16(col_scale[n] * acc[m, n] + col_bias[n]), acc = a [M, K] int8 @ w [N, K] int8 ^T, and its consumer,
    by arguments:

    - neither ``residual`` nor ``quant``: returns y [M, N] bf16;
    - ``residual`` (bf16 [M, N], row-major): returns residual + bf16(gate[m // S] * y), or residual + y without a
      ``gate`` (float32 [>= M/S, N] view, unit column stride, S = ``tokens_per_frame`` dividing M: one batch per
      frame); ``out`` may be ``residual`` itself (in place);
    - ``quant`` = (step, zero point, lo, hi) of the next layer (float32 device tensors and the clamp range): returns
      its int8 codes clamp(rint(bf16(gelu_tanh(y)) * (1 / step)) + zero, lo, hi) [M, N]. Per-tensor: the first
      element of each is read at run time; ``quant_per_column``: contiguous [N] vectors, one step and zero per column.

    ``ratio`` (int32, contiguous, 16-byte aligned, N rounded up to the 128-column tile) with ``config`` =
    INT_RATIO_CONFIG: the dual-scale int_ratio accumulator, acc = ratio[n] * (the first ``outlier_k_tiles`` k-tiles
    of 128 columns) + (the rest).

    ``out`` may be a column slice of a wider row-major tensor. K must be a multiple of 16, N of 8 (16 for codes)."""
    if a.dtype != torch.int8 or w.dtype != torch.int8 or a.shape[1] != w.shape[1]:
        raise ValueError(f"int8_gemm takes int8 a [M, K] and w [N, K], got {a.dtype} {tuple(a.shape)}, "
                         f"{w.dtype} {tuple(w.shape)}")
    if a.stride(1) != 1 or w.stride(1) != 1 or col_scale.dtype != torch.float32:
        raise ValueError("a and w must be K-contiguous and col_scale float32")
    if residual is not None and quant is not None:
        raise ValueError("int8_gemm fuses one consumer: residual or quant, not both")
    m, k = a.shape
    n = w.shape[0]
    epilogue = ("gelu_quant_cols" if quant_per_column else "gelu_quant") if quant is not None \
        else "residual" if residual is not None else "store"
    dtype = torch.int8 if quant is not None else torch.bfloat16
    if out is None:
        out = torch.empty_like(residual) if residual is not None else torch.empty((m, n), dtype=dtype, device=a.device)
    if out.dtype != dtype or out.stride(1) != 1 or tuple(out.shape) != (m, n):
        raise ValueError(f"out must be a row-major {dtype} [{m}, {n}] view")
    args = GemmArgs(a=a.data_ptr(), lda=a.stride(0), w=w.data_ptr(), ldw=w.stride(0), d=out.data_ptr(),
                    ldd=out.stride(0), col_scale=col_scale.data_ptr(),
                    col_bias=col_bias.data_ptr() if col_bias is not None else None, m=m, n=n, k=k, batches=1)
    if (ratio is not None) != (config == INT_RATIO_CONFIG):
        raise ValueError(f"the int_ratio config ({INT_RATIO_CONFIG}) takes a ratio vector and no other config does")
    if ratio is not None:
        _ratio_args(args, ratio, outlier_k_tiles)
    if residual is not None:
        _residual_args(args, residual, gate, tokens_per_frame)
    if quant is not None:
        step, zero, args.q_lo, args.q_hi = quant
        if step.dtype != torch.float32 or zero.dtype != torch.float32:
            raise ValueError("the next layer's step and zero point must be float32")
        if quant_per_column and not all(t.is_contiguous() and t.numel() == n for t in (step, zero)):
            raise ValueError(f"per-column steps and zero points must be contiguous [{n}] vectors")
        args.q_scale, args.q_zero = step.data_ptr(), zero.data_ptr()
    lib, kind = library(), EPILOGUES.index(epilogue)
    if (config, epilogue) not in INSTANCES:
        raise ValueError(f"config {CONFIGS[config]} has no {epilogue!r} epilogue in the library (INSTANCES)")
    size = lib.qarvd_int8_gemm_workspace(config, kind, ctypes.byref(args))
    key = (a.device, size)
    if size and key not in _WORKSPACE:
        _WORKSPACE[key] = torch.empty(size, dtype=torch.uint8, device=a.device)
    ws = _WORKSPACE[key].data_ptr() if size else None
    rc = lib.qarvd_int8_gemm(config, kind, ctypes.byref(args), ws, torch.cuda.current_stream(a.device).cuda_stream)
    if rc:
        raise RuntimeError(f"CUTLASS int8 GEMM (config {CONFIGS[config]}, {epilogue}): "
                           f"{lib.qarvd_int8_gemm_error().decode()}")
    return out


def _ratio_args(args: GemmArgs, ratio: torch.Tensor, outlier_k_tiles: int) -> None:
    """The int_ratio operands: the producer warp copies 128 ratios per output tile with one bulk copy, so the vector
    covers whole tiles and starts 16-byte aligned; the normal group keeps at least one k-tile."""
    if ratio.dtype != torch.int32 or not ratio.is_contiguous() or ratio.data_ptr() % 16 \
            or ratio.numel() < _tiles(args.n) * 128:
        raise ValueError(f"ratio must be a contiguous, 16-byte aligned int32 vector of {_tiles(args.n) * 128} "
                         f"(N = {args.n} rounded up to the tile), got {ratio.dtype} {tuple(ratio.shape)}")
    if not 0 < outlier_k_tiles < -(-args.k // BK):
        raise ValueError(f"outlier_k_tiles={outlier_k_tiles}: the outlier group must be between one k-tile and all "
                         f"but one of the {-(-args.k // BK)} k-tiles of K={args.k}")
    args.ratio, args.outlier_k_tiles = ratio.data_ptr(), int(outlier_k_tiles)


def _residual_args(args: GemmArgs, residual: torch.Tensor, gate: Optional[torch.Tensor], s: int) -> None:
    """Fill the residual operands; with a gate, batched mode with one batch of S rows per frame, so the gate is one
    row vector per batch (CUTLASS's row broadcast with a batch stride)."""
    m, n = args.m, args.n
    if residual.dtype != torch.bfloat16 or residual.stride(1) != 1 or tuple(residual.shape) != (m, n):
        raise ValueError(f"the residual must be a row-major bf16 [{m}, {n}] view")
    args.c, args.ldc = residual.data_ptr(), residual.stride(0)
    if gate is None:
        return
    reason = _gate_unsupported(gate, m, n, s)
    if reason:
        raise ValueError(f"gate: {reason}")
    args.gate, args.gate_stride, args.m, args.batches = gate.data_ptr(), gate.stride(0), s, m // s


def _gate_unsupported(gate: torch.Tensor, m: int, n: int, s: int) -> Optional[str]:
    """Why the fused epilogue cannot read this gate (None when it can): float32 row vectors, whole frames."""
    if gate.dtype != torch.float32 or gate.stride(1) != 1 or gate.shape[1] != n:
        return f"needs a float32 [R, {n}] view with unit column stride, got {gate.dtype} {tuple(gate.shape)}"
    if m % s or gate.shape[0] < m // s:
        return f"needs whole frames: M={m} rows, {s} tokens per frame, {gate.shape[0]} gate rows"
    return None


def int8_gemm_ref(a, w, col_scale, col_bias=None, ratio=None, outlier_k_tiles: int = 0) -> torch.Tensor:
    """float64 reference of :func:`int8_gemm` (before the bf16 rounding); ``ratio``: the int_ratio accumulator."""
    ko = outlier_k_tiles * BK if ratio is not None else 0
    acc = a[:, ko:].double() @ w[:, ko:].double().T
    if ko:
        acc += (a[:, :ko].double() @ w[:, :ko].double().T) * ratio[:w.shape[0]].double()
    y = acc * col_scale.double()
    return y + col_bias.double() if col_bias is not None else y


# Config per (epilogue, K, N), default 0. The store rows were measured on the H200
# (benchmarks/results/h200_cutlass_gemm.json, M = 9360): 128x128 ping-pong, with a 2x1 cluster (TMA multicast of the
# weight tile) on the two ffn shapes; gelu_quant and gelu_quant_cols reuse ffn.0's store config (gelu_quant_cols has
# no config-0 instance: at other shapes it runs unfused). The gated residual runs batched (one batch per 1560-token
# frame, 13 M tiles of which the last holds 24 rows), where the 2x1 cluster would round each frame up to 14 tiles: it
# keeps config 0 until scripts/bench_cutlass_gemm.py says otherwise. int_ratio layers ignore this table
# (INT_RATIO_CONFIG, the only int_ratio config).
CONFIG_BY_SHAPE = {("store", 1536, 8960): 3, ("store", 8960, 1536): 3, ("gelu_quant", 1536, 8960): 3,
                   ("gelu_quant_cols", 1536, 8960): 3}

# Largest M at which the fused epilogue of (epilogue, K, N) runs (0: never), for shapes where fusion does not win
# everywhere. Measured fused vs CUTLASS store + the Triton pass (benchmarks/results/{h100,h200}_cutlass_epilogues.json,
# M = 4680 / 9360): the gated ffn.2 residual (batched mode, 78 instead of 74 M tiles at 9360) 0.98x / 0.88x on the
# H100, 1.07x / 0.97x on the H200, so it stays unfused. ffn.0 GELU->int8 (1.17x / 1.06x H100, 1.08x / 0.99x H200) and
# the attention projections' residuals (1.23-1.46x on both) fuse at every M.
FUSE_MAX_M = {("residual", 8960, 1536): 0}


def config_for(epilogue: str, k: int, n: int, int_ratio: bool = False) -> int:
    """The config of an epilogue kind at a shape; every int_ratio layer runs the int_ratio config."""
    return INT_RATIO_CONFIG if int_ratio else CONFIG_BY_SHAPE.get((epilogue, k, n), 0)


def supports(lin, out_dtype: torch.dtype) -> bool:
    """Layers the CUTLASS path takes: int8 weights without zero points, one column group or the int_ratio dual-scale
    form, bf16 activations. The exact dual-scale form (two accumulators) stays on the Triton GEMM."""
    return (not lin.int4 and lin.dual in ("none", "int_ratio") and not lin.has_wzp
            and out_dtype == torch.bfloat16)


class Columns(NamedTuple):
    """What :func:`int8_gemm` reads of one stacked linear besides A and W."""

    scale: torch.Tensor  # float32 [N]
    bias: torch.Tensor  # float32 [N]
    ratio: Optional[torch.Tensor]  # int_ratio: int32 ratios, zero-padded to whole 128-column tiles; else None
    outlier_k_tiles: int  # int_ratio: the outlier group's k-tiles (kop / BK); else 0


def _columns(lin, g: int) -> Columns:
    """The :class:`Columns` of stacked linear g, cached on the packed layer (computed at its first, eager call: graph
    replays read the cached tensors, and the outlier width is read from the device once).

    scale = a_scale * w_scale[n] of the normal group, bias' = bias + scale * corr', with corr' the exact integer
    correction of the activation zero point: corr[normal] + ratio[n] * corr[outlier] for int_ratio (qgemm_ref's
    ``(parts0 * ratio + parts1) * scale``, the accumulator's ratio step applied to the outlier correction too),
    corr[normal] otherwise. Summed in int64, rounded once to float32."""
    cols = lin.__dict__.setdefault("_cutlass_cols", {})
    if g not in cols:
        sl = slice(g * lin.n, (g + 1) * lin.n)
        scale = (lin.a_scale[g, 1] * lin.w_scale[1, sl]).float().contiguous()
        bias = lin.bias[sl].float() if lin.bias is not None else torch.zeros_like(scale)
        ratio, k_tiles = None, 0
        corr = lin.corr[1, sl].long()
        if lin.dual == "int_ratio":
            kop = int(lin.kop[g])
            if kop % BK:
                raise ValueError(f"the outlier group ({kop} columns) is not whole {BK}-column k-tiles")
            ratio = torch.zeros(_tiles(lin.n) * 128, dtype=torch.int32, device=scale.device)
            ratio[:lin.n] = lin.ratio[sl]
            k_tiles = kop // BK
            corr = corr + ratio[:lin.n].long() * lin.corr[0, sl].long()
        if lin.has_corr:
            bias = bias + scale * corr.float()
        cols[g] = Columns(scale, bias.contiguous(), ratio, k_tiles)
    return cols[g]


def gelu_quant_kind(next_act) -> Optional[str]:
    """The epilogue kind that writes ``next_act``'s codes from this layer's output columns in order, or None.

    ``gelu_quant``: one static step and zero point (``uniform``: one column group, no smoothing, identity order).
    ``gelu_quant_cols``: the split layout of a dual-scale consumer whose input already arrives in split order
    (``src`` None: ffn.0's rows permuted to ffn.2's order, qarvd.deploy.fast.IntPlan) with the outlier run exactly
    filling its padded width (``n_out == kop``): then output column n's code lands in column n with column n's step
    and zero point, which the per-column vectors hold. Otherwise (a shifted normal run, scattered destinations,
    smoothing) the codes are not this layer's columns in order: the Triton pass writes them."""
    if next_act.uniform:
        return "gelu_quant"
    if next_act.split and next_act.src is None and next_act.nouts[0] == next_act.kops[0]:
        return "gelu_quant_cols"
    return None


def _tiles(rows: int) -> int:
    return -(-rows // 128)  # every instantiated tile is 128 rows high


def unfused_reason(epilogue: str, lin, m: int, *, residual=None, out=None, gate=None, tokens_per_frame: int = 1,
                   next_act=None, next_rowsum: bool = False) -> Optional[str]:
    """Why :func:`qgemm_cutlass` runs ``epilogue`` as a separate Triton pass over the bf16 output (None: the CUTLASS
    epilogue fuses it). Fused: the residual update of one linear into a bf16 residual (gated by whole frames or not),
    and GELU -> int8 codes when the next layer's codes are this layer's output columns in order with one static step
    and zero point, or one per column (:func:`gelu_quant_kind`), without row sums."""
    from kernels import _common

    if epilogue == "residual" and residual is None:
        raise ValueError("epilogue 'residual' needs the residual tensor")
    if epilogue == "gelu_quant" and (next_act is None or next_act.count != 1
                                     or next_act.col_scale.shape[1] != lin.count * lin.n):
        raise ValueError("epilogue 'gelu_quant' needs the single consumer's StackedAct over this layer's outputs")
    kind = epilogue
    if epilogue == "residual":
        if lin.count != 1:
            return "grouped linears"
        if (residual.dtype != torch.bfloat16 or residual.stride(1) != 1 or residual.stride(0) % 8
                or residual.data_ptr() % 16):  # TMA: 16-byte aligned base address and row pitch
            return "the residual is not a 16-byte aligned row-major bf16 tensor"
        if out is not None and out.data_ptr() != residual.data_ptr() and (out.stride(0) % 8 or out.stride(1) != 1
                                                                          or out.data_ptr() % 16):
            return "out is not a 16-byte aligned row-major tensor"
        if gate is not None:
            reason = _gate_unsupported(gate, m, lin.n, tokens_per_frame)
            if reason:
                return reason
            if _tiles(tokens_per_frame) * (m // tokens_per_frame) > 1.5 * _tiles(m):
                return "frames too short: batched mode (one batch per frame) would run over 1.5x the M tiles"
    elif epilogue == "gelu_quant":
        if next_rowsum:
            return "the next layer needs row sums of its codes (weight zero points)"
        kind = gelu_quant_kind(next_act)
        if kind is None:
            return ("the next activation's codes are not this layer's columns in order (smoothing, scattered "
                    "destinations, or an outlier run shorter than its padded width)")
        if next_act.col_scale.dtype != torch.float32 or next_act.col_zero.dtype != torch.float32:
            return "the next activation's step and zero point are not float32"
        if _common.EXACT_DIVISION:
            return "exact division configured (kernels/_common.EXACT_DIVISION); the epilogue multiplies by 1 / step"
        if lin.n % 16 or next_act.kp % 16:
            return "int8 TMA stores need N and Kp multiples of 16"
    else:
        return f"no fused {epilogue!r} epilogue"
    if m > FUSE_MAX_M.get((kind, lin.kp, lin.n), m):
        return f"measured slower than the unfused path above M = {FUSE_MAX_M[(kind, lin.kp, lin.n)]} (FUSE_MAX_M)"
    cfg = config_for(kind, lin.kp, lin.n, lin.dual == "int_ratio")
    if (cfg, kind) not in INSTANCES:
        return f"config {CONFIGS[cfg]} has no {kind!r} instance"
    return None


def _gemm(a, lin, g: int, kind: str, out, **consumer):
    """:func:`int8_gemm` of stacked linear g of ``lin`` (its codes ``a[g]``, its weight rows) into ``out``, with its
    folded columns, its ratios if it is int_ratio, and the config of ``kind`` at its shape."""
    cols = _columns(lin, g)
    cfg = config_for(kind, lin.kp, lin.n, cols.ratio is not None)
    return int8_gemm(a[g], lin.weight[g * lin.n:(g + 1) * lin.n], cols.scale, cols.bias, out=out, config=cfg,
                     ratio=cols.ratio, outlier_k_tiles=cols.outlier_k_tiles, **consumer)


def qgemm_cutlass(a, rowsums, lin, m: int, *, out_dtype=torch.bfloat16, epilogue: str = "store", out=None,
                  residual=None, gate=None, tokens_per_frame: int = 1, next_act=None, next_rowsum: bool = False,
                  config=None, fuse: bool = True):
    """:func:`kernels.qgemm.qgemm` (same signature and results up to float32 rounding of the folded bias) with the
    GEMM, its dequantization and, where :func:`unfused_reason` allows, its consumer in CUTLASS; other consumers run
    as Triton kernels on the bf16 output (one extra pass over it); ``fuse=False`` always takes that second route (the
    ablation of the fused epilogues). Layers :func:`supports` rejects go to the Triton kernel."""
    from kernels import act_quant, glue, qgemm

    if not supports(lin, out_dtype):
        return qgemm.qgemm(a, rowsums, lin, m, out_dtype=out_dtype, epilogue=epilogue, out=out, residual=residual,
                           gate=gate, tokens_per_frame=tokens_per_frame, next_act=next_act, next_rowsum=next_rowsum,
                           config=config)
    if epilogue not in qgemm.EPILOGUES:
        raise ValueError(f"unknown epilogue {epilogue!r}; choose from {sorted(qgemm.EPILOGUES)}")
    n, c = lin.n, lin.count
    if fuse and epilogue != "store" and unfused_reason(epilogue, lin, m, residual=residual, out=out, gate=gate,
                                              tokens_per_frame=tokens_per_frame, next_act=next_act,
                                              next_rowsum=next_rowsum) is None:
        if epilogue == "residual":
            return _gemm(a, lin, 0, "residual", out, residual=residual, gate=gate, tokens_per_frame=tokens_per_frame)
        kind = gelu_quant_kind(next_act)
        codes = torch.empty((m, next_act.kp), dtype=torch.int8, device=a.device)
        for g in range(c):
            step, zero = next_act.col_scale, next_act.col_zero  # per tensor: the first element is read
            if kind == "gelu_quant_cols":
                step, zero = step[0, g * n:(g + 1) * n], zero[0, g * n:(g + 1) * n]
            _gemm(a, lin, g, kind, codes[:, g * n:(g + 1) * n], quant=(step, zero, next_act.lo, next_act.hi),
                  quant_per_column=kind == "gelu_quant_cols")
        return codes, None
    y = out if epilogue == "store" and out is not None else torch.empty((m, c * n), dtype=out_dtype, device=a.device)
    for g in range(c):
        _gemm(a, lin, g, "store", y[:, g * n:(g + 1) * n])
    if epilogue == "store":
        return y
    if epilogue == "residual":
        return glue.residual_update(residual, y, gate, tokens_per_frame, out=out)
    codes, rs = act_quant.norm_quant(y, next_act, pre_gelu=True, rowsum=next_rowsum)
    return codes[0], (rs[0] if rs is not None else None)
