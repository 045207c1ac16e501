"""The quantized artifact: safetensors tensors + a versioned JSON quant config. Never a pickled module.

Per quantized layer ``<name>``: for each column group ``g<i>`` the integer weight codes (uint8 asymmetric / int8
symmetric), per-output-channel weight scale and zero point, the per-tensor activation scale and zero point and,
for split layers, the column indices; plus the layer's smoothing vector, 16-bit low-rank factors and bias. The JSON
config describes each layer (bits, groups, folding, rank) and the run (method, bits, model). Loading rebuilds the
QuantLinear modules inside a freshly built FP model of the same architecture; the forward of a hardened layer
reads only these tensors, so a reloaded artifact reproduces the calibrated model's outputs bit for bit.
"""
from __future__ import annotations

from pathlib import Path
from typing import Optional

import torch
from torch import nn

from qarvd.quant.linear import QuantLinear, quant_layers
from qarvd.quant.quantizer import qrange
from qarvd.quant.roles import try_role
from qarvd.quant.select import set_module
from qarvd.utils.io import atomic_write_json, save_safetensors_atomic

ARTIFACT_VERSION = 1
TENSORS_FILE = "quant_artifact.safetensors"
CONFIG_FILE = "quant_config.json"


class ArtifactError(RuntimeError):
    """An artifact that cannot be loaded into the given model (version, architecture, missing tensors)."""


def _code_dtype(symmetric: bool) -> torch.dtype:
    return torch.int8 if symmetric else torch.uint8


def layer_state(layer: QuantLinear) -> dict[str, torch.Tensor]:
    """The tensors of one hardened layer (local names)."""
    if not layer.hardened:
        raise ArtifactError(f"layer '{layer.name}' is not hardened: call harden() before saving")
    out: dict[str, torch.Tensor] = {}
    for i, g in enumerate(layer.groups):
        out[f"g{i}.w_int"] = g.w_int.to(_code_dtype(layer.symmetric))
        out[f"g{i}.w_scale"] = g.wq.scale.detach().float()
        out[f"g{i}.w_zero"] = g.wq.zero_point.float()
        out[f"g{i}.a_scale"] = g.aq.scale.detach().float().reshape(1)
        out[f"g{i}.a_zero"] = g.aq.zero_point.float().reshape(1)
        if g.idx is not None:
            out[f"g{i}.idx"] = g.idx
    for key in ("smooth", "lr_down", "lr_up"):
        if getattr(layer, key) is not None:
            out[key] = getattr(layer, key)
    if layer.bias is not None:
        out["bias"] = layer.bias.detach()
    return out


@torch.no_grad()
def load_layer_state(layer: QuantLinear, t: dict[str, torch.Tensor]) -> None:
    """Set the quantization parameters of a layer whose structure (groups) already matches ``t``."""
    for i, g in enumerate(layer.groups):
        try:
            g.wq.scale.data = t[f"g{i}.w_scale"].to(g.wq.scale.device).reshape(g.wq.scale.shape).clone()
            g.wq.zero_point = t[f"g{i}.w_zero"].to(g.wq.scale.device).reshape(g.wq.zero_point.shape).clone()
            g.aq.scale.data = t[f"g{i}.a_scale"].to(g.aq.scale.device).reshape(()).clone()
            g.aq.zero_point = t[f"g{i}.a_zero"].to(g.aq.scale.device).reshape(()).clone()
            g.set_codes(t[f"g{i}.w_int"].to(g.wq.scale.device))
        except KeyError as e:
            raise ArtifactError(f"layer '{layer.name}': missing tensor {e} in the artifact") from e
        g.wq.initialized = g.aq.initialized = True
        g.rounding = None


def layer_spec(layer: QuantLinear) -> dict:
    return {
        "role": try_role(layer.name), "in_features": layer.in_features, "out_features": layer.out_features,
        "w_bits": layer.w_bits, "a_bits": layer.a_bits, "symmetric": layer.symmetric, "groups": len(layer.groups),
        "folded_into": layer.folded_into, "lowrank_rank": None if layer.lr_down is None else int(layer.lr_down.shape[0]),
        "lowrank_dtype": None if layer.lr_down is None else str(layer.lr_down.dtype).replace("torch.", ""),
        "bias": layer.bias is not None,
    }


def save_artifact(model: nn.Module, folder: str | Path, run_info: Optional[dict] = None) -> Path:
    """Write ``quant_artifact.safetensors`` and ``quant_config.json`` into ``folder`` (atomically); returns the folder."""
    folder = Path(folder)
    layers = quant_layers(model)
    if not layers:
        raise ArtifactError("the model has no QuantLinear layers to save")
    tensors: dict[str, torch.Tensor] = {}
    specs = {}
    for name, layer in layers.items():
        specs[name] = layer_spec(layer)
        tensors.update({f"{name}.{k}": v for k, v in layer_state(layer).items()})
    config = {"version": ARTIFACT_VERSION, "format": "qarvd-fakequant", "layers": specs, "run": run_info or {}}
    save_safetensors_atomic(folder / TENSORS_FILE, tensors, {"quant_config": config})
    atomic_write_json(folder / CONFIG_FILE, config)
    return folder


def read_tensors_with_meta(path: str | Path) -> tuple[dict[str, torch.Tensor], dict]:
    from qarvd.models.checkpoint import read_metadata, read_state_dict

    return read_state_dict(path), read_metadata(path)


