"""PNG frame strips and grids of videos: how a person looks at a whole rollout at once.

A strip lays one video's frames side by side, grouped by chunk with a gap between chunks, so that what each chunk
of the autoregressive rollout produced stays visible; a grid stacks strips of several prompts under their captions.
Frames are upscaled with nearest-neighbour sampling (small pixel-space videos stay crisp).
"""
from __future__ import annotations

import os
from typing import Optional, Sequence

import numpy as np
import torch
from PIL import Image, ImageDraw, ImageFont

from qarvd.utils.io import atomic_write


UINT8_MODES = ("round", "truncate")


def to_uint8(video: torch.Tensor, mode: str = "round") -> np.ndarray:
    """[T, 3, H, W] in [-1, 1] -> [T, H, W, 3] uint8: the nearest level (``round``), or ``truncate``: the release's
    ``255 * (x / 2 + 1 / 2)`` cast to uint8, which cuts toward 0 (torchvision's write_video of a float video)."""
    x = video.detach().float().cpu()
    if mode == "round":
        x = ((x.clamp(-1, 1) + 1) * 127.5).round()
    elif mode == "truncate":
        x = (x * 0.5 + 0.5).clamp(0, 1) * 255.0
    else:
        raise ValueError(f"uint8 conversion '{mode}' is not one of {UINT8_MODES}")
    return x.to(torch.uint8).permute(0, 2, 3, 1).numpy()


FRAME_GAP, CHUNK_GAP = 1, 6  # pixels between frames of one chunk / between chunks


def _layout(num_frames: int, frames: Optional[Sequence[int]], frames_per_chunk: int, frame_width: int) -> tuple[list[int], list[int], int]:
    """(frames, x offset of each frame, total width) of a strip."""
    frames = list(range(num_frames)) if frames is None else list(frames)
    if not frames or min(frames) < 0 or max(frames) >= num_frames:
        raise ValueError(f"frames {frames} outside a video of {num_frames} frames")
    xs, x = [], 0
    for j, f in enumerate(frames):
        if j:
            x += CHUNK_GAP if f // frames_per_chunk != frames[j - 1] // frames_per_chunk else FRAME_GAP
        xs.append(x)
        x += frame_width
    return frames, xs, x


def strip_image(video: torch.Tensor, frames_per_chunk: int, scale: int = 3, frames: Optional[Sequence[int]] = None) -> Image.Image:
    """One row: the chosen frames (default: all) of ``video`` [T, 3, H, W], with a wider gap between chunks."""
    arr = to_uint8(video)
    t, h, w, _ = arr.shape
    frames, xs, width = _layout(t, frames, frames_per_chunk, w * scale)
    canvas = Image.new("RGB", (width, h * scale), (255, 255, 255))
    for f, x in zip(frames, xs):
        canvas.paste(Image.fromarray(arr[f]).resize((w * scale, h * scale), Image.NEAREST), (x, 0))
    return canvas


def grid_image(videos: torch.Tensor, captions: Sequence[str], frames_per_chunk: int, scale: int = 3,
               frames: Optional[Sequence[int]] = None, title: str = "") -> Image.Image:
    """Strips of ``videos`` [N, T, 3, H, W], one per row, each under its caption; chunk numbers on top."""
    if len(captions) != videos.shape[0]:
        raise ValueError(f"{videos.shape[0]} videos but {len(captions)} captions")
    font = ImageFont.load_default()
    frames, xs, strip_width = _layout(videos.shape[1], frames, frames_per_chunk, videos.shape[-1] * scale)
    strips = [strip_image(v, frames_per_chunk, scale, frames=frames) for v in videos]
    line, pad = 14, 6
    header = line * (2 if title else 1) + pad
    canvas = Image.new("RGB", (strip_width + 2 * pad, header + sum(s.height + line + pad for s in strips) + pad), "white")
    draw = ImageDraw.Draw(canvas)
    if title:
        draw.text((pad, pad // 2), title, fill=(0, 0, 0), font=font)
    for j, (f, x) in enumerate(zip(frames, xs)):
        if j == 0 or f // frames_per_chunk != frames[j - 1] // frames_per_chunk:
            draw.text((pad + x, header - line), f"chunk {f // frames_per_chunk}", fill=(90, 90, 90), font=font)
    y = header
    for s, cap in zip(strips, captions):
        draw.text((pad, y), cap, fill=(0, 0, 0), font=font)
        canvas.paste(s, (pad, y + line))
        y += s.height + line + pad
    return canvas


def save_png(image: Image.Image, path: str | os.PathLike) -> None:
    """Write ``image`` as PNG atomically."""
    atomic_write(path, lambda tmp: image.save(tmp, format="PNG", optimize=True))
