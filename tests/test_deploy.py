"""Deployment path on the CPU: fake-quant layers -> real low-bit modules -> fused rollout, save/load, configs.

Stated per-layer bound (float32 activations): a real module's output matches its fake-quantized layer to a
relative Frobenius error of 1e-5 (exact integer GEMM; only float32 rounding of scales and the rare activation code
that lands on the other side of a rounding tie differ). The dual-scale ``int_ratio`` variant re-quantizes the
outlier weights and is bounded separately (its quality effect, measured here on real fake-quant layers).
"""
from __future__ import annotations

import copy
import os

os.environ["TRITON_INTERPRET"] = "1"  # the triton_int8 backend runs in Triton's interpreter on the CPU

import pytest  # noqa: E402
import torch  # noqa: E402

from qarvd.deploy.backends import Bf16Backend, TorchRefBackend, TritonInt8Backend  # noqa: E402
from qarvd.deploy import accelerate_, convert_to_real, load_real, real_layers, save_real  # noqa: E402
from qarvd.deploy.from_quant import real_specs  # noqa: E402
from qarvd.models.rollout import RolloutConfig, rollout  # noqa: E402
from qarvd.models.wan import CausalWanModel, WanConfig  # noqa: E402
from qarvd.quant.api import QuantConfig, calibrate_activations_, harden_, quantize_  # noqa: E402
from quant_helpers import outlier_cfg

LAYER_BOUND = 1e-5  # fp32 activations, exact dual-scale and single-scale layers
ARCH = dict(dim=128, ffn_dim=256, num_heads=2, num_layers=2, freq_dim=16, text_dim=16, text_len=4, in_dim=4,
            out_dim=4, patch_size=(1, 2, 2))
RC = RolloutConfig(num_frames=4, frames_per_chunk=2, denoising_steps=[1000])
SHAPE = (4, 8, 8)


def _mse(a, b) -> float:
    return float((a - b).pow(2).mean())


@pytest.fixture(scope="module")
def quantized():
    """A tiny fp32 CausalWan, its W8A8 fake-quant copy (dual scale on every block linear), FP latents."""
    torch.manual_seed(0)
    fp = CausalWanModel(WanConfig(**ARCH)).eval()
    ctx = torch.randn(1, 4, 16)
    q = copy.deepcopy(fp)
    quantize_(q, QuantConfig(w_bits=8, a_bits=8, dual_scale=outlier_cfg(tau=1.0, outlier_ratio=1.0)))
    calibrate_activations_(q, lambda: rollout(q, ctx, [0], SHAPE, RC))
    harden_(q)
    return fp, q, ctx, rollout(fp, ctx, [0], SHAPE, RC)


def _layer_inputs(model, ctx):
    """Capture every quantized layer's input during one cached forward."""
    from qarvd.quant.linear import quant_layers

    seen = {}
    hooks = [m.register_forward_pre_hook(lambda mod, a, n=n: seen.setdefault(n, a[0].detach().clone()))
             for n, m in quant_layers(model).items()]
    x = torch.randn(1, 4, 2, 8, 8)
    with torch.no_grad():
        model(x, torch.full((1, 2), 700.0), ctx, cache=model.new_cache(1, 4, 8, 8))
    for h in hooks:
        h.remove()
    return seen


@pytest.mark.parametrize("backend", [TorchRefBackend(weights="artifact"), TritonInt8Backend(weights="artifact")],
                         ids=["torch_ref", "triton_int8"])
def test_every_real_layer_matches_its_fake_quant_layer(quantized, backend):
    _, q, ctx, _ = quantized
    inputs = _layer_inputs(q, ctx)
    real = convert_to_real(copy.deepcopy(q), real_specs(q), backend)
    assert set(real_layers(real)) == set(inputs) and len(inputs) == 22
    for name, x in inputs.items():
        fake = q.get_submodule(name)(x)
        y = real.get_submodule(name)(x)
        err = float((y - fake).detach().norm() / fake.detach().norm())
        assert err < LAYER_BOUND, (name, err)
    assert sum(len(q.get_submodule(n).groups) == 2 for n in inputs) >= 10  # dual scale really exercised


