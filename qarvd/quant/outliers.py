"""Outlier-channel detection of Q-ARVD's adaptive dual-scale quantization (paper Eq. 9-12).

For the L2 norms ``v`` of a weight's input columns, a column is an outlier when
``v_i > max(median(v) + tau / 0.6745 * MAD, alpha * median(v))`` (the Modified Z-score test plus a minimum-ratio
guard against false outliers in smooth layers). As released: no outliers when ``MAD < 1e-8``; the count is rounded
UP to a multiple of 32 (hardware-friendly) and capped at half the input width; the outlier group is then the
top-norm columns, so rounding up may pull in columns just below the threshold.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass

import torch

MAD_EPS = 1e-8
Z_CONST = 0.6745


@dataclass(frozen=True)
class OutlierConfig:
    """Eq. 12's detection settings (``method.outlier`` in conf/method/recipe/base.yaml holds the defaults)."""

    tau: float  # Modified Z-score threshold
    outlier_ratio: float  # minimum ratio of an outlier column norm to the median norm (the paper's alpha)
    multiple: int  # outlier count rounded up to a multiple of this
    max_fraction: float  # cap on the outlier share of the input channels

    def __post_init__(self) -> None:
        if self.tau <= 0 or self.outlier_ratio <= 0 or self.multiple < 1 or not 0 < self.max_fraction <= 1:
            raise ValueError(f"invalid outlier config {self}: need tau > 0, outlier_ratio > 0, multiple >= 1, 0 < max_fraction <= 1")


@dataclass
class OutlierResult:
    """Detection outcome for one weight; ``outliers``/``normal`` are sorted column indices."""

    outliers: torch.Tensor
    normal: torch.Tensor
    raw_count: int  # columns passing Eq. 12
    median: float
    mad: float
    threshold: float

    @property
    def count(self) -> int:
        return int(self.outliers.numel())

    def stats(self) -> dict:
        d = {k: v for k, v in asdict(self).items() if k not in ("outliers", "normal")}
        d["count"] = self.count
        return d


def column_norms(weight: torch.Tensor) -> torch.Tensor:
    """L2 norm of every input column of a Linear weight [out, in]."""
    return weight.detach().float().norm(dim=0)


def detect_outliers(norms: torch.Tensor, cfg: OutlierConfig) -> OutlierResult:
    """Eq. 9-12 on a vector of column norms, with the release's rounding and cap."""
    v = norms.detach().double().flatten()
    n = v.numel()
    med = float(v.median())
    mad = float((v - med).abs().median())
    threshold = max(med + cfg.tau / Z_CONST * mad, cfg.outlier_ratio * med)
    raw = 0 if mad < MAD_EPS else int((v > threshold).sum())
    count = 0
    if raw > 0:
        count = min(-(-raw // cfg.multiple) * cfg.multiple, int(n * cfg.max_fraction))
    order = torch.argsort(v, descending=True, stable=True)
    outliers = order[:count].sort().values
    mask = torch.ones(n, dtype=torch.bool)
    mask[outliers] = False
    return OutlierResult(outliers, torch.nonzero(mask).flatten(), raw, med, mad, threshold)
