"""Discriminability Score: CV, BOA, DS on a hand-computed table and on the paper's own Table 1."""
from __future__ import annotations

import statistics
from pathlib import Path

import pytest

from eval.ds import bitwidth_order_agreement, coefficient_of_variation, discriminability, ds_from_records
from eval.records import load_records

DATA = Path(__file__).parent / "data"


def test_hand_computed_table():
    # two methods; lower is better. A follows 0 < 2 < 4 < 6; B breaks the order (W4A8 worse than W4A6).
    values = {"A": {"w8a8": 2.0, "w4a8": 4.0, "w4a6": 6.0}, "B": {"w8a8": 2.0, "w4a8": 8.0, "w4a6": 6.0}}
    # pool without BF16: [2, 4, 6, 2, 8, 6], mean 28/6, population variance = mean(x^2) - mean^2 = 160/6 - (28/6)^2
    mu, var = 28 / 6, 160 / 6 - (28 / 6) ** 2
    out = discriminability(values, bf16=0.0, higher_better=False)
    assert out["cv"] == pytest.approx(var**0.5 / mu)
    assert out["boa"] == 0.5 and out["ds"] == pytest.approx(0.5 * var**0.5 / mu) and out["num_methods"] == 2
    # switches: BF16 in the pool (7 values) and the sample standard deviation
    pool7 = [0.0, 2, 4, 6, 2, 8, 6]
    inc = discriminability(values, 0.0, False, include_bf16=True, ddof=1)
    assert inc["cv"] == pytest.approx(statistics.stdev(pool7) / statistics.mean(pool7))
    # higher is better: the same numbers now agree nowhere; a BF16 above everything restores A's order reversed
    assert bitwidth_order_agreement(values, 0.0, higher_better=True) == 0.0
    assert bitwidth_order_agreement({"A": {"w8a8": 6, "w4a8": 4, "w4a6": 2}}, 9.0, higher_better=True) == 1.0
    # ties break the order (strictly better required)
    assert bitwidth_order_agreement({"A": {"w8a8": 2, "w4a8": 2, "w4a6": 6}}, 0.0, higher_better=False) == 0.0


def test_bad_inputs():
    with pytest.raises(ValueError, match="missing"):
        discriminability({"A": {"w8a8": 1.0, "w4a8": 2.0}}, 0.0, False)
    with pytest.raises(ValueError, match="mean is 0"):
        coefficient_of_variation([0.0, 0.0])


PAPER_T1 = {  # FVD-FP and motion smoothness of paper Table 1, method x (W8A8, W4A8, W4A6)
    "fvd_fp": [(67.65, 279.61, 375.82), (62.57, 143.49, 233.43), (69.67, 220.94, 326.97),
               (63.21, 141.03, 244.95), (63.52, 135.62, 210.28), (61.67, 106.04, 140.38)],
    "motion_smoothness": [(98.46, 98.82, 98.73), (98.52, 98.56, 98.58), (98.64, 98.71, 98.75),
                          (98.52, 98.70, 98.55), (98.43, 98.81, 98.65), (98.52, 98.56, 98.82)],
}


def test_ds_of_the_papers_table1():
    records = load_records([DATA / "paper_table1.json"])
    ds = ds_from_records(records, ["fvd_fp", "lpips_fp", "motion_smoothness", "aesthetic_quality", "vbench_avg"])
    fvd = [v for row in PAPER_T1["fvd_fp"] for v in row]
    assert ds["fvd_fp"]["cv"] == pytest.approx(statistics.pstdev(fvd) / statistics.mean(fvd))
    assert ds["fvd_fp"]["cv"] == pytest.approx(0.5873, abs=1e-4)
    assert ds["fvd_fp"]["boa"] == 1.0 and ds["lpips_fp"]["boa"] == 1.0  # every method: 0 < W8A8 < W4A8 < W4A6
    # BF16 motion smoothness 98.47 is below most quantized values: no method follows the order
    ms = [v for row in PAPER_T1["motion_smoothness"] for v in row]
    assert ds["motion_smoothness"]["cv"] == pytest.approx(statistics.pstdev(ms) / statistics.mean(ms))
    assert ds["motion_smoothness"]["boa"] == 0.0 and ds["motion_smoothness"]["ds"] == 0.0
    # aesthetic quality, BF16 62.88: five methods keep the order, Q-ARVD does not (W4A8 61.92 < W4A6 62.55)
    assert ds["aesthetic_quality"]["boa"] == pytest.approx(5 / 6)
    assert ds["fvd_fp"]["ds"] > 10 * max(ds[m]["ds"] for m in ("motion_smoothness", "aesthetic_quality", "vbench_avg"))
