"""LPIPS-FP / PSNR-FP / SSIM-FP: equal to calling the libraries directly; AlexNet read from TORCH_HOME, never downloaded."""
from __future__ import annotations

import math

import pytest
import torch
import torchvision

from conftest import conf_encoding
from eval.lpips_fp import ALEXNET_FILE, LPIPSMetric, build_lpips, psnr_frames, ssim_frames
from eval.reference import evaluate_pairs
from eval.video_io import read_video, write_video
from qarvd.utils.errors import MissingWeightsError


def _sets(tmp_path, n=3, t=4, h=40, w=48):
    g = torch.Generator().manual_seed(0)
    fp = torch.rand(n, t, 3, h, w, generator=g) * 2 - 1
    q = (fp + 0.2 * torch.randn(fp.shape, generator=g)).clamp(-1, 1)
    for i in range(n):
        write_video(tmp_path / "fp" / f"v{i}-0.mp4", fp[i], conf_encoding())
        write_video(tmp_path / "quant" / f"v{i}-0.mp4", q[i], conf_encoding())
    return n


def test_lpips_fp_equals_lpips_called_directly(tmp_path):
    n = _sets(tmp_path)
    torch.manual_seed(0)
    model = build_lpips(pnet_rand=True)  # random AlexNet: plumbing only
    out = evaluate_pairs(tmp_path / "fp", tmp_path / "quant", {"lpips_fp": LPIPSMetric(model, frames_per_batch=3)}, progress=False)
    per_video = []
    for i in range(n):
        a, b = read_video(tmp_path / "fp" / f"v{i}-0.mp4"), read_video(tmp_path / "quant" / f"v{i}-0.mp4")
        with torch.no_grad():
            per_frame = [model(a[k : k + 1], b[k : k + 1]).item() for k in range(a.shape[0])]  # lpips, one frame at a time
        per_video.append(sum(per_frame) / len(per_frame))  # mean over frames ...
    assert out["metrics"]["lpips_fp"] == pytest.approx(sum(per_video) / n, rel=1e-5)  # ... then over videos
    assert out["per_item"]["v0-0.mp4"]["lpips_fp"] == pytest.approx(per_video[0], rel=1e-5)
    assert out["metrics"]["lpips_fp"] > 0


def test_psnr_and_ssim_per_frame():
    g = torch.Generator().manual_seed(1)
    a = torch.rand(3, 3, 32, 32, generator=g) * 2 - 1
    b = (a + 0.1 * torch.randn(a.shape, generator=g)).clamp(-1, 1)
    mse = (((a + 1) / 2 - (b + 1) / 2) ** 2).double().mean(dim=(1, 2, 3))
    torch.testing.assert_close(psnr_frames(a, b), 10 * torch.log10(1 / mse))
    assert psnr_frames(a, b).shape == ssim_frames(a, b).shape == (3,)
    torch.testing.assert_close(ssim_frames(a, a), torch.ones(3, dtype=torch.float64))
    assert (ssim_frames(a, b) < 0.99).all()


def test_alexnet_backbone_comes_from_torch_home(tmp_path, monkeypatch):
    """The file in $TORCH_HOME/hub/checkpoints is loaded into lpips' slices: features equal torchvision's AlexNet."""
    torch.manual_seed(3)
    alexnet = torchvision.models.alexnet().eval()
    ckpt = tmp_path / "hub" / "checkpoints" / ALEXNET_FILE
    ckpt.parent.mkdir(parents=True)
    torch.save(alexnet.state_dict(), ckpt)
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    model = build_lpips()
    x = torch.rand(2, 3, 64, 64) * 2 - 1
    with torch.no_grad():
        relu5 = model.net(model.scaling_layer(x)).relu5
        ref = alexnet.features[:12](model.scaling_layer(x))
    torch.testing.assert_close(relu5, ref)


def test_missing_alexnet_names_file_key_and_source(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    with pytest.raises(MissingWeightsError) as err:
        build_lpips()
    msg = str(err.value)
    assert ALEXNET_FILE in msg and str(tmp_path) in msg and "eval.lpips.alexnet_path" in msg and "torchvision model zoo" in msg
    assert not any(tmp_path.rglob("*.pth"))  # nothing was downloaded
    assert math.isfinite(build_lpips(pnet_rand=True)(torch.zeros(1, 3, 64, 64), torch.ones(1, 3, 64, 64)).item())


def test_missing_lpips_package_is_named_and_optional_when_not_required(monkeypatch):
    """Without the lpips package, build_lpips says how to fix it, and eval.lpips.required=false records LPIPS-FP as
    unavailable while PSNR/SSIM are still computed (the H100 image has no lpips)."""
    import sys

    from omegaconf import OmegaConf

    from qarvd.app import evaluate as ev

    monkeypatch.setitem(sys.modules, "lpips", None)  # import lpips now raises ImportError
    with pytest.raises(ImportError, match="pip install lpips"):
        build_lpips(pnet_rand=True)
    seen = {}
    monkeypatch.setattr(ev, "evaluate_pairs", lambda fp, q, metrics, backbone, device, readers: seen.update(metrics) or
                        {"metrics": {}, "per_item": {}})
    cfg = OmegaConf.create({"eval": {"lpips": {"enabled": True, "required": False, "alexnet_path": None, "pnet_rand": True,
                                               "frames_per_batch": 8},
                                     "psnr": True, "ssim": True, "fvd": {"enabled": False}, "metrics_device": "cpu", "readers": 0}})
    _, unavailable = ev.reference_metrics(cfg, "fp", "quant")
    assert "pip install lpips" in unavailable["lpips_fp"] and set(seen) == {"psnr_fp", "ssim_fp"}
    cfg.eval.lpips.required = True
    with pytest.raises(ImportError):
        ev.reference_metrics(cfg, "fp", "quant")
