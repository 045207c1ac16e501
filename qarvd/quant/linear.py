"""QuantLinear: a fake-quantized nn.Linear with every variant the six methods need, selected by state, not subclass.

    y = sum_g Q_a^g(X'[:, idx_g]) Q_w^g(T[:, idx_g])^T + X' L1^T L2^T + b,   X' = X / s,   T = W diag(s) - L2 L1

- ``smooth`` s (SmoothQuant / PTQ4DiT / SVDQuant): the input is divided at run time, or already divided by an
  upstream norm the factor was folded into (``folded_into``);
- a 16-bit low-rank branch L2 L1 (SVDQuant), fed the unquantized smoothed input; only the residual is quantized;
- groups of input columns (Q-ARVD dual scale: outlier and normal columns), each with its own per-output-channel
  weight quantizer AND per-tensor activation quantizer; one group covering all columns is the plain layer.

The layer reads the published :class:`~qarvd.models.context.ForwardInfo`: a chunk gate (``chunks``) makes it run in
full precision outside the listed chunks (frame-sensitivity analysis), and the chunk index picks the sample weight
while activation statistics are gathered. After :meth:`harden` the weights are integer codes; the forward then
depends only on the tensors the artifact stores, so a reloaded artifact reproduces outputs bit for bit.
"""
from __future__ import annotations

import contextlib
from typing import Iterator, Optional, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from qarvd.models.context import ForwardInfo, current_forward
from qarvd.quant.adaround import AdaRoundWeight
from qarvd.quant.quantizer import DEFAULT_PERCENTILES, ActivationHistogram, UniformQuantizer


class NonFiniteActivationError(FloatingPointError):
    """NaN/inf in a calibration activation: calibration stops and names where it happened."""


def check_finite(x: torch.Tensor, layer: str, info: Optional[ForwardInfo], what: str = "input") -> None:
    if not bool(torch.isfinite(x).all()):
        where = "outside a rollout" if info is None else (
            f"in chunk {info.chunk} (step {info.step}, timestep {info.timestep:g}{', refresh pass' if info.refresh else ''})")
        raise NonFiniteActivationError(f"non-finite values (NaN/inf) in the {what} of layer '{layer}' {where}; "
                                       "calibration stopped and nothing was saved")


class QuantGroup(nn.Module):
    """One group of input columns with its own weight and activation quantizers."""

    def __init__(self, out_features: int, idx: Optional[torch.Tensor], w_bits: int, a_bits: int, symmetric: bool) -> None:
        super().__init__()
        self.register_buffer("idx", None if idx is None else idx.long().clone())
        self.wq = UniformQuantizer(w_bits, symmetric, per_channel=True, channels=out_features)
        self.aq = UniformQuantizer(a_bits, symmetric, per_channel=False)
        self.register_buffer("w_int", None)  # integer codes once hardened
        self.rounding: Optional[AdaRoundWeight] = None  # learned rounding during reconstruction
        self.hist: Optional[ActivationHistogram] = None  # activation statistics during initialisation
        self._w_deq: Optional[torch.Tensor] = None

    def columns(self, t: torch.Tensor) -> torch.Tensor:
        return t if self.idx is None else t.index_select(-1, self.idx)

    def dequantized_weight(self, target: torch.Tensor) -> torch.Tensor:
        if self.w_int is not None:
            if self._w_deq is None or self._w_deq.device != self.w_int.device:
                self._w_deq = self.wq.dequantize(self.w_int).detach()
            return self._w_deq
        if self.rounding is not None:
            return self.rounding(soft=True)
        return self.wq(self.columns(target))

    def set_codes(self, codes: torch.Tensor) -> None:
        self.w_int = codes.to(torch.int16)
        self._w_deq = None


