"""quantize_: layer selection with the bf16 keep-list, filter_fn, handler registry, roles."""
from __future__ import annotations

from dataclasses import dataclass

import pytest
from torch import nn

from qarvd.quant.api import QuantConfig, quantize_, register_quantize_handler
from qarvd.quant.linear import quant_layers
from qarvd.quant.roles import input_group, role_of
from quant_helpers import outlier_cfg, tiny_pipeline


def test_default_selection_is_the_released_one():
    pipe, _ = tiny_pipeline()
    quantize_(pipe.model, QuantConfig(w_bits=4, a_bits=8))
    names = set(quant_layers(pipe.model))
    n_blocks = len(pipe.model.blocks)
    assert len(names) == 10 * n_blocks + 2 and {"text_embedding.0", "text_embedding.2"} <= names
    kept = {n for n, m in pipe.model.named_modules() if type(m) is nn.Linear}
    assert kept == {"time_embedding.0", "time_embedding.2", "time_projection.1", "head.head"}
    assert all(l.groups[0].wq.initialized for l in quant_layers(pipe.model).values())


def test_filter_fn_and_dual_scale_config():
    pipe, _ = tiny_pipeline()
    quantize_(pipe.model, QuantConfig(dual_scale=outlier_cfg(tau=0.5, outlier_ratio=1.0, multiple=8)),
              filter_fn=lambda m, n: n.startswith("blocks.0.") or n == "text_embedding.0")
    layers = quant_layers(pipe.model)
    assert set(layers) == {n for n in layers if n.startswith("blocks.0.")} | {"text_embedding.0"}
    assert len(layers["text_embedding.0"].groups) == 1  # the split is for block linears only
    assert any(len(l.groups) == 2 for n, l in layers.items() if n.startswith("blocks.0."))


def test_handler_registry_dispatches_on_config_type():
    @dataclass
    class MarkConfig:
        tag: str = "x"

    @register_quantize_handler(MarkConfig)
    def _mark(linear, config, name):
        linear.tag = config.tag + name
        return linear

    model = nn.Sequential(nn.Linear(2, 2))
    quantize_(model, MarkConfig("t"), filter_fn=lambda m, n: True)
    assert model[0].tag == "t0"
    with pytest.raises(TypeError, match="no quantize handler"):
        quantize_(model, object())


def test_config_validation():
    with pytest.raises(ValueError, match="2 to 8"):
        QuantConfig(w_bits=9)
    with pytest.raises(ValueError, match="percentiles"):
        QuantConfig(percentiles=(0.2,))


def test_roles_and_input_groups():
    assert role_of("blocks.3.self_attn.k") == "attn_qkv" and role_of("blocks.3.cross_attn.o") == "attn_out"
    assert role_of("blocks.0.cross_attn.v") == "cross_kv" and role_of("blocks.0.ffn.2") == "ffn_down"
    assert role_of("text_embedding.2") == "embed" and role_of("head.head") == "head"
    assert input_group("blocks.2.self_attn.v") == "blocks.2.self_attn.qkv"
    assert input_group("blocks.2.cross_attn.k") == "blocks.2.cross_attn.kv"
    assert input_group("blocks.2.cross_attn.q") == "blocks.2.cross_attn.q"
    with pytest.raises(KeyError, match="no quantization role"):
        role_of("encoder.layer.0")
