"""FVD-FP: Fréchet distance numerics, the I3D calling convention and preprocessing, folder-level FVD."""
from __future__ import annotations

import math

import numpy as np
import pytest
import scipy.linalg
import torch
import torch.nn.functional as F

from conftest import conf_encoding
from eval.fvd import I3DBackbone, fvd_from_features, frechet_distance, gaussian_stats, sqrtm_psd
from eval.reference import evaluate_pairs
from eval.video_io import write_video
from qarvd.utils.errors import MissingWeightsError

pytestmark = pytest.mark.filterwarnings("ignore:`torch.jit.:FutureWarning")  # the I3D ships as TorchScript


def _features_with_cov(rng: np.random.Generator, n: int, mu: np.ndarray, std: np.ndarray, rot: np.ndarray) -> np.ndarray:
    """n samples whose sample mean is exactly ``mu`` and unbiased sample covariance exactly rot^T diag(std^2) rot."""
    z = rng.standard_normal((n, len(mu)))
    z -= z.mean(axis=0)
    q, _ = np.linalg.qr(z)  # orthonormal, still centred columns
    return mu + (q * math.sqrt(n - 1) * std) @ rot


@pytest.mark.parametrize("n,d", [(64, 16), (20, 400)])  # full-rank and rank-deficient (N < D, like few videos)
def test_identical_sets_give_zero(n, d):
    f = np.random.default_rng(0).standard_normal((n, d)) * 3 + 1
    assert abs(fvd_from_features(f, f.copy())) < 1e-6


@pytest.mark.parametrize("rotate", [False, True])
def test_matches_closed_form_for_commuting_covariances(rotate):
    """Shared eigenbasis: FD = |mu1 - mu2|^2 + sum_i (s1_i - s2_i)^2 exactly (s = standard deviations)."""
    rng = np.random.default_rng(1)
    d = 12
    rot = np.linalg.qr(rng.standard_normal((d, d)))[0] if rotate else np.eye(d)
    mu1, mu2 = rng.standard_normal(d), rng.standard_normal(d)
    s1, s2 = rng.uniform(0.5, 3, d), rng.uniform(0.5, 3, d)
    f1, f2 = _features_with_cov(rng, 200, mu1, s1, rot), _features_with_cov(rng, 150, mu2, s2, rot)
    m1, c1 = gaussian_stats(f1)
    np.testing.assert_allclose(c1, rot.T @ np.diag(s1**2) @ rot, atol=1e-10)  # the construction is exact
    expected = float(((mu1 - mu2) @ rot) @ ((mu1 - mu2) @ rot) + ((s1 - s2) ** 2).sum())
    assert fvd_from_features(f1, f2) == pytest.approx(expected, rel=1e-10, abs=1e-9)


def test_matches_scipy_sqrtm_on_general_covariances():
    rng = np.random.default_rng(2)
    f1 = rng.standard_normal((300, 20)) @ rng.standard_normal((20, 20))
    f2 = rng.standard_normal((250, 20)) @ rng.standard_normal((20, 20)) + 0.5
    (m1, c1), (m2, c2) = gaussian_stats(f1), gaussian_stats(f2)
    ref = float(((m1 - m2) ** 2).sum() + np.trace(c1 + c2 - 2 * np.real(scipy.linalg.sqrtm(c1 @ c2))))
    assert frechet_distance(m1, c1, m2, c2) == pytest.approx(ref, rel=1e-8)


def test_covariance_is_unbiased_and_sqrtm_squares_back():
    f = np.random.default_rng(3).standard_normal((10, 4))
    _, c = gaussian_stats(f)
    np.testing.assert_allclose(c, (f - f.mean(0)).T @ (f - f.mean(0)) / 9)
    r = sqrtm_psd(c)
    np.testing.assert_allclose(r @ r, c, atol=1e-12)
    with pytest.raises(ValueError, match="N >= 2"):
        gaussian_stats(f[:1])


