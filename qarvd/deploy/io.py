"""Save and load a converted model: one safetensors file (the state dict: low-bit storage buffers of the real
modules plus the float parameters the method keeps) and a JSON file (architecture, per-layer layout facts, format
version). Loading builds the model on the meta device, swaps in empty real modules, and loads strictly, so a
mismatching file fails with the offending keys; nothing is ever unpickled.
"""
from __future__ import annotations

import json
from pathlib import Path

import torch

from qarvd.deploy.convert import real_layers, set_backend_
from qarvd.deploy.fast import (attention_fp8_scales, attention_key_means, set_attention_fp8_scales_,
                               set_attention_key_means_)
from qarvd.quant.select import set_module
from qarvd.deploy.modules import Fp8Linear, RealQuantLinear
from qarvd.models.wan import CausalWanModel, WanConfig, rope_angles
from qarvd.utils.io import atomic_write_json, save_safetensors_atomic

FORMAT_VERSION = 1
WEIGHTS, META = "model.safetensors", "real_model.json"
ATTN_SCALES = "attention_fp8_scales"  # [layers, 4] FP8 attention steps, saved when calibrated (not a state-dict key)
KEY_MEANS = "attention_key_means"  # [layers, dim] INT8 attention mean keys, saved when calibrated (likewise)


def save_real(model: CausalWanModel, path, extra: dict | None = None) -> Path:
    """Write ``path``/model.safetensors (with the FP8 attention scales / INT8 attention mean keys when calibrated) and
    ``path``/real_model.json; returns the folder."""
    path = Path(path)
    layers = {}
    for name, mod in real_layers(model).items():
        kind = "fp8" if isinstance(mod, Fp8Linear) else "int"
        layers[name] = dict(kind=kind, meta=mod.storage_meta() if kind == "int" else mod.meta)
    tensors = dict(model.state_dict())
    for key, value in ((ATTN_SCALES, attention_fp8_scales(model)), (KEY_MEANS, attention_key_means(model))):
        if value is not None:  # calibrate_attention_ ran: a deployment with that attention reuses the calibration
            tensors[key] = value
    save_safetensors_atomic(path / WEIGHTS, tensors, metadata={"format_version": str(FORMAT_VERSION)})
    atomic_write_json(path / META, dict(format_version=FORMAT_VERSION, arch=model.cfg.to_dict(), layers=layers,
                                        dtype=str(next(model.parameters()).dtype).removeprefix("torch."),
                                        extra=extra or {}))
    return path


def load_real(path, backend, device="cpu") -> CausalWanModel:
    """Rebuild the converted model saved by :func:`save_real`, bound to ``backend``, on ``device``."""
    from safetensors.torch import load_file

    path = Path(path)
    for f in (WEIGHTS, META):
        if not (path / f).exists():
            raise FileNotFoundError(f"{path / f} does not exist: save a converted model with qarvd.deploy.save_real")
    info = json.loads((path / META).read_text())
    if info.get("format_version") != FORMAT_VERSION:
        raise ValueError(f"{path / META} has format_version {info.get('format_version')}; this code reads "
                         f"{FORMAT_VERSION}")
    with torch.device("meta"):
        model = CausalWanModel(WanConfig(**info["arch"])).to(getattr(torch, info["dtype"]))
    for name, layer in info["layers"].items():
        cls = Fp8Linear if layer["kind"] == "fp8" else RealQuantLinear
        set_module(model, name, cls(layer["meta"], None, backend))
    state = load_file(str(path / WEIGHTS), device=str(device))
    scales, means = state.pop(ATTN_SCALES, None), state.pop(KEY_MEANS, None)
    missing, unexpected = model.load_state_dict(state, strict=False, assign=True)
    if missing or unexpected:
        raise ValueError(f"{path / WEIGHTS} does not match the saved layout: missing {missing[:5]}, "
                         f"unexpected {unexpected[:5]}")
    cfg = model.cfg
    model._rope = rope_angles(cfg.head_dim, cfg.rope_max_positions, cfg.rope_theta)  # built on meta above
    set_backend_(model, backend)
    if scales is not None:  # accelerate_ with attention=cudnn_fp8 then attends in FP8 without recalibrating
        set_attention_fp8_scales_(model, scales)
    if means is not None:  # likewise attention=int8_sage
        set_attention_key_means_(model, means)
    return model.eval()
