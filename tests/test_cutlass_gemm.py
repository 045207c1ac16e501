"""CUTLASS INT8 GEMM path (kernels/cutlass_gemm.py): the host-side folding and the fusion decisions on the CPU, the
kernel and its fused epilogues on a Hopper GPU.

Tolerances of the fused epilogues (GPU tests):
- against the same GEMM storing bf16 followed by the unfused Triton consumer pass: equal, bit for bit (same rounding
  points, the GELU/quantization written as the PTX the Triton producer compiles to);
- against the Triton ``qgemm.qgemm`` with the same epilogue (dequantization rounded differently in float32: bias and
  zero-point correction folded, other FMA contractions): int8 codes equal except at most 0.2 % off by one; residual
  outputs differ in at most 0.1 % of the elements, relative norm error < 1e-3;
- against float64: codes against ``qgemm.qgemm_torch`` (float64 GEMM, the model's bf16 rounding points, exact GELU
  and x / step) at most one apart and at most 1 % off; the residual against ``qgemm.qgemm_ref`` (float64 GEMM and
  dequantization, no bf16 rounding) with relative norm error < 5e-3.
"""
from __future__ import annotations

import ctypes
import os
import shutil
from dataclasses import replace

import pytest
import torch

from kernels import act_quant, glue, qgemm
from kernels import cutlass_gemm as C
from kernels.layout import stack_acts
from qarvd.deploy.modules import RealQuantLinear, in_split_order

M, S, DIM, FFN = 9360, 1560, 1536, 8960  # Wan2.1-1.3B, batch 2 x 3 frames x 1560 tokens
SMALL = dict(m=771, k=256, n=144, s=257)  # odd rows, 3 frames, N a multiple of 16 but not of the 128 tile


def _layer(k=64, n=48, *, act_range=(-2.5, 4.0), n_outliers=0, device="cpu", **kw):
    """A symmetric-weight W8A8 layer (the CUTLASS path's format); ``kw``: RealQuantLinear.random's (dual_mode, seed,
    w_bits)."""
    return RealQuantLinear.random(k, n, asym_w=False, act_range=act_range, n_outliers=n_outliers, device=device, **kw)


def _next(k, **kw):
    """The consumer of a GELU output with k features (ffn.2): its activation quantization, asymmetric over GELU's
    range."""
    return _layer(k, 32, act_range=(-0.2, 6.0), **kw).stacked_act()


def _dual(k=256, n=200, *, n_outliers=128, max_ratio=7, device="cpu", seed=0):
    """A dual-scale int_ratio layer (128 outlier columns: one k-tile) with ratios drawn in [1, max_ratio] (the
    packer's come out near 1-2 on random weights; the kernel must apply any)."""
    lin = _layer(k, n, n_outliers=n_outliers, device=device, dual_mode="int_ratio", seed=seed).group()
    g = torch.Generator().manual_seed(seed)
    return replace(lin, ratio=torch.randint(1, max_ratio + 1, (lin.count * lin.n,), generator=g,
                                            dtype=torch.int32).to(device))


def _split_next(k, n_outliers=128, device="cpu"):
    """ffn.2's activation in the order ffn.0's permuted rows deliver it (qarvd.deploy.fast.IntPlan): dual scale,
    split layout, input in split order, so the codes are ffn.0's output columns in order with two steps."""
    f2 = _layer(k, 32, act_range=(-0.2, 6.0), n_outliers=n_outliers, device=device)
    return stack_acts([in_split_order(f2.act())])


def test_folded_columns_reproduce_the_exact_integer_epilogue():
    """col_scale * acc + col_bias (the CUTLASS epilogue) equals qgemm's exact (acc + corr) * scale + bias."""
    lin = _layer().group()
    assert C.supports(lin, torch.bfloat16) and lin.has_corr and not lin.has_wzp
    assert not C.supports(lin, torch.float32)
    a = torch.randint(-128, 128, (1, 30, lin.kp), dtype=torch.int8)
    cols = C._columns(lin, 0)
    assert cols.ratio is None and cols.outlier_k_tiles == 0
    got = C.int8_gemm_ref(a[0], lin.weight, cols.scale, cols.bias)
    ref = qgemm.qgemm_ref(a, None, lin, 30)
    assert float((got - ref).norm() / ref.norm()) < 1e-6


