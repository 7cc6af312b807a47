"""Mosaic and random affine: every box stays inside the image, every label stays on its object."""

from __future__ import annotations

import torch

from trainer.augment import mosaic_affine
from trainer.letterbox import PAD_VALUE

SIZE = 64
# one colour per class, far from black, from each other and from the pad grey 114
COLOURS = torch.tensor([[250, 20, 20], [20, 250, 20], [20, 20, 250]], dtype=torch.float32)


def _split(n: int = 12) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """Black images, each with one solid rectangle in its class's colour."""
    g = torch.Generator().manual_seed(1)
    images = torch.zeros((n, 3, SIZE, SIZE), dtype=torch.uint8)
    boxes = []
    for i in range(n):
        cls = i % 3
        w, h = (int(v) for v in torch.randint(8, 40, (2,), generator=g))
        x1 = int(torch.randint(0, SIZE - w, (1,), generator=g))
        y1 = int(torch.randint(0, SIZE - h, (1,), generator=g))
        images[i, :, y1 : y1 + h, x1 : x1 + w] = COLOURS[cls].to(torch.uint8)[:, None, None]
        boxes.append(torch.tensor([[float(cls), x1, y1, x1 + w, y1 + h]]))
    return images, boxes


def _class_of_pixels(image: torch.Tensor) -> torch.Tensor:
    """Per pixel: the class whose colour it shows (bilinear edges excluded), else -1."""
    distance = (image[None] - COLOURS[:, :, None, None]).abs().amax(dim=1)  # [3, H, W]
    best, cls = distance.min(dim=0)
    return torch.where(best < 30, cls, torch.full_like(cls, -1))


def test_mosaic_keeps_every_box_inside_and_every_label_on_its_object() -> None:
    images, boxes = _split()
    checked = 0
    for seed in range(8):
        g = torch.Generator().manual_seed(seed)
        indices = torch.randperm(len(images), generator=g)[:6]
        out, batch_index, labels = mosaic_affine(
            images, boxes, indices, g, mosaic=True, scale=0.5, translate=0.1
        )
        assert out.shape == (6, 3, SIZE, SIZE) and out.dtype == torch.float32
        assert out.min() >= 0 and out.max() <= 255
        assert labels.shape[1] == 5 and len(batch_index) == len(labels)
        xyxy = labels[:, 1:]
        assert (xyxy >= 0).all() and (xyxy <= SIZE).all()  # inside the image
        assert (xyxy[:, 2] > xyxy[:, 0]).all() and (xyxy[:, 3] > xyxy[:, 1]).all()
        for b in range(len(indices)):
            pixels = _class_of_pixels(out[b])
            covered = torch.zeros((3, SIZE, SIZE), dtype=torch.bool)
            for (cls, x1, y1, x2, y2), bi in zip(
                labels.tolist(), batch_index.tolist(), strict=True
            ):
                if bi != b:
                    continue
                c = int(cls)
                # the label's box shows its own object: its centre has the class colour
                cx, cy = int((x1 + x2) / 2), int((y1 + y2) / 2)
                assert pixels[cy, cx] == c, (seed, b, cls, (x1, y1, x2, y2))
                # ... and the object lies within the box (1 px of bilinear edge allowed)
                inside = pixels[int(y1) + 1 : int(y2) - 1, int(x1) + 1 : int(x2) - 1]
                assert ((inside == c) | (inside == -1)).float().mean() > 0.9
                covered[c, max(int(y1) - 1, 0) : int(y2) + 2, max(int(x1) - 1, 0) : int(x2) + 2] = 1
                checked += 1
            # every object still in the picture has a label: coloured pixels outside every box
            # of their class are at most a sliver the 2 px / 10% rule drops (10% of the largest
            # object, 39 px zoomed by 1.5)
            for c in range(3):
                assert (pixels == c).logical_and(~covered[c]).sum() <= 0.1 * (39 * 1.5) ** 2
    assert checked > 40  # the check saw many labels


def test_affine_without_mosaic_moves_boxes_with_the_image() -> None:
    images, boxes = _split()
    g = torch.Generator().manual_seed(3)
    indices = torch.arange(6)
    out, batch_index, labels = mosaic_affine(
        images, boxes, indices, g, mosaic=False, scale=0.3, translate=0.2
    )
    for (cls, x1, y1, x2, y2), b in zip(labels.tolist(), batch_index.tolist(), strict=True):
        assert 0 <= x1 < x2 <= SIZE and 0 <= y1 < y2 <= SIZE
        assert _class_of_pixels(out[b])[int((y1 + y2) / 2), int((x1 + x2) / 2)] == int(cls)
    # no scale, no translate: the identity, labels unchanged
    out, batch_index, labels = mosaic_affine(
        images, boxes, indices, g, mosaic=False, scale=0.0, translate=0.0
    )
    assert torch.allclose(out, images[:6].float(), atol=1e-3)
    assert torch.allclose(labels, torch.cat(boxes[:6]), atol=1e-4)
    assert batch_index.tolist() == list(range(6))


def test_outside_the_source_is_the_pad_grey() -> None:
    images, boxes = _split()  # black backgrounds: grey 114 can only come from outside
    g = torch.Generator().manual_seed(0)
    out, _, _ = mosaic_affine(
        images, boxes, torch.arange(6), g, mosaic=False, scale=0.0, translate=0.4
    )
    grey = (out == PAD_VALUE).all(dim=1)  # [B, H, W]
    assert grey.any(dim=(1, 2)).all()  # every shifted image shows some of the outside
    assert not (images == PAD_VALUE).all(dim=1).any()