def test_int_ratio_variant_error_is_bounded_and_reported(quantized):
    _, q, ctx, _ = quantized
    inputs = _layer_inputs(q, ctx)
    real = convert_to_real(copy.deepcopy(q), real_specs(q), TorchRefBackend(dual_mode="int_ratio", weights="artifact"))
    errs = {n: float((real.get_submodule(n)(x) - q.get_submodule(n)(x)).norm() / q.get_submodule(n)(x).norm())
            for n, x in inputs.items()}
    dual = [e for n, e in errs.items() if q.get_submodule(n).groups.__len__() == 2]
    single = [e for n, e in errs.items() if q.get_submodule(n).groups.__len__() == 1]
    assert max(single) < LAYER_BOUND
    assert 0 < max(dual) < 0.05  # the outlier re-quantization: measurable, small at 8 bits


def test_symmetric_deployment_drops_zero_points_and_row_sums(quantized):
    """weights=symmetric: no stored weight zero points, no row sums, one extra 8-bit weight rounding per layer."""
    _, q, ctx, _ = quantized
    inputs = _layer_inputs(q, ctx)
    asym = convert_to_real(copy.deepcopy(q), real_specs(q), TorchRefBackend(weights="artifact"))
    sym = convert_to_real(copy.deepcopy(q), real_specs(q), TorchRefBackend(weights="symmetric"))
    assert any(m.group().has_wzp for m in real_layers(asym).values())
    assert not any(m.group().has_wzp or "w_zero" in dict(m.named_buffers()) for m in real_layers(sym).values())
    for name, x in inputs.items():
        fake = q.get_submodule(name)(x)
        err = float((sym.get_submodule(name)(x) - fake).detach().norm() / fake.detach().norm())
        assert 0 < err < 5e-3, (name, err)  # the weight re-rounding: measurable, far below the 8-bit activation error


@pytest.mark.parametrize("weights", ["artifact", "symmetric"])
def test_real_rollout_tracks_the_fake_quant_rollout(quantized, weights):
    """The done-criterion in miniature: latent MSE to FP of the real rollout within 5% of the fake-quant one."""
    fp, q, ctx, ref = quantized
    fake = rollout(q, ctx, [0], SHAPE, RC)
    be = TorchRefBackend(weights=weights)
    real = accelerate_(convert_to_real(copy.deepcopy(q), real_specs(q), be), be)
    got = rollout(real, ctx, [0], SHAPE, RC)
    if weights == "artifact":  # the same arithmetic: within 5%, and close to the fake-quant latents themselves
        assert abs(_mse(got, ref) - _mse(fake, ref)) <= 0.05 * _mse(fake, ref)
        assert _mse(got, fake) < 0.05 * _mse(fake, ref)
    else:  # one more weight rounding: +13% MSE to FP on this random-weight toy, a different but as-good quantization
        # (the embedded model's figure: scripts/deploy_quality.py, kernels/NOTES.md)
        assert abs(_mse(got, ref) - _mse(fake, ref)) <= 0.2 * _mse(fake, ref)


def test_fused_triton_forward_matches_reference_backend(quantized):
    _, q, ctx, _ = quantized
    x, t = torch.randn(1, 4, 2, 8, 8), torch.full((1, 2), 900.0)

    def fwd(model):
        with torch.no_grad():
            return model(x, t, ctx, cache=model.new_cache(1, 4, 8, 8))

    real = convert_to_real(copy.deepcopy(q), real_specs(q), TritonInt8Backend())
    module_path = fwd(real)
    fused = fwd(accelerate_(real, TritonInt8Backend()))
    ref = fwd(accelerate_(real, TorchRefBackend()))
    assert float((fused - ref).norm() / ref.norm()) < 1e-4
    assert float((fused - module_path).norm() / ref.norm()) < 1e-4