def test_int_ratio_columns_reproduce_the_dual_scale_reference():
    """The int_ratio accumulator (outlier k-tiles times ratio[n], then the normal ones) with the folded columns equals
    qgemm_ref's (acc_o + corr_o) * ratio + acc_n + corr_n, times the normal group's scale, plus the bias, in float64:
    the ratio must reach the outlier correction as well (has_corr: asymmetric activations)."""
    lin = _dual()
    assert lin.dual == "int_ratio" and lin.has_corr and bool((lin.corr[0] != 0).any()) and lin.kp == 256
    assert C.supports(lin, torch.bfloat16)
    a = torch.randint(-128, 128, (1, 30, lin.kp), dtype=torch.int8)
    cols = C._columns(lin, 0)
    assert cols.outlier_k_tiles == 1 and cols.ratio.dtype == torch.int32 and cols.ratio.numel() == 256
    assert torch.equal(cols.ratio[:lin.n], lin.ratio) and not cols.ratio[lin.n:].any()  # zero pad to whole tiles
    got = C.int8_gemm_ref(a[0], lin.weight, cols.scale, cols.bias, cols.ratio, cols.outlier_k_tiles)
    ref = qgemm.qgemm_ref(a, None, lin, 30)
    assert float((got - ref).norm() / ref.norm()) < 1e-6
    wrong = C.int8_gemm_ref(a[0], lin.weight, cols.scale, cols.bias, torch.ones_like(cols.ratio), 1)
    assert float((wrong - ref).norm() / ref.norm()) > 1e-2  # the ratios matter at this size


def test_only_the_int_ratio_dual_form_takes_cutlass():
    assert C.supports(_dual(), torch.bfloat16)
    exact = _layer(256, 200, n_outliers=128, dual_mode="exact").group()
    assert exact.dual == "exact" and not C.supports(exact, torch.bfloat16)  # two accumulators: Triton
    w4 = _layer(256, 200, n_outliers=128, dual_mode="int_ratio", w_bits=4).group()
    assert not C.supports(w4, torch.bfloat16)
    assert C.config_for("store", 1536, 8960, int_ratio=True) == C.INT_RATIO_CONFIG
    assert C.config_for("store", 1536, 8960) == 3


def test_int8_gemm_checks_the_ratio_operands():
    """Wrong int_ratio operands fail on the host, before the library is loaded."""
    a, w = torch.zeros(4, 256, dtype=torch.int8), torch.zeros(200, 256, dtype=torch.int8)
    scale, ratio = torch.ones(200), torch.ones(256, dtype=torch.int32)
    with pytest.raises(ValueError, match="int_ratio config"):
        C.int8_gemm(a, w, scale, ratio=ratio, outlier_k_tiles=1)  # config 0 has no ratio step
    with pytest.raises(ValueError, match="int_ratio config"):
        C.int8_gemm(a, w, scale, config=C.INT_RATIO_CONFIG)
    with pytest.raises(ValueError, match="rounded up to the tile"):
        C.int8_gemm(a, w, scale, config=C.INT_RATIO_CONFIG, ratio=ratio[:200], outlier_k_tiles=1)
    with pytest.raises(ValueError, match="outlier group"):
        C.int8_gemm(a, w, scale, config=C.INT_RATIO_CONFIG, ratio=ratio, outlier_k_tiles=2)  # no normal k-tile


