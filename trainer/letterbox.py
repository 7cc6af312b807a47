"""Letterboxing: resize an image to fit a square keeping its aspect ratio, pad with grey 114.

The geometry (`Letterbox`) maps boxes both ways, so that predictions made on the letterboxed
image can be reported in the original image's pixels (COCO results). Image decoding lives here
too because it is where the speed is: JPEG decoding can shrink by a power of two on the fly.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageOps

PAD_VALUE = 114  # grey, as in YOLOv5/Ultralytics
_EXIF_ORIENTATION = 0x0112
_ROTATED = (5, 6, 7, 8)  # EXIF orientations that swap width and height


@dataclass(frozen=True)
class Letterbox:
    """How one image sits in the letterboxed square: `x_lb = x * scale + pad_x` (same for y)."""

    scale: float
    pad_x: int
    pad_y: int
    new_w: int  # size of the resized image inside the square
    new_h: int

    def to_letterbox(self, xyxy: torch.Tensor) -> torch.Tensor:
        """Boxes `[n, 4]` (x1, y1, x2, y2) from original to letterboxed pixels."""
        offset = xyxy.new_tensor([self.pad_x, self.pad_y, self.pad_x, self.pad_y])
        return xyxy * self.scale + offset

    def to_original(self, xyxy: torch.Tensor, orig_hw: tuple[int, int]) -> torch.Tensor:
        """Boxes `[n, 4]` from letterboxed to original pixels, clipped to the original image."""
        # Python numbers, not a tensor of them: on a GPU that tensor is a copy from the host,
        # which waits for the device at every image of an evaluation
        out = xyxy.clone()
        out[:, 0::2] -= self.pad_x
        out[:, 1::2] -= self.pad_y
        out /= self.scale
        h, w = orig_hw
        out[:, 0::2] = out[:, 0::2].clamp(0, w)
        out[:, 1::2] = out[:, 1::2].clamp(0, h)
        return out


def letterbox_geometry(h: int, w: int, size: int) -> Letterbox:
    """Where an `h x w` image goes in a `size x size` square (scaled up or down, centred)."""
    if h <= 0 or w <= 0 or size <= 0:
        raise ValueError(f"sizes must be positive, but got h={h}, w={w}, size={size}")
    scale = min(size / h, size / w)
    new_w = min(size, max(1, round(w * scale)))
    new_h = min(size, max(1, round(h * scale)))
    return Letterbox(scale, (size - new_w) // 2, (size - new_h) // 2, new_w, new_h)


def read_letterboxed(path: Path, size: int) -> tuple[np.ndarray, tuple[int, int], Letterbox]:
    """Decode an image file and letterbox it.

    Returns the `size x size x 3` uint8 RGB array, the original `(h, w)` (after EXIF rotation,
    as the labels see it) and the geometry. Raises whatever PIL raises for unreadable files.
    """
    with Image.open(path) as im:
        w, h = im.size
        orientation = im.getexif().get(_EXIF_ORIENTATION, 1)
        if orientation in _ROTATED:
            w, h = h, w
        box = letterbox_geometry(h, w, size)
        # Let the JPEG decoder shrink big photos by a power of two (a no-op for other formats);
        # the exact resize below finishes the job.
        target = (box.new_h, box.new_w) if orientation in _ROTATED else (box.new_w, box.new_h)
        im.draft("RGB", target)
        image = im.convert("RGB")
    if orientation != 1:
        image = ImageOps.exif_transpose(image)
    if image.size != (box.new_w, box.new_h):
        image = image.resize((box.new_w, box.new_h), Image.Resampling.BILINEAR)
    canvas = np.full((size, size, 3), PAD_VALUE, dtype=np.uint8)
    canvas[box.pad_y : box.pad_y + box.new_h, box.pad_x : box.pad_x + box.new_w] = np.asarray(image)
    return canvas, (h, w), box
