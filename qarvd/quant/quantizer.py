"""Uniform affine fake quantization: the one primitive every method of the project is built from.

``x_q = clamp(round(x / s) + z, qmin, qmax)`` and ``x_hat = (x_q - z) * s`` (paper Eq. 1). Asymmetric (the
released default): range ``[0, 2^b - 1]`` with an integer zero point; symmetric: ``z = 0``, range
``[-2^(b-1), 2^(b-1) - 1]`` and ``s = max|x| / (2^(b-1) - 1)``.

Initialisation follows the authors' release: the clip range is a percentile pair (upper = ``p`` quantile, lower =
``1 - p`` quantile) and ``p`` is chosen from a short list by quantization MSE, per output channel for weights and
per tensor for activations. Activation percentiles come from a 32768-bin histogram of every calibration
activation of the layer (:class:`ActivationHistogram`), and its MSE score weights each sample by its chunk weight.
"""
from __future__ import annotations

from typing import Optional, Sequence

import torch
from torch import nn

DEFAULT_PERCENTILES = (0.999, 0.9999, 0.99999)
MIN_SCALE = 1e-8  # a constant tensor still gets a valid (tiny) step


def check_bits(bits: int, what: str = "bits") -> int:
    """Bit-widths the fake quantizer and the integer kernels support (2..8)."""
    if isinstance(bits, bool) or not isinstance(bits, int) or not 2 <= bits <= 8:
        raise ValueError(f"{what}={bits!r} is not supported: use an integer bit-width from 2 to 8")
    return bits


def qrange(bits: int, symmetric: bool) -> tuple[int, int]:
    """Integer range of a ``bits``-wide code: [0, 2^b-1] asymmetric, [-2^(b-1), 2^(b-1)-1] symmetric."""
    check_bits(bits)
    return (-(2 ** (bits - 1)), 2 ** (bits - 1) - 1) if symmetric else (0, 2**bits - 1)


def round_ste(x: torch.Tensor) -> torch.Tensor:
    """Round to nearest with a straight-through gradient (learned activation steps train through it)."""
    return (x.round() - x).detach() + x