def test_instances_cover_the_configs_each_epilogue_picks():
    """Every (epilogue, shape) CONFIG_BY_SHAPE names is in the library, and the default config of every epilogue but
    gelu_quant_cols (only ffn.0's shape has it); the int_ratio config has the kinds Q-ARVD's dual layers use."""
    for (epilogue, k, n), cfg in C.CONFIG_BY_SHAPE.items():
        assert (cfg, epilogue) in C.INSTANCES and C.config_for(epilogue, k, n) == cfg
    assert all((0, e) in C.INSTANCES for e in C.EPILOGUES if e != "gelu_quant_cols")
    assert {e for c, e in C.INSTANCES if c == C.INT_RATIO_CONFIG} == {"store", "residual", "gelu_quant_cols"}


def test_gelu_quant_fuses_codes_in_output_order_without_row_sums():
    lin = _layer(64, 48).group()
    act = _next(48)
    assert act.uniform and C.gelu_quant_kind(act) == "gelu_quant"
    assert C.unfused_reason("gelu_quant", lin, 30, next_act=act) is None
    assert "row sums" in C.unfused_reason("gelu_quant", lin, 30, next_act=act, next_rowsum=True)
    assert "multiples of 16" in C.unfused_reason("gelu_quant", _layer(64, 40).group(), 30, next_act=_next(40))
    with pytest.raises(ValueError, match="StackedAct"):
        C.unfused_reason("gelu_quant", lin, 30, next_act=_next(64))


def test_gelu_quant_per_column_for_a_dual_scale_consumer_in_split_order():
    """ffn.0 before a dual-scale ffn.2: per-column steps when the codes are ffn.0's columns in order (split layout,
    input in split order, the outlier run exactly its padded width); the 2x1-cluster config at Wan's ffn.0 shape,
    the int_ratio config for a dual ffn.0; other layouts and shapes without an instance run unfused."""
    split = _split_next(256)
    assert not split.uniform and split.src is None and C.gelu_quant_kind(split) == "gelu_quant_cols"
    # the per-column vectors hold each output column's group step: outliers first, in order
    groups = split.gscale[0].repeat_interleave(128)
    assert torch.equal(split.col_scale[0], groups)
    assert "no 'gelu_quant_cols' instance" in C.unfused_reason("gelu_quant", _layer(64, 256).group(), 30,
                                                                next_act=split)
    assert C.unfused_reason("gelu_quant", _dual(64, 256, n_outliers=32), 30, next_act=split) is None  # int_ratio
    assert "in order" in C.unfused_reason("gelu_quant", _layer(64, 256).group(), 30, next_act=_split_next(256, 32))
    scatter = split.scattered()
    assert C.gelu_quant_kind(scatter) is None and "in order" in C.unfused_reason(
        "gelu_quant", _layer(64, 256).group(), 30, next_act=scatter)
    dual_ffn0 = _dual(64, 256, n_outliers=32)
    assert "no 'gelu_quant' instance" in C.unfused_reason("gelu_quant", dual_ffn0, 30, next_act=_next(256))


def test_gelu_quant_per_column_at_the_wan_ffn0_shape(monkeypatch):
    """Wan's ffn.0 (K=1536, N=8960) before a dual ffn.2 with 128 outliers fuses on config 3 (the decision only: the
    8960-wide layers are built lazily on the CPU, so a smaller stand-in carries the same shape facts)."""
    lin = replace(_layer(64, 48).group(), n=8960, kp=1536)
    act = _split_next(256)
    act = replace(act, kp=8960, col_scale=act.col_scale.new_zeros(1, 8960), col_zero=act.col_zero.new_zeros(1, 8960))
    assert C.unfused_reason("gelu_quant", lin, 9360, next_act=act) is None
    assert C.config_for(C.gelu_quant_kind(act), lin.kp, lin.n) == 3


