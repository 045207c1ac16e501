"""Video writing off the generation path (writer pool: same bytes for any pool size) and the encoding presets."""
from __future__ import annotations

import hashlib

import numpy as np
import pytest
import torch
from omegaconf import OmegaConf

from conftest import conf_encoding
from eval.strip import to_uint8
from eval.tables import caption
from eval.video_io import VideoEncoding, VideoWriterPool, read_video, write_video
from qarvd.app.generate import StripSpec, generate_set, shard, video_jobs
from quant_helpers import tiny_cfg, tiny_pipeline


def _digests(folder):
    return {p.relative_to(folder).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


def test_writer_pool_of_any_size_writes_the_same_bytes(tmp_path):
    pipe, cfg = tiny_pipeline()
    jobs = video_jobs([f"a red ball {i}" for i in range(5)], seed=3)
    enc = VideoEncoding(**OmegaConf.to_container(cfg.eval.video, resolve=True))
    out = {}
    for writers in (0, 1, 3):
        root = tmp_path / f"w{writers}"
        stats = generate_set(pipe, shard(jobs, 2), root / "videos", root / "strips", enc, StripSpec(4, 2), writers)
        assert stats["written"] == 5 and len(stats["batch_seconds"]) == 3
        out[writers] = _digests(root)
    assert len(out[0]) == 10 and out[0] == out[1] == out[3]  # 5 mp4 + 5 png, byte for byte


def test_writer_pool_raises_a_task_error_and_bounds_the_queue():
    def boom():
        raise OSError("disk full")

    with pytest.raises(OSError, match="disk full"):
        with VideoWriterPool(2) as pool:
            pool.submit(boom)
    assert VideoWriterPool(3)._slots._value == 6  # at most 2 x workers videos wait in host memory
    with pytest.raises(ValueError, match="eval.writers"):
        VideoWriterPool(-1)


def test_truncation_matches_the_release_cast():
    v = torch.tensor([-1.0, -0.9961, 0.0, 0.004, 0.999, 1.0, 1.5]).view(1, 1, 1, 7).expand(1, 3, 1, 7)
    release = torch.as_tensor(255.0 * (v * 0.5 + 0.5).clamp(0, 1), dtype=torch.uint8).permute(0, 2, 3, 1).numpy()
    assert np.array_equal(to_uint8(v, "truncate"), release)
    assert to_uint8(v, "truncate")[0, 0, :, 0].tolist() == [0, 0, 127, 128, 254, 255, 255]
    assert to_uint8(v, "round")[0, 0, :, 0].tolist() == [0, 0, 128, 128, 255, 255, 255]
    with pytest.raises(ValueError, match="eval.video.to_uint8"):
        conf_encoding(to_uint8="floor")


def test_paper_preset_writes_the_release_encoding(tmp_path):
    cfg = tiny_cfg("eval/video=paper")
    enc = VideoEncoding(**OmegaConf.to_container(cfg.eval.video, resolve=True))
    assert (enc.name, enc.fps, enc.crf, enc.pix_fmt, enc.to_uint8) == ("paper", 16, 23, "yuv420p", "truncate")
    assert tiny_cfg().eval.video.name == "lossless"
    g = torch.Generator().manual_seed(0)
    video = torch.nn.functional.interpolate(torch.rand(9, 3, 6, 10, generator=g), size=(48, 80), mode="bilinear") * 2 - 1
    write_video(tmp_path / "paper.mp4", video, enc)
    import av

    with av.open(str(tmp_path / "paper.mp4")) as c:
        s = c.streams.video[0]
        assert (s.codec_context.pix_fmt, s.average_rate) == ("yuv420p", 16)
    err = (read_video(tmp_path / "paper.mp4") - video).abs().mean() * 127.5
    assert 0.3 < float(err) < 8  # lossy, but the same video (mean error in 8-bit levels)


def test_table_captions_name_the_video_preset():
    recs = [{"model": "self_forcing", "calib": "default", "stage": "evaluate", "num_items": 946, "bits": "w4a8",
             "video": {"name": "paper"}}]
    assert "calib: default; videos: paper; n = 946 videos" in caption("Table 2.", recs)
    assert "videos:" not in caption("Table 2.", [{**recs[0], "video": None}])


def test_metric_readers_decode_ahead_without_changing_values(tmp_path):
    from eval.reference import evaluate_pairs

    g = torch.Generator().manual_seed(0)
    for i in range(5):
        v = torch.rand(3, 3, 16, 16, generator=g) * 2 - 1
        write_video(tmp_path / "fp" / f"v{i}.mp4", v, conf_encoding())
        write_video(tmp_path / "quant" / f"v{i}.mp4", (v + 0.1 * i).clamp(-1, 1), conf_encoding())
    metric = {"mad": lambda fp, q: (fp - q).abs().flatten(1).mean(1)}
    out = [evaluate_pairs(tmp_path / "fp", tmp_path / "quant", metric, progress=False, readers=r) for r in (0, 1, 3)]
    assert out[0]["per_item"] == out[1]["per_item"] == out[2]["per_item"] and out[0]["num_items"] == 5
    assert out[0]["per_item"]["v0.mp4"]["mad"] == 0 < out[0]["per_item"]["v4.mp4"]["mad"]