def read_config(folder: str | Path) -> dict:
    folder = Path(folder)
    path = folder / TENSORS_FILE if folder.is_dir() else folder
    if not path.exists():
        raise ArtifactError(f"no quantized artifact at '{path}' (expected {TENSORS_FILE} written by train_quant.py)")
    from qarvd.models.checkpoint import read_metadata

    config = read_metadata(path).get("quant_config")
    if not isinstance(config, dict):
        raise ArtifactError(f"'{path}' has no quant_config metadata: not a qarvd artifact")
    if config.get("version") != ARTIFACT_VERSION:
        raise ArtifactError(f"artifact '{path}' has version {config.get('version')!r}; this qarvd reads version "
                            f"{ARTIFACT_VERSION}. Re-run calibration with this version.")
    return config


def validate_artifact(config: dict, tensors: dict[str, torch.Tensor], source: str | Path) -> None:
    """Refuse an artifact whose numbers cannot be what its metadata says: every layer's bits equal the run's bits
    (and the run's name is derived from them), the integer codes lie in the range of those bits, and every
    quantizer scale is finite and positive, every zero point finite. A hand-edited or corrupted artifact would
    otherwise load and generate garbage (an all-black video) that is scored as a result."""
    from qarvd.utils.hydra_resolvers import bits_name

    run = config.get("run", {})
    bits_cfg = run.get("bits_cfg") or {}
    if bits_cfg:
        derived = bits_name(bits_cfg.get("w_bits"), bits_cfg.get("a_bits"), bits_cfg.get("symmetric"))
        if run.get("bits") != derived:
            raise ArtifactError(f"artifact '{source}': run bits {run.get('bits')!r} do not match its bit widths "
                                f"{bits_cfg} (which name {derived!r})")
    for name, spec in config["layers"].items():
        for key in ("w_bits", "a_bits", "symmetric"):
            if bits_cfg and spec[key] != bits_cfg.get(key):
                raise ArtifactError(f"artifact '{source}': layer '{name}' has {key}={spec[key]!r} but the run's bits "
                                    f"say {bits_cfg.get(key)!r}")
        qmin, qmax = qrange(int(spec["w_bits"]), bool(spec["symmetric"]))
        for i in range(int(spec["groups"])):
            codes = tensors.get(f"{name}.g{i}.w_int")
            if codes is None:
                raise ArtifactError(f"artifact '{source}': layer '{name}' lacks tensor g{i}.w_int")
            lo, hi = int(codes.min()), int(codes.max())
            if lo < qmin or hi > qmax:
                raise ArtifactError(f"artifact '{source}': layer '{name}' group {i} has weight codes in [{lo}, {hi}], "
                                    f"outside the {spec['w_bits']}-bit range [{qmin}, {qmax}]")
            for key in ("w_scale", "a_scale", "w_zero", "a_zero"):
                t = tensors.get(f"{name}.g{i}.{key}")
                if t is None:
                    raise ArtifactError(f"artifact '{source}': layer '{name}' lacks tensor g{i}.{key}")
                if not bool(torch.isfinite(t).all()) or (key.endswith("scale") and not bool((t > 0).all())):
                    raise ArtifactError(f"artifact '{source}': layer '{name}' group {i} has a {'non-positive or ' if key.endswith('scale') else ''}"
                                        f"non-finite {key} (a NaN/Inf or zero step cannot come from calibration)")


@torch.no_grad()
def load_artifact(model: nn.Module, folder: str | Path) -> dict:
    """Swap the artifact's QuantLinear layers into ``model`` (an FP model of the same architecture), in place.

    Returns the artifact's JSON config.
    """
    from qarvd.quant.smoothing import fold_into_norm

    folder = Path(folder)
    config = read_config(folder)
    tensors, _ = read_tensors_with_meta(folder / TENSORS_FILE if folder.is_dir() else folder)
    validate_artifact(config, tensors, folder)
    for name, spec in config["layers"].items():
        try:
            linear = model.get_submodule(name)
        except AttributeError as e:
            raise ArtifactError(f"the artifact quantizes '{name}', which this model does not have") from e
        if not isinstance(linear, nn.Linear) or (linear.in_features, linear.out_features) != (
                spec["in_features"], spec["out_features"]):
            raise ArtifactError(f"layer '{name}' of the model does not match the artifact "
                                f"({spec['in_features']}->{spec['out_features']}): wrong model config?")
        t = {k[len(name) + 1:]: v for k, v in tensors.items() if k.startswith(name + ".")}
        layer = QuantLinear(linear, spec["w_bits"], spec["a_bits"], spec["symmetric"], name=name)
        if spec["bias"]:
            layer.bias = nn.Parameter(t["bias"].to(linear.weight.device), requires_grad=False)
        if spec["groups"] > 1:
            layer.set_groups([t[f"g{i}.idx"] for i in range(spec["groups"])])
        if "smooth" in t:
            layer.set_smoothing(t["smooth"], spec["folded_into"])
            if spec["folded_into"]:
                fold_into_norm(model, spec["folded_into"], t["smooth"])
        if spec["lowrank_rank"]:
            layer.set_lowrank(t["lr_down"], t["lr_up"])
        load_layer_state(layer, t)
        set_module(model, name, layer)
    return config