def test_bf16_fused_glue_keeps_the_eager_numbers(quantized):
    fp, _, ctx, _ = quantized
    x, t = torch.randn(1, 4, 2, 8, 8), torch.full((1, 2), 900.0)
    with torch.no_grad():
        ref = fp(x, t, ctx, cache=fp.new_cache(1, 4, 8, 8))
        fast = accelerate_(copy.deepcopy(fp), Bf16Backend())
        got = fast(x, t, ctx, cache=fast.new_cache(1, 4, 8, 8))
    assert float((got - ref).norm() / ref.norm()) < 1e-5
    assert [n for n, _ in fast.named_parameters()] == [n for n, _ in fp.named_parameters()]


@pytest.mark.parametrize("backend", [TorchRefBackend, TritonInt8Backend], ids=["torch_ref", "triton_int8"])
@pytest.mark.parametrize("dual", ["exact", "int_ratio"])
def test_split_dual_layout_equals_the_scattered_one(quantized, backend, dual):
    """kernel.dual_layout=split (producers read through the outlier-first permutation and write two contiguous runs,
    ffn.0's rows in ffn.2's order) against scatter (per-column steps scattered through dest): the same codes reach
    the same GEMMs, so the rollouts are equal bit for bit; the split plan did permute ffn.0."""
    _, q, ctx, _ = quantized
    real = convert_to_real(copy.deepcopy(q), real_specs(q), backend(dual_mode=dual))
    videos = []
    for layout in ("split", "scatter"):
        model = accelerate_(copy.deepcopy(real), backend(dual_mode=dual, dual_layout=layout))
        plan = model.blocks[0]._qarvd_plan
        assert plan.a["o"].split == (layout == "split") and (plan.g["f0"] is not plan.f0.group()) == (layout == "split")
        videos.append(rollout(model, ctx, [0], SHAPE, RC))
    assert torch.equal(*videos)
    with pytest.raises(ValueError, match="dual_layout"):
        backend(dual_layout="gather")


@pytest.mark.parametrize("backend", [TorchRefBackend, TritonInt8Backend], ids=["torch_ref", "triton_int8"])
def test_head_dual_layout_equals_the_split_one(quantized, backend):
    """kernel.dual_layout=head (a gathering producer writes every column in its own order and gathers only the outlier
    run; qarvd.deploy.modules.head_layout) against split, symmetric int8 weights: every GEMM sums the same integers,
    so the rollouts are equal bit for bit; q/k/v, o and cross q took the head layout, ffn.2 (fed by ffn.0's
    epilogue, no gather) kept the split one."""
    _, q, ctx, _ = quantized
    kw = dict(dual_mode="int_ratio", weights="symmetric")
    real = convert_to_real(copy.deepcopy(q), real_specs(q), backend(**kw))
    videos = []
    for layout in ("split", "head"):
        model = accelerate_(copy.deepcopy(real), backend(dual_layout=layout, **kw))
        plan = model.blocks[0]._qarvd_plan
        head = layout == "head"
        assert plan.a_qkv.head == head and plan.a["o"].head == head and plan.a["cq"].head == head
        assert plan.g_qkv.kp == (plan.a_qkv.kops[0] + ARCH["dim"] if head else plan.qkv_mods[0].meta["kp"])
        assert plan.a["f2"].split and not plan.a["f2"].head
        videos.append(rollout(model, ctx, [0], SHAPE, RC))
    assert torch.equal(*videos)