class _StandInI3D(torch.nn.Module):
    """Same signature as the StyleGAN-V I3D TorchScript; fails unless called the way the paper's FVD calls it.

    Its 400 'features' expose what it was fed: per-channel means, global min/max, the clip length and size.
    """

    def forward(self, x: torch.Tensor, rescale: bool = True, resize: bool = True, return_features: bool = False) -> torch.Tensor:
        if rescale or resize or not return_features:
            raise RuntimeError("I3D must be called with rescale=False, resize=False, return_features=True")
        n = x.size(0)
        stats = torch.cat([x.mean(dim=(2, 3, 4)), x.amin(dim=(1, 2, 3, 4)).unsqueeze(1), x.amax(dim=(1, 2, 3, 4)).unsqueeze(1),
                           torch.tensor([[float(x.size(1)), float(x.size(2)), float(x.size(3)), float(x.size(4))]]).expand(n, 4)], dim=1)
        return torch.cat([stats, torch.zeros(n, 400 - stats.size(1))], dim=1)


def _reference_preprocess(video01: torch.Tensor) -> torch.Tensor:
    """The StyleGAN-V/common-metrics preprocess_single on one CTHW video in [0, 1], written out independently."""
    c, t, h, w = video01.shape
    scale = 224 / min(h, w)
    size = (224, math.ceil(w * scale)) if h < w else (math.ceil(h * scale), 224)
    v = F.interpolate(video01, size=size, mode="bilinear", align_corners=False)
    hs, ws = (v.shape[2] - 224) // 2, (v.shape[3] - 224) // 2
    return (v[:, :, hs : hs + 224, ws : ws + 224] - 0.5) * 2


@pytest.fixture
def standin_path(tmp_path):
    path = tmp_path / "i3d_torchscript.pt"
    torch.jit.save(torch.jit.script(_StandInI3D()), str(path))
    return path


@pytest.mark.parametrize("h,w", [(48, 80), (90, 60)])  # landscape and portrait: the shorter side goes to 224
def test_i3d_calling_convention_and_preprocessing(standin_path, h, w):
    torch.manual_seed(0)
    video = torch.rand(2, 5, 3, h, w) * 2 - 1  # [N, T, 3, H, W] in [-1, 1]
    feats = I3DBackbone(standin_path).features(video)
    assert feats.shape == (2, 400)
    for i in range(2):
        ref = _reference_preprocess(((video[i] + 1) / 2).permute(1, 0, 2, 3))  # CTHW
        torch.testing.assert_close(feats[i, :3], ref.mean(dim=(1, 2, 3)), atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(feats[i, 3:5], torch.stack([ref.min(), ref.max()]), atol=1e-5, rtol=1e-5)
    assert feats[0, 5:9].tolist() == [3.0, 5.0, 224.0, 224.0]  # channels, all frames, 224 x 224 crop


def test_missing_i3d_names_key_file_and_source(tmp_path):
    with pytest.raises(MissingWeightsError) as err:
        I3DBackbone(tmp_path / "i3d_torchscript.pt")
    msg = str(err.value)
    assert "eval.fvd.backbones.i3d.path" in msg and "i3d_torchscript.pt" in msg and "StyleGAN-V" in msg and "dropbox" in msg


def _write_set(folder, videos, names):
    for v, n in zip(videos, names):
        write_video(folder / f"{n}.mp4", v, conf_encoding())


def test_folder_fvd_zero_for_identical_sets_and_positive_otherwise(tmp_path, standin_path):
    torch.manual_seed(1)
    a = torch.rand(4, 3, 3, 16, 16) * 2 - 1
    names = [f"p{i}-0" for i in range(4)]
    _write_set(tmp_path / "fp", a, names)
    _write_set(tmp_path / "same", a, names)
    _write_set(tmp_path / "noisy", (a + 0.3 * torch.randn_like(a)).clamp(-1, 1), names)
    bb = I3DBackbone(standin_path)
    same = evaluate_pairs(tmp_path / "fp", tmp_path / "same", {}, bb, progress=False)
    noisy = evaluate_pairs(tmp_path / "fp", tmp_path / "noisy", {}, bb, progress=False)
    assert same["num_items"] == 4 and abs(same["metrics"]["fvd_fp"]) < 1e-6
    assert noisy["metrics"]["fvd_fp"] > 1e-4
