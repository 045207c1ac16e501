"""AdaRound: h(V) init = frac(W / delta), hardening floor + 1[V >= 0], regulariser, beta schedule and warm-up."""
from __future__ import annotations

import pytest
import torch

from qarvd.quant.adaround import AdaRoundWeight, BetaSchedule


def _ada():
    w = torch.tensor([[0.25, 0.7, -0.3]])
    return w, AdaRoundWeight(w, torch.tensor([[0.5]]), torch.tensor([[2.0]]), 0, 15)


def test_init_h_equals_fractional_part_and_soft_weight_equals_fp():
    w, ada = _ada()
    # W / delta = [0.5, 1.4, -0.6]: floor [0, 1, -1], frac [0.5, 0.4, 0.4]
    assert torch.equal(ada.w_floor, torch.tensor([[0.0, 1.0, -1.0]]))
    assert torch.allclose(ada.h(), torch.tensor([[0.5, 0.4, 0.4]]), atol=1e-6)
    assert torch.allclose(ada(soft=True), w, atol=1e-6)


def test_hardening_is_floor_plus_indicator_v_nonnegative():
    _, ada = _ada()
    with torch.no_grad():
        ada.v.copy_(torch.tensor([[1.0, -1.0, 0.0]]))
    # floor [0, 1, -1] + [1, 0, 1] + zero point 2
    assert torch.equal(ada.hard_codes(), torch.tensor([[3, 3, 2]], dtype=torch.int16))
    assert torch.allclose(ada(soft=False), torch.tensor([[0.5, 0.5, 0.0]]))


def test_regularizer_by_hand():
    _, ada = _ada()
    with torch.no_grad():
        ada.v.copy_(torch.tensor([[-20.0, 20.0, 0.0]]))  # h = 0, 1, 0.5
    assert torch.allclose(ada.h(), torch.tensor([[0.0, 1.0, 0.5]]), atol=1e-6)
    assert float(ada.regularizer(2.0).detach()) == pytest.approx(1.0, abs=1e-6)  # (1-1) + (1-1) + (1-0)


def test_beta_schedule_warmup_then_linear_decay():
    s = BetaSchedule(iters=100, warmup=0.2, start=20.0, end=2.0)
    assert all(s(i) == (20.0, False) for i in range(20))
    assert s(20) == (20.0, True)
    assert s(60)[0] == pytest.approx(11.0)  # halfway through the 80 post-warm-up iterations
    assert s(99)[0] == pytest.approx(2.0 + 18.0 / 80)
    assert s(99)[1]
    with pytest.raises(ValueError):
        BetaSchedule(iters=10, warmup=1.0)
