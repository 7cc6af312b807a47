"""A second benchmark data set, unlike `shapes`: few images, JPEG, non-square, other objects.

`shapes` is 1,200 PNG images near 128-192 px with five flat-coloured shapes. This one is what a
user's own small data set tends to be: 240 training and 120 validation JPEG photos-to-be of
several non-square sizes (320x240 to 240x400), four other classes (ellipse, star, hexagon, bar)
with other size statistics (12 to 45% of the short side, thin bars, up to 8 objects), shaded
gradient backgrounds with blobs and JPEG artefacts. Deterministic from its seed; written in the
Ultralytics layout with an absolute `path:` (Ultralytics needs one offline).
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

NAMES: tuple[str, ...] = ("ellipse", "star", "hexagon", "bar")
SIZES: tuple[tuple[int, int], ...] = ((320, 240), (240, 320), (400, 240), (240, 400), (288, 288))
SEED = 11


def _polygon(cx: float, cy: float, r: float, points: int, inner: float, turn: float) -> list:
    out = []
    for k in range(points * (2 if inner else 1)):
        radius = r * (inner if inner and k % 2 else 1.0)
        angle = turn + math.pi * k / (points if inner else points / 2)
        out.append((cx + radius * math.cos(angle), cy + radius * math.sin(angle)))
    return out


def _draw_object(draw: ImageDraw.ImageDraw, rng: np.random.Generator, cls: int, w: int,
                 h: int) -> tuple[float, float, float, float] | None:  # fmt: skip
    short = min(w, h)
    size = rng.uniform(0.12, 0.45) * short
    colour = tuple(int(c) for c in rng.integers(0, 256, 3))
    if cls == 3:  # bar: thin, long, horizontal or vertical
        bw, bh = size, size * rng.uniform(0.15, 0.3)
        if rng.random() < 0.5:
            bw, bh = bh, bw
    elif cls == 0:  # ellipse: clearly not a circle
        bw, bh = size, size * rng.uniform(0.45, 0.7)
        if rng.random() < 0.5:
            bw, bh = bh, bw
    else:
        bw = bh = size
    if bw >= w - 2 or bh >= h - 2:
        return None
    x1, y1 = rng.uniform(1, w - bw - 1), rng.uniform(1, h - bh - 1)
    x2, y2 = x1 + bw, y1 + bh
    cx, cy, r = (x1 + x2) / 2, (y1 + y2) / 2, bw / 2
    if cls in (0, 3):
        (draw.ellipse if cls == 0 else draw.rectangle)((x1, y1, x2, y2), fill=colour)
        return x1, y1, x2, y2
    points = _polygon(cx, cy, r, 5, 0.45, -math.pi / 2) if cls == 1 else _polygon(
        cx, cy, r, 6, 0.0, rng.uniform(0, math.pi))  # fmt: skip
    draw.polygon(points, fill=colour)
    xs, ys = [p[0] for p in points], [p[1] for p in points]
    return min(xs), min(ys), max(xs), max(ys)


def _image(rng: np.random.Generator) -> tuple[Image.Image, list[str]]:
    w, h = SIZES[int(rng.integers(len(SIZES)))]
    top, bottom = rng.integers(0, 256, 3), rng.integers(0, 256, 3)
    ramp = np.linspace(0, 1, h)[:, None, None]
    background = top * (1 - ramp) + bottom * ramp + rng.normal(0, 12, (h, w, 3))
    image = Image.fromarray(np.clip(background, 0, 255).astype(np.uint8))
    draw = ImageDraw.Draw(image)
    for _ in range(int(rng.integers(2, 6))):  # soft blobs: clutter that is no object
        x, y, r = rng.uniform(0, w), rng.uniform(0, h), rng.uniform(5, 40)
        draw.ellipse((x - r, y - r, x + r, y + r), outline=tuple(rng.integers(0, 256, 3)))
    image = image.filter(ImageFilter.GaussianBlur(1.0))
    draw = ImageDraw.Draw(image)
    labels = []
    for _ in range(int(rng.integers(1, 9))):
        cls = int(rng.integers(len(NAMES)))
        box = _draw_object(draw, rng, cls, w, h)
        if box is None:
            continue
        x1, y1, x2, y2 = (min(max(v, 0.0), lim) for v, lim in zip(box, (w, h, w, h), strict=True))
        labels.append(
            f"{cls} {(x1 + x2) / 2 / w:.6f} {(y1 + y2) / 2 / h:.6f} {(x2 - x1) / w:.6f} "
            f"{(y2 - y1) / h:.6f}"
        )
    return image, labels


def small_data_yaml(root: Path, n_train: int = 240, n_val: int = 120, seed: int = SEED) -> Path:
    """Write the data set under `root` (once; reused when complete) and return its data.yaml."""
    root = Path(root).resolve()
    yaml_path = root / "data.yaml"
    if yaml_path.is_file():
        return yaml_path
    for split, count in (("train", n_train), ("val", n_val)):
        (root / "images" / split).mkdir(parents=True, exist_ok=True)
        (root / "labels" / split).mkdir(parents=True, exist_ok=True)
        for i in range(count):
            rng = np.random.default_rng([seed, 0 if split == "train" else 1, i])
            image, labels = _image(rng)
            image.save(root / "images" / split / f"{i + 1:05d}.jpg", quality=80)
            (root / "labels" / split / f"{i + 1:05d}.txt").write_text(
                "".join(f"{x}\n" for x in labels)
            )
    names = "".join(f"  {i}: {n}\n" for i, n in enumerate(NAMES))
    yaml_path.write_text(f"path: {root}\ntrain: images/train\nval: images/val\nnames:\n{names}")
    return yaml_path
