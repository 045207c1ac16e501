"""The domain feature network: shapes, strict bundle loading, and the shipped network reads real captions."""
from __future__ import annotations

import pytest
import torch

from qarvd.embedded.domain_eval import accuracy, real_set
from qarvd.embedded.featnet import (FeatNetBackbone, FeatNetConfig, VideoFeatureNet, caption_matches, featnet_metadata,
                                  load_featnet)
from qarvd.utils.errors import MissingWeightsError
from qarvd.utils.hydra_resolvers import ASSET_DIR
from qarvd.utils.io import save_safetensors_atomic

SHIPPED = ASSET_DIR / "featnet.safetensors"


def _small() -> VideoFeatureNet:
    torch.manual_seed(0)
    return VideoFeatureNet(FeatNetConfig(widths=(8, 8, 16, 16), feature_dim=12)).eval()


def test_features_and_heads_have_the_configured_sizes():
    net = _small()
    video = torch.rand(3, 9, 3, 16, 16) * 2 - 1
    assert net.features(video).shape == (3, 12)
    logits = net(video)
    assert {k: v.shape[-1] for k, v in logits.items()} == {"color": 6, "shape": 3, "direction": 4, "speed": 2}
    with pytest.raises(ValueError, match="expected videos"):
        net.features(video.transpose(1, 2))


def test_features_do_not_depend_on_the_batch():
    net = _small()
    video = torch.rand(4, 9, 3, 16, 16) * 2 - 1
    torch.testing.assert_close(net.features(video)[1:2], net.features(video[1:2]), atol=1e-5, rtol=1e-5)


def test_bundle_round_trip_is_strict(tmp_path):
    net = _small()
    path = tmp_path / "f.safetensors"
    save_safetensors_atomic(path, net.state_dict(), {"featnet": featnet_metadata(net)})
    back = load_featnet(path)
    video = torch.rand(2, 9, 3, 16, 16) * 2 - 1
    assert torch.equal(back.features(video), net.features(video))
    sd = dict(net.state_dict())
    sd.pop("proj.bias")
    save_safetensors_atomic(tmp_path / "bad.safetensors", sd, {"featnet": featnet_metadata(net)})
    with pytest.raises(Exception, match="proj.bias"):
        load_featnet(tmp_path / "bad.safetensors")
    with pytest.raises(MissingWeightsError, match="featnet"):
        load_featnet(tmp_path / "missing.safetensors")


def test_caption_matches_counts_each_attribute():
    pred = {"color": torch.tensor([0, 1]), "shape": torch.tensor([0, 0]), "direction": torch.tensor([1, 1]),
            "speed": torch.tensor([0, 1])}
    hits = caption_matches(pred, ["a red square moving right slowly", "a red square moving right slowly"])
    assert hits["all"].tolist() == [True, False] and hits["color"].tolist() == [True, False]
    assert hits["speed"].tolist() == [True, False] and hits["direction"].all()


def test_shipped_featnet_reads_held_out_captions():
    backbone = FeatNetBackbone(SHIPPED)
    videos, captions = real_set("test", 96, 21, 32)
    acc = accuracy(backbone, videos, captions)
    assert acc["all"] >= 0.95, acc
