"""Turn a fake-quant artifact into real low-bit modules: ``convert_to_real(model, artifact, backend)``.

The artifact maps fully-qualified linear names (``blocks.3.ffn.2``, ``text_embedding.0`` ...) to
:class:`~qarvd.deploy.spec.RealLayerSpec`. Each named ``nn.Linear`` is replaced in place, under the same name, by a
:class:`RealQuantLinear` (int8 or packed int4 storage; the dual-scale variant is the backend's ``dual_mode``; with
the backend's ``weights: symmetric`` 8-bit weights are re-quantized without zero point, see
:func:`~qarvd.deploy.packing.symmetric_weights`) or,
for the fp8 backend, an :class:`Fp8Linear`. Layers the artifact does not name (time embedding, time projection,
head, patch embedding) stay in floating point, as the method keeps them.
"""
from __future__ import annotations

from typing import Mapping

import torch
from torch import nn

from qarvd.deploy.modules import Fp8Linear, RealQuantLinear, fp8_from_spec
from qarvd.deploy.packing import symmetric_weights
from qarvd.deploy.spec import RealLayerSpec
from qarvd.quant.select import set_module


def convert_to_real(model: nn.Module, artifact: Mapping[str, RealLayerSpec], backend) -> nn.Module:
    """Replace every linear named in ``artifact`` by its real low-bit module bound to ``backend`` (in place)."""
    if backend.format == "bf16":
        return model
    for name, spec in artifact.items():
        old = model.get_submodule(name)
        if not hasattr(old, "weight") or tuple(old.weight.shape) != (spec.out_features, spec.in_features):
            raise ValueError(f"artifact layer {name!r} is [{spec.out_features}, {spec.in_features}] but the model's "
                             f"module is {type(old).__name__} {tuple(getattr(old, 'weight', torch.empty(0)).shape)}")
        dev = old.weight.device
        if backend.format == "fp8":
            tensors, meta = fp8_from_spec(spec)
            if spec.bias is not None:
                tensors["bias"] = tensors["bias"].to(old.weight.dtype)
            new = Fp8Linear(meta, {k: v.to(dev) for k, v in tensors.items()}, backend)
        else:
            if getattr(backend, "weights", "artifact") == "symmetric":
                spec = symmetric_weights(spec)
            new = RealQuantLinear.from_spec(spec, backend.dual_mode, backend, device=dev)
        set_module(model, name, new)
    return model


def set_backend_(model: nn.Module, backend) -> nn.Module:
    """Bind every real module of ``model`` to ``backend``."""
    for mod in model.modules():
        if isinstance(mod, (RealQuantLinear, Fp8Linear)):
            mod.backend = backend
    return model


def real_layers(model: nn.Module) -> dict:
    return {n: m for n, m in model.named_modules() if isinstance(m, (RealQuantLinear, Fp8Linear))}
