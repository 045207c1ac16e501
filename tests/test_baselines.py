"""The baselines as their originals define them, on fixed tensors: SmoothQuant smooths the norm-fed layers only,
SVDQuant's search (deepcompressor) keeps identity when smoothing cannot help and smooths q/k/v jointly, the low-rank
rank keeps rank 32's parameter share at other widths, and the as-published variants are their own configs."""
from __future__ import annotations

import pytest
import torch
from hydra.errors import InstantiationException
from omegaconf import OmegaConf

from qarvd.methods.base import Calibration
from qarvd.methods.svdquant import SearchQuantizers, search_smoothing
from qarvd.quant.api import QuantConfig, quantize_
from qarvd.quant.linear import quant_layers
from qarvd.quant.lowrank import lowrank_rank
from qarvd.quant.roles import block_index
from qarvd.quant.smoothing import smooth_scale, smoothing_candidates
from quant_helpers import calib_dict, prompts, recipe, tiny_cfg, tiny_pipeline

NORM_FED = ("self_attn.q", "self_attn.k", "self_attn.v", "cross_attn.q", "ffn.0")  # after norm1, norm3, norm2


def _calibration(pipe, cfg, tmp_path, absmax=None) -> Calibration:
    cal = Calibration(pipeline=pipe, w_bits=4, a_bits=8, symmetric=False, calib=calib_dict(cfg),
                      prompts=prompts(cfg, "calib", 1), seeds=[0], work_dir=tmp_path)
    cal._absmax = absmax
    return cal


def test_smoothquant_smooths_exactly_the_norm_fed_layers(tmp_path):
    pipe, cfg = tiny_pipeline()
    quantize_(pipe.model, QuantConfig(w_bits=4, a_bits=8, init_weights=False))
    layers = quant_layers(pipe.model)
    g = torch.Generator().manual_seed(0)
    absmax = {n: torch.rand(3, l.in_features, generator=g) + 0.5 for n, l in layers.items()}  # fixed statistics
    norm3 = pipe.model.blocks[1].norm3.weight.detach().clone()
    info = recipe("smoothquant").prepare(_calibration(pipe, cfg, tmp_path, absmax), layers)
    smoothed = {n for n, l in layers.items() if l.smooth is not None}
    assert smoothed == {f"blocks.{b}.{t}" for b in range(2) for t in NORM_FED} and info["smoothed_layers"] == 10
    for b in range(2):  # q/k/v read one input: one factor, from the max over the three weights
        q, k, v = (layers[f"blocks.{b}.self_attn.{x}"] for x in "qkv")
        assert torch.equal(q.smooth, k.smooth) and torch.equal(q.smooth, v.smooth)
        wmax = torch.cat([q.weight, k.weight, v.weight]).abs().amax(0)
        expected = (absmax[q.name].amax(0).sqrt() / wmax.clamp(min=1e-5).sqrt()).clamp(min=1e-5)
        assert torch.allclose(q.smooth, expected, rtol=1e-6)
        assert layers[f"blocks.{b}.cross_attn.q"].folded_into == f"blocks.{b}.norm3"  # the affine norm takes 1/s
        assert layers[f"blocks.{b}.ffn.0"].folded_into is None  # adaLN-modulated norm2: divided at run time
    assert torch.allclose(pipe.model.blocks[1].norm3.weight * layers["blocks.1.cross_attn.q"].smooth, norm3, rtol=1e-6)
    assert info["folded_into_norm"] == ["blocks.0.cross_attn.q", "blocks.1.cross_attn.q"]
    with pytest.raises(InstantiationException, match="smooth_roles"):
        recipe("smoothquant", smooth_roles=["attn_qkv", "ffn"])


def test_svdquant_candidates_are_deepcompressors_grid_with_identity_first():
    c = smoothing_candidates(20)
    assert len(c) == 1 + 19 + 19 and c[0] == (0.0, 0.0)
    assert c[1:20] == [(k / 20, 0.0) for k in range(1, 20)]
    assert c[20:] == pytest.approx([(k / 20, 1 - k / 20) for k in range(1, 20)])
    x, w = torch.tensor([4.0, 0.0, 9.0]), torch.tensor([1.0, 2.0, 0.0])
    assert torch.equal(smooth_scale(x, w, 0.0, 0.0), torch.ones(3))
    assert torch.allclose(smooth_scale(x, w, 0.5, 0.0), torch.tensor([2.0, 1.0, 3.0]))  # a zero becomes 1
    assert torch.equal(smooth_scale(x, w, 0.5, 0.5), torch.ones(3))  # 3 / 0 is not finite: no smoothing at all
    with pytest.raises(ValueError, match="grid"):
        smoothing_candidates(1)


def _search(x, w, w_bits, a_bits):
    quant = SearchQuantizers(w_bits, a_bits, False, (0.999, 0.9999, 0.99999), 2048)
    return search_smoothing(x, w, x.abs().amax(0), smoothing_candidates(20), quant, 1, torch.float32)


def test_svdquant_search_keeps_identity_when_smoothing_cannot_help():
    """Every activation channel spans [-1, 1] already: s = max|X|^a is 1 (the (a, 0) candidates change nothing),
    and s = max|X|^a / max|W|^(1-a) only moves the weights' column spread into the 6-bit activations."""
    g = torch.Generator().manual_seed(0)
    x = torch.rand(512, 32, generator=g) * 2 - 1
    x[0], x[1] = 1.0, -1.0
    w = torch.randn(48, 32, generator=g)
    w = w / w.abs().amax(0) * torch.tensor([10.0] * 4 + [3.0] * 28)
    pair, s, errors = _search(x, w, 8, 6)
    assert pair == (0.0, 0.0) and torch.equal(s, torch.ones(32))
    assert errors[1:20] == [errors[0]] * 19  # (a, 0): exact no-ops, the tie keeps identity
    assert min(errors[20:]) > 1.05 * errors[0]  # (a, 1 - a): all worse