def range_to_params(lo: torch.Tensor, hi: torch.Tensor, bits: int, symmetric: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """(scale, zero_point) for a clip range; the range is widened to contain 0 so that 0 stays exact."""
    lo, hi = torch.minimum(lo, torch.zeros_like(lo)), torch.maximum(hi, torch.zeros_like(hi))
    qmin, qmax = qrange(bits, symmetric)
    if symmetric:
        scale = (torch.maximum(lo.abs(), hi.abs()) / qmax).clamp_min(MIN_SCALE)
        return scale, torch.zeros_like(scale)
    scale = ((hi - lo) / (qmax - qmin)).clamp_min(MIN_SCALE)
    return scale, (qmin - lo / scale).round()


def fake_quant(x: torch.Tensor, scale: torch.Tensor, zero: torch.Tensor, qmin: int, qmax: int) -> torch.Tensor:
    """Quantize-dequantize with STE rounding (gradients reach ``x`` and ``scale``)."""
    q = torch.clamp(round_ste(x / scale) + zero, qmin, qmax)
    return (q - zero) * scale


def quantile_lastdim(x: torch.Tensor, q: float) -> torch.Tensor:
    """``torch.quantile(x, q, dim=-1)`` (linear interpolation) without its 16M-element limit."""
    s, _ = x.sort(dim=-1)
    pos = q * (s.shape[-1] - 1)
    lo_i = int(pos)
    hi_i = min(lo_i + 1, s.shape[-1] - 1)
    frac = pos - lo_i
    return s[..., lo_i] + (s[..., hi_i] - s[..., lo_i]) * frac


class UniformQuantizer(nn.Module):
    """Per-channel (``per_channel=True``: one step per row of a 2-D tensor) or per-tensor affine quantizer.

    ``scale`` is a Parameter so reconstruction can learn it (activations); it is frozen unless a caller enables
    its gradient. ``zero_point`` holds integer values stored as float.
    """

    def __init__(self, bits: int, symmetric: bool, per_channel: bool, channels: int = 1) -> None:
        super().__init__()
        self.bits, self.symmetric, self.per_channel = check_bits(bits), bool(symmetric), bool(per_channel)
        self.qmin, self.qmax = qrange(self.bits, self.symmetric)
        shape = (channels, 1) if per_channel else ()
        self.scale = nn.Parameter(torch.ones(shape), requires_grad=False)
        self.register_buffer("zero_point", torch.zeros(shape))
        self.initialized = False

    def extra_repr(self) -> str:
        kind = "per-channel" if self.per_channel else "per-tensor"
        return f"bits={self.bits}, {'symmetric' if self.symmetric else 'asymmetric'}, {kind}"

    @torch.no_grad()
    def set_range(self, lo: torch.Tensor, hi: torch.Tensor) -> None:
        scale, zero = range_to_params(lo.float(), hi.float(), self.bits, self.symmetric)
        self.scale.data = scale.reshape(self.scale.shape).clone()
        self.zero_point = zero.reshape(self.zero_point.shape).clone()
        self.initialized = True

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return fake_quant(x, self.scale, self.zero_point, self.qmin, self.qmax)

    @torch.no_grad()
    def quantize(self, x: torch.Tensor) -> torch.Tensor:
        """Integer codes (nearest rounding) as int16 (wide enough for any supported bit-width)."""
        return torch.clamp((x / self.scale).round() + self.zero_point, self.qmin, self.qmax).to(torch.int16)

    def dequantize(self, q: torch.Tensor) -> torch.Tensor:
        return (q.float() - self.zero_point) * self.scale

    @torch.no_grad()
    def init_weight(self, w: torch.Tensor, percentiles: Sequence[float] = DEFAULT_PERCENTILES) -> torch.Tensor:
        """Per-channel percentile-MSE init on a 2-D weight; returns the chosen percentile index per channel."""
        if not self.per_channel or w.dim() != 2:
            raise ValueError("init_weight needs a per-channel quantizer and a 2-D weight [out, in]")
        w = w.float()
        best_err = torch.full((w.shape[0],), float("inf"), device=w.device)
        best = torch.zeros(w.shape[0], dtype=torch.long, device=w.device)
        best_scale, best_zero = None, None
        for i, p in enumerate(percentiles):
            scale, zero = range_to_params(quantile_lastdim(w, 1.0 - p), quantile_lastdim(w, p), self.bits, self.symmetric)
            scale, zero = scale[:, None], zero[:, None]
            err = (fake_quant(w, scale, zero, self.qmin, self.qmax) - w).pow(2).mean(dim=1)
            better = err < best_err
            best_err = torch.where(better, err, best_err)
            best = torch.where(better, torch.full_like(best, i), best)
            best_scale = scale if best_scale is None else torch.where(better[:, None], scale, best_scale)
            best_zero = zero if best_zero is None else torch.where(better[:, None], zero, best_zero)
        self.scale.data = best_scale.clone()
        self.zero_point = best_zero.clone()
        self.initialized = True
        return best


class ActivationHistogram:
    """Streamed statistics of one activation tensor for the per-tensor percentile-MSE search.

    Two passes over the calibration run, as the released code's histogram is taken over all activations at once:
    ``observe_range`` (pass 1) fixes the global min/max, ``observe`` (pass 2) fills 32768 bins. Two histograms are
    kept: plain counts give the percentiles; counts weighted per sample by ``weight / elements_per_sample`` give
    the MSE score (each sample's mean squared error, weighted by its chunk weight).
    """

    def __init__(self, bins: int = 32768) -> None:
        self.bins = int(bins)
        self.lo: Optional[float] = None
        self.hi: Optional[float] = None
        self.counts: Optional[torch.Tensor] = None
        self.weighted: Optional[torch.Tensor] = None

    def observe_range(self, x: torch.Tensor) -> None:
        lo, hi = float(x.min()), float(x.max())
        self.lo = lo if self.lo is None else min(self.lo, lo)
        self.hi = hi if self.hi is None else max(self.hi, hi)

    def observe(self, x: torch.Tensor, weight: float = 1.0, samples: int = 1) -> None:
        """Add ``x`` (holding ``samples`` samples of equal size, all with chunk weight ``weight``)."""
        if self.lo is None:
            raise RuntimeError("observe_range must run over the calibration data before observe")
        hi = self.hi if self.hi > self.lo else self.lo + 1e-6
        h = torch.histc(x.detach().float(), bins=self.bins, min=self.lo, max=hi).double().cpu()
        if self.counts is None:
            self.counts, self.weighted = torch.zeros_like(h), torch.zeros_like(h)
        self.counts += h
        self.weighted += h * (float(weight) * samples / x.numel())

    def edges(self) -> tuple[float, float]:
        return self.lo, (self.hi if self.hi > self.lo else self.lo + 1e-6)

    def quantile(self, q: float) -> float:
        """Value below which a fraction ``q`` of the observed elements lies (linear inside a bin)."""
        lo, hi = self.edges()
        width = (hi - lo) / self.bins
        cdf = self.counts.cumsum(0) / self.counts.sum()
        i = int(torch.searchsorted(cdf, torch.tensor([q], dtype=cdf.dtype)).clamp(max=self.bins - 1))
        prev = float(cdf[i - 1]) if i > 0 else 0.0
        mass = float(cdf[i]) - prev
        frac = (q - prev) / mass if mass > 0 else 0.0
        return lo + (i + min(max(frac, 0.0), 1.0)) * width

    def search(self, quantizer: UniformQuantizer, percentiles: Sequence[float] = DEFAULT_PERCENTILES) -> int:
        """Set ``quantizer`` to the percentile pair with the lowest weighted MSE; returns the chosen index."""
        if self.counts is None or float(self.counts.sum()) == 0:
            raise RuntimeError("no activations were observed for this quantizer")
        lo, hi = self.edges()
        width = (hi - lo) / self.bins
        centers = lo + (torch.arange(self.bins, dtype=torch.float64) + 0.5) * width
        best, best_err, best_range = 0, float("inf"), None
        for i, p in enumerate(percentiles):
            a, b = torch.tensor(self.quantile(1.0 - p)), torch.tensor(self.quantile(p))
            scale, zero = range_to_params(a.double(), b.double(), quantizer.bits, quantizer.symmetric)
            err = float((self.weighted * (fake_quant(centers, scale, zero, quantizer.qmin, quantizer.qmax) - centers) ** 2).sum())
            if err < best_err:
                best, best_err, best_range = i, err, (a, b)
        quantizer.set_range(*best_range)
        return best
