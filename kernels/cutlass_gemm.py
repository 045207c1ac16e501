"""CUTLASS 3 INT8 GEMM for Hopper (kernels/csrc/int8_gemm_sm90.cu) through ctypes: ``y = col_scale * (a @ w.T) +
col_bias`` in bf16, int32 accumulation on the wgmma tensor cores, warp-specialized TMA mainloop and epilogue.

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
from typing import Optional

import torch

SOURCE = Path(__file__).with_name("csrc") / "int8_gemm_sm90.cu"
CONFIGS = ("pingpong_128x128", "coop_128x256", "coop_256x128", "pingpong_128x128_c2x1")
_LIB = None


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
    """Compile the shared library to ``out`` (atomic: a temp file renamed into place). Takes ~1.5 min."""
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
            if not path.exists() or path.stat().st_mtime < SOURCE.stat().st_mtime:
                build(path)
        if not Path(path).exists():
            raise FileNotFoundError(f"QARVD_INT8_GEMM_LIB names {path}, which does not exist")
        lib = ctypes.CDLL(str(path))
        lib.qarvd_int8_gemm.restype = ctypes.c_int
        lib.qarvd_int8_gemm.argtypes = [ctypes.c_int, ctypes.c_void_p, ctypes.c_int64, ctypes.c_void_p,
                                        ctypes.c_int64, ctypes.c_void_p, ctypes.c_int64, ctypes.c_void_p,
                                        ctypes.c_void_p, ctypes.c_int, ctypes.c_int, ctypes.c_int, ctypes.c_void_p,
                                        ctypes.c_void_p]
        lib.qarvd_int8_gemm_workspace.restype = ctypes.c_size_t
        lib.qarvd_int8_gemm_workspace.argtypes = [ctypes.c_int] * 4
        lib.qarvd_int8_gemm_configs.restype = ctypes.c_int
        lib.qarvd_int8_gemm_error.restype = ctypes.c_char_p
        if lib.qarvd_int8_gemm_configs() != len(CONFIGS):  # a prebuilt library from another source version
            raise RuntimeError(f"{path} has {lib.qarvd_int8_gemm_configs()} GEMM configs, this source {len(CONFIGS)}: "
                               f"rebuild it (kernels.cutlass_gemm.build) or unset QARVD_INT8_GEMM_LIB")
        _LIB = lib
    return _LIB


_WORKSPACE: dict = {}


def int8_gemm(a: torch.Tensor, w: torch.Tensor, col_scale: torch.Tensor, col_bias: Optional[torch.Tensor] = None,
              out: Optional[torch.Tensor] = None, config: int = 0) -> torch.Tensor:
    """bf16 [M, N] = col_scale[n] * (a [M, K] int8 @ w [N, K] int8 ^T) + col_bias[n]; ``out`` may be a column slice
    of a wider row-major tensor. K must be a multiple of 16 and N of 8 (TMA alignment)."""
    if a.dtype != torch.int8 or w.dtype != torch.int8 or a.shape[1] != w.shape[1]:
        raise ValueError(f"int8_gemm takes int8 a [M, K] and w [N, K], got {a.dtype} {tuple(a.shape)}, "
                         f"{w.dtype} {tuple(w.shape)}")
    if a.stride(1) != 1 or w.stride(1) != 1 or col_scale.dtype != torch.float32:
        raise ValueError("a and w must be K-contiguous and col_scale float32")
    m, k = a.shape
    n = w.shape[0]
    out = out if out is not None else torch.empty((m, n), dtype=torch.bfloat16, device=a.device)
    if out.dtype != torch.bfloat16 or out.stride(1) != 1 or tuple(out.shape) != (m, n):
        raise ValueError(f"out must be a row-major bf16 [{m}, {n}] view")
    lib = library()
    size = lib.qarvd_int8_gemm_workspace(config, m, n, k)
    key = (a.device, size)
    if size and key not in _WORKSPACE:
        _WORKSPACE[key] = torch.empty(size, dtype=torch.uint8, device=a.device)
    ws = _WORKSPACE[key].data_ptr() if size else None
    rc = lib.qarvd_int8_gemm(config, a.data_ptr(), a.stride(0), w.data_ptr(), w.stride(0), out.data_ptr(),
                             out.stride(0), col_scale.data_ptr(),
                             col_bias.data_ptr() if col_bias is not None else None, m, n, k, ws,
                             torch.cuda.current_stream(a.device).cuda_stream)
    if rc:
        raise RuntimeError(f"CUTLASS int8 GEMM (config {CONFIGS[config]}): {lib.qarvd_int8_gemm_error().decode()}")
    return out


def int8_gemm_ref(a, w, col_scale, col_bias=None) -> torch.Tensor:
    """float64 reference of :func:`int8_gemm` (before the bf16 rounding)."""
    y = (a.double() @ w.double().T) * col_scale.double()
    return y + col_bias.double() if col_bias is not None else y


# Config per (K, N) measured on the H200 (benchmarks/results/h200_cutlass_gemm.json, M = 9360): 128x128 ping-pong,
# with a 2x1 cluster (TMA multicast of the weight tile) on the two ffn shapes.
CONFIG_BY_SHAPE = {(1536, 8960): 3, (8960, 1536): 3}


def supports(lin, out_dtype: torch.dtype) -> bool:
    """Layers the CUTLASS path takes: int8 weights without zero points, one column group, bf16 activations."""
    return not lin.int4 and lin.dual == "none" and not lin.has_wzp and out_dtype == torch.bfloat16


def _columns(lin, g: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(col_scale, col_bias) of stacked linear g, float32, cached on the packed layer (computed at its first, eager
    call; graph replays read the cached tensors): scale = a_scale * w_scale[n], bias' = bias + scale * corr[n] (the
    activation zero point's exact integer correction, folded into the bias)."""
    cols = lin.__dict__.setdefault("_cutlass_cols", {})
    if g not in cols:
        sl = slice(g * lin.n, (g + 1) * lin.n)
        scale = (lin.a_scale[g, 1] * lin.w_scale[1, sl]).float().contiguous()
        bias = lin.bias[sl].float() if lin.bias is not None else torch.zeros_like(scale)
        if lin.has_corr:
            bias = bias + scale * lin.corr[1, sl].float()
        cols[g] = (scale, bias.contiguous())
    return cols[g]


