"""Procedural captioned videos: the training data, the held-out sets and the prompts of the embedded model.

Every video shows one coloured shape moving in a straight line over a static, smoothly textured background, and is
described by a caption from a small grammar: ``"a <colour> <shape> moving <direction> <speed>"``. The caption fixes
the class labels; the rest (exact speed, size, start jitter, background tint and texture) is drawn at random, so
a later chunk of a video can only be right if it continues the earlier chunks (where the shape is, how far it moved
per frame, which texture lies behind it). That is what makes the embedded ARVD autoregressive in earnest: an error
in an early chunk changes every later one.

Two choices make the first chunk learnable from the caption alone (``docs/experiments/tiny_v3.md``): every shape
starts near the frame centre, because the CausalWan has no absolute position embedding (3D RoPE only), so from pure
noise it can only put a shape where the frame border's effect on attention puts it; and the shapes (square, triangle,
ring of equal area) differ in outline by far more pixels than a square and a circle do, so the caption's shape still
shows in the denoiser's mean guess at high noise, where the position is not yet decided.

Determinism: video ``i`` of split ``s`` is drawn from ``random.Random(split_seed(s, i))`` alone, so a split is the
same on every machine, in any order and batch size, and the splits never share a video.
"""
from __future__ import annotations

import math
import random
from dataclasses import dataclass
from typing import Sequence

import torch
from torch.utils.data import Dataset

COLORS = ["red", "green", "blue", "yellow", "white", "purple"]
SHAPES = ["square", "triangle", "ring"]
DIRECTIONS = ["left", "right", "up", "down"]
SPEEDS = ["slowly", "quickly"]
ATTRIBUTES = {"color": COLORS, "shape": SHAPES, "direction": DIRECTIONS, "speed": SPEEDS}
SPLIT_SEEDS = {"train": 0, "calib": 1, "eval": 2, "test": 3}
VOCAB = sorted({"a", "moving", *COLORS, *SHAPES, *DIRECTIONS, *SPEEDS})  # every word a caption can contain

# RGB in [-1, 1], chosen to stay apart from each other and from the dark backgrounds.
COLOR_RGB = {
    "red": (1.0, -0.8, -0.8),
    "green": (-0.8, 0.9, -0.8),
    "blue": (-0.7, -0.6, 1.0),
    "yellow": (1.0, 1.0, -0.8),
    "white": (1.0, 1.0, 1.0),
    "purple": (0.6, -0.8, 1.0),
}
# Unit motion per direction in image coordinates (y grows downwards, so "up" is -y).
DIRECTION_XY = {"left": (-1.0, 0.0), "right": (1.0, 0.0), "up": (0.0, -1.0), "down": (0.0, 1.0)}
SPEED_RANGE = {"slowly": (0.20, 0.30), "quickly": (0.45, 0.60)}  # pixels per frame at the 32-pixel reference size
REFERENCE_SIZE = 32  # geometry below is in pixels of a 32x32 frame and scales with the frame size


@dataclass(frozen=True)
class VideoSpec:
    """Everything that determines one video: the caption's four labels plus the free parameters."""

    color: str
    shape: str
    direction: str
    speed: str
    start_x: float  # centre at frame 0, in reference pixels
    start_y: float
    pixels_per_frame: float
    radius: float
    background: tuple  # base RGB
    texture_tint: tuple  # RGB weights of the texture
    waves: tuple  # (amplitude, frequency [cycles / frame width], angle, phase) per plane wave

    @property
    def caption(self) -> str:
        return f"a {self.color} {self.shape} moving {self.direction} {self.speed}"

    @property
    def labels(self) -> dict[str, int]:
        return {k: v.index(getattr(self, k)) for k, v in ATTRIBUTES.items()}


def split_seed(split: str, index: int) -> int:
    """The seed of video ``index`` of ``split``; splits live in disjoint seed ranges."""
    if split not in SPLIT_SEEDS:
        raise ValueError(f"unknown split '{split}'; choose one of {sorted(SPLIT_SEEDS)}")
    if index < 0:
        raise ValueError(f"video index must be >= 0, got {index}")
    return SPLIT_SEEDS[split] * 10**12 + int(index)


def sample_spec(rng: random.Random) -> VideoSpec:
    """Draw one video: it starts within 1 px of the frame centre and moves outward, slowly enough to stay (mostly)
    inside the frame for a 21-frame video."""
    color, shape = rng.choice(COLORS), rng.choice(SHAPES)
    direction, speed = rng.choice(DIRECTIONS), rng.choice(SPEEDS)
    ppf = rng.uniform(*SPEED_RANGE[speed])
    centre = REFERENCE_SIZE / 2
    start_x, start_y = centre + rng.uniform(-1.0, 1.0), centre + rng.uniform(-1.0, 1.0)
    background = tuple(rng.uniform(-0.55, -0.15) for _ in range(3))
    tint = tuple(rng.uniform(0.4, 1.0) for _ in range(3))
    waves = tuple(
        (rng.uniform(0.06, 0.12), rng.uniform(0.8, 3.0), rng.uniform(0, math.pi), rng.uniform(0, 2 * math.pi))
        for _ in range(2)
    )
    return VideoSpec(color, shape, direction, speed, start_x, start_y, ppf, rng.uniform(5.0, 6.5), background, tint, waves)


def split_specs(split: str, indices: Sequence[int]) -> list[VideoSpec]:
    return [sample_spec(random.Random(split_seed(split, int(i)))) for i in indices]


