"""Triton kernels on the CPU through TRITON_INTERPRET=1, small odd shapes, against float64 torch references.

Outputs are poisoned before each kernel and every element the kernel owns must be rewritten; pad columns of the
int8 layout are documented don't-cares (their weights are zero) and must keep the poison.
"""
from __future__ import annotations

import os

os.environ["TRITON_INTERPRET"] = "1"  # before kernels is imported: Triton picks interpreter or compiler at decoration

import pytest  # noqa: E402
import torch  # noqa: E402

from kernels import act_quant, glue, qgemm  # noqa: E402
from kernels.layout import PAD, pack_int4, stack_acts, unpack_int4  # noqa: E402
from qarvd.deploy.modules import RealQuantLinear, stack_group  # noqa: E402
from qarvd.deploy.packing import minmax_spec  # noqa: E402

POISON = 77


def _layer(k, n, w_bits=8, outliers=0, dual="exact", asym=True, smooth=False, seed=0):
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(n, k, generator=g) / k**0.5
    w[:, torch.randperm(k, generator=g)[:5]] *= 10
    spec = minmax_spec(w, torch.randn(n, generator=g) * 0.1, w_bits=w_bits, n_outliers=outliers, asym_act=asym,
                       asym_w=asym, act_range=(-2.5, 4.0))
    if smooth:
        spec.smooth = torch.rand(k, generator=g) + 0.5
    return RealQuantLinear.from_spec(spec, dual), spec


def _valid_cols(acts, i=0):
    m = torch.zeros(acts.kp, dtype=torch.bool)
    m[acts.dest[i].long()] = True
    return m


