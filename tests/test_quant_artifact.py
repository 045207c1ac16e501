"""The artifact: safetensors + versioned JSON, integer codes, bitwise-identical reload for every layer variant."""
from __future__ import annotations

import json

import pytest
import torch
from safetensors import safe_open

from qarvd.quant.api import QuantConfig, calibrate_activations_, harden_, quantize_, split_outliers
from qarvd.quant.artifact import CONFIG_FILE, TENSORS_FILE, ArtifactError, load_artifact, read_config, save_artifact
from qarvd.quant.capture import run_calibration
from qarvd.quant.linear import quant_layers
from qarvd.quant.lowrank import lowrank_factors
from qarvd.quant.smoothing import fold_into_norm
from quant_helpers import clone, outlier_cfg, prompts, tiny_pipeline


def test_reload_is_bitwise_identical_with_split_smoothed_folded_and_lowrank_layers(tmp_path):
    pipe, cfg = tiny_pipeline()
    fresh = clone(pipe)  # an FP model built the same way, for reloading
    ps = prompts(cfg, "eval", 2)
    quantize_(pipe.model, QuantConfig(w_bits=4, a_bits=6, symmetric=False))
    layers = quant_layers(pipe.model)
    split = split_outliers(layers["blocks.0.ffn.2"], outlier_cfg(tau=0.5, outlier_ratio=1.0, multiple=8))
    assert split.count > 0
    s = torch.rand(64) + 0.5
    fold_into_norm(pipe.model, "blocks.1.norm3", s)
    layers["blocks.1.cross_attn.q"].set_smoothing(s, folded_into="blocks.1.norm3")
    layers["blocks.0.self_attn.o"].set_smoothing(torch.rand(64) + 0.5)
    down, up = lowrank_factors(layers["blocks.1.ffn.0"].weight.detach().float(), 8)
    layers["blocks.1.ffn.0"].set_lowrank(down, up)
    for l in layers.values():
        l.init_weights()
    calibrate_activations_(pipe.model, lambda: run_calibration(pipe, ps[:1], [0], 8), bins=1024)
    harden_(pipe.model)
    before = pipe.generate_latents(ps, [5, 6])
    save_artifact(pipe.model, tmp_path, {"method": "test"})
    config = load_artifact(fresh.model, tmp_path)
    assert config["run"] == {"method": "test"} and config["version"] == 1
    after = fresh.generate_latents(ps, [5, 6])
    assert torch.equal(before, after)
    assert torch.equal(fresh.model.blocks[1].norm3.weight, pipe.model.blocks[1].norm3.weight)
    spec = json.loads((tmp_path / CONFIG_FILE).read_text())["layers"]
    assert spec["blocks.0.ffn.2"]["groups"] == 2 and spec["blocks.1.ffn.0"]["lowrank_rank"] == 8
    assert spec["blocks.1.cross_attn.q"]["folded_into"] == "blocks.1.norm3" and "time_embedding.0" not in spec
    with safe_open(str(tmp_path / TENSORS_FILE), framework="pt") as f:
        assert f.get_tensor("blocks.0.ffn.2.g0.w_int").dtype == torch.uint8
        assert f.get_tensor("blocks.1.ffn.0.lr_down").dtype == torch.bfloat16


def test_symmetric_codes_are_int8(tmp_path):
    pipe, _ = tiny_pipeline()
    quantize_(pipe.model, QuantConfig(w_bits=8, a_bits=8, symmetric=True))
    for l in quant_layers(pipe.model).values():
        l.groups[0].aq.set_range(torch.tensor(-1.0), torch.tensor(1.0))
    harden_(pipe.model)
    save_artifact(pipe.model, tmp_path)
    with safe_open(str(tmp_path / TENSORS_FILE), framework="pt") as f:
        codes = f.get_tensor("blocks.0.ffn.0.g0.w_int")
    assert codes.dtype == torch.int8 and int(codes.min()) >= -128


def test_unhardened_version_mismatch_and_wrong_model_fail_clearly(tmp_path):
    pipe, _ = tiny_pipeline()
    fresh = clone(pipe)
    quantize_(pipe.model, QuantConfig())
    with pytest.raises(ArtifactError, match="not hardened"):
        save_artifact(pipe.model, tmp_path)
    for l in quant_layers(pipe.model).values():
        l.groups[0].aq.set_range(torch.tensor(-1.0), torch.tensor(1.0))
    harden_(pipe.model)
    save_artifact(pipe.model, tmp_path)
    from qarvd.utils.io import save_safetensors_atomic
    from qarvd.models.checkpoint import read_state_dict

    cfg = read_config(tmp_path)
    save_safetensors_atomic(tmp_path / "old" / TENSORS_FILE, read_state_dict(tmp_path / TENSORS_FILE),
                            {"quant_config": {**cfg, "version": 99}})
    with pytest.raises(ArtifactError, match="version 99"):
        load_artifact(fresh.model, tmp_path / "old")
    other, _ = tiny_pipeline("model.arch.dim=32", "model.arch.ffn_dim=64")
    with pytest.raises(ArtifactError, match="does not match"):
        load_artifact(other.model, tmp_path)
    with pytest.raises(ArtifactError, match="no quantized artifact"):
        load_artifact(fresh.model, tmp_path / "nowhere")
