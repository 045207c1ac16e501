"""The rows of the latency benchmark, made from config: a row is a kernel backend (a ``conf/kernel`` choice, composed
into the benchmark config as ``kernels.<name>`` and made with hydra.utils.instantiate) with its overrides, plus the
min-max weight format its linears are converted to; or another way of making the model (``BUILDERS``).

A new row is one ``row_specs`` entry in conf/bench/latency.yaml (a new backend first gets its line in that file's
defaults list); a new kind of model (torch.compile, an implementation outside this repository) is one function here
and its ``build`` name in BUILDERS.
"""
from __future__ import annotations

import copy
from dataclasses import dataclass, fields

import torch
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

from qarvd.deploy import accelerate_, convert_to_real
from qarvd.deploy.packing import minmax_spec
from qarvd.quant.select import select_linears

FASTEST = "fastest"  # a row's attention: the winner of the attention section ("auto" when it did not run)


@dataclass(frozen=True)
class Row:
    """One row_specs entry on top of row_defaults (conf/bench/latency.yaml documents each field)."""

    name: str
    build: str
    kernel: str | None
    attention: str
    graphs: bool
    set: dict
    w_bits: int
    outliers: int
    twin: str | None
    sizes: str | None
    bf16_baseline: bool


FIELDS = tuple(f.name for f in fields(Row) if f.name != "name")


def backend(cfg: DictConfig, kernel: str, **overrides):
    """The backend of the composed ``kernels.<kernel>`` node with ``overrides`` of its keys."""
    return instantiate(OmegaConf.merge(cfg.kernels[kernel], overrides))


def real_model(base, be, w_bits: int, outliers: int):
    """A converted copy of ``base`` on backend ``be``: min-max specs of every quantized linear (block linears get
    ``outliers`` columns), weights with zero points exactly when the backend deploys the artifact's weights."""
    model = copy.deepcopy(base)
    specs = {}
    for name in select_linears(model):
        lin = model.get_submodule(name)
        k = lin.in_features
        specs[name] = minmax_spec(lin.weight, lin.bias, w_bits=w_bits, act_range=(-6.0, 6.0),
                                  asym_w=be.weights == "artifact",
                                  n_outliers=outliers if name.startswith("blocks.") and k > 2 * outliers else 0)
    convert_to_real(model, specs, be)
    del specs
    return accelerate_(model, be)


def _kernel_model(row: Row, cfg: DictConfig, base, attention: str, device):
    """Convert (int and fp8 formats) and accelerate_ a copy of the base model with the row's backend."""
    be = backend(cfg, row.kernel, **row.set, attention=attention, graphs=row.graphs)
    if be.format == "bf16":
        return accelerate_(copy.deepcopy(base), be)
    outliers = min(row.outliers, 32) if base.cfg.dim <= 256 else row.outliers  # the tiny arch's layers are narrow
    return real_model(base, be, row.w_bits, outliers)


def _eager_model(row: Row, cfg: DictConfig, base, attention: str, device):
    """The bf16 model as built: the paper's baseline."""
    return base


def _torchao_int8_model(row: Row, cfg: DictConfig, base, attention: str, device):
    """torchao's dynamic int8 (Int8DynamicActivationInt8WeightConfig) on every linear we quantize, eager."""
    from torchao.quantization import Int8DynamicActivationInt8WeightConfig
    from torchao.quantization import quantize_ as ao_quantize_

    model = copy.deepcopy(base)
    names = set(select_linears(model))
    ao_quantize_(model, Int8DynamicActivationInt8WeightConfig(), filter_fn=lambda m, fqn: fqn in names)
    return model


BUILDERS = {"kernel": _kernel_model, "eager": _eager_model, "torchao_int8": _torchao_int8_model}


def row_specs(cfg: DictConfig) -> dict[str, Row]:
    """Every row_specs entry on row_defaults, checked before anything runs (errors name the key)."""
    defaults = OmegaConf.to_container(cfg.row_defaults, resolve=True)
    out = {}
    for name in cfg.row_specs:
        spec = OmegaConf.to_container(cfg.row_specs[name], resolve=True)
        unknown = set(spec) - set(FIELDS)
        if unknown:
            raise ValueError(f"row_specs.{name}: unknown keys {sorted(unknown)}; a row takes {FIELDS}")
        row = Row(name=name, **{**defaults, **spec, "set": {**defaults["set"], **spec.get("set", {})}})
        if row.build not in BUILDERS:
            raise ValueError(f"row_specs.{name}.build={row.build!r}; choose from {sorted(BUILDERS)}")
        if row.build == "kernel":
            if row.kernel not in cfg.kernels:
                raise ValueError(f"row_specs.{name}.kernel={row.kernel!r} is not composed: choose from "
                                 f"{sorted(cfg.kernels)} or add `- /kernel@kernels.{row.kernel}: {row.kernel}` to the "
                                 f"defaults of conf/bench/latency.yaml")
            bad = set(row.set) - set(cfg.kernels[row.kernel])
            if bad:
                raise ValueError(f"row_specs.{name}.set: {sorted(bad)} are not keys of kernels.{row.kernel}")
            if {"attention", "graphs"} & set(row.set):
                raise ValueError(f"row_specs.{name}.set: attention and graphs are keys of the row itself")
        elif row.kernel is not None or row.set or row.graphs:
            raise ValueError(f"row_specs.{name}: build={row.build} makes no kernel backend (kernel, set and graphs "
                             f"are for build=kernel rows; only rows built through accelerate_ replay CUDA graphs)")
        out[name] = row
    for name, row in out.items():
        if row.twin is not None and row.twin not in out:
            raise ValueError(f"row_specs.{name}.twin={row.twin!r} is not a row of row_specs")
    return out


def check_names(cfg: DictConfig, specs: dict[str, Row], key: str) -> None:
    """Every row named by list ``key`` of the config (rows, profile_rows, check_rows) is in row_specs."""
    unknown = [n for n in cfg[key] if n not in specs]
    if unknown:
        raise ValueError(f"{key}: unknown rows {unknown}; row_specs has {sorted(specs)}")


def build_row(row: Row, cfg: DictConfig, base, fastest: str, device: torch.device):
    """(model, attention) of a row; an eager model off CUDA runs PyTorch's own attention choice."""
    attention = fastest if row.attention == FASTEST else row.attention
    if row.build == "eager" and device.type != "cuda":
        attention = "auto"
    return BUILDERS[row.build](row, cfg, base, attention, device), attention