@pytest.mark.parametrize("ln,mod,consumers", [
    ("none", False, [dict()]),
    ("plain", True, [dict(), dict(outliers=32), dict(smooth=True)]),
    ("affine", False, [dict(outliers=64, asym=False)]),
])
def test_norm_quant_writes_reference_codes(ln, mod, consumers):
    m, k, s = 37, 160, 9
    mods = [_layer(k, 48, seed=i, **c)[0] for i, c in enumerate(consumers)]
    acts = stack_acts([mo.act() for mo in mods])
    x = torch.randn(m, k) * 3
    lnw = (torch.rand(k) + 0.5, torch.randn(k), 1e-6) if ln == "affine" else (None, None, 1e-6)
    kw = dict(ln=None if ln == "none" else lnw, mod=(torch.randn(m // s + 1, 6, k), 3, 4, s) if mod else None)
    out = torch.full((len(mods), m, acts.kp), POISON, dtype=torch.int8)
    a, rs = act_quant.norm_quant(x, acts, rowsum=True, out=out, **kw)
    h = act_quant.norm_act_ref(x.double(), **kw)  # float64 reference of the activation
    a_ref, rs_ref = act_quant.quantize_ref(h, acts, rowsum=True)
    for i in range(len(mods)):
        valid = _valid_cols(acts, i)
        d = (a[i][:, valid].int() - a_ref[i][:, valid].int()).abs()
        assert d.max() <= 1 and d.float().mean() < 2e-3  # float32 kernel vs float64: rare ties may flip
        assert (a[i][:, ~valid] == POISON).all()
        kop = acts.kops[i]
        assert torch.equal(rs[i, :, 0], a[i][:, :kop][:, valid[:kop]].int().sum(1))
        assert torch.equal(rs[i, :, 1], a[i][:, kop:][:, valid[kop:]].int().sum(1))


@pytest.mark.parametrize("k,ln,mod,pre_gelu,in_fp8", [
    (160, "plain", True, False, False),  # norm1 + modulation -> q/k/v, each with its own outlier columns
    (160, "affine", False, False, False),  # norm3 -> cross q
    (2304, "none", False, False, True),  # FP8 attention codes -> o, two column blocks of 2048 (the loop)
    (160, "none", False, True, False),  # ffn.0 output -> GELU -> ffn.2
])
def test_split_layout_writes_the_scattered_codes(k, ln, mod, pre_gelu, in_fp8):
    """Dual-scale consumers without smoothing take the split layout (kernels/layout.py): the producer reads its
    input through each consumer's permutation and writes two contiguous runs with the group steps. Same codes and
    row sums, byte for byte, as the per-column scatter through ``dest``; pad columns untouched."""
    import dataclasses

    m, s = 37, 9
    mods = [_layer(k, 48, seed=i, outliers=32 * (i + 1), asym=i != 1)[0] for i in range(3 if ln == "plain" else 1)]
    acts = stack_acts([mo.act() for mo in mods])
    assert acts.split and acts.src is not None and acts.nouts == tuple(32 * (i + 1) for i in range(len(mods)))
    scatter = dataclasses.replace(acts, nouts=(), gscale=None, gzero=None, src=None)
    x = torch.randn(m, k) * 3
    kw = dict(ln=None if ln == "none" else ((torch.rand(k) + 0.5, torch.randn(k), 1e-6) if ln == "affine" else
                                            (None, None, 1e-6)),
              mod=(torch.randn(m // s + 1, 6, k), 3, 4, s) if mod else None, pre_gelu=pre_gelu)
    if in_fp8:
        x = (x * 50).clamp(-448, 448).to(torch.float8_e4m3fn)
        kw.update(in_scale=torch.tensor([0.02]), act_dtype=torch.float32)
    got = [act_quant.norm_quant(x, a, rowsum=True, out=torch.full((len(mods), m, acts.kp), POISON, dtype=torch.int8),
                                **kw) for a in (acts, scatter)]
    assert torch.equal(got[0][0], got[1][0]) and torch.equal(got[0][1], got[1][1])
    assert (got[0][0] == POISON).any()  # the outlier run's padding was left alone


@pytest.mark.parametrize("k,ln,mod,dual", [
    (160, "plain", True, "int_ratio"),  # norm1 + modulation -> q/k/v, each with its own outlier columns
    (2304, "none", False, "exact"),  # attention output -> o: two column blocks of 2048, the outliers after the loop
])
def test_head_layout_gathers_only_the_outliers_and_keeps_every_sum(k, ln, mod, dual):
    """The head layout (qarvd.deploy.modules.head_layout) against the split one: the outlier run byte for byte, the
    body the split layout's normal run at each column's own place (the holes hold normal-step codes of the outlier
    columns, the pads the poison), and the grouped GEMM's outputs equal: same integer sums, same epilogue."""
    from qarvd.deploy.modules import head_layout

    m, s = 37, 9
    mods = [_layer(k, 64, dual=dual, outliers=32 * (i + 1), asym=False, seed=i)[0]
            for i in range(3 if ln == "plain" else 1)]
    split_g, split_a = stack_group(mods), [mo.act() for mo in mods]
    head_g, head_a = head_layout(split_g, split_a)
    split_a, head_a = stack_acts(split_a), stack_acts(head_a)
    assert head_a.head and not head_a.split and head_g.kp == PAD + k + (-k) % PAD
    x = torch.randn(m, k) * 3
    kw = dict(ln=(None, None, 1e-6) if ln == "plain" else None, mod=(torch.randn(m // s + 1, 6, k), 3, 4, s) if mod
              else None)
    codes = [act_quant.norm_quant(x, a, out=torch.full((len(mods), m, a.kp), POISON, dtype=torch.int8), **kw)[0]
             for a in (split_a, head_a)]
    ref, _ = act_quant.quantize_ref(act_quant.norm_act_ref(x, **kw), head_a)
    for i, mo in enumerate(mods):
        n_out, kop = split_a.nouts[i], split_a.kops[i]
        normal = split_a.src[i, n_out:].long()
        assert torch.equal(codes[1][i, :, :n_out], codes[0][i, :, :n_out])
        assert torch.equal(codes[1][i, :, kop + normal], codes[0][i, :, kop:kop + normal.numel()])
        assert torch.equal(codes[1][i, :, kop:kop + k], ref[i, :, kop:kop + k])  # holes: the reference's body
        assert (codes[1][i, :, n_out:kop] == POISON).all() and (codes[1][i, :, kop + k:] == POISON).all()
    ys = [qgemm.qgemm(a, None, g, m, out_dtype=torch.float32) for a, g in ((codes[0], split_g), (codes[1], head_g))]
    assert torch.equal(*ys)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_norm_modulate_plain_and_fp8(dtype):
    m, k, s = 21, 96, 7
    x = (torch.randn(m, k) * 2).to(dtype)
    kw = dict(ln=(None, None, 1e-6), mod=(torch.randn(3, 6, k), 0, 1, s))
    h = act_quant.norm_quant(x, **kw)
    ref = act_quant.norm_quant_torch(x, **kw)
    assert h.dtype == dtype
    # float32: last-bit differences of the reductions. bfloat16: Triton's interpreter truncates float32 -> bfloat16
    # (the GPU rounds to nearest even, checked in tests/test_kernels_gpu.py), so up to one ulp per rounding point.
    tol = 2.0 ** -6 if dtype == torch.bfloat16 else 2.0 ** -20
    close = (h.float() - ref.float()).abs() <= tol * ref.float().abs().clamp_min(1)
    assert close.float().mean() > 0.99 and float((h.float() - ref.float()).norm() / ref.float().norm()) < 4 * tol
    if dtype != torch.float32:
        return  # float8 from bfloat16 would compound the interpreter's truncation; the GPU test covers it
    scale = torch.tensor([0.01])
    h8 = act_quant.norm_quant(x, fp8_scale=scale, pre_gelu=True)
    r8 = act_quant.norm_quant_torch(x, fp8_scale=scale, pre_gelu=True)
    assert h8.dtype == torch.float8_e4m3fn
    # Triton's interpreter rounds float8 wrongly just below a power of two (124.7 -> 64); the GPU converts in
    # hardware (tests/test_kernels_gpu.py). Elsewhere: one float8 step at most (GELU's tanh differs in the last bits).
    hf, rf = h8.float(), r8.float()
    off = (hf != rf) & ~(rf.abs().log2() % 1 == 0)
    assert off.float().mean() < 0.02
    assert ((hf - rf).abs()[off] <= torch.clamp(rf.abs()[off] / 8, min=2.0**-9) + 1e-6).all()  # subnormal step 2^-9


VARIANTS = [(8, 0, "exact"), (8, 32, "exact"), (8, 64, "int_ratio"), (4, 0, "exact"), (4, 32, "exact"),
            (4, 32, "int_ratio")]


@pytest.mark.parametrize("w_bits,outliers,dual", VARIANTS)
@pytest.mark.parametrize("count,asym", [(1, True), (2, False)])
def test_qgemm_matches_float64(w_bits, outliers, dual, count, asym):
    m, k, n = 45, 200, 64 if count > 1 else 48  # odd M; N not a tile multiple when alone
    mods = [_layer(k, n, w_bits, outliers, dual, asym, seed=i)[0] for i in range(count)]
    group, acts = stack_group(mods), stack_acts([mo.act() for mo in mods])
    a, rs = act_quant.norm_quant(torch.randn(m, k) * 2, acts, rowsum=group.has_wzp)
    out = torch.full((m, count * n), float("nan"))
    y = qgemm.qgemm(a, rs, group, m, out_dtype=torch.float32, out=out)
    ref = qgemm.qgemm_ref(a, rs, group, m)
    assert torch.isfinite(y).all()
    assert float((y.double() - ref).norm() / ref.norm()) < 1e-6
    assert group.has_wzp == (asym and w_bits == 8)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_qgemm_residual_epilogue(dtype):
    m, k, n, s = 40, 128, 96, 8
    mod, _ = _layer(k, n, outliers=32)
    grp, acts = mod.group(), mod.stacked_act()
    a, rs = act_quant.norm_quant(torch.randn(m, k), acts, rowsum=True)
    res = torch.randn(m, n).to(dtype)
    gate = torch.randn(m // s, 6, n)[:, 5]
    kw = dict(out_dtype=dtype, epilogue="residual", residual=res, gate=gate, tokens_per_frame=s)
    out = qgemm.qgemm(a, rs, grp, m, **kw)
    ref = qgemm.qgemm_torch(a, rs, grp, m, **kw)
    tol = 1e-6 if dtype == torch.float32 else 1.5e-2  # bfloat16: the interpreter truncates (GPU: nearest even)
    assert float((out.float() - ref.float()).norm() / ref.float().norm()) < tol


def test_qgemm_gelu_quant_epilogue_feeds_next_layer():
    m, k, n = 33, 128, 256
    mod, _ = _layer(k, n)
    nxt, _ = _layer(n, k, outliers=64, seed=3)
    a, rs = act_quant.norm_quant(torch.randn(m, k), mod.stacked_act(), rowsum=True)
    codes, rsn = qgemm.qgemm(a, rs, mod.group(), m, out_dtype=torch.float32, epilogue="gelu_quant",
                             next_act=nxt.stacked_act(), next_rowsum=True)
    ref_codes, ref_rs = qgemm.qgemm_torch(a, rs, mod.group(), m, out_dtype=torch.float32, epilogue="gelu_quant",
                                          next_act=nxt.stacked_act(), next_rowsum=True)
    valid = _valid_cols(nxt.stacked_act())
    d = (codes[:, valid].int() - ref_codes[:, valid].int()).abs()
    assert d.max() <= 1 and d.float().mean() < 1e-3
    kop = nxt.meta["kop"]
    assert torch.equal(rsn[:, 0], codes[:, :kop][:, valid[:kop]].int().sum(1))
    assert torch.equal(rsn[:, 1], codes[:, kop:][:, valid[kop:]].int().sum(1))


def test_gelu_quant_writes_the_split_runs_when_the_rows_come_in_split_order():
    """ffn.0 with its output rows permuted to ffn.2's split order (qarvd.deploy.modules.rows_permuted) and ffn.2's
    activation taken in that order: the epilogue writes two contiguous runs with the group steps instead of
    scattering per column; the codes and row sums equal the scattering path's byte for byte."""
    from qarvd.deploy.modules import in_split_order, rows_permuted

    m, k, n = 33, 128, 256
    mod, _ = _layer(k, n)
    nxt, _ = _layer(n, k, outliers=64, seed=3, asym=False)
    act = nxt.act()
    a, rs = act_quant.norm_quant(torch.randn(m, k), mod.stacked_act(), rowsum=True)
    ordered = stack_acts([in_split_order(act)])
    assert ordered.split and ordered.src is None and not nxt.stacked_act().uniform
    got, want = (qgemm.qgemm(a, rs, g, m, out_dtype=torch.float32, epilogue="gelu_quant", next_act=na,
                             next_rowsum=True)
                 for g, na in ((rows_permuted(mod.group(), act.src), ordered), (mod.group(), nxt.stacked_act())))
    valid = _valid_cols(nxt.stacked_act())  # pad columns are never written (torch.empty)
    assert torch.equal(got[0][:, valid], want[0][:, valid]) and torch.equal(got[1], want[1])


def test_qk_norm_rope_and_cache_write():
    b, length, heads, hd = 2, 10, 2, 16
    d = heads * hd
    src = torch.randn(b * length, 3 * d)
    ang = torch.rand(length, hd // 2) * 6
    kw = dict(wq=torch.rand(d) + 0.5, wk=torch.rand(d) + 0.5, eps=1e-6, cos=ang.cos(), sin=ang.sin(), start=3)
    caches = []
    for fn in (glue.qk_norm_rope, glue.qk_norm_rope_ref):
        kc, vc = torch.full((b, 16, heads, hd), float("nan")), torch.full((b, 16, heads, hd), float("nan"))
        caches.append((fn(src, (0, d, 2 * d), d, length, cache_k=kc, cache_v=vc, **kw), kc, vc))
    for got, ref in zip(*caches):
        written = ~torch.isnan(ref)
        assert torch.equal(torch.isnan(got), torch.isnan(ref))
        assert torch.allclose(got[written], ref[written], atol=1e-5)


def test_qk_norm_rope_writes_fp8_codes():
    """FP8 attention's input side: q returned and K/V written as E4M3 codes of the same values (step per tensor)."""
    b, length, heads, hd = 2, 10, 2, 16
    d = heads * hd
    g = torch.Generator().manual_seed(3)
    src = torch.randn(b * length, 3 * d, generator=g) * 3
    ang = torch.rand(length, hd // 2, generator=g) * 6
    steps = torch.tensor([0.005, 0.015, 0.01])  # q's step small enough that its largest values saturate
    kw = dict(wq=torch.rand(d, generator=g) + 0.5, wk=torch.rand(d, generator=g) + 0.5, eps=1e-6, cos=ang.cos(),
              sin=ang.sin(), start=3, fp8_scales=steps)
    outs = []
    for fn in (glue.qk_norm_rope, glue.qk_norm_rope_ref):
        kc = torch.zeros((b, 16, heads, hd), dtype=torch.float8_e4m3fn)
        vc = torch.zeros_like(kc)
        outs.append([t.float() for t in (fn(src, (0, d, 2 * d), d, length, cache_k=kc, cache_v=vc, **kw), kc, vc)])
    plain = glue.qk_norm_rope_ref(src, (0, d, 2 * d), d, length, **{k: v for k, v in kw.items() if k != "fp8_scales"})
    for got, ref in zip(*outs):
        # Triton's interpreter rounds float32 -> float8 towards zero (and wrongly just below powers of two, see
        # test_norm_modulate_plain_and_fp8); the GPU converts in hardware, to nearest (tests/test_kernels_gpu.py)
        off = (got != ref) & ~(ref.abs().log2() % 1 == 0)
        assert off.float().mean() < 0.3
        assert ((got - ref).abs()[off] <= torch.clamp(ref.abs()[off] / 8, min=2.0**-9) + 1e-6).all()
    assert outs[0][0].abs().max() == 448  # saturates instead of overflowing
    q = outs[0][0] * 0.005
    inside = plain.float().abs() < 448 * 0.005
    rel = (q[inside] - plain.float()[inside]).norm() / plain.float()[inside].norm()
    assert 0.005 < rel < 0.05  # E4M3 has a 3-bit mantissa
    assert outs[0][1][:, :3].abs().sum() == 0 and outs[0][1][:, 3:13].abs().sum() > 0  # only the chunk's slots


def test_qk_norm_rope_smooths_fp8_keys():
    """kernel.smooth_keys: the FP8 key codes are those of k - mean (kernel as its reference), and keys that share a
    large per-channel offset come back (codes x step + mean) several times closer than plain FP8 codes."""
    b, length, heads, hd = 2, 10, 2, 16
    d = heads * hd
    g = torch.Generator().manual_seed(4)
    src = torch.randn(b * length, 3 * d, generator=g)
    src[:, d:2 * d] += torch.randn(d, generator=g) * 6  # keys with a large shared offset, as the model's
    kw = dict(wq=torch.rand(d, generator=g) + 0.5, wk=torch.rand(d, generator=g) + 0.5, eps=1e-6, start=3)
    keys = torch.zeros(b, 16, heads, hd)
    glue.qk_norm_rope_ref(src, (0, d, 2 * d), d, length, cache_k=keys, cache_v=torch.zeros_like(keys), **kw)
    keys = keys[:, 3:13]
    mean = keys.mean((0, 1)).flatten()
    step_plain, step_smooth = (float(t.abs().max()) / 448 for t in (keys, keys - mean.view(heads, hd)))
    outs = []
    for fn in (glue.qk_norm_rope, glue.qk_norm_rope_ref):
        kc = torch.zeros((b, 16, heads, hd), dtype=torch.float8_e4m3fn)
        fn(src, (0, d, 2 * d), d, length, cache_k=kc, cache_v=torch.zeros_like(kc),
           fp8_scales=torch.tensor([1.0, step_smooth, 1.0]), fp8_key_mean=mean, **kw)
        outs.append(kc.float())
    got, ref = outs
    off = (got != ref) & ~(ref.abs().log2() % 1 == 0)  # the interpreter's float8 rounding (test above): one ulp
    assert ((got - ref).abs()[off] <= torch.clamp(ref.abs()[off] / 8, min=2.0**-9) + 1e-6).all()
    smooth = ref[:, 3:13] * step_smooth + mean.view(heads, hd)
    plain = glue.fp8_code(keys, step_plain).float() * step_plain
    err_smooth, err_plain = (float((x - keys).norm() / keys.norm()) for x in (smooth, plain))
    assert err_smooth < err_plain / 3, (err_smooth, err_plain)
    assert ref[:, :3].abs().sum() == 0  # only the chunk's slots
    with pytest.raises(ValueError, match="fp8_key_mean"):
        glue.qk_norm_rope(src, (0, d, 2 * d), d, length, cache_k=kc, cache_v=kc, fp8_key_mean=mean, **kw)


def test_norm_quant_dequantizes_fp8_input():
    """The o projection's producer reads the FP8 attention output: codes x step, rounded to the activation dtype."""
    lin, _ = _layer(48, 24, seed=5)
    acts = stack_acts([lin.act()])
    codes = (torch.randn(20, 48) * 100).clamp(-448, 448).to(torch.float8_e4m3fn)
    step = torch.tensor([0.01])
    got, _ = act_quant.norm_quant(codes, acts, in_scale=step, act_dtype=torch.bfloat16)
    ref, _ = act_quant.norm_quant_torch(codes, acts, in_scale=step, act_dtype=torch.bfloat16)
    h = (codes.float() * 0.01).to(torch.bfloat16)
    direct, _ = act_quant.norm_quant(h, acts)
    cols = _valid_cols(acts)
    # one code at most where the interpreter's float32 -> bfloat16 truncation crosses a rounding boundary
    for other in (ref, direct):
        diff = (got[0][:, cols].int() - other[0][:, cols].int()).abs()
        assert diff.max() <= 1 and diff.float().mean() < 0.15
    plain = act_quant.norm_quant(codes, in_scale=step, act_dtype=torch.float32)
    assert plain.dtype == torch.float32 and torch.allclose(plain, codes.float() * 0.01, rtol=1e-6)
    with pytest.raises(ValueError, match="act_dtype"):
        act_quant.norm_quant(codes, acts, in_scale=step)


def test_residual_update():
    x, y = torch.randn(24, 40), torch.randn(24, 40)
    gate = torch.randn(3, 6, 40)[:, 2]
    out = torch.full_like(x, float("nan"))
    assert torch.equal(glue.residual_update(x, y, gate, 8, out=out), glue.residual_update_ref(x, y, gate, 8))
    assert torch.equal(glue.residual_update(x, y), x + y)


def test_int4_packing_round_trip_and_layout():
    u = torch.randint(0, 16, (5, 2 * PAD), dtype=torch.uint8)
    p = pack_int4(u)
    assert p.shape == (5, PAD) and torch.equal(unpack_int4(p), u)
    assert torch.equal(p[:, 0] & 15, u[:, 0]) and torch.equal(p[:, 0] >> 4, u[:, PAD // 2])


def test_frozen_configs_are_valid():
    from kernels.configs_sm90 import DEFAULTS, TABLE

    for key, cfg in list(TABLE.items()) + [((v,), c) for v, c in DEFAULTS.items()]:
        assert PAD % cfg.bk == 0, key
        if key[0].startswith("w4"):
            assert cfg.bk == PAD, key


def test_tma_store_tile_falls_back_when_shared_memory_is_short():
    """The stage budget matches the sm_90 compiler's report (256x128x128, 4 stages: 196608 B + the store tile):
    a bf16 half tile fits, an fp32 one (fp32 models) does not and takes the plain-store path instead of failing."""
    from kernels.configs_sm90 import GemmConfig
    from kernels.qgemm import SMEM_LIMIT, _smem_bytes

    cfg = GemmConfig(256, 128, 128, 8, 8, 4)
    assert _smem_bytes(cfg, int4=False) == 196608
    assert _smem_bytes(cfg, int4=False) + 256 * 64 * 2 <= SMEM_LIMIT < _smem_bytes(cfg, int4=False) + 256 * 64 * 4
    assert _smem_bytes(cfg, int4=True) == 4 * (256 * 128 + 128 * 64)




def test_fp8_attention_over_a_chunked_cache():
    """kernels/attn_fp8.py in the interpreter: three uniform chunks (segments padded to 128 keys, a masked partial
    tile each), read back at every cache length. Zero queries give uniform attention; P' = 256 is then exact and the
    accumulator changes its unit per segment, so the output is the mean of the dequantized values to float32
    rounding. Random queries: bounded by the E4M3 casts (the interpreter's float8 conversion also rounds a few
    values differently from torch's)."""
    import torch.nn.functional as F

    from kernels import attn_fp8

    g = torch.Generator().manual_seed(0)
    b, lq, h, d, n = 2, 40, 2, 32, 50
    k, v = (torch.randn(b, 3 * n, h, d, generator=g) for _ in range(2))
    v[:, n:2 * n] *= 8  # segments with different V scales
    kv = attn_fp8.Fp8KV(b, 3 * n + 10, h, d, "cpu")
    for s in range(3):
        kv.write(k[:, s * n:(s + 1) * n], v[:, s * n:(s + 1) * n], s * n)
    with pytest.raises(NotImplementedError, match="uniform chunks"):
        kv.write(k[:, :10], v[:, :10], 25)
    cfg = (16, 32, 4, 1)
    deq = torch.cat([(c8.float() * sc[:, None, :, None]) for c8, sc in
                     (attn_fp8.quantize_heads(v[:, s * n:(s + 1) * n]) for s in range(3))], 1)
    for end in (3 * n, 2 * n, n - 7):
        out = kv.attend(torch.zeros(b, lq, h, d), end, config=cfg)
        mean = deq[:, :end].mean(1, keepdim=True).expand(b, lq, h, d)
        assert float((out.float() - mean).norm() / mean.norm()) < 1e-6, end
    q = torch.randn(b, lq, h, d, generator=g)
    out = kv.attend(q, 3 * n, config=cfg)
    ref = F.scaled_dot_product_attention(*(x.double().transpose(1, 2) for x in (q, k, v))).transpose(1, 2)
    assert out.shape == (b, lq, h, d) and float((out.double() - ref).norm() / ref.norm()) < 0.15
