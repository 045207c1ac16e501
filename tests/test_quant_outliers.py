"""Outlier detection (Eq. 9-12): MAD ~ 0 -> none, round up to a multiple (32 at width 1536), cap at in/2, alpha guard."""
from __future__ import annotations

import pytest
import torch

from qarvd.quant.outliers import column_norms, detect_outliers, outlier_multiple
from quant_helpers import outlier_cfg


def test_mad_zero_means_no_outliers_even_with_a_far_column():
    v = torch.tensor([1.0] * 9 + [5.0])
    res = detect_outliers(v, outlier_cfg())
    assert res.mad == 0.0 and res.count == 0 and res.raw_count == 0 and res.normal.numel() == 10


def test_hand_example_rounds_up_to_32_with_the_top_norm_columns():
    normal = [1.0 + 0.01 * (i % 5) for i in range(125)]
    v = torch.tensor(normal[:40] + [10.0] + normal[40:80] + [9.0, 8.0] + normal[80:])  # 128 columns, 3 outliers
    res = detect_outliers(v, outlier_cfg(tau=3.5, outlier_ratio=1.2, multiple=32))
    # median 1.02, MAD 0.01: threshold = max(1.02 + 3.5 / 0.6745 * 0.01, 1.2 * 1.02) = 1.224
    assert res.median == pytest.approx(1.02) and res.mad == pytest.approx(0.01)
    assert res.threshold == pytest.approx(1.224)
    assert res.raw_count == 3 and res.count == 32
    top = torch.argsort(v, descending=True, stable=True)[:32].sort().values
    assert torch.equal(res.outliers, top) and {40, 81, 82} <= set(res.outliers.tolist())
    assert sorted(res.outliers.tolist() + res.normal.tolist()) == list(range(128))


def test_count_is_capped_at_half_the_inputs():
    v = torch.tensor([1.0, 1.01, 1.02] * 10 + [20.0] * 10)  # 40 columns, 10 outliers -> 32 -> cap 20
    res = detect_outliers(v, outlier_cfg(multiple=32))
    assert res.raw_count == 10 and res.count == 20


def test_alpha_guard_rejects_false_outliers_of_smooth_layers():
    v = torch.tensor([1.0, 1.001, 1.002, 1.003, 1.004] * 4 + [1.1])  # z-score passes, but 1.1 < 1.2 * median
    assert detect_outliers(v, outlier_cfg(tau=3.5, outlier_ratio=1.2)).count == 0
    assert detect_outliers(v, outlier_cfg(tau=3.5, outlier_ratio=1.05)).raw_count == 1


def test_round_up_multiple_scales_with_the_model_width():
    ref = outlier_cfg().multiple_reference
    assert ref == (1536, 32) and outlier_cfg().multiple is None  # the rule is the default
    assert [outlier_multiple(w, ref) for w in (1536, 3072, 5120, 768, 128, 64, 8)] == [32, 64, 128, 16, 2, 1, 1]
    assert outlier_cfg(model_width=1536).round_multiple == 32 and outlier_cfg(model_width=128).round_multiple == 2
    assert outlier_cfg(model_width=128, multiple=32).round_multiple == 32  # a fixed multiple wins
    # 3 outliers of 128 columns: 32 at the release's multiple (a quarter of the layer), 4 with the rule at width 128
    normal = [1.0 + 0.01 * (i % 5) for i in range(125)]
    v = torch.tensor(normal[:40] + [10.0] + normal[40:80] + [9.0, 8.0] + normal[80:])
    assert detect_outliers(v, outlier_cfg(model_width=128)).count == 4
    assert detect_outliers(v, outlier_cfg(model_width=64)).count == 3
    with pytest.raises(ValueError, match="rule"):
        outlier_cfg(model_width=0)
    with pytest.raises(ValueError, match="model_width"):  # a config without a model group must fix the multiple
        outlier_cfg(model_width=None)
    assert outlier_cfg(model_width=None, multiple=32).round_multiple == 32


def test_column_norms_are_input_channel_l2_norms():
    w = torch.tensor([[3.0, 0.0], [4.0, 1.0]])
    assert torch.equal(column_norms(w), torch.tensor([5.0, 1.0]))


def test_invalid_config_fails():
    with pytest.raises(ValueError):
        outlier_cfg(tau=0)
