"""PNG strips and grids show every frame, upscaled without blending, with chunk gaps."""
from __future__ import annotations

import numpy as np
import torch
from PIL import Image

from eval.strip import CHUNK_GAP, FRAME_GAP, grid_image, save_png, strip_image, to_uint8


def test_strip_layout_and_pixels():
    video = torch.rand(7, 3, 4, 5) * 2 - 1
    img = strip_image(video, frames_per_chunk=3, scale=2)
    # 7 frames of width 10; gaps: inside chunks 4 x FRAME_GAP, between the 3 chunks 2 x CHUNK_GAP
    assert img.size == (7 * 10 + 4 * FRAME_GAP + 2 * CHUNK_GAP, 8)
    arr = np.asarray(img)
    first_of_chunk1 = 3 * 10 + 2 * FRAME_GAP + CHUNK_GAP
    expect = np.repeat(np.repeat(to_uint8(video)[3], 2, axis=0), 2, axis=1)
    assert np.array_equal(arr[:, first_of_chunk1 : first_of_chunk1 + 10], expect)


def test_grid_png_round_trip(tmp_path):
    videos = torch.zeros(2, 6, 3, 4, 4)
    videos[1] = 1.0
    img = grid_image(videos, ["a", "b"], frames_per_chunk=3, scale=2, title="t")
    save_png(img, tmp_path / "g.png")
    back = np.asarray(Image.open(tmp_path / "g.png").convert("RGB"))
    assert back.shape[1] == img.size[0] and back.shape[0] == img.size[1]
    assert (back == 255).all(axis=2).any() and (back == 128).all(axis=2).any()  # white video and grey (0) video