def qgemm_cutlass(a, rowsums, lin, m: int, *, out_dtype=torch.bfloat16, epilogue: str = "store", out=None,
                  residual=None, gate=None, tokens_per_frame: int = 1, next_act=None, next_rowsum: bool = False,
                  config=None):
    """:func:`kernels.qgemm.qgemm` (same signature and results up to float32 rounding of the folded bias) with the
    GEMM and its dequantization in CUTLASS; the residual and GELU->int8 consumers run as Triton kernels on its bf16
    output (one extra pass over it). Layers :func:`supports` rejects go to the Triton kernel."""
    from kernels import act_quant, glue, qgemm

    if not supports(lin, out_dtype):
        return qgemm.qgemm(a, rowsums, lin, m, out_dtype=out_dtype, epilogue=epilogue, out=out, residual=residual,
                           gate=gate, tokens_per_frame=tokens_per_frame, next_act=next_act, next_rowsum=next_rowsum,
                           config=config)
    n, c = lin.n, lin.count
    y = out if epilogue == "store" and out is not None else torch.empty((m, c * n), dtype=out_dtype, device=a.device)
    cfg = CONFIG_BY_SHAPE.get((lin.kp, n), 0)
    for g in range(c):
        scale, bias = _columns(lin, g)
        int8_gemm(a[g], lin.weight[g * n:(g + 1) * n], scale, bias, out=y[:, g * n:(g + 1) * n], config=cfg)
    if epilogue == "store":
        return y
    if epilogue == "residual":
        return glue.residual_update(residual, y, gate, tokens_per_frame, out=out)
    if epilogue == "gelu_quant":
        codes, rs = act_quant.norm_quant(y, next_act, pre_gelu=True, rowsum=next_rowsum)
        return codes[0], (rs[0] if rs is not None else None)
    raise ValueError(f"unknown epilogue {epilogue!r}")
