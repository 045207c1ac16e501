"""QuantLinear: exact FP when off, dual-scale forward, smoothing, low-rank branch, chunk gate, hardening."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from qarvd.models.context import ForwardInfo, forward_context
from qarvd.quant.linear import QuantLinear, chunk_gate, quant_state
from qarvd.quant.quantizer import ActivationHistogram


def _layer(in_f=16, out_f=8, w_bits=4, a_bits=8, seed=0):
    torch.manual_seed(seed)
    lin = nn.Linear(in_f, out_f)
    q = QuantLinear(lin, w_bits, a_bits, symmetric=False, name="blocks.0.ffn.2")
    return lin, q


def _init_acts(q: QuantLinear, x: torch.Tensor) -> None:
    for g in q.groups:
        h = ActivationHistogram(1024)
        xg = g.columns(q.smoothed_input(x))
        h.observe_range(xg)
        h.observe(xg)
        h.search(g.aq)


def test_quant_off_is_bitwise_the_fp_linear():
    lin, q = _layer()
    x = torch.randn(2, 5, 16)
    with quant_state(q, weights=False, acts=False):
        assert torch.equal(q(x), lin(x))


def test_dual_scale_forward_is_sum_of_group_products():
    lin, q = _layer()
    out_idx, norm_idx = torch.tensor([1, 7]), torch.tensor([0, 2, 3, 4, 5, 6] + list(range(8, 16)))
    q.set_groups([out_idx, norm_idx])
    q.init_weights()
    x = torch.randn(3, 16)
    _init_acts(q, x)
    go, gn = q.groups
    w = lin.weight.detach()
    expected = (F.linear(go.aq(x[:, out_idx]), go.wq(w[:, out_idx])) + F.linear(gn.aq(x[:, norm_idx]), gn.wq(w[:, norm_idx]))
                + lin.bias)
    assert torch.allclose(q(x), expected, atol=1e-6)
    # the two groups have their own weight steps: the normal group's are not inflated by the outlier columns
    assert not torch.equal(go.wq.scale, gn.wq.scale) and go.aq.scale is not gn.aq.scale


def test_groups_must_partition_the_inputs():
    _, q = _layer()
    with pytest.raises(ValueError, match="partition"):
        q.set_groups([torch.tensor([0, 1]), torch.tensor([1, 2])])


def test_smoothing_divides_inputs_and_scales_weight_columns():
    lin, q = _layer(w_bits=8)
    s = torch.rand(16) + 0.5
    q.set_smoothing(s)
    assert torch.allclose(q.target_weight(), lin.weight.detach() * s, atol=1e-7)
    q.init_weights()
    x = torch.randn(4, 16)
    h = ActivationHistogram(64)
    q.groups[0].hist = h
    q.observing = "range"
    q(x)  # the activation quantizer sees X / s
    assert h.lo == pytest.approx(float((x / s).min())) and h.hi == pytest.approx(float((x / s).max()))
    q.observing = None
    with quant_state(q, weights=True, acts=False):  # 8-bit weights only: close to FP
        assert torch.allclose(q(x), lin(x), atol=2e-2)


def test_lowrank_branch_takes_the_unquantized_smoothed_input_and_residual_is_quantized():
    lin, q = _layer(w_bits=2)
    w = lin.weight.detach()
    u, s, vh = torch.linalg.svd(w, full_matrices=False)
    down, up = (s[:4, None].sqrt() * vh[:4]).bfloat16(), (u[:, :4] * s[:4].sqrt()).bfloat16()
    q.set_lowrank(down, up)
    assert torch.allclose(q.target_weight() + up.float() @ down.float(), w, atol=1e-6)
    q.init_weights()
    x = torch.randn(6, 16)
    with quant_state(q, weights=True, acts=False):
        y = q(x)
    expected = F.linear(x, q.groups[0].wq(q.target_weight())) + F.linear(F.linear(x.bfloat16(), down), up).float() + lin.bias
    assert torch.allclose(y, expected, atol=1e-5)
    plain = QuantLinear(lin, 2, 8, False, name="blocks.0.ffn.2")
    plain.init_weights()
    with quant_state(plain, weights=True, acts=False):
        err_plain = (plain(x) - lin(x)).pow(2).mean()
    assert (y - lin(x)).pow(2).mean() < err_plain  # the branch absorbs the top singular directions


def test_chunk_gate_quantizes_only_the_listed_chunks():
    lin, q = _layer(w_bits=2)
    q.init_weights()
    x = torch.randn(2, 3, 16)
    _init_acts(q, x)
    fp, quant = lin(x), q(x)
    assert not torch.allclose(fp, quant)
    with chunk_gate(q, [1]):
        for chunk, want in [(0, fp), (1, quant), (2, fp)]:
            for step, refresh in [(0, False), (4, True)]:
                with forward_context(ForwardInfo(chunk, step, 0.0 if refresh else 900.0, refresh, 3)):
                    assert torch.equal(q(x), want)
        assert torch.equal(q(x), fp)  # outside a rollout: not chunk 1
    assert torch.equal(q(x), quant)  # gate removed


def test_harden_fixes_codes_and_forward_reads_only_them():
    lin, q = _layer()
    q.init_weights()
    x = torch.randn(5, 16)
    _init_acts(q, x)
    before = q(x)
    q.harden()
    assert q.hardened and q.groups[0].w_int.dtype == torch.int16
    assert int(q.groups[0].w_int.min()) >= 0 and int(q.groups[0].w_int.max()) <= 15
    assert torch.equal(q(x), before)  # nearest rounding = the fake quant it replaced
    with torch.no_grad():
        lin.weight.add_(1.0)  # the FP weight no longer matters once hardened
    assert torch.equal(q(x), before)