def test_residual_fuses_whole_bf16_frames():
    lin = _layer(64, 48).group()
    m = 256
    res = torch.zeros(m, 48, dtype=torch.bfloat16)
    gate = torch.zeros(4, 3, 48)[:, 1]
    assert C.unfused_reason("residual", lin, m, residual=res) is None
    assert C.unfused_reason("residual", lin, m, residual=res, out=res, gate=gate, tokens_per_frame=128) is None
    assert "whole frames" in C.unfused_reason("residual", lin, m, residual=res, gate=gate, tokens_per_frame=100)
    assert "float32" in C.unfused_reason("residual", lin, m, residual=res, gate=gate.bfloat16(), tokens_per_frame=128)
    odd_stride = torch.zeros(2, 49)[:, 1:]  # the row broadcast reads element by element: any float32 view
    assert C.unfused_reason("residual", lin, m, residual=res, gate=odd_stride, tokens_per_frame=128) is None
    assert "too short" in C.unfused_reason("residual", lin, m, residual=res, gate=gate, tokens_per_frame=64)
    assert "bf16" in C.unfused_reason("residual", lin, m, residual=res.float())
    shifted = torch.zeros(m, 56, dtype=torch.bfloat16)[:, 1:49]  # row pitch fine, base 2 bytes off: no TMA
    assert "16-byte aligned" in C.unfused_reason("residual", lin, m, residual=shifted)
    with pytest.raises(ValueError, match="residual tensor"):
        C.unfused_reason("residual", lin, m)


def test_fusion_stops_above_the_measured_m(monkeypatch):
    """FUSE_MAX_M: above the largest M where the fused epilogue was measured faster, the unfused path runs."""
    lin = _layer(64, 48).group()
    res = torch.zeros(256, 48, dtype=torch.bfloat16)
    monkeypatch.setitem(C.FUSE_MAX_M, ("residual", lin.kp, 48), 128)
    assert C.unfused_reason("residual", lin, 128, residual=res[:128]) is None
    assert "measured slower" in C.unfused_reason("residual", lin, 256, residual=res)
    assert C.FUSE_MAX_M[("residual", 8960, 1536)] == 0  # the Wan ffn.2 (gated, batched) stays unfused


def test_backend_fuse_epilogues_takes_a_boolean():
    from qarvd.deploy.backends import CutlassInt8Backend

    assert not CutlassInt8Backend(fuse_epilogues=False).fuse_epilogues
    with pytest.raises(ValueError, match="fuse_epilogues"):
        CutlassInt8Backend(fuse_epilogues="no")


def test_qgemm_cutlass_rejects_an_unknown_epilogue():
    lin = _layer().group()
    with pytest.raises(ValueError, match="unknown epilogue"):
        C.qgemm_cutlass(torch.zeros(1, 4, lin.kp, dtype=torch.int8), None, lin, 4, epilogue="relu")


@pytest.mark.skipif("QARVD_INT8_GEMM_LIB" not in os.environ, reason="needs a built library (QARVD_INT8_GEMM_LIB)")
def test_built_library_matches_this_source():
    """Loads without a GPU: config count, argument struct and instances agree with the Python side."""
    lib = C.library()
    assert lib.qarvd_int8_gemm_args_size() == ctypes.sizeof(C.GemmArgs)


# ------------------------------------------------------------------------------------------------------------- GPU
needs_hopper = pytest.mark.skipif(
    not torch.cuda.is_available() or torch.cuda.get_device_capability()[0] < 9
    or (shutil.which("nvcc") is None and "QARVD_INT8_GEMM_LIB" not in os.environ),
    reason="the CUTLASS INT8 GEMM needs a Hopper GPU and nvcc (or QARVD_INT8_GEMM_LIB)")


def _codes(m, lin, seed=0):
    g = torch.Generator(device="cuda").manual_seed(seed)
    return torch.randint(-128, 128, (lin.count, m, lin.kp), dtype=torch.int8, device="cuda", generator=g)


def _off(got: torch.Tensor, ref: torch.Tensor) -> tuple[int, float]:
    """(largest code distance, fraction of codes that differ)."""
    d = (got.int() - ref.int()).abs()
    return int(d.max()), float((d > 0).float().mean())


