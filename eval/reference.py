"""Reference-based metrics over paired FP / quantized video folders, reading every file once.

Pairs are matched by file name (:func:`eval.video_io.pair_videos`). Per-frame metrics (LPIPS, PSNR, SSIM) are
averaged over frames, then over videos; FVD-FP is the Fréchet distance between the backbone features of all FP
videos and all quantized videos. Per-video values are returned too, so a dashboard can show the worst prompts.
``readers`` threads decode the next pairs while the metrics of the current one run (FFmpeg releases the GIL), so
the accelerator does not wait on the decoder; the values do not depend on it.
"""
from __future__ import annotations

import math
import os
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from typing import Callable, Iterator, Mapping, Optional

import torch

from eval.fvd import VideoFeatureBackbone, fvd_from_features
from eval.video_io import pair_videos, read_video
from qarvd.utils.progress import progress_bar

FrameMetric = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]  # (fp [T,3,H,W], quant) -> per-frame [T]


def evaluate_pairs(
    fp_dir: str | os.PathLike,
    quant_dir: str | os.PathLike,
    frame_metrics: Mapping[str, FrameMetric],
    backbone: Optional[VideoFeatureBackbone] = None,
    fvd_key: str = "fvd_fp",
    progress: bool = True,
    device: str | torch.device = "cpu",
    readers: int = 0,
) -> dict:
    """``{"metrics": {name: mean}, "per_item": {file: {name: value}}, "per_frame": {name: [mean over videos of each
    frame]}, "num_items": N, "features": ...}``.

    ``frame_metrics`` maps a result name (e.g. ``lpips_fp``) to a per-frame metric; ``backbone`` adds FVD-FP, and
    ``features`` then holds ``{"names", "fp", "quant"}`` (the per-pair features the FVD-FP interval resamples).
    Decoded videos are moved to ``device`` once, where the per-frame metrics run. ``per_frame`` is left empty when
    the videos differ in length.
    """
    pairs = pair_videos(fp_dir, quant_dir)
    per_video: dict[str, dict[str, float]] = {}
    frames: dict[str, list[torch.Tensor]] = {key: [] for key in frame_metrics}
    feats_fp, feats_q = [], []
    decoded = _decoded(pairs, readers)
    for name, _, _ in progress_bar(pairs, desc="reference metrics", disable=not progress):
        fp, q = (v.to(device) for v in next(decoded))
        if fp.shape != q.shape:
            raise ValueError(f"'{name}': FP video {tuple(fp.shape)} and quantized video {tuple(q.shape)} differ in shape")
        for key, fn in frame_metrics.items():
            frames[key].append(fn(fp, q).double().cpu())
        per_video[name] = {key: float(frames[key][-1].mean()) for key in frame_metrics}
        if backbone is not None:
            f = backbone.features(torch.stack([fp, q]))
            feats_fp.append(f[0])
            feats_q.append(f[1])
    metrics = {key: _mean([v[key] for v in per_video.values()]) for key in frame_metrics}
    features = None
    if backbone is not None:
        features = {"names": [name for name, _, _ in pairs], "fp": torch.stack(feats_fp), "quant": torch.stack(feats_q)}
        metrics[fvd_key] = fvd_from_features(features["fp"], features["quant"])
    same_length = len({len(v) for f in frames.values() for v in f}) == 1
    per_frame = {key: torch.stack(f).mean(0).tolist() for key, f in frames.items()} if same_length else {}
    return {"metrics": metrics, "per_item": per_video, "per_frame": per_frame, "num_items": len(pairs),
            "features": features}


def per_chunk(per_frame: Mapping[str, list[float]], chunk_frames: list[tuple[int, int]],
              latent_frames: int) -> dict[str, list[float]]:
    """Per-frame curves averaged over each chunk's video frames. ``chunk_frames``: (first latent frame, count) per
    chunk; the temporal factor f of the VAE follows from the frame counts (T = 1 + f (latent_frames - 1) for Wan's
    causal x4 VAE, T = latent_frames in pixel space): latent frame 0 is video frame 0, latent frame j > 0 covers
    video frames 1 + f (j - 1) ... f j."""
    out = {}
    for key, values in per_frame.items():
        t = len(values)
        f = 1 if t == latent_frames else (t - 1) // max(latent_frames - 1, 1)
        if 1 + f * (latent_frames - 1) != t:
            raise ValueError(f"{t} video frames do not follow from {latent_frames} latent frames (x1 or causal x{f})")
        edges = [(0 if s == 0 else 1 + f * (s - 1), 1 + f * (s + n - 1)) for s, n in chunk_frames]
        out[key] = [math.fsum(values[a:b]) / (b - a) for a, b in edges]
    return out


def _decoded(pairs, readers: int) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """(FP video, quantized video) of every pair in order, decoded up to ``readers`` pairs ahead on as many threads
    (0: when asked for)."""
    if readers <= 0:
        for _, fp_path, q_path in pairs:
            yield read_video(fp_path), read_video(q_path)
        return
    with ThreadPoolExecutor(readers, thread_name_prefix="video-reader") as pool:
        ahead: deque = deque()
        for _, fp_path, q_path in pairs:
            ahead.append((pool.submit(read_video, fp_path), pool.submit(read_video, q_path)))
            if len(ahead) > readers:
                fp, q = ahead.popleft()
                yield fp.result(), q.result()
        while ahead:
            fp, q = ahead.popleft()
            yield fp.result(), q.result()


def _mean(values: list[float]) -> float:
    return math.fsum(values) / len(values)
