"""CUTLASS INT8 GEMM path (kernels/cutlass_gemm.py): the host-side folding on the CPU, the kernel on a Hopper GPU."""
from __future__ import annotations

import os
import shutil

import pytest
import torch

from kernels import cutlass_gemm as C
from kernels import qgemm
from qarvd.deploy.modules import RealQuantLinear, stack_group
from qarvd.deploy.packing import minmax_spec, pack_spec


def _group(k=64, n=48, asym_act=True, seed=0):
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(n, k, generator=g) / k**0.5
    spec = minmax_spec(w, torch.randn(n, generator=g) * 0.1, w_bits=8, asym_act=asym_act, asym_w=False,
                       act_range=(-2.5, 4.0))
    p = pack_spec(spec, "exact")
    return stack_group([RealQuantLinear(p.meta, p.tensors)])


def test_folded_columns_reproduce_the_exact_integer_epilogue():
    """col_scale * acc + col_bias (the CUTLASS epilogue) equals qgemm's exact (acc + corr) * scale + bias."""
    lin = _group()
    assert C.supports(lin, torch.bfloat16) and lin.has_corr and not lin.has_wzp
    assert not C.supports(lin, torch.float32)
    a = torch.randint(-128, 128, (1, 30, lin.kp), dtype=torch.int8)
    scale, bias = C._columns(lin, 0)
    got = C.int8_gemm_ref(a[0], lin.weight, scale, bias)
    ref = qgemm.qgemm_ref(a, None, lin, 30)
    assert float((got - ref).norm() / ref.norm()) < 1e-6


needs_hopper = pytest.mark.skipif(
    not torch.cuda.is_available() or torch.cuda.get_device_capability()[0] < 9
    or (shutil.which("nvcc") is None and "QARVD_INT8_GEMM_LIB" not in os.environ),
    reason="the CUTLASS INT8 GEMM needs a Hopper GPU and nvcc (or QARVD_INT8_GEMM_LIB)")


@needs_hopper
@pytest.mark.parametrize("config", range(len(C.CONFIGS)))
def test_int8_gemm_matches_float64(config):
    a = torch.randint(-128, 128, (300, 256), dtype=torch.int8, device="cuda")
    w = torch.randint(-128, 128, (136, 256), dtype=torch.int8, device="cuda")
    scale, bias = torch.rand(136, device="cuda") * 1e-3, torch.randn(136, device="cuda")
    wide = torch.zeros(300, 3 * 136, dtype=torch.bfloat16, device="cuda")
    y = C.int8_gemm(a, w, scale, bias, out=wide[:, 136:272], config=config)
    ref = C.int8_gemm_ref(a, w, scale, bias)
    assert float((y.double() - ref).norm() / ref.norm()) < 4e-3  # bf16 output rounding
    assert wide[:, :136].abs().sum() == 0 and wide[:, 272:].abs().sum() == 0  # only its column slice


@needs_hopper
def test_qgemm_cutlass_epilogues_match_triton():
    lin = _group(k=256, n=128)
    lin = type(lin)(**{f: (getattr(lin, f).cuda() if torch.is_tensor(getattr(lin, f)) else getattr(lin, f))
                       for f in lin.__dataclass_fields__})
    a = torch.randint(-128, 128, (1, 200, lin.kp), dtype=torch.int8, device="cuda")
    res = torch.randn(200, 128, device="cuda").to(torch.bfloat16)
    gate = torch.randn(4, 6, 128, device="cuda")[:, 2]
    kw = dict(epilogue="residual", residual=res, gate=gate, tokens_per_frame=50)
    got = C.qgemm_cutlass(a, None, lin, 200, **kw)
    ref = qgemm.qgemm(a, None, lin, 200, **kw)
    assert float((got.float() - ref.float()).norm() / ref.float().norm()) < 1e-2
