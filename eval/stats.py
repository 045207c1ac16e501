"""Paired bootstrap intervals over prompts (videos), for table cells and for the difference of two cells.

Every result of a sweep is made from the same prompts and seeds, so two methods are compared item by item: a
resample draws item indices once and applies them to both, and the interval of the difference reflects the paired
design (much narrower than two independent intervals). Per-item metrics (PSNR/SSIM/LPIPS-FP, latent MSE) resample
the per-item values and take the mean; FVD-FP resamples the (FP, quantized) feature pairs and recomputes the
Fréchet distance. Percentile intervals, ``level`` 0.95, a fixed seed: the same records give the same table.

A cell calibrated several times (``calib.seed``) pools its calibrations: its statistic is the mean over them, and each
resample also draws the calibrations with replacement (independently for the two sides of a difference: calibrations
are not paired), so the interval covers the run-to-run spread of a calibration as well as the choice of prompts.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional, Sequence

import numpy as np

N_BOOT = 1000  # resamples per interval
LEVEL = 0.95  # two-sided coverage


@dataclass(frozen=True)
class Interval:
    lo: float
    hi: float

    def excludes_zero(self) -> bool:
        return self.lo > 0 or self.hi < 0


def resample_indices(n: int, n_boot: int = N_BOOT, seed: int = 0) -> np.ndarray:
    """[n_boot, n] item indices drawn with replacement (one fixed generator per call)."""
    if n < 2:
        raise ValueError(f"a bootstrap needs at least 2 paired items, got {n}")
    return np.random.default_rng(seed).integers(0, n, size=(n_boot, n))


def percentile_interval(samples: np.ndarray, level: float = LEVEL) -> Interval:
    tail = (1 - level) / 2 * 100
    lo, hi = np.percentile(np.asarray(samples, dtype=np.float64), [tail, 100 - tail])
    return Interval(float(lo), float(hi))


def frechet_resampled(fp: np.ndarray, quant: np.ndarray, idx: np.ndarray, chunk: int = 50) -> np.ndarray:
    """Fréchet distance of every resample ``idx`` [B, n] of the feature pairs (fp [N, D], quant [N, D]).

    Unbiased covariances as :func:`eval.fvd.fvd_from_features`, with the trace term computed exactly from the centred
    rows A, B of a resample: tr sqrt(S1 S2) = (sum of singular values of A B^T) / (n - 1), an n x n SVD instead of a
    D x D matrix square root. Where n > D, the QR factors A = Qa Ra, B = Qb Rb shrink it to the D x D matrix
    Ra Rb^T, which has the same singular values. Resamples go through the linear algebra ``chunk`` at a time."""
    fp, quant = np.asarray(fp, np.float64), np.asarray(quant, np.float64)
    n, d = idx.shape[1], fp.shape[1]
    out = np.empty(len(idx))
    for s in range(0, len(idx), chunk):
        a, b = fp[idx[s:s + chunk]], quant[idx[s:s + chunk]]
        mu_a, mu_b = a.mean(1), b.mean(1)
        a, b = a - mu_a[:, None], b - mu_b[:, None]
        trace = (np.einsum("cij,cij->c", a, a) + np.einsum("cij,cij->c", b, b)) / (n - 1)
        if n > d:
            a, b = np.linalg.qr(a, mode="r"), np.linalg.qr(b, mode="r")
        cross = np.linalg.svd(a @ np.swapaxes(b, 1, 2), compute_uv=False).sum(-1) / (n - 1)
        out[s:s + chunk] = ((mu_a - mu_b) ** 2).sum(-1) + trace - 2 * cross
    return out


@dataclass
class ItemStat:
    """How one cell's metric is recomputed on a resample of its items: per-item ``values`` (mean statistic) or FVD
    ``features`` (fp, quant); ``names`` align the items of different cells."""

    names: list[str]
    values: Optional[np.ndarray] = None
    features: Optional[tuple[np.ndarray, np.ndarray]] = None

    def on(self, names: Sequence[str], idx: np.ndarray, rng: Optional[np.random.Generator] = None) -> np.ndarray:
        """The statistic on every resample ``idx`` of the items ``names`` (a subset of this cell's items); ``rng`` is
        for :class:`PooledStat` (one item set has nothing else to draw)."""
        pos = {n: i for i, n in enumerate(self.names)}
        sel = np.array([pos[n] for n in names])
        if self.features is not None:
            fp, q = self.features
            return frechet_resampled(fp[sel], q[sel], idx)
        return np.asarray(self.values, np.float64)[sel][idx].mean(axis=1)


@dataclass
class PooledStat:
    """One cell from several calibrations (members, one :class:`ItemStat` each, scored on the same items): the mean
    of the members' statistics. A resample draws the members with replacement as well as the items, so its spread
    includes the calibrations' run-to-run spread; with one member it is that member's statistic exactly."""

    members: list[ItemStat]

    @property
    def names(self) -> list[str]:
        return sorted(set.intersection(*(set(m.names) for m in self.members)))

    def on(self, names: Sequence[str], idx: np.ndarray, rng: Optional[np.random.Generator] = None) -> np.ndarray:
        """As :meth:`ItemStat.on`, each resample also drawing the members with replacement from ``rng``."""
        per = np.stack([m.on(names, idx) for m in self.members])  # [members, resamples]
        k = len(self.members)
        if k == 1:
            return per[0]
        if rng is None:
            raise ValueError("a pooled cell resamples its calibrations: pass the generator of the bootstrap (rng)")
        pick = rng.integers(0, k, size=(idx.shape[0], k))
        return per[pick, np.arange(idx.shape[0])[:, None]].mean(axis=1)


def member_rng(seed: int) -> np.random.Generator:
    """The generator of a bootstrap's calibration draws: its own stream of ``seed``, so the item draws
    (:func:`resample_indices`) are those of a table without pooled cells."""
    return np.random.default_rng([seed, 7919])


def cell_interval(stat: ItemStat | PooledStat, n_boot: int = N_BOOT, seed: int = 0, level: float = LEVEL) -> Interval:
    idx = resample_indices(len(stat.names), n_boot, seed)
    return percentile_interval(stat.on(stat.names, idx, member_rng(seed)), level)


def paired_difference(a: ItemStat | PooledStat, b: ItemStat | PooledStat, n_boot: int = N_BOOT, seed: int = 0,
                      level: float = LEVEL) -> tuple[Interval, int]:
    """Interval of statistic(a) - statistic(b) over the items both have, resampled jointly (pooled cells draw their
    calibrations independently); and that item count."""
    common = sorted(set(a.names) & set(b.names))
    idx = resample_indices(len(common), n_boot, seed)
    rng = member_rng(seed)  # a's draws, then b's: independent
    return percentile_interval(a.on(common, idx, rng) - b.on(common, idx, rng), level), len(common)


def paired_ratio_interval(a: Sequence[float], b: Sequence[float], n_boot: int = N_BOOT, seed: int = 0,
                          level: float = LEVEL) -> tuple[float, Interval]:
    """mean(a) / mean(b) over the same items (a[i] and b[i] from one prompt and seed), and its percentile interval
    with the items resampled jointly."""
    x, y = np.asarray(a, np.float64), np.asarray(b, np.float64)
    if x.shape != y.shape:
        raise ValueError(f"paired values need one per item on both sides; got {x.shape} and {y.shape}")
    idx = resample_indices(len(x), n_boot, seed)
    return float(x.mean() / y.mean()), percentile_interval(x[idx].mean(1) / y[idx].mean(1), level)

