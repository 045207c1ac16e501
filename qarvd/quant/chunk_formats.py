"""Per-chunk linear formats in simulation: every quantized layer runs one calibrated variant (its primary format) in
some chunks of the rollout and another (the alternate format) in the others.

Why: the frame sensitivity (Eq. 3-4) says an error in an early chunk costs the final video most (alpha 0.73 for
chunk 0 on the embedded model), while the late chunks hold most of the compute. A precision schedule can keep the
precise format where alpha is large and a cheaper one later (issue 20). This wrapper measures what such a schedule
does to quality with the fake-quant layers both formats were calibrated as, before any kernel switches formats.

The chunk comes from the rollout's published :class:`~qarvd.models.context.ForwardInfo`; a forward outside a rollout
(no info) runs the primary format.
"""
from __future__ import annotations

from typing import Iterable

import torch
from torch import nn

from qarvd.models.context import current_forward
from qarvd.quant.linear import QuantLinear


class ChunkFormatLinear(nn.Module):
    """``alternate`` in the rollout chunks ``chunks``, ``primary`` everywhere else."""

    def __init__(self, primary: QuantLinear, alternate: QuantLinear, chunks: Iterable[int]) -> None:
        super().__init__()
        self.primary, self.alternate = primary, alternate
        self.chunks = frozenset(int(c) for c in chunks)
        if not self.chunks:
            raise ValueError("ChunkFormatLinear needs at least one chunk for the alternate format")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        info = current_forward()
        return (self.alternate if info is not None and info.chunk in self.chunks else self.primary)(x)


def quant_layers(model: nn.Module) -> dict[str, QuantLinear]:
    """The model's fake-quant layers by module name."""
    return {name: m for name, m in model.named_modules() if isinstance(m, QuantLinear)}


def chunk_formats_(model: nn.Module, alternate: nn.Module, chunks: Iterable[int]) -> nn.Module:
    """Swap every QuantLinear of ``model`` (in place) for a :class:`ChunkFormatLinear` that runs the layer of the same
    name in ``alternate`` (the same architecture, quantized in another format) in ``chunks``. Both models must
    quantize the same layers: a schedule that left some layers in one format only would not be the format named."""
    mine, theirs = quant_layers(model), quant_layers(alternate)
    if set(mine) != set(theirs):
        only = sorted(set(mine) ^ set(theirs))
        raise ValueError(f"the two models quantize different layers ({len(only)} differ, e.g. {only[:3]}): a chunk "
                         "schedule needs both formats of every layer")
    chunks = sorted({int(c) for c in chunks})
    for name, layer in mine.items():
        parent, _, child = name.rpartition(".")
        setattr(model.get_submodule(parent) if parent else model, child, ChunkFormatLinear(layer, theirs[name], chunks))
    return model
