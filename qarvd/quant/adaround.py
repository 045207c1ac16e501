"""AdaRound (Nagel et al., 2020) as in BRECQ / Q-Diffusion and the Q-ARVD release: learned up/down rounding.

The weight step (per output channel) stays fixed; each weight gets a continuous variable ``V`` whose rectified
sigmoid ``h(V) = clamp(sigmoid(V) (zeta - gamma) + gamma, 0, 1)`` replaces the rounding decision. ``V`` starts so
that ``h = frac(W / delta)`` (the soft weight equals the FP weight); a regulariser pushes ``h`` to 0 or 1 under an
annealed exponent ``beta``; at the end rounding is hardened to ``floor(W / delta) + 1[V >= 0]``.
"""
from __future__ import annotations

import torch
from torch import nn

ZETA, GAMMA = 1.1, -0.1


class AdaRoundWeight(nn.Module):
    """Learned rounding of one weight tensor [out, in] under a fixed per-channel (scale, zero_point)."""

    def __init__(self, weight: torch.Tensor, scale: torch.Tensor, zero: torch.Tensor, qmin: int, qmax: int) -> None:
        super().__init__()
        w = weight.detach().float()
        self.register_buffer("scale", scale.detach().float().clone())
        self.register_buffer("zero", zero.detach().float().clone())
        self.qmin, self.qmax = int(qmin), int(qmax)
        self.register_buffer("w_floor", torch.floor(w / self.scale))
        rest = w / self.scale - self.w_floor  # in [0, 1)
        self.v = nn.Parameter(-torch.log((ZETA - GAMMA) / (rest - GAMMA) - 1))

    def h(self) -> torch.Tensor:
        """Rectified sigmoid in [0, 1]: the soft rounding offset."""
        return torch.clamp(torch.sigmoid(self.v) * (ZETA - GAMMA) + GAMMA, 0.0, 1.0)

    def codes(self, soft: bool = True) -> torch.Tensor:
        offset = self.h() if soft else (self.v >= 0).to(self.w_floor.dtype)
        return torch.clamp(self.w_floor + offset + self.zero, self.qmin, self.qmax)

    def forward(self, soft: bool = True) -> torch.Tensor:
        """The (soft or hard) dequantized weight."""
        return (self.codes(soft) - self.zero) * self.scale

    @torch.no_grad()
    def hard_codes(self) -> torch.Tensor:
        """Hardened integer codes ``clamp(floor(W/delta) + 1[V >= 0] + z)``."""
        return self.codes(soft=False).to(torch.int16)

    def regularizer(self, beta: float) -> torch.Tensor:
        """``sum(1 - |2h - 1|^beta)``: zero once every ``h`` is exactly 0 or 1."""
        return (1 - (2 * self.h() - 1).abs().pow(beta)).sum()


class BetaSchedule:
    """Regulariser schedule: off for the first ``warmup`` fraction of iterations, then beta linear start -> end."""

    def __init__(self, iters: int, warmup: float = 0.2, start: float = 20.0, end: float = 2.0) -> None:
        if iters < 1 or not 0.0 <= warmup < 1.0:
            raise ValueError(f"need iters >= 1 and 0 <= warmup < 1, got iters={iters}, warmup={warmup}")
        self.iters, self.start, self.end = int(iters), float(start), float(end)
        self.warmup_iters = int(warmup * iters)

    def __call__(self, it: int) -> tuple[float, bool]:
        """(beta, regulariser active) at iteration ``it`` (0-based)."""
        if it < self.warmup_iters:
            return self.start, False
        rel = (it - self.warmup_iters) / max(self.iters - self.warmup_iters, 1)
        return self.end + (self.start - self.end) * max(0.0, 1.0 - rel), True
