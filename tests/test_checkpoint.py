"""Strict loading of the public checkpoint layouts, and errors that name what is wrong."""
from __future__ import annotations

import pytest
import torch

from qarvd.models.checkpoint import CheckpointError, load_generator
from qarvd.models.wan import CausalWanModel
from qarvd.utils.errors import MissingWeightsError

from conftest import TINY_ARCH, compose


def _fresh(cfg):
    torch.manual_seed(99)
    return CausalWanModel(cfg).eval()


def _outputs(model):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(1, 4, 2, 4, 4, generator=g)
    return model(x, torch.full((1, 2), 700.0), torch.randn(1, 4, 8, generator=g))


@pytest.mark.parametrize(
    "key,prefix,strip",
    [
        ("generator_ema", "model.", ["model."]),  # self-forcing self_forcing_dmd.pt
        ("generator", "model._fsdp_wrapped_module.", ["model._fsdp_wrapped_module.", "model."]),  # causal-forcing FSDP
        ("generator", "model.", ["model._fsdp_wrapped_module.", "model."]),  # causal-forcing plain
    ],
)
def test_public_layouts_load_strictly_and_reproduce_outputs(tmp_path, tiny_cfg, tiny_model, key, prefix, strip):
    path = tmp_path / "ckpt.pt"
    torch.save({key: {prefix + k: v for k, v in tiny_model.state_dict().items()}, "critic": {}}, path)
    loaded = _fresh(tiny_cfg)
    assert not torch.equal(_outputs(loaded), _outputs(tiny_model))
    load_generator(loaded, path, key, strip)
    assert torch.equal(_outputs(loaded), _outputs(tiny_model))


def test_wan_base_safetensors_layout(tmp_path, tiny_cfg, tiny_model):
    from safetensors.torch import save_file

    path = tmp_path / "diffusion_pytorch_model.safetensors"
    save_file({k: v.contiguous() for k, v in tiny_model.state_dict().items()}, str(path))
    loaded = _fresh(tiny_cfg)
    load_generator(loaded, path, None, [])
    assert torch.equal(_outputs(loaded), _outputs(tiny_model))


@pytest.mark.parametrize("damage,needle", [
    ("missing", "missing key 'blocks.1.ffn.2.bias'"),
    ("extra", "unexpected key 'blocks.0.extra.weight'"),
    ("shape", "key 'blocks.0.self_attn.q.weight' has shape (31, 32)"),
])
def test_bad_state_dict_names_the_key(tmp_path, tiny_cfg, tiny_model, damage, needle):
    sd = {f"model.{k}": v for k, v in tiny_model.state_dict().items()}
    if damage == "missing":
        del sd["model.blocks.1.ffn.2.bias"]
    elif damage == "extra":
        sd["model.blocks.0.extra.weight"] = torch.zeros(2)
    else:
        sd["model.blocks.0.self_attn.q.weight"] = torch.zeros(31, 32)
    path = tmp_path / "bad.pt"
    torch.save({"generator_ema": sd}, path)
    with pytest.raises(CheckpointError, match=needle.replace("(", r"\(").replace(")", r"\)")):
        load_generator(_fresh(tiny_cfg), path, "generator_ema", ["model."])


def test_missing_entry_and_corrupt_file(tmp_path, tiny_cfg, tiny_model):
    path = tmp_path / "ckpt.pt"
    torch.save({"generator": tiny_model.state_dict()}, path)
    with pytest.raises(CheckpointError, match="no entry 'generator_ema'.*generator"):
        load_generator(_fresh(tiny_cfg), path, "generator_ema", ["model."])
    corrupt = tmp_path / "corrupt.pt"
    corrupt.write_bytes(path.read_bytes()[:100])
    with pytest.raises(CheckpointError, match="cannot read checkpoint"):
        load_generator(_fresh(tiny_cfg), corrupt, "generator", [])


def test_pickled_module_is_refused(tmp_path, tiny_model):
    path = tmp_path / "module.pt"
    torch.save({"generator_ema": tiny_model}, path)  # a whole pickled module: must never be unpickled
    with pytest.raises(CheckpointError, match="cannot read"):
        load_generator(tiny_model, path, "generator_ema", [])


def test_missing_checkpoint_names_config_key_and_file(tmp_path):
    from qarvd.models.pipeline import build_pipeline

    missing = tmp_path / "nope" / "self_forcing_dmd.pt"
    cfg = compose(["model=self_forcing", f"model.checkpoint.path={missing}"] +
                  [f"model.arch.{k}={list(v) if isinstance(v, tuple) else v}" for k, v in TINY_ARCH.items()])
    with pytest.raises(MissingWeightsError) as err:
        build_pipeline(cfg.model)
    msg = str(err.value)
    assert "model.checkpoint.path" in msg and str(missing) in msg and "gdhe17/Self-Forcing" in msg
