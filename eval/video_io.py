"""Video files: mp4 through PyAV (FFmpeg), a pool that writes them off the generation path, and FP/quantized folder
pairing by file name.

Reference-based metrics are computed from the files on disk, so the encoding must not hide the quantization error:
the default preset (``eval/video=lossless``) is x264 at crf 0 without chroma subsampling (yuv444p), which reads back
within one or two 8-bit levels; ``eval/video=paper`` writes like the authors' release (lossy), for absolute numbers
beside the paper's. One encoder thread per file: x264's output depends on its thread count, and sharded generation
must write byte-identical files whatever the machine; throughput comes from encoding several files at once
(:class:`VideoWriterPool`), which leaves every file's bytes unchanged. Every file is written to a temporary name and
renamed into place, so a killed job never leaves a truncated video that a resumed job would mistake for a finished one.
Browsers do not play yuv444p: the side-by-side samples shown in W&B and the HTML report are upscaled and
encoded with ``eval/video=browser`` (``eval.samples.video``: yuv420p), and nothing is measured on them.
"""
from __future__ import annotations

import os
import threading
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from typing import Callable, Optional

import av
import numpy as np
import torch

from eval.strip import UINT8_MODES, to_uint8
from qarvd.utils.io import atomic_write

VIDEO_SUFFIX = ".mp4"


@dataclass(frozen=True)
class VideoEncoding:
    """How mp4 files are encoded: the ``eval.video`` preset (what metrics read) or ``eval.samples.video`` (what browsers
    play); conf/eval/video/*.yaml holds the values and documents each field (one source: no defaults here)."""

    name: str  # preset name, recorded with every video folder and result
    fps: float  # frames per second
    codec: str  # FFmpeg encoder
    crf: int  # x264 constant rate factor; 0 = lossless in YUV
    pix_fmt: str  # yuv420p plays in browsers but halves chroma resolution (and needs even sizes)
    threads: int  # encoder threads; 1 keeps the bytes independent of the machine
    to_uint8: str  # frames to 8 bits: round | truncate (eval.strip.to_uint8)

    def __post_init__(self) -> None:
        if self.fps <= 0:
            raise ValueError(f"eval.video.fps must be > 0, got {self.fps}")
        if not 0 <= self.crf <= 51:
            raise ValueError(f"eval.video.crf must be in [0, 51], got {self.crf}")
        if self.codec not in av.codecs_available:
            raise ValueError(f"eval.video.codec '{self.codec}' is not available in this FFmpeg build")
        if self.threads < 0:
            raise ValueError(f"eval.video.threads must be >= 0 (0 = auto), got {self.threads}")
        if self.to_uint8 not in UINT8_MODES:
            raise ValueError(f"eval.video.to_uint8 must be one of {UINT8_MODES}, got '{self.to_uint8}'")