@needs_hopper
@pytest.mark.parametrize("config", [c for c in range(len(C.CONFIGS)) if c != C.INT_RATIO_CONFIG])
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
@pytest.mark.parametrize("m,k,n,outlier_k_tiles", [(M, DIM, DIM, 1), (M, DIM, FFN, 1), (M, FFN, DIM, 1),
                                                   (SMALL["m"], 384, SMALL["n"], 2)])
def test_int_ratio_gemm_matches_float64(m, k, n, outlier_k_tiles):
    """The int_ratio mainloop at the Wan shapes (128 outlier columns: one k-tile; ratios 1..7) and at a small shape
    with two outlier k-tiles of three and a partial N tile: every bf16 output within half a bf16 ulp (plus float32
    conversion) of float64's ratio[n] * acc_outlier + acc_normal; a ratio applied to the wrong columns, k-tiles or
    work tile would be off by far more."""
    g = torch.Generator(device="cuda").manual_seed(0)
    a = torch.randint(-128, 128, (m, k), dtype=torch.int8, device="cuda", generator=g)
    w = torch.randint(-128, 128, (n, k), dtype=torch.int8, device="cuda", generator=g)
    ratio = torch.randint(1, 8, (C._tiles(n) * 128,), dtype=torch.int32, device="cuda", generator=g)
    scale = torch.rand(n, device="cuda", generator=g) * 1e-3 + 1e-4
    y = C.int8_gemm(a, w, scale, config=C.INT_RATIO_CONFIG, ratio=ratio, outlier_k_tiles=outlier_k_tiles)
    ref = C.int8_gemm_ref(a, w, scale, None, ratio, outlier_k_tiles)
    assert bool(((y.double() - ref).abs() <= ref.abs() * (2**-8 + 2**-20)).all())
    plain = C.int8_gemm_ref(a, w, scale)
    assert float((y.double() - plain).norm() / plain.norm()) > 1e-2  # the ratio step really changes the result


@needs_hopper
@pytest.mark.parametrize("m,k,n", [(M, DIM, DIM), (M, DIM, FFN), (M, FFN, DIM), (SMALL["m"], SMALL["k"], SMALL["n"])])
def test_int_ratio_layer_matches_triton_and_float64(m, k, n):
    """A packed dual-scale int_ratio layer (zero-point corrections folded with the ratio) through qgemm_cutlass, which
    takes it (no Triton fallback), against Triton's int_ratio qgemm and qgemm_ref; grouped like q/k/v at Wan's dim."""
    count = 3 if (k, n) == (DIM, DIM) else 1
    lin = _dual(k, n, device="cuda") if count == 1 else _dual_group(k, n, count)
    assert C.supports(lin, torch.bfloat16) and lin.has_corr
    a = _codes(m, lin)
    got = C.qgemm_cutlass(a, None, lin, m)
    tri = qgemm.qgemm(a, None, lin, m).float()
    assert float((got.float() != tri).float().mean()) <= 1e-3
    assert float((got.float() - tri).norm() / tri.norm()) < 1e-3
    ref = qgemm.qgemm_ref(a, None, lin, m)
    assert float((got.double() - ref).norm() / ref.norm()) < 4e-3  # bf16 output rounding


def _dual_group(k, n, count):
    """``count`` dual int_ratio layers stacked for one grouped launch (self_attn.q/k/v), ratios 1..7."""
    from qarvd.deploy.modules import stack_group

    mods = [_layer(k, n, n_outliers=128, device="cuda", dual_mode="int_ratio", seed=i) for i in range(count)]
    lin = stack_group(mods)
    g = torch.Generator().manual_seed(1)
    return replace(lin, ratio=torch.randint(1, 8, (count * n,), generator=g, dtype=torch.int32).cuda())


