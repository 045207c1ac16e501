"""Video files (mp4 round trip, atomic and deterministic writes), FP/quantized pairing, jobs, seeds and sharding."""
from __future__ import annotations

import hashlib

import pytest
import torch

from qarvd.app.generate import file_stem, shard, video_jobs
from conftest import conf_encoding
from eval.video_io import UnpairedVideosError, list_videos, pair_videos, read_video, write_video


def _video(t=7, h=24, w=40, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.rand(t, 3, h, w, generator=g) * 2 - 1


def _levels(video):  # the uint8 values the writer encodes, back in [-1, 1]
    return ((video.clamp(-1, 1) + 1) * 127.5).round() / 127.5 - 1


def test_mp4_round_trip_is_lossless_enough(tmp_path):
    v = _video()
    write_video(tmp_path / "a.mp4", v, conf_encoding(fps=8))
    back = read_video(tmp_path / "a.mp4")
    assert back.shape == v.shape
    err = (back - _levels(v)).abs() * 127.5  # in 8-bit levels
    assert err.max() <= 2.0 + 1e-4 and err.mean() < 0.6  # yuv444p crf 0: only RGB<->YUV rounding


def test_rgb_codec_round_trip_is_exact(tmp_path):
    v = _video(seed=1)
    write_video(tmp_path / "a.mp4", v, conf_encoding(fps=8, codec="libx264rgb", pix_fmt="rgb24"))
    torch.testing.assert_close(read_video(tmp_path / "a.mp4"), _levels(v), atol=1e-6, rtol=0)


def test_writes_are_atomic_and_byte_deterministic(tmp_path):
    v = _video(seed=2)
    write_video(tmp_path / "a.mp4", v, conf_encoding())
    write_video(tmp_path / "b.mp4", v, conf_encoding())
    digest = [hashlib.sha256((tmp_path / n).read_bytes()).hexdigest() for n in ("a.mp4", "b.mp4")]
    assert digest[0] == digest[1]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.mp4", "b.mp4"]  # no temp files left
    with pytest.raises(ValueError, match="frame sizes"):
        write_video(tmp_path / "odd.mp4", _video(h=25), conf_encoding(pix_fmt="yuv420p"))
    assert not (tmp_path / "odd.mp4").exists()


def test_bad_encoding_settings_fail_clearly():
    with pytest.raises(ValueError, match="eval.video.crf"):
        conf_encoding(crf=60)
    with pytest.raises(ValueError, match="eval.video.codec"):
        conf_encoding(codec="no_such_codec")


def test_pairing_lists_unmatched_names(tmp_path):
    v = _video(t=2, h=8, w=8)
    for folder, names in (("fp", ["a-0", "b-0", "c-0"]), ("quant", ["a-0", "c-0", "d-0"])):
        for n in names:
            write_video(tmp_path / folder / f"{n}.mp4", v, conf_encoding())
    (tmp_path / "quant" / ".e-0.mp4.123.tmp").write_bytes(b"")  # an unfinished write is not a video
    with pytest.raises(UnpairedVideosError) as err:
        pair_videos(tmp_path / "fp", tmp_path / "quant")
    msg = str(err.value)
    assert "only in FP (1): b-0.mp4" in msg and "only in quantized (1): d-0.mp4" in msg
    (tmp_path / "fp" / "b-0.mp4").unlink()
    (tmp_path / "quant" / "d-0.mp4").unlink()
    assert [n for n, _, _ in pair_videos(tmp_path / "fp", tmp_path / "quant")] == ["a-0.mp4", "c-0.mp4"]
    with pytest.raises(FileNotFoundError, match="missing"):
        list_videos(tmp_path / "missing")


def test_jobs_names_and_seeds():
    prompts = ["long a", "long b", "long a again", "long c"]
    names = ["a", "b", "a", "c/d"]  # VBench short names; a duplicate and a path separator
    jobs = video_jobs(prompts, names, samples_per_prompt=2, seed=10)
    assert [j.name for j in jobs] == ["a-0", "a-1", "b-0", "b-1", "a-2", "a-3", "c_d-0", "c_d-1"]
    assert [j.seed for j in jobs] == list(range(10, 18))  # seed + index * samples + k
    assert [j.prompt for j in jobs][4] == "long a again"
    part = video_jobs(prompts, names, start=2, count=1, samples_per_prompt=2, seed=10)
    assert part == jobs[4:6]  # a video's name and seed do not depend on the selected range
    with pytest.raises(ValueError, match="align"):
        video_jobs(prompts, names[:3])
    assert len(file_stem("é" * 300).encode()) <= 230


@pytest.mark.parametrize("world", [1, 2, 3])
def test_sharding_covers_every_job_once_in_fixed_batches(world):
    jobs = video_jobs([f"p{i}" for i in range(11)])
    batches = [b for r in range(world) for b in shard(jobs, 3, r, world)]
    assert sorted(j.index for b in batches for j in b) == list(range(11))
    assert sorted(tuple(j.index for j in b) for b in batches) == [tuple(j.index for j in b) for b in shard(jobs, 3)]