def test_svdquant_search_smooths_activation_outlier_channels_by_the_quantized_output_error():
    g = torch.Generator().manual_seed(1)
    x = torch.randn(512, 32, generator=g)
    x[:, :2] *= 50  # two outlier channels dominate the per-tensor activation range
    w = torch.randn(48, 32, generator=g)
    pair, s, errors = _search(x, w, 8, 8)
    assert pair != (0.0, 0.0) and min(errors) < 0.1 * errors[0]
    assert float(s[:2].min()) > float(s[2:].max())  # the outlier channels are divided the most
    # an objective without activation quantization picks another factor, worse once activations are quantized
    quant = SearchQuantizers(8, 8, False, (0.999, 0.9999, 0.99999), 2048)
    quant.act = lambda xs: xs
    weights_only, _, _ = search_smoothing(x, w, x.abs().amax(0), smoothing_candidates(20), quant, 1, torch.float32)
    assert weights_only != pair and errors[smoothing_candidates(20).index(weights_only)] > 1.2 * min(errors)


def test_svdquant_smooths_qkv_jointly_with_one_shared_branch(tmp_path):
    pipe, cfg = tiny_pipeline()
    quantize_(pipe.model, QuantConfig(w_bits=4, a_bits=8, init_weights=False))
    layers = quant_layers(pipe.model)
    svd = recipe("svdquant", rank=2, refine_iters=2, search_calls=2, search_tokens=64, strength_grid=4)
    info = svd.prepare(_calibration(pipe, cfg, tmp_path), layers)
    for b in range(2):
        q, k, v = (layers[f"blocks.{b}.self_attn.{x}"] for x in "qkv")
        assert (q.smooth is None and k.smooth is None and v.smooth is None) or (
            torch.equal(q.smooth, k.smooth) and torch.equal(q.smooth, v.smooth))
        assert torch.equal(q.lr_down, k.lr_down) and torch.equal(q.lr_down, v.lr_down) and q.lr_down.shape == (2, 64)
        assert q.lr_up.shape == (64, 2) and not torch.equal(q.lr_up, k.lr_up)
        ck, cv = layers[f"blocks.{b}.cross_attn.k"], layers[f"blocks.{b}.cross_attn.v"]
        assert torch.equal(ck.lr_down, cv.lr_down)
    assert all(l.lr_down is None and l.smooth is None for n, l in layers.items() if block_index(n) is None)
    assert info["lowrank_layers"] == 2 * 10 and len(info["groups"]) == 2 * 7  # q/k/v and cross k/v: one group each


def test_rank_rule_keeps_rank_32s_parameter_share():
    reference = recipe("svdquant").rank_reference
    assert list(reference) == [1536, 32] and recipe("svdquant").rank is None  # the rule is the default
    for shape in [(1536, 1536), (1536, 8960), (8960, 1536), (4096, 1536), (1536, 3 * 1536)]:
        assert lowrank_rank(*shape, reference) == 32  # every Wan 1.3B linear (and the stacked q/k/v)

    def share(i, o, r):
        return r * (i + o) / (i * o)

    for i, o in [(128, 128), (128, 512), (512, 128), (128, 3 * 128)]:  # the embedded model (width 128)
        r = lowrank_rank(i, o, reference)
        assert r == 3
        wan = share(i * 12, o * 12, 32)  # the same layer at width 1536
        assert abs(share(i, o, r) / wan - 1) <= 0.5 / (32 * 128 / 1536)  # kept up to rounding the rank
        assert share(i, o, 32) > 10 * wan  # rank 32 itself: an order of magnitude more (a third to half of the layer)
    assert lowrank_rank(64, 128, reference) == 1 and lowrank_rank(8, 8, reference) == 1
    assert recipe("svdquant", rank=32).branch_rank(torch.zeros(512, 128)) == 32  # a fixed rank wins
    with pytest.raises(ValueError, match="reference"):
        lowrank_rank(128, 128, [0, 32])


@pytest.mark.parametrize("method,recon,granularity", [("smoothquant", True, "layer"), ("svdquant", True, "layer"),
                                                      ("ptq4dit", True, "layer"), ("smoothquant_published", False, "layer"),
                                                      ("svdquant_published", False, "layer"), ("ptq4dit_published", True, "block")])
def test_protocols_are_configs_with_their_own_name_and_tag(method, recon, granularity):
    cfg = tiny_cfg(f"method={method}")
    r = recipe(method)
    published = method.endswith("_published")
    assert r.name == method and r.protocol == ("as_published" if published else "paper")
    assert r.recon == recon and r.recon_granularity == granularity
    assert OmegaConf.to_container(cfg.eval.tags, resolve=True)["protocol"] == r.protocol
    base = recipe(method.replace("_published", ""))
    same = {k for k in ("smooth_roles", "csb_roles", "svd_roles", "rank", "strength_grid") if hasattr(base, k)}
    assert all(getattr(r, k) == getattr(base, k) for k in same)  # the algorithm is the same; only the protocol differs
    assert tiny_cfg(f"method={method}", "calib.granularity=block").method.recon_granularity == "block"
    with pytest.raises(InstantiationException, match="protocol"):
        recipe(method, protocol="original")