@needs_hopper
@pytest.mark.parametrize("m,k,n", [(M, DIM, FFN), (SMALL["m"], SMALL["k"], SMALL["n"])])
@pytest.mark.parametrize("dual", [False, True])
def test_gelu_quant_per_column_fused(m, k, n, dual, monkeypatch):
    """ffn.0 (plain: config 3; int_ratio: config 4) before a dual-scale ffn.2 in split order: the per-column epilogue's
    codes equal CUTLASS store + the Triton split producer bit for bit, and Triton's own fused epilogue and float64
    within one code."""
    monkeypatch.setattr(C, "FUSE_MAX_M", {})
    monkeypatch.setitem(C.CONFIG_BY_SHAPE, ("gelu_quant_cols", k, n), 3)  # the small shape too (no config-0 instance)
    lin = _dual(k, n, n_outliers=128, device="cuda") if dual else _layer(k, n, device="cuda").group()
    act = _split_next(n, device="cuda")
    assert C.gelu_quant_kind(act) == "gelu_quant_cols"
    _check_fused_gelu_quant(lin, act, m, n)


@needs_hopper
@pytest.mark.parametrize("m,k,n", [(M, DIM, FFN), (SMALL["m"], SMALL["k"], SMALL["n"])])
def test_gelu_quant_fused(m, k, n, monkeypatch):
    monkeypatch.setattr(C, "FUSE_MAX_M", {})  # correctness at every M, whichever path the speed table picks
    lin, act = _layer(k, n, device="cuda").group(), _next(n, device="cuda")
    _check_fused_gelu_quant(lin, act, m, n)


def _check_fused_gelu_quant(lin, act, m: int, n: int) -> None:
    """The fused GELU -> int8 epilogue runs (no fallback), equals CUTLASS's bf16 store + the Triton producer bit for
    bit, and is within one code of the Triton GEMM's fused epilogue and of the torch reference."""
    a = _codes(m, lin)
    assert C.unfused_reason("gelu_quant", lin, m, next_act=act) is None
    got, rs = C.qgemm_cutlass(a, None, lin, m, epilogue="gelu_quant", next_act=act)
    assert rs is None and got.shape == (m, act.kp)
    got = got[:, :n]
    y = C.qgemm_cutlass(a, None, lin, m)  # the unfused path: CUTLASS bf16 store + the Triton producer
    assert torch.equal(got, act_quant.norm_quant(y, act, pre_gelu=True)[0][0][:, :n])
    tri, _ = qgemm.qgemm(a, None, lin, m, epilogue="gelu_quant", next_act=act)
    dist, frac = _off(got, tri[:, :n])
    assert dist <= 1 and frac <= 2e-3, (dist, frac)
    ref, _ = qgemm.qgemm_torch(a, None, lin, m, epilogue="gelu_quant", next_act=act)
    dist, frac = _off(got, ref[:, :n])
    assert dist <= 1 and frac <= 1e-2, (dist, frac)