class QuantLinear(nn.Module):
    """Fake-quantized Linear; wraps (shares) the FP weight and bias of the layer it replaces."""

    def __init__(self, linear: nn.Linear, w_bits: int, a_bits: int, symmetric: bool, name: str = "") -> None:
        super().__init__()
        self.in_features, self.out_features = linear.in_features, linear.out_features
        self.w_bits, self.a_bits, self.symmetric, self.name = int(w_bits), int(a_bits), bool(symmetric), name
        self.weight = linear.weight
        self.bias = linear.bias
        self.register_buffer("smooth", None)
        self.folded_into: Optional[str] = None
        self.register_buffer("lr_down", None)  # L1 [rank, in] (16-bit)
        self.register_buffer("lr_up", None)  # L2 [out, rank] (16-bit)
        self.groups = nn.ModuleList([self._group(None)])
        self.w_quant = True
        self.a_quant = True
        self.observing: Optional[str] = None  # "range" | "hist" while activation statistics are gathered
        self.chunks: Optional[frozenset[int]] = None  # chunk gate: quantize only these chunks (None: all)
        self.chunk_weights: Optional[torch.Tensor] = None  # per-chunk sample weight (None: uniform)
        self._target: Optional[torch.Tensor] = None

    def extra_repr(self) -> str:
        extra = [f"groups={len(self.groups)}"] + (["smooth"] if self.smooth is not None else []) + (
            [f"lowrank={self.lr_down.shape[0]}"] if self.lr_down is not None else [])
        return f"{self.in_features}->{self.out_features}, W{self.w_bits}A{self.a_bits}, " + ", ".join(extra)

    def _group(self, idx: Optional[torch.Tensor]) -> QuantGroup:
        return QuantGroup(self.out_features, idx, self.w_bits, self.a_bits, self.symmetric).to(self.weight.device)

    # -- structure (set by the method recipes before initialisation) ------------------------------------
    def target_weight(self) -> torch.Tensor:
        """The fp32 weight the quantizers see: ``W diag(s) - L2 L1``."""
        if self._target is None or self._target.device != self.weight.device:
            t = self.weight.detach().float()
            if self.smooth is not None:
                t = t * self.smooth.float()[None, :]
            if self.lr_down is not None:
                t = t - self.lr_up.float() @ self.lr_down.float()
            self._target = t
        return self._target

    def set_smoothing(self, s: Optional[torch.Tensor], folded_into: Optional[str] = None) -> None:
        """Divide inputs by ``s`` (at run time, or upstream when ``folded_into`` names the module holding 1/s)."""
        self.smooth = None if s is None else s.detach().float().to(self.weight.device).clone()
        self.folded_into = folded_into if s is not None else None
        self._target = None

    def set_lowrank(self, down: Optional[torch.Tensor], up: Optional[torch.Tensor]) -> None:
        """16-bit low-rank branch ``X' down^T up^T``; the quantizers then see the residual."""
        self.lr_down = None if down is None else down.detach().to(self.weight.device).clone()
        self.lr_up = None if up is None else up.detach().to(self.weight.device).clone()
        self._target = None

    def set_groups(self, indices: Optional[Sequence[torch.Tensor]]) -> None:
        """Split the input columns into groups (None: one group of all columns). Resets the quantizers."""
        if indices is None or len(indices) <= 1:
            self.groups = nn.ModuleList([self._group(None)])
            return
        indices = [torch.as_tensor(i).long().cpu() for i in indices]  # outlier search may hand over CUDA indices
        seen = torch.cat(indices).sort().values
        if not torch.equal(seen, torch.arange(self.in_features)):
            raise ValueError(f"{self.name}: column groups must partition the {self.in_features} input channels")
        self.groups = nn.ModuleList([self._group(i) for i in indices])

    # -- initialisation ---------------------------------------------------------------------------------
    @torch.no_grad()
    def init_weights(self, percentiles: Sequence[float] = DEFAULT_PERCENTILES) -> None:
        """Per-output-channel percentile-MSE init of every group's weight quantizer (data free)."""
        t = self.target_weight()
        for g in self.groups:
            g.wq.init_weight(g.columns(t), percentiles)

    @property
    def hardened(self) -> bool:
        return all(g.w_int is not None for g in self.groups)

    @torch.no_grad()
    def harden(self) -> None:
        """Fix the integer weight codes: learned rounding where reconstruction ran, nearest elsewhere."""
        t = self.target_weight()
        for g in self.groups:
            if g.w_int is None:
                g.set_codes(g.rounding.hard_codes() if g.rounding is not None else g.wq.quantize(g.columns(t)))
            g.rounding = None
            g.aq.scale.requires_grad_(False)

    # -- forward ----------------------------------------------------------------------------------------
    def quant_active(self, info: Optional[ForwardInfo]) -> bool:
        if not (self.w_quant or self.a_quant or self.observing):
            return False
        return self.chunks is None or (info is not None and info.chunk in self.chunks)

    def sample_weight(self, info: Optional[ForwardInfo]) -> float:
        if self.chunk_weights is None or info is None:
            return 1.0
        return float(self.chunk_weights[info.chunk])

    def fp_forward(self, x: torch.Tensor) -> torch.Tensor:
        """The full-precision layer (undoing an upstream-folded smoothing factor)."""
        if self.folded_into is not None:
            x = (x.float() * self.smooth).to(x.dtype)
        return F.linear(x, self.weight, self.bias)

    def smoothed_input(self, x: torch.Tensor) -> torch.Tensor:
        xs = x.float()
        if self.smooth is not None and self.folded_into is None:
            xs = xs / self.smooth
        return xs

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        info = current_forward()
        if not self.quant_active(info):
            return self.fp_forward(x)
        xs = self.smoothed_input(x)
        target = self.target_weight() if (not self.w_quant or not self.hardened) else None
        y = None
        for g in self.groups:
            xg = g.columns(xs)
            if self.observing:
                self._observe(g, xg, info)
            elif self.a_quant:
                xg = g.aq(xg)
            wg = g.dequantized_weight(target) if self.w_quant else g.columns(target)
            yg = F.linear(xg, wg)
            y = yg if y is None else y + yg
        if self.lr_down is not None:
            y = y + F.linear(F.linear(xs.to(self.lr_down.dtype), self.lr_down), self.lr_up).float()
        if self.bias is not None:
            y = y + self.bias.float()
        return y.to(x.dtype)

    def _observe(self, g: QuantGroup, xg: torch.Tensor, info: Optional[ForwardInfo]) -> None:
        check_finite(xg, self.name, info)
        if g.hist is None:
            raise RuntimeError(f"{self.name}: activation statistics requested but no histogram was attached")
        if self.observing == "range":
            g.hist.observe_range(xg)
        else:
            g.hist.observe(xg, self.sample_weight(info), samples=xg.shape[0] if xg.dim() == 3 else 1)


