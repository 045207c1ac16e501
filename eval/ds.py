"""Discriminability Score (paper §4.2): how well a metric separates quantization settings.

For metric m over N methods at W8A8, W4A8 and W4A6 (plus the BF16 model):
  CV_m  = sigma_m / mu_m                         (sensitivity: spread of the metric across the settings)
  BOA_m = (1/N) sum_i 1[BF16 > W8A8_i > W4A8_i > W4A6_i]   ("better than", strictly: lower FVD/LPIPS, higher
          PSNR/SSIM/VBench; a tie breaks the order)
  DS_m  = CV_m * BOA_m
The paper leaves two choices open; both are switches:
  include_bf16: whether the BF16 value enters sigma and mu. Default False: for reference-based metrics BF16 is 0
                by construction (the FP set compared with itself), not a measurement, and including it would
                inflate their CV against reference-free metrics.
  ddof:         0 = population sigma (default: the 18 quantized results are the whole population compared),
                1 = sample sigma.
"""
from __future__ import annotations

from typing import Iterable, Mapping

import numpy as np

from eval.records import fp_record, higher_is_better

BITS_ORDER = ("w8a8", "w4a8", "w4a6")  # from least to most aggressive; BF16 comes first


def coefficient_of_variation(values: Iterable[float], ddof: int = 0) -> float:
    v = np.asarray(list(values), dtype=np.float64)
    if v.size <= ddof:
        raise ValueError(f"need more than {ddof} values for a standard deviation, got {v.size}")
    mu = v.mean()
    if mu == 0:
        raise ValueError("mean is 0: the coefficient of variation is undefined")
    return float(v.std(ddof=ddof) / abs(mu))


def bitwidth_order_agreement(values: Mapping[str, Mapping[str, float]], bf16: float, higher_better: bool) -> float:
    """Fraction of methods whose values follow BF16 > W8A8 > W4A8 > W4A6 (``>`` meaning strictly better)."""
    if not values:
        raise ValueError("no methods to score")
    sign = 1.0 if higher_better else -1.0
    agree = 0
    for method, by_bits in values.items():
        seq = [bf16] + [by_bits[b] for b in BITS_ORDER]
        agree += all(sign * (a - b) > 0 for a, b in zip(seq, seq[1:]))
    return agree / len(values)


def discriminability(
    values: Mapping[str, Mapping[str, float]],
    bf16: float,
    higher_better: bool,
    include_bf16: bool = False,
    ddof: int = 0,
) -> dict:
    """``{"cv", "boa", "ds", "num_methods"}`` of one metric; ``values[method][bits]`` for every bits in BITS_ORDER."""
    incomplete = {m: sorted(set(BITS_ORDER) - set(v)) for m, v in values.items() if set(BITS_ORDER) - set(v)}
    if incomplete:
        raise ValueError(f"DS needs every method at {list(BITS_ORDER)}; missing: {incomplete}")
    pool = [v[b] for v in values.values() for b in BITS_ORDER] + ([bf16] if include_bf16 else [])
    cv = coefficient_of_variation(pool, ddof)
    boa = bitwidth_order_agreement(values, bf16, higher_better)
    return {"cv": cv, "boa": boa, "ds": cv * boa, "num_methods": len(values)}


def ds_from_records(records: list[dict], metrics: Iterable[str], include_bf16: bool = False, ddof: int = 0) -> dict:
    """DS of every metric over result records (one model): ``{metric: discriminability(...)}``."""
    fp = fp_record(records)
    if fp is None:
        raise ValueError("DS needs the BF16 values: no record with bits 'bf16' and no fp_metrics in the results")
    out = {}
    for metric in metrics:
        values: dict[str, dict[str, float]] = {}
        for r in records:
            if r["bits"] in BITS_ORDER and metric in r["metrics"]:
                values.setdefault(r["method"], {})[r["bits"]] = float(r["metrics"][metric])
        if metric not in fp["metrics"]:
            raise ValueError(f"DS of '{metric}': the BF16 record has no value for it")
        out[metric] = discriminability(values, float(fp["metrics"][metric]), higher_is_better(metric), include_bf16, ddof)
    return out




def scorable_metrics(records: list[dict], candidates: Iterable[str]) -> list[str]:
    """The candidates DS can score: present for BF16 and for every method at every bitwidth of BITS_ORDER."""
    fp = fp_record(records)
    out = []
    for metric in candidates:
        have: dict[str, set] = {}
        for r in records:
            if metric in r["metrics"] and r["bits"] in BITS_ORDER:
                have.setdefault(r["method"], set()).add(r["bits"])
        if fp and metric in fp["metrics"] and have and all(len(v) == len(BITS_ORDER) for v in have.values()):
            out.append(metric)
    return out