def _residual_case(m, k, n, s, gated, dual=False):
    lin = _dual(k, n, device="cuda") if dual else _layer(k, n, device="cuda").group()
    res = torch.randn(m, n, device="cuda").to(torch.bfloat16)
    gate = torch.randn(m // s, 6, n, device="cuda")[:, 2] if gated else None
    return lin, _codes(m, lin), res, gate


@needs_hopper
@pytest.mark.parametrize("m,k,n,s,gated", [(M, DIM, DIM, S, True), (M, DIM, DIM, S, False), (M, FFN, DIM, S, True),
                                           (*SMALL.values(), True), (*SMALL.values(), False)])
@pytest.mark.parametrize("dual", [False, True])
def test_residual_fused(m, k, n, s, gated, dual, monkeypatch):
    """Plain and int_ratio (dual-scale) layers: the fused residual equals CUTLASS store + the Triton residual pass bit
    for bit (in place too), and the Triton qgemm and float64 within the stated tolerances."""
    monkeypatch.setattr(C, "FUSE_MAX_M", {})  # correctness at every M, whichever path the speed table picks
    lin, a, res, gate = _residual_case(m, k, n, s, gated, dual)
    kw = dict(epilogue="residual", residual=res, gate=gate, tokens_per_frame=s)
    assert C.unfused_reason("residual", lin, m, **{x: kw[x] for x in ("residual", "gate", "tokens_per_frame")}) is None
    got = C.qgemm_cutlass(a, None, lin, m, **kw)
    unfused = glue.residual_update(res, C.qgemm_cutlass(a, None, lin, m), gate, s)
    assert torch.equal(got, unfused)
    inplace = res.clone()
    C.qgemm_cutlass(a, None, lin, m, **{**kw, "residual": inplace}, out=inplace)  # C and D alias
    assert torch.equal(inplace, got)
    tri = qgemm.qgemm(a, None, lin, m, **kw).float()
    assert float((got.float() != tri).float().mean()) <= 1e-3
    assert float((got.float() - tri).norm() / tri.norm()) < 1e-3
    y = qgemm.qgemm_ref(a, None, lin, m)
    ref = res.double() + (y * gate.double()[torch.arange(m, device="cuda") // s] if gated else y)
    assert float((got.double() - ref).norm() / ref.norm()) < 5e-3


@needs_hopper
def test_residual_with_an_odd_stride_gate_or_a_misaligned_residual(monkeypatch):
    """A gate view of odd row pitch and base fuses (the row broadcast reads element by element); a residual 2 bytes
    off 16-byte alignment takes the unfused path. Both equal CUTLASS store + the Triton residual pass bit for bit."""
    monkeypatch.setattr(C, "FUSE_MAX_M", {})
    m, k, n, s = SMALL.values()
    lin, a, res, _ = _residual_case(m, k, n, s, False)
    gate = torch.randn(m // s, n + 1, device="cuda")[:, 1:]
    assert gate.stride(0) % 2 and gate.data_ptr() % 16
    kw = dict(gate=gate, tokens_per_frame=s)
    assert C.unfused_reason("residual", lin, m, residual=res, **kw) is None
    want = glue.residual_update(res, C.qgemm_cutlass(a, None, lin, m), gate, s)
    got = C.qgemm_cutlass(a, None, lin, m, epilogue="residual", residual=res, **kw)
    assert torch.equal(got, want)
    shifted = torch.empty(m, n + 8, device="cuda", dtype=torch.bfloat16)[:, 1:n + 1]
    shifted.copy_(res)
    assert "16-byte aligned" in C.unfused_reason("residual", lin, m, residual=shifted, **kw)
    assert torch.equal(C.qgemm_cutlass(a, None, lin, m, epilogue="residual", residual=shifted, **kw), want)


@needs_hopper
@pytest.mark.parametrize("case", ["next_rowsum", "dual"])
def test_gelu_quant_fallback_matches_triton(case):
    """The consumers the epilogue does not fuse run as CUTLASS bf16 store + the Triton producer."""
    m, k, n = SMALL["m"], SMALL["k"], 256
    rowsum = case == "next_rowsum"
    lin = _layer(k, n, device="cuda").group()
    act = _layer(n, 32, act_range=(-0.2, 6.0), n_outliers=0 if rowsum else 32, device="cuda").stacked_act()
    a = _codes(m, lin)
    assert C.unfused_reason("gelu_quant", lin, m, next_act=act, next_rowsum=rowsum) is not None
    got, rs = C.qgemm_cutlass(a, None, lin, m, epilogue="gelu_quant", next_act=act, next_rowsum=rowsum)
    tri, tri_rs = qgemm.qgemm(a, None, lin, m, epilogue="gelu_quant", next_act=act, next_rowsum=rowsum)
    dest = act.dest[0].long()  # the written columns (pad columns are left as they are)
    dist, frac = _off(got[:, dest], tri[:, dest])
    assert dist <= 1 and frac <= 2e-3, (dist, frac)
    assert (rs is None) == (tri_rs is None) == (not rowsum)
    if rowsum:  # each code one apart moves its row sum by one
        mismatched = (got[:, dest] != tri[:, dest]).sum(1)
        assert bool(((rs - tri_rs).abs().sum(1) <= mismatched).all())


@needs_hopper
def test_fused_forward_of_a_dual_scale_model_runs_its_dual_layers_on_cutlass(monkeypatch):
    """A small CausalWan with 128 outlier columns on every block linear (int_ratio, symmetric int8 weights): the fused
    forward on cutlass_int8 matches torch_ref, and no int_ratio layer falls back to the Triton GEMM: q/k/v (grouped),
    o, cross q/o and ffn.2 run the int_ratio config, ffn.0's GELU -> int8 writes ffn.2's two runs per column; the
    head layout (kernel.dual_layout=head, the conf default) gives the same output bit for bit."""
    import copy

    from qarvd.deploy import accelerate_, convert_to_real
    from qarvd.deploy.backends import CutlassInt8Backend, TorchRefBackend
    from qarvd.deploy.packing import minmax_spec
    from qarvd.models.wan import CausalWanModel, WanConfig
    from qarvd.quant.select import select_linears

    torch.manual_seed(0)
    cfg = WanConfig(dim=256, ffn_dim=1024, num_heads=2, num_layers=2, freq_dim=64, text_dim=64, text_len=16)
    model = CausalWanModel(cfg).cuda().to(torch.bfloat16).eval()
    x = torch.randn(2, 16, 3, 16, 24, device="cuda")
    t = torch.full((2, 3), 900.0, device="cuda")
    ctx = torch.randn(2, 16, 64, device="cuda", dtype=torch.bfloat16)

    def fwd(m):
        with torch.no_grad():
            return m(x, t, ctx, cache=m.new_cache(2, 3, 16, 24)).float()

    specs = {nm: minmax_spec(model.get_submodule(nm).weight, model.get_submodule(nm).bias,
                             n_outliers=128 if nm.startswith("blocks.") else 0) for nm in select_linears(model)}
    be = CutlassInt8Backend(attention="auto", dual_mode="int_ratio", weights="symmetric")
    real = convert_to_real(model, specs, be)
    calls, fallbacks = [], []
    int8_gemm, triton_qgemm = C.int8_gemm, qgemm.qgemm

    def spy(*args, **kw):
        calls.append((kw.get("config"), "gelu_quant_cols" if kw.get("quant_per_column") else None))
        return int8_gemm(*args, **kw)

    def triton_spy(a, rowsums, lin, *args, **kw):
        fallbacks.append(lin.dual)
        return triton_qgemm(a, rowsums, lin, *args, **kw)

    monkeypatch.setattr(C, "int8_gemm", spy)
    monkeypatch.setattr(qgemm, "qgemm", triton_spy)
    y = fwd(accelerate_(real, be))
    assert "int_ratio" not in fallbacks
    assert (C.INT_RATIO_CONFIG, "gelu_quant_cols") in calls and sum(c == C.INT_RATIO_CONFIG for c, _ in calls) >= 10
    head = accelerate_(copy.deepcopy(real), CutlassInt8Backend(attention="auto", dual_mode="int_ratio",
                                                               weights="symmetric", dual_layout="head"))
    assert head.blocks[0]._qarvd_plan.a_qkv.head and head.blocks[0]._qarvd_plan.g_qkv.kp == 128 + cfg.dim
    assert torch.equal(fwd(head), y)  # the head layout sums the same integers as the split one: bit for bit
    ref = fwd(accelerate_(copy.deepcopy(real), TorchRefBackend(attention="auto", dual_mode="int_ratio",
                                                                weights="symmetric")))
    assert float((y - ref).norm() / ref.norm()) < 1e-2