# ----------------------------------------------------------------------------------------------- model-level helpers
def quant_layers(model: nn.Module) -> dict[str, QuantLinear]:
    return {n: m for n, m in model.named_modules() if isinstance(m, QuantLinear)}


def set_quant_state(model: nn.Module, weights: bool, acts: bool) -> None:
    for m in quant_layers(model).values():
        m.w_quant, m.a_quant = bool(weights), bool(acts)


@contextlib.contextmanager
def quant_state(model: nn.Module, weights: bool, acts: bool) -> Iterator[None]:
    """Temporarily switch weight / activation quantization of every QuantLinear (both off = exact FP)."""
    layers = quant_layers(model).values()
    saved = [(m.w_quant, m.a_quant) for m in layers]
    set_quant_state(model, weights, acts)
    try:
        yield
    finally:
        for m, (w, a) in zip(layers, saved):
            m.w_quant, m.a_quant = w, a


@contextlib.contextmanager
def chunk_gate(model: nn.Module, chunks: Optional[Sequence[int]]) -> Iterator[None]:
    """Quantize only the forwards of the given chunks (denoising steps and refresh); FP elsewhere."""
    layers = quant_layers(model).values()
    saved = [m.chunks for m in layers]
    for m in layers:
        m.chunks = None if chunks is None else frozenset(int(c) for c in chunks)
    try:
        yield
    finally:
        for m, c in zip(layers, saved):
            m.chunks = c
