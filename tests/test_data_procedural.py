"""The procedural domain: deterministic splits, captions that match what is drawn, motion that follows the caption."""
from __future__ import annotations

import pytest
import torch

from qarvd.embedded.procedural import (ATTRIBUTES, COLOR_RGB, DIRECTION_XY, SPEED_RANGE, VOCAB, ProceduralVideos,
                                   caption_prompts, parse_caption, render, split_specs)


def test_same_index_same_video_in_any_batch_and_order():
    ds = ProceduralVideos("eval", 16)
    batch, captions, labels = ds.batch([5, 3, 11])
    item = ds[3]
    assert torch.equal(batch[1], item["video"]) and captions[1] == item["caption"]
    assert {k: int(v[1]) for k, v in labels.items()} == item["labels"]
    again, _, _ = ProceduralVideos("eval", 16).batch([5, 3, 11])
    assert torch.equal(batch, again)


def test_splits_are_different_videos():
    a, _, _ = ProceduralVideos("eval", 4).batch(range(4))
    b, _, _ = ProceduralVideos("test", 4).batch(range(4))
    assert (a - b).abs().mean() > 0.05
    with pytest.raises(ValueError, match="unknown split"):
        ProceduralVideos("valid", 4)


def test_caption_prompts_describe_the_split_videos():
    ds = ProceduralVideos("calib", 6)
    assert caption_prompts("calib", 6) == [ds[i]["caption"] for i in range(6)]


def test_captions_parse_back_to_labels_and_use_only_the_vocabulary():
    for spec in split_specs("train", range(200)):
        assert parse_caption(spec.caption) == spec.labels
        assert set(spec.caption.split()) <= set(VOCAB)
    with pytest.raises(ValueError, match="exactly one"):
        parse_caption("a red blue square moving left slowly")


def test_every_label_value_occurs():
    specs = split_specs("train", range(600))
    for attr, values in ATTRIBUTES.items():
        assert {getattr(s, attr) for s in specs} == set(values)


def _centroid(video: torch.Tensor, rgb) -> torch.Tensor:
    """Centre of the pixels within 0.3 of the object's colour, per frame: [T, 2] (x, y)."""
    near = ((video - torch.tensor(rgb).view(1, 3, 1, 1)).abs().max(dim=1).values < 0.3).float()  # [T, H, W]
    ys, xs = torch.meshgrid(torch.arange(video.shape[-2]), torch.arange(video.shape[-1]), indexing="ij")
    mass = near.sum(dim=(1, 2)).clamp_min(1)
    return torch.stack([(near * xs).sum(dim=(1, 2)) / mass, (near * ys).sum(dim=(1, 2)) / mass], dim=1)


def test_every_shape_starts_at_the_frame_centre():
    """The first chunk needs no absolute placement (the RoPE-only CausalWan cannot learn one): frame 0 puts the
    shape within the 1 px start jitter of the centre, whatever the caption's direction."""
    specs = split_specs("test", range(40))
    videos = render(specs)
    for spec, video in zip(specs, videos):
        c = _centroid(video[:1], COLOR_RGB[spec.color])[0]
        assert (c - 15.5).abs().max() <= 1.3, (spec.caption, c)


def test_the_drawn_shape_moves_as_the_caption_says():
    specs = split_specs("test", range(40))
    videos = render(specs)
    assert videos.shape == (40, 21, 3, 32, 32) and videos.min() >= -1 and videos.max() <= 1
    for spec, video in zip(specs, videos):
        c = _centroid(video, COLOR_RGB[spec.color])
        # middle frames only: at the ends a fast shape may touch the border and lose a few pixels
        move = (c[15] - c[5]) / 10
        dx, dy = DIRECTION_XY[spec.direction]
        along = move[0] * dx + move[1] * dy
        lo, hi = SPEED_RANGE[spec.speed]
        assert lo - 0.08 <= along <= hi + 0.08, (spec.caption, move)
        assert abs(move[0] * dy + move[1] * dx) < 0.08  # no motion across the caption's direction


def test_shapes_have_similar_area_but_different_outlines():
    base = split_specs("eval", [0])[0]
    from dataclasses import replace

    masks = {}
    for shape in ATTRIBUTES["shape"]:
        v = render([replace(base, shape=shape, start_x=16.0, start_y=16.0)])[0, 0]
        masks[shape] = (v - torch.tensor(COLOR_RGB[base.color]).view(3, 1, 1)).abs().max(0).values < 0.8
    areas = {k: int(m.sum()) for k, m in masks.items()}
    assert max(areas.values()) < 1.4 * min(areas.values()), areas
    for a in masks:
        for b in masks:
            if a < b:
                assert (masks[a] ^ masks[b]).sum() > 10, (a, b)
