"""SmoothQuant s_j (shared-input max), PTQ4DiT b_j and eta = softmax(-rho), norm folding, SVD branch and refinement."""
from __future__ import annotations

import math

import pytest
import torch
from scipy.stats import spearmanr

from qarvd.models.wan import WanLayerNorm
from qarvd.quant.lowrank import branch, lowrank_factors, refine_lowrank
from qarvd.quant.smoothing import smoothing_factors, spearman, ssc_salience, weight_input_absmax


def test_smoothquant_factor_uses_the_max_over_every_linear_sharing_the_input():
    w1 = torch.tensor([[1.0, -4.0, 0.0], [2.0, 0.5, 0.0]])
    w2 = torch.tensor([[-3.0, 1.0, 0.0]])
    wmax = weight_input_absmax([w1, w2])
    assert torch.equal(wmax, torch.tensor([3.0, 4.0, 0.0]))
    s = smoothing_factors(torch.tensor([9.0, 16.0, 4.0]), wmax, alpha=0.5)
    # sqrt(9)/sqrt(3), sqrt(16)/sqrt(4), sqrt(4)/sqrt(1e-5) (weight max clamped at 1e-5)
    assert torch.allclose(s, torch.tensor([math.sqrt(3.0), 2.0, 2.0 / math.sqrt(1e-5)]), rtol=1e-6)
    s0 = smoothing_factors(torch.tensor([0.0, 1.0, 1.0]), torch.tensor([1.0, 1.0, 1.0]), alpha=1.0)
    assert float(s0[0]) == pytest.approx(1e-5)  # s clamped at 1e-5
    with pytest.raises(ValueError):
        smoothing_factors(torch.ones(2), torch.ones(2), alpha=1.5)


def test_ptq4dit_ssc_eta_is_softmax_of_minus_spearman_and_csb_is_sqrt_ratio():
    s_w = torch.tensor([1.0, 2.0, 3.0, 4.0])
    per_sample = torch.tensor([[1.0, 2.0, 3.0, 4.0],  # same order as s(W): rho = +1
                               [8.0, 6.0, 4.0, 2.0]])  # reversed: rho = -1
    s_x, eta, rho = ssc_salience(per_sample, s_w)
    assert rho.tolist() == pytest.approx([1.0, -1.0])
    e = [math.exp(-1.0), math.exp(1.0)]
    assert eta.tolist() == pytest.approx([e[0] / sum(e), e[1] / sum(e)])
    expected = eta[0] * per_sample[0] + eta[1] * per_sample[1]
    assert torch.allclose(s_x, expected.float())
    b = smoothing_factors(s_x, s_w, 0.5)  # CSB: b_j = sqrt(s(X_j) / s(W_j))
    assert torch.allclose(b, (s_x / s_w).sqrt(), rtol=1e-6)


def test_spearman_with_ties_matches_scipy():
    a = torch.tensor([1.0, 2.0, 2.0, 5.0, 3.0, 3.0, 0.5])
    b = torch.tensor([0.1, 0.4, 0.3, 0.9, 0.2, 0.2, 0.0])
    assert spearman(a, b) == pytest.approx(spearmanr(a.numpy(), b.numpy()).statistic)


def test_folding_into_an_affine_norm_divides_its_output():
    torch.manual_seed(0)
    norm = WanLayerNorm(8, elementwise_affine=True)
    with torch.no_grad():
        norm.weight.normal_()
        norm.bias.normal_()
    x, s = torch.randn(3, 8), torch.rand(8) + 0.5
    expected = norm(x) / s
    holder = torch.nn.Module()
    holder.norm3 = norm
    from qarvd.quant.smoothing import fold_into_norm

    fold_into_norm(holder, "norm3", s)
    assert torch.allclose(norm(x), expected, atol=1e-6)


def test_svd_branch_has_the_rank_and_the_residual_is_the_rest():
    g = torch.Generator().manual_seed(0)
    low = torch.randn(24, 3, generator=g) @ torch.randn(3, 16, generator=g)
    w = low + 1e-3 * torch.randn(24, 16, generator=g)
    down, up = lowrank_factors(w, 3, torch.bfloat16)
    assert down.shape == (3, 16) and up.shape == (24, 3) and down.dtype == torch.bfloat16
    assert torch.linalg.matrix_rank(branch(down, up)) == 3
    residual = w - branch(down, up)
    assert float(residual.norm() / w.norm()) < 1e-2  # the rank-3 structure is in the branch (bf16 rounding left)
    exact_down, exact_up = lowrank_factors(w, 3, torch.float64)
    assert torch.allclose(branch(exact_down, exact_up), low, atol=5e-3)
    with pytest.raises(ValueError, match="rank"):
        lowrank_factors(w, 17)


def test_refinement_keeps_the_best_error_and_stops_when_it_rises():
    g = torch.Generator().manual_seed(1)
    w = torch.randn(32, 32, generator=g)
    x = torch.randn(64, 32, generator=g)

    def q(r):  # 2-bit per-row symmetric quantizer
        s = r.abs().amax(dim=1, keepdim=True) / 1
        return torch.clamp((r / s).round(), -2, 1) * s

    down, up, hist = refine_lowrank(w, 4, q, x, iters=100)
    assert len(hist) >= 2 and all(b < a for a, b in zip(hist[:-2], hist[1:-1]))  # strictly improving until the stop
    assert len(hist) < 102 or hist[-1] < hist[-2]
    err = float((x @ (q(w - branch(down, up)) + branch(down, up)).T - x @ w.T).pow(2).mean())
    assert err == pytest.approx(min(hist), rel=1e-6)
    _, _, none = refine_lowrank(w, 4, q, x, iters=0)
    assert len(none) == 1 and none[0] == pytest.approx(hist[0])
    # the residual path sees the quantized input, the 16-bit branch the input itself (SVDQuant's forward)
    xq = (x * 4).round() / 4
    down0, up0 = lowrank_factors(w, 4)
    _, _, quantized = refine_lowrank(w, 4, q, x, iters=0, x_quantized=xq)
    lr = branch(down0, up0)
    assert quantized[0] == pytest.approx(float((xq @ q(w - lr).T + x @ lr.T - x @ w.T).pow(2).mean()), rel=1e-6)
    assert quantized[0] > none[0]
