"""Read the fake-quant core's hardened :class:`~qarvd.quant.linear.QuantLinear` layers as :class:`RealLayerSpec`.

``convert_to_real(model, real_specs(model), backend)`` deploys a model holding QuantLinear layers (after
``harden_`` or ``load_artifact``). A smoothing factor folded into an upstream norm is already applied by that norm
in the model, so the spec then carries no smoothing vector.
"""
from __future__ import annotations

import torch
from torch import nn

from qarvd.deploy.spec import RealLayerSpec
from qarvd.quant.linear import QuantLinear, quant_layers
from qarvd.quant.quantizer import qrange


def spec_from_quantlinear(layer: QuantLinear) -> RealLayerSpec:
    if not layer.hardened:
        raise ValueError(f"layer '{layer.name}' is not hardened: call harden_(model) first")
    groups = [g.idx if g.idx is not None else torch.arange(layer.in_features) for g in layer.groups]
    wq, aq = qrange(layer.w_bits, layer.symmetric), qrange(layer.a_bits, layer.symmetric)
    lowrank = None if layer.lr_down is None else (layer.lr_down.detach(), layer.lr_up.detach())
    return RealLayerSpec(
        groups=[i.detach().cpu().long() for i in groups],
        weight_int=[g.w_int.detach().cpu() for g in layer.groups],
        weight_scale=[g.wq.scale.detach().float().cpu().reshape(-1) for g in layer.groups],
        weight_zero=[g.wq.zero_point.detach().float().cpu().reshape(-1) for g in layer.groups],
        act_scale=[float(g.aq.scale) for g in layer.groups], act_zero=[float(g.aq.zero_point) for g in layer.groups],
        w_qmin=wq[0], w_qmax=wq[1], a_qmin=aq[0], a_qmax=aq[1],
        bias=None if layer.bias is None else layer.bias.detach(),
        smooth=layer.smooth.detach() if layer.smooth is not None and layer.folded_into is None else None,
        lowrank=lowrank, meta={"name": layer.name})


def real_specs(model: nn.Module) -> dict[str, RealLayerSpec]:
    """Specs of every QuantLinear in ``model``, by module name."""
    return {name: spec_from_quantlinear(layer) for name, layer in quant_layers(model).items()}