@pytest.mark.slow
def test_split_dual_layout_on_the_embedded_model(tmp_path):
    """The same equality on the embedded model: MinMax W8A8 with Q-ARVD's dual scale where Eq. 12 finds outliers
    (most block linears of the bundled model, 32 outlier columns each), torch_ref, two held-out prompts."""
    from qarvd.app.calibrate import calibration_prompts, train_quant
    from qarvd.models.pipeline import build_pipeline
    from qarvd.quant.artifact import load_artifact
    from qarvd.quant.sensitivity import generate

    from conftest import compose

    cfg = compose(["method=minmax", "method.dual_scale=true", "bits=w8a8", "calib=fast", "calib.eval_prompts=2",
                   "logger=none", f"paths.output_dir={tmp_path}"])
    train_quant(cfg, tmp_path)
    pipe = build_pipeline(cfg.model, "cpu")
    load_artifact(pipe.model, tmp_path)
    specs = real_specs(pipe.model)
    assert sum(len(s.groups) == 2 for s in specs.values()) >= 16
    _, _, prompts = calibration_prompts(cfg)
    real = convert_to_real(pipe.model, specs, TorchRefBackend())
    videos = []
    for layout in ("split", "scatter"):
        pipe.model = accelerate_(copy.deepcopy(real), TorchRefBackend(dual_layout=layout))
        with torch.no_grad():
            videos.append(generate(pipe, prompts, [0, 1], 2))
    assert torch.equal(*videos)


@pytest.mark.parametrize("w_bits,dual", [(8, "exact"), (4, "int_ratio")])
def test_save_load_round_trip(tmp_path, w_bits, dual):
    from safetensors import safe_open

    from qarvd.deploy.packing import minmax_spec
    from qarvd.quant.select import select_linears

    torch.manual_seed(1)
    fp = CausalWanModel(WanConfig(**ARCH)).eval()
    specs = {n: minmax_spec(fp.get_submodule(n).weight, fp.get_submodule(n).bias, w_bits=w_bits,
                            n_outliers=32 if n.startswith("blocks.") else 0) for n in select_linears(fp)}
    be = TorchRefBackend(dual_mode=dual)
    real = convert_to_real(copy.deepcopy(fp), specs, be)
    save_real(real, tmp_path)
    back = load_real(tmp_path, be)
    x, t, ctx = torch.randn(1, 4, 2, 8, 8), torch.full((1, 2), 500.0), torch.randn(1, 4, 16)
    with torch.no_grad():
        a = real(x, t, ctx, cache=real.new_cache(1, 2, 8, 8))
        b = back(x, t, ctx, cache=back.new_cache(1, 2, 8, 8))
    assert torch.equal(a, b)
    with safe_open(str(tmp_path / "model.safetensors"), "pt") as f:
        w = f.get_tensor("blocks.0.ffn.2.weight")
    n, k = fp.blocks[0].ffn[2].weight.shape
    assert w.dtype == (torch.uint8 if w_bits == 4 else torch.int8)
    kp = 128 + -(-(k - 32) // 128) * 128  # each column group padded to 128
    assert w.numel() == n * kp // (2 if w_bits == 4 else 1)


def test_load_real_names_missing_files(tmp_path):
    with pytest.raises(FileNotFoundError, match="model.safetensors"):
        load_real(tmp_path, TorchRefBackend())


def test_kernel_configs_instantiate():
    from hydra.utils import instantiate
    from omegaconf import OmegaConf

    from conftest import CONF_DIR

    names = sorted(p.stem for p in (__import__("pathlib").Path(CONF_DIR) / "kernel").glob("*.yaml"))
    assert names == ["bf16", "cutlass_int8", "fp8", "torch_ref", "triton_int8"]
    for n in names:
        be = instantiate(OmegaConf.load(f"{CONF_DIR}/kernel/{n}.yaml"))
        assert be.name == n and be.attention in ("auto", "cudnn")
    with pytest.raises(ValueError, match="dual_mode"):
        TritonInt8Backend(dual_mode="approx")
    with pytest.raises(ValueError, match="weights"):
        TritonInt8Backend(weights="asym")