def write_video(path: str | os.PathLike, video: torch.Tensor, enc: VideoEncoding) -> Path:
    """Encode ``video`` [T, 3, H, W] in [-1, 1] to an mp4 at ``path`` atomically."""
    if video.ndim != 4 or video.shape[1] != 3:
        raise ValueError(f"expected a video [T, 3, H, W], got shape {tuple(video.shape)}")
    frames = to_uint8(video, enc.to_uint8)
    _, h, w, _ = frames.shape
    if enc.pix_fmt.endswith("420p") and (h % 2 or w % 2):
        raise ValueError(f"pix_fmt {enc.pix_fmt} needs even frame sizes, got {h}x{w}; use yuv444p")

    def _write(tmp: str) -> None:
        with av.open(tmp, mode="w", format="mp4") as container:
            stream = container.add_stream(enc.codec, rate=Fraction(enc.fps).limit_denominator(1001))
            stream.width, stream.height, stream.pix_fmt = w, h, enc.pix_fmt
            stream.thread_count = enc.threads
            stream.options = {"crf": str(enc.crf)} if "264" in enc.codec or "265" in enc.codec else {}
            for frame in frames:
                container.mux(stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")))
            container.mux(stream.encode())

    return atomic_write(path, _write)


def side_by_side(videos: list[torch.Tensor], min_height: int) -> torch.Tensor:
    """Videos [T, 3, H, W] of one size next to each other, upscaled by the smallest integer factor (nearest
    neighbour, so pixels stay sharp) that makes them at least ``min_height`` tall, and cropped to even sizes (4:2:0
    chroma needs them)."""
    if len({tuple(v.shape) for v in videos}) != 1:
        raise ValueError(f"side by side needs videos of one shape, got {[tuple(v.shape) for v in videos]}")
    x = torch.cat(videos, dim=-1)
    k = max(1, -(-int(min_height) // x.shape[-2]))
    if k > 1:
        x = x.repeat_interleave(k, dim=-2).repeat_interleave(k, dim=-1)
    return x[..., : x.shape[-2] // 2 * 2, : x.shape[-1] // 2 * 2]


class VideoWriterPool:
    """Runs file-writing tasks (encode + write a video and its strip) on ``workers`` threads while the caller goes on
    generating; ``workers=0`` runs each task at once in the caller. x264 and PyAV release the GIL while they encode,
    so threads encode in parallel. A task's files are those it would write inline: only the time they land changes.

    At most ``max_pending`` tasks wait (default ``2 * workers``): submitting blocks beyond that, which bounds the host
    memory the queued videos hold. The first task error is raised by the next :meth:`submit` or by :meth:`close`.
    """

    def __init__(self, workers: int, max_pending: Optional[int] = None) -> None:
        if workers < 0:
            raise ValueError(f"eval.writers must be >= 0 (0 = write in the generating thread), got {workers}")
        self.workers = int(workers)
        self._pool = ThreadPoolExecutor(self.workers, thread_name_prefix="video-writer") if self.workers else None
        self._slots = threading.Semaphore(max_pending or 2 * max(self.workers, 1))
        self._futures: list[Future] = []

    def submit(self, fn: Callable[..., object], *args) -> None:
        self._raise_errors()
        if self._pool is None:
            fn(*args)
            return
        self._slots.acquire()
        future = self._pool.submit(fn, *args)
        future.add_done_callback(lambda _: self._slots.release())
        self._futures.append(future)

    def _raise_errors(self) -> None:
        done = [f for f in self._futures if f.done()]
        self._futures = [f for f in self._futures if not f.done()]
        for f in done:
            f.result()

    def close(self) -> None:
        """Wait for every task; raise the first error."""
        if self._pool is not None:
            self._pool.shutdown(wait=True)
            futures, self._futures = self._futures, []
            for f in futures:
                f.result()

    def __enter__(self) -> "VideoWriterPool":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def read_video(path: str | os.PathLike) -> torch.Tensor:
    """All frames of a video file as float [T, 3, H, W] in [-1, 1]."""
    with av.open(str(path)) as container:
        frames = [f.to_ndarray(format="rgb24") for f in container.decode(video=0)]
    if not frames:
        raise ValueError(f"video '{path}' has no frames")
    x = torch.from_numpy(np.stack(frames)).permute(0, 3, 1, 2).float()
    return x / 127.5 - 1


class UnpairedVideosError(ValueError):
    """The FP and quantized folders do not hold the same file names."""


def list_videos(folder: str | os.PathLike) -> dict[str, Path]:
    """File name -> path of every video in ``folder`` (temporary files of unfinished writes are ignored)."""
    folder = Path(folder)
    if not folder.is_dir():
        raise FileNotFoundError(f"video folder '{folder}' does not exist")
    return {p.name: p for p in sorted(folder.iterdir()) if p.suffix == VIDEO_SUFFIX and not p.name.startswith(".")}


def pair_videos(fp_dir: str | os.PathLike, quant_dir: str | os.PathLike) -> list[tuple[str, Path, Path]]:
    """(name, fp path, quant path) for every file name present in both folders, sorted by name.

    Raises :class:`UnpairedVideosError` listing the names found on one side only: FVD-FP and LPIPS-FP are only
    meaningful when every quantized video has the FP video of the same prompt and seed.
    """
    fp, q = list_videos(fp_dir), list_videos(quant_dir)
    only_fp, only_q = sorted(set(fp) - set(q)), sorted(set(q) - set(fp))
    if only_fp or only_q:
        raise UnpairedVideosError(
            f"FP folder '{fp_dir}' and quantized folder '{quant_dir}' do not pair up by file name: "
            f"{_names('only in FP', only_fp)}; {_names('only in quantized', only_q)}"
        )
    if not fp:
        raise UnpairedVideosError(f"no {VIDEO_SUFFIX} files in '{fp_dir}' and '{quant_dir}'")
    return [(name, fp[name], q[name]) for name in sorted(fp)]


def _names(label: str, names: list[str], limit: int = 20) -> str:
    shown = ", ".join(names[:limit]) + (f", ... ({len(names) - limit} more)" if len(names) > limit else "")
    return f"{label} ({len(names)}): {shown or '-'}"