def _shape_sdf(shape_id: torch.Tensor, dx: torch.Tensor, dy: torch.Tensor, radius: torch.Tensor) -> torch.Tensor:
    """Signed distance (pixels, < 0 inside) to a square, an upward triangle or a ring (outer radius r, hole 0.5 r),
    all of area about 2.4 r^2 (so the colour mass does not give the shape away)."""
    square = torch.maximum(dx.abs(), dy.abs()) - 0.78 * radius
    # equilateral triangle with its apex up: the maximum over its three edges' half-planes (inradius 0.68 r)
    c, s = math.cos(math.pi / 6), math.sin(math.pi / 6)
    tri = torch.maximum(torch.maximum(dy, c * dx - s * dy), -c * dx - s * dy) - 0.68 * radius
    dist = torch.sqrt(dx**2 + dy**2 + 1e-12)
    ring = torch.maximum(dist - radius, 0.5 * radius - dist)
    return torch.where(shape_id == 0, square, torch.where(shape_id == 1, tri, ring))


def render(specs: Sequence[VideoSpec], num_frames: int = 21, size: int = 32, device: str | torch.device = "cpu") -> torch.Tensor:
    """Videos [N, T, 3, size, size] in [-1, 1] of the given specs, rendered in one vectorised pass."""
    dev = torch.device(device)
    f32 = dict(dtype=torch.float32, device=dev)
    n = len(specs)
    scale = size / REFERENCE_SIZE

    def col(values) -> torch.Tensor:  # one value per video -> [N, 1, 1, 1]
        return torch.tensor(values, **f32).view(n, 1, 1, 1)

    coords = (torch.arange(size, **f32) + 0.5) / scale  # pixel centres in reference pixels
    yy, xx = coords.view(1, 1, size, 1), coords.view(1, 1, 1, size)
    t = torch.arange(num_frames, **f32).view(1, num_frames, 1, 1)
    vx = col([DIRECTION_XY[s.direction][0] * s.pixels_per_frame for s in specs])
    vy = col([DIRECTION_XY[s.direction][1] * s.pixels_per_frame for s in specs])
    dx = xx - (col([s.start_x for s in specs]) + vx * t)
    dy = yy - (col([s.start_y for s in specs]) + vy * t)
    sdf = _shape_sdf(col([SHAPES.index(s.shape) for s in specs]), dx, dy, col([s.radius for s in specs]))
    alpha = (0.5 - sdf * scale).clamp(0, 1).unsqueeze(2)  # one-output-pixel anti-aliased edge, [N, T, 1, H, W]

    texture = torch.zeros(n, 1, size, size, **f32)
    for w in range(len(specs[0].waves)):
        amp, freq, ang, phase = (col([s.waves[w][j] for s in specs]) for j in range(4))
        arg = 2 * math.pi * freq / REFERENCE_SIZE * (xx * torch.cos(ang) + yy * torch.sin(ang)) + phase
        texture = texture + amp * torch.sin(arg)
    base = torch.tensor([s.background for s in specs], **f32).view(n, 1, 3, 1, 1)
    tint = torch.tensor([s.texture_tint for s in specs], **f32).view(n, 1, 3, 1, 1)
    background = base + tint * texture.unsqueeze(1)  # static: [N, 1, 3, H, W]
    rgb = torch.tensor([COLOR_RGB[s.color] for s in specs], **f32).view(n, 1, 3, 1, 1)
    return (background * (1 - alpha) + rgb * alpha).clamp(-1, 1)


def labels_tensor(specs: Sequence[VideoSpec]) -> dict[str, torch.Tensor]:
    """Class indices per attribute, each [N] long."""
    return {k: torch.tensor([s.labels[k] for s in specs], dtype=torch.long) for k in ATTRIBUTES}


def parse_caption(caption: str) -> dict[str, int]:
    """Labels of a caption of the grammar; raises on anything else (so a prompt typo is not scored silently)."""
    words = caption.lower().split()
    found = {k: [w for w in words if w in v] for k, v in ATTRIBUTES.items()}
    bad = {k: w for k, w in found.items() if len(w) != 1}
    if bad:
        raise ValueError(f"caption '{caption}' does not name exactly one of each attribute: {bad}")
    return {k: ATTRIBUTES[k].index(w[0]) for k, w in found.items()}


def caption_prompts(split: str, count: int) -> list[str]:
    """Captions of videos 0..count-1 of ``split`` (train | calib | eval | test): prompt i describes real video i."""
    return [s.caption for s in split_specs(split, range(int(count)))]


class ProceduralVideos(Dataset):
    """Videos 0..length-1 of one split: items are dicts of ``video`` [T, 3, H, W], ``caption`` and ``labels``."""

    def __init__(self, split: str, length: int, num_frames: int = 21, size: int = 32, offset: int = 0) -> None:
        split_seed(split, 0)  # validates the split name
        self.split, self.length, self.num_frames, self.size, self.offset = split, int(length), int(num_frames), int(size), int(offset)

    def __len__(self) -> int:
        return self.length

    def __getitem__(self, i: int) -> dict:
        if not 0 <= i < self.length:
            raise IndexError(i)
        (spec,) = split_specs(self.split, [self.offset + i])
        return {"video": render([spec], self.num_frames, self.size)[0], "caption": spec.caption, "labels": spec.labels}

    def batch(self, indices: Sequence[int], device: str | torch.device = "cpu") -> tuple[torch.Tensor, list[str], dict]:
        """Render many items at once on ``device`` (the training loop's path: one vectorised call per batch)."""
        specs = split_specs(self.split, [self.offset + int(i) for i in indices])
        return render(specs, self.num_frames, self.size, device), [s.caption for s in specs], labels_tensor(specs)

    def config(self) -> dict:
        return {"split": self.split, "num_frames": self.num_frames, "size": self.size, "offset": self.offset,
                "grammar": {k: list(v) for k, v in ATTRIBUTES.items()}}
