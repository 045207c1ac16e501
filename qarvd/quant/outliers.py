"""Outlier-channel detection of Q-ARVD's adaptive dual-scale quantization (paper Eq. 9-12).

For the L2 norms ``v`` of a weight's input columns, a column is an outlier when
``v_i > max(median(v) + tau / 0.6745 * MAD, alpha * median(v))`` (the Modified Z-score test plus a minimum-ratio
guard against false outliers in smooth layers). As released: no outliers when ``MAD < 1e-8``; the count is rounded
UP to a multiple of 32 (hardware-friendly) and capped at half the input width; the outlier group is then the
top-norm columns, so rounding up may pull in columns just below the threshold.

32 is the multiple of a 1536-wide model; :func:`outlier_multiple` scales it with the model width (a multiple of 32
would move a quarter of a 128-wide layer's columns into the outlier group).
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Optional, Sequence

import torch

MAD_EPS = 1e-8
Z_CONST = 0.6745


@dataclass(frozen=True)
class OutlierConfig:
    """Eq. 12's detection settings (``method.outlier`` in conf/method/recipe/base.yaml holds the defaults)."""

    tau: float  # Modified Z-score threshold
    outlier_ratio: float  # minimum ratio of an outlier column norm to the median norm (the paper's alpha)
    multiple: Optional[int]  # outlier count rounded up to a multiple of this; None: outlier_multiple's width rule
    multiple_reference: Sequence[int]  # (width, multiple) the rule scales: the release's 32 at width 1536
    model_width: Optional[int]  # hidden width of the model the layers belong to (the rule's width; needed if multiple is None)
    max_fraction: float  # cap on the outlier share of the input channels

    def __post_init__(self) -> None:
        object.__setattr__(self, "multiple_reference", tuple(int(v) for v in self.multiple_reference))
        if (self.tau <= 0 or self.outlier_ratio <= 0 or (self.multiple is not None and self.multiple < 1)
                or not 0 < self.max_fraction <= 1):
            raise ValueError(f"invalid outlier config {self}: need tau > 0, outlier_ratio > 0, multiple >= 1 (or null), "
                             "0 < max_fraction <= 1")
        if self.multiple is None:
            if self.model_width is None:
                raise ValueError("method.outlier.multiple is null (the width rule) but method.outlier.model_width is "
                                 "unknown: give the model width or a fixed multiple")
            outlier_multiple(self.model_width, self.multiple_reference)  # validates the rule's inputs

    @property
    def round_multiple(self) -> int:
        """The multiple the outlier count is rounded up to: ``multiple``, or the width rule."""
        return int(self.multiple) if self.multiple is not None else outlier_multiple(self.model_width, self.multiple_reference)


def outlier_multiple(width: int, reference: Sequence[int]) -> int:
    """The hardware multiple ``reference[1]`` of a ``reference[0]``-wide model, scaled to ``width``: the power of two
    nearest (in log scale) to ``reference[1] * width / reference[0]``, at least 1 (32 at 1536, 2 at 128, 1 at 64).

    The model width, not the layer's input width: every Wan 1.3B block linear (ffn.2 has 8960 inputs) keeps the
    release's 32, and the outlier group keeps the share of the columns it has there.
    """
    ref_width, ref_multiple = (int(v) for v in reference)
    if int(width) < 1 or ref_width < 1 or ref_multiple < 1:
        raise ValueError(f"the outlier multiple rule needs positive widths and multiple, got width {width}, "
                         f"reference {tuple(reference)}")
    return 2 ** max(0, round(math.log2(ref_multiple * int(width) / ref_width)))


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
    """Eq. 9-12 on a vector of column norms, with the release's rounding (to ``cfg.round_multiple``) and cap."""
    v = norms.detach().double().flatten()
    n = v.numel()
    med = float(v.median())
    mad = float((v - med).abs().median())
    threshold = max(med + cfg.tau / Z_CONST * mad, cfg.outlier_ratio * med)
    raw = 0 if mad < MAD_EPS else int((v > threshold).sum())
    count = 0
    if raw > 0:
        m = cfg.round_multiple
        count = min(-(-raw // m) * m, int(n * cfg.max_fraction))
    order = torch.argsort(v, descending=True, stable=True)
    outliers = order[:count].sort().values
    mask = torch.ones(n, dtype=torch.bool)
    mask[outliers] = False
    return OutlierResult(outliers, torch.nonzero(mask).flatten(), raw, med, mad, threshold)
