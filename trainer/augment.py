"""Training augmentation on whole batches of tensors: mosaic, random scale/translate, flip, HSV.

The field's from-scratch recipe (Ultralytics `Mosaic` + `RandomPerspective` + `RandomHSV` +
`RandomFlip`), written as batched tensor operations so data preparation stays a small share of
an iteration on 2 CPU cores (and runs on the GPU when the images are there):

- **mosaic**: every output image is cut from a 2x2 grid of four training images (itself and
  three drawn at random), so each batch shows objects at many positions, scales and crops, and
  four times the backgrounds. The crop centre is uniform over the middle of the grid, as
  Ultralytics' mosaic centre in [S/2, 3S/2].
- **random affine**: zoom by a factor in [1 - scale, 1 + scale] and shift by up to `translate`
  of the image, one `affine_grid` + `grid_sample` for the whole batch; outside the source is
  grey 114, the letterbox pad value. Boxes move with the same map, are clipped to the image and
  dropped when less than 2 px wide or high or when less than 10% of their area is left
  (Ultralytics' `box_candidates`): a label never outlives its object.
- **flip** and **HSV**: a horizontal flip, then one 3x3 colour matrix per image (hue rotation in
  YIQ, saturation and value gains) applied by batched matmul; per-image `v2.ColorJitter` costs
  about a millisecond an image, far over budget.

Every random draw comes from the caller's `torch.Generator`, so an epoch is reproducible from
the generator's state (what a checkpoint saves).

**Where it runs.** The draws and the labels (a few numbers per image) stay on the host, on the
host's generator; the pixels are cut, warped, flipped and coloured on the device that holds the
images (`trainer.data.on_device` keeps a data set on a GPU as uint8). So a batch costs the GPU a
few kernels, no image crosses from the host, making a batch never waits on the GPU (the host
only sends it the draws), and an epoch draws the same batches on either device.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor
from torchvision import tv_tensors
from torchvision.transforms.v2 import functional as TF

from trainer.letterbox import PAD_VALUE

MIN_BOX_PX = 2.0  # boxes narrower or lower than this after the affine are dropped
MIN_AREA_KEPT = 0.1  # ... and those with less than this share of their area inside the image

# RGB <-> YIQ: hue is a rotation of the (I, Q) chroma plane, saturation its length, value Y.
_RGB_TO_YIQ = torch.tensor(
    [[0.299, 0.587, 0.114], [0.596, -0.274, -0.322], [0.211, -0.523, 0.312]], dtype=torch.float32
)
_YIQ_TO_RGB = torch.linalg.inv(_RGB_TO_YIQ)
_CHUNK = 4


@dataclass(frozen=True)
class AugmentSpec:
    """What one epoch's batches get (TrainConfig's augmentation fields, mosaic on or off)."""

    mosaic: float = 0.0  # probability that a batch is made of mosaics
    scale: float = 0.0
    translate: float = 0.0
    fliplr: float = 0.5
    hsv_h: float = 0.015
    hsv_s: float = 0.7
    hsv_v: float = 0.4


def mosaic_affine(
    images: Tensor,
    boxes: list[Tensor],
    indices: Tensor,
    generator: torch.Generator,
    *,
    mosaic: bool,
    scale: float,
    translate: float,
) -> tuple[Tensor, Tensor, Tensor]:
    """Build a batch of `len(indices)` images from `images` (uint8 `[N, 3, S, S]`, the split).

    `boxes[i]` is `[n, 5]` (cls, x1, y1, x2, y2) in pixels of image i. Returns float images
    `[B, 3, S, S]` in [0, 255] on the images' device, `batch_index` `[M]` and labels `[M, 5]`
    (cls, x1, y1, x2, y2) in output pixels on the host, only for objects that are still in the
    picture. `indices` and the draws are the host's.
    """
    b, size, device = len(indices), images.shape[-1], images.device
    if mosaic:
        others = torch.randint(len(images), (b, 3), generator=generator)
        tiles = torch.cat([indices[:, None], others], dim=1)  # [B, 4]: TL, TR, BL, BR
        canvas = images.index_select(0, tiles.flatten().to(device)).view(b, 2, 2, 3, size, size)
        canvas = canvas.permute(0, 3, 1, 4, 2, 5).reshape(b, 3, 2 * size, 2 * size)
        offsets = torch.tensor([[0, 0], [size, 0], [0, size], [size, size]], dtype=torch.float32)
        centre = size / 2 + torch.rand(b, 2, generator=generator) * size
    else:
        tiles = indices[:, None]
        canvas = images.index_select(0, indices.to(device))
        offsets = torch.zeros((1, 2))
        centre = torch.full((b, 2), size / 2)
    centre = centre + (torch.rand(b, 2, generator=generator) * 2 - 1) * translate * size
    zoom = 1 + (torch.rand(b, generator=generator) * 2 - 1) * scale
    side = canvas.shape[-1]

    # output pixel u (centre u + 0.5) shows canvas point centre + (u + 0.5 - S/2) / zoom;
    # in grid_sample's [-1, 1] coordinates (align_corners=False) that is an affine map
    # (F.affine_grid's map without rotation, built separably: a third of its time)
    steps = (torch.arange(size, dtype=torch.float32, device=device) + 0.5) * (2 / size) - 1
    gain = (size / (side * zoom))[:, None].to(device)
    shift = (2 * centre / side - 1).to(device)
    gx = (steps[None] * gain + shift[:, :1])[:, None, :].expand(b, size, size)
    gy = (steps[None] * gain + shift[:, 1:])[:, :, None].expand(b, size, size)
    grid = torch.stack((gx, gy), dim=-1)
    # sample (canvas - pad) with zero padding: outside the canvas becomes the pad grey
    source = canvas.to(torch.float32).sub_(PAD_VALUE)
    out = F.grid_sample(source, grid, mode="bilinear", align_corners=False)
    out = out.add_(PAD_VALUE).clamp_(0, 255)  # bilinear rounding may step outside by 1e-5

    # labels: every tile's boxes, moved onto the canvas, then through the same map
    per_tile = [boxes[i] for i in tiles.flatten().tolist()]
    counts = torch.tensor([len(t) for t in per_tile])
    labels = torch.cat(per_tile) if per_tile else torch.zeros((0, 5))
    slot = torch.repeat_interleave(torch.arange(len(per_tile)), counts)
    batch_index = slot // tiles.shape[1]
    shift = offsets[slot % tiles.shape[1]].repeat(1, 2)
    xyxy = (labels[:, 1:] + shift - centre[batch_index].repeat(1, 2)) * zoom[batch_index, None]
    xyxy = xyxy + size / 2
    clipped = xyxy.clamp(0, size)
    w, h = clipped[:, 2] - clipped[:, 0], clipped[:, 3] - clipped[:, 1]
    area = (xyxy[:, 2] - xyxy[:, 0]) * (xyxy[:, 3] - xyxy[:, 1])
    keep = (w > MIN_BOX_PX) & (h > MIN_BOX_PX) & (w * h > MIN_AREA_KEPT * area)
    labels = torch.cat([labels[keep, :1], clipped[keep]], dim=1)
    return out, batch_index[keep], labels


def augment_batch(
    images: Tensor,
    batch_index: Tensor,
    xyxy: Tensor,
    generator: torch.Generator,
    *,
    flip_p: float = 0.5,
    hue: float = 0.015,
    saturation: float = 0.7,
    value: float = 0.4,
) -> tuple[Tensor, Tensor]:
    """Random horizontal flip and HSV-style colour jitter, drawn per image from `generator`.

    `images` `[B, 3, S, S]`, uint8 or float in [0, 255] (flipped in place), on any device;
    `xyxy` `[M, 4]` pixels of the image `batch_index[m]`, on the host. Returns float images in
    [0, 1] on the images' device and the moved boxes (a new tensor). Boxes flip through
    torchvision.transforms.v2 with `tv_tensors.BoundingBoxes`. `hue` is the largest rotation as
    a fraction of the colour circle, `saturation` and `value` the largest relative gain change.
    """
    b, _, h, w = images.shape
    flip = torch.rand(b, generator=generator) < flip_p
    xyxy = xyxy.clone()
    if bool(flip.any()):
        chosen = flip.nonzero().flatten().to(images.device)
        images[chosen] = images[chosen].flip(-1)
        rows = flip[batch_index]
        boxes = tv_tensors.BoundingBoxes(xyxy[rows], format="XYXY", canvas_size=(h, w))
        xyxy[rows] = TF.horizontal_flip(boxes).as_subclass(Tensor)
    angle = (torch.rand(b, generator=generator) * 2 - 1) * (hue * 2 * math.pi)
    sat = 1 + (torch.rand(b, generator=generator) * 2 - 1) * saturation
    val = 1 + (torch.rand(b, generator=generator) * 2 - 1) * value
    cos, sin = torch.cos(angle) * sat, torch.sin(angle) * sat
    yiq = torch.zeros((b, 3, 3))
    yiq[:, 0, 0] = 1
    yiq[:, 1, 1], yiq[:, 1, 2], yiq[:, 2, 1], yiq[:, 2, 2] = cos, -sin, sin, cos
    matrix = ((_YIQ_TO_RGB @ yiq @ _RGB_TO_YIQ) * (val / 255)[:, None, None]).to(images.device)
    flat = images.reshape(b, 3, h * w)
    out = torch.empty((b, 3, h * w), device=images.device)
    # A few images at a time: big temporaries cost page faults on every batch (slow on VMs).
    for c in range(0, b, _CHUNK):
        torch.bmm(matrix[c : c + _CHUNK], flat[c : c + _CHUNK].float(), out=out[c : c + _CHUNK])
    return out.clamp_(0, 1).reshape(b, 3, h, w), xyxy
