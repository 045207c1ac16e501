"""Uniform affine quantizer: ranges, percentile-MSE init (weights per channel), histogram search (activations)."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from qarvd.quant.quantizer import (ActivationHistogram, UniformQuantizer, check_bits, fake_quant, qrange,
                                   quantile_lastdim, range_to_params)


def test_asymmetric_params_and_fake_quant_by_hand():
    scale, zero = range_to_params(torch.tensor(-1.0), torch.tensor(3.0), bits=2, symmetric=False)
    assert qrange(2, False) == (0, 3)
    assert float(scale) == pytest.approx(4 / 3) and float(zero) == 1.0  # round(0 - (-1) / (4/3)) = round(0.75)
    x = torch.tensor([-1.0, 0.0, 1.0, 3.0, 10.0])
    # x/s = [-.75, 0, .75, 2.25, 7.5] -> round [-1, 0, 1, 2, 8] + 1 -> clamp [0, 1, 2, 3, 3] -> (q - 1) * 4/3
    expected = torch.tensor([-4 / 3, 0.0, 4 / 3, 8 / 3, 8 / 3])
    assert torch.allclose(fake_quant(x, scale, zero, 0, 3), expected, atol=1e-6)


def test_symmetric_params_and_fake_quant_by_hand():
    scale, zero = range_to_params(torch.tensor(-1.0), torch.tensor(3.0), bits=3, symmetric=True)
    assert qrange(3, True) == (-4, 3)
    assert float(scale) == pytest.approx(1.0) and float(zero) == 0.0  # max|x| / (2^(b-1) - 1) = 3 / 3
    x = torch.tensor([-5.0, -1.4, 0.6, 2.6, 7.0])
    assert torch.equal(fake_quant(x, scale, zero, -4, 3), torch.tensor([-4.0, -1.0, 1.0, 3.0, 3.0]))


def test_range_always_contains_zero():
    scale, zero = range_to_params(torch.tensor([1.0]), torch.tensor([3.0]), bits=8, symmetric=False)
    assert float(zero) == 0.0 and float(scale) == pytest.approx(3 / 255)  # lower end clamped to 0


@pytest.mark.parametrize("bad", [1, 9, 0, 4.5, True, "8"])
def test_bits_outside_2_to_8_fail_clearly(bad):
    with pytest.raises(ValueError, match="2 to 8"):
        check_bits(bad)
    with pytest.raises((ValueError, TypeError)):
        UniformQuantizer(bad, False, per_channel=False)


def test_quantile_matches_torch():
    x = torch.randn(5, 1001)
    for q in (0.001, 0.5, 0.999, 0.99999):
        assert torch.allclose(quantile_lastdim(x, q), torch.quantile(x, q, dim=-1), atol=1e-6)


@pytest.mark.parametrize("symmetric", [False, True])
def test_weight_init_picks_per_channel_the_percentile_with_lowest_mse(symmetric):
    g = torch.Generator().manual_seed(0)
    gauss = torch.randn(10000, generator=g)  # at 4 bits the finer step beats the clipped tail
    spiky = torch.cat([torch.randn(9999, generator=g) * 0.1, torch.tensor([40.0])])  # clipping the 40 costs more
    w = torch.stack([gauss, spiky])
    q = UniformQuantizer(4, symmetric, per_channel=True, channels=2)
    pcts = (0.999, 0.9999, 0.99999)
    chosen = q.init_weight(w, pcts)
    ref = lambda row, p: torch.tensor(float(np.quantile(w[row].double().numpy(), p)))  # noqa: E731  (float64 reference)
    for row in range(2):  # brute force against numpy's quantile
        errs = []
        for p in pcts:
            lo, hi = ref(row, 1 - p), ref(row, p)
            s, z = range_to_params(lo, hi, 4, symmetric)
            errs.append(float((fake_quant(w[row], s, z, q.qmin, q.qmax) - w[row]).pow(2).mean()))
        best = min(range(3), key=errs.__getitem__)
        assert int(chosen[row]) == best
        s, z = range_to_params(ref(row, 1 - pcts[best]), ref(row, pcts[best]), 4, symmetric)
        assert float(q.scale[row]) == pytest.approx(float(s), rel=1e-5) and float(q.zero_point[row]) == float(z)
    assert chosen.tolist() == [0, 2]  # the channels choose differently


def test_histogram_quantiles_are_close_to_exact():
    x = torch.randn(200_000, generator=torch.Generator().manual_seed(1))
    h = ActivationHistogram(32768)
    h.observe_range(x)
    h.observe(x)
    for q in (0.001, 0.999, 0.9999):
        assert h.quantile(q) == pytest.approx(float(np.quantile(x.numpy(), q)), abs=1e-2)  # sparse tails: order statistics ~7e-3 apart


def test_histogram_mse_weights_each_sample_by_its_chunk_weight():
    """Sample a wants the range clipped at the 0.999 percentile; sample b holds the ten 50s that the 0.9999 range
    keeps (clipping them costs b far more than the coarser step). The chunk weights decide the pick."""
    g = torch.Generator().manual_seed(2)
    a = torch.randn(20000, generator=g) * 0.3
    b = torch.cat([torch.randn(19990, generator=g) * 0.3, torch.full((10,), 50.0)])
    picks = []
    for wa, wb in [(1.0, 0.0), (0.0, 1.0)]:
        h = ActivationHistogram(4096)
        h.observe_range(a)
        h.observe_range(b)
        h.observe(a, weight=wa)
        h.observe(b, weight=wb)
        q = UniformQuantizer(4, False, per_channel=False)
        picks.append(h.search(q, (0.999, 0.9999, 0.99999)))
    assert picks[0] == 0 and picks[1] == 1  # 0.9999 and 0.99999 give the same range here: the first wins


def test_histogram_normalises_samples_by_their_size():
    h = ActivationHistogram(16)
    h.observe_range(torch.tensor([0.0, 1.0]))
    h.observe(torch.rand(2, 100), weight=0.5, samples=2)  # two samples of weight 0.5
    h.observe(torch.rand(1, 10), weight=3.0, samples=1)
    assert float(h.weighted.sum()) == pytest.approx(2 * 0.5 + 3.0)
    assert float(h.counts.sum()) == 210
