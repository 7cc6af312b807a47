"""YOLOv5-style detection loss: three unweighted components, weighted once.

`DetectionLoss(detector, weights)(outputs, targets)` returns `LossParts`: the weighted total (for
backward) and the box, objectness and classification components, unweighted and detached (for
logging and for comparing trials that use different weights). The weights are applied in
`weighted_total` and nowhere else.

Each component is a per-image mean quantity, like YOLOv5's loss before its final `* batch_size`:

- box: mean over matched anchors of `1 - CIoU` (torchvision.ops), summed over levels;
- obj: `BCEWithLogits` over every anchor of every cell, target the matched anchor's detached CIoU
  (clamped >= 0) and 0 elsewhere, levels balanced 4.0 / 1.0 / 0.4 (P3 / P4 / P5);
- cls: `BCEWithLogits` on matched anchors against one-hot targets, summed over levels.

Target assignment (`build_targets`) is YOLOv5's: a target matches an anchor when their width and
height ratios are both within 4x, and is assigned to its own cell plus the two neighbouring cells
nearest its centre. It needs the targets and the outputs' grid sizes, never an output's value, so
it runs where the targets are: on the host for the trainer's batches (trainer/data.py), whose
assignments then go to the device. Its variable-size selections would otherwise make the host
wait for the GPU in every iteration.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import NamedTuple, Protocol

import torch
import torch.nn.functional as F
from torch import Tensor
from torchvision.ops import complete_box_iou_loss

from trainer.model import Detector

ANCHOR_RATIO = 4.0  # a target matches an anchor when max(w/aw, aw/w, h/ah, ah/h) < this
OBJ_BALANCE = (4.0, 1.0, 0.4)  # objectness weight per level (P3, P4, P5), as YOLOv5
# added to predicted and target widths/heights (grid cells, i.e. < 0.01 px): a collapsed box
# (w = h = 0 in float32) would make CIoU's atan(w / h) NaN and abort the run
_WH_EPS = 1e-4
_NEIGHBOUR_OFFSETS = ((0.0, 0.0), (1.0, 0.0), (0.0, 1.0), (-1.0, 0.0), (0.0, -1.0))


@dataclass(frozen=True)
class LossWeights:
    """Weights of the box, objectness and classification components (TrainConfig's values)."""

    lbox: float
    lobj: float
    lcls: float

    @classmethod
    def of(cls, config: _HasLossWeights) -> LossWeights:
        """A config's loss weights: the values the search drew are the values used."""
        return cls(lbox=config.lbox, lobj=config.lobj, lcls=config.lcls)


class _HasLossWeights(Protocol):
    @property
    def lbox(self) -> float: ...
    @property
    def lobj(self) -> float: ...
    @property
    def lcls(self) -> float: ...


class LossParts(NamedTuple):
    """The weighted total (with grad) and the unweighted, detached scalar components."""

    total: Tensor
    lbox: Tensor
    lobj: Tensor
    lcls: Tensor


class Assigned(NamedTuple):
    """Anchor/cell assignments of one level: indices into `[B, na, H, W]` and their targets."""

    b: Tensor  # image index
    a: Tensor  # anchor index
    gj: Tensor  # row
    gi: Tensor  # column
    box: Tensor  # [n, 4] (x, y) offset from the cell's corner and (w, h), in grid cells
    anchor: Tensor  # [n, 2] the matched anchor, in grid cells
    cls: Tensor  # [n] class index


def weighted_total(lbox: Tensor, lobj: Tensor, lcls: Tensor, weights: LossWeights) -> Tensor:
    """The one place the loss weights are applied: `lbox*box + lobj*obj + lcls*cls`."""
    return weights.lbox * lbox + weights.lobj * lobj + weights.lcls * lcls


class DetectionLoss:
    """Loss of a `Detector`'s raw outputs against normalised targets.

    `targets` is `[M, 6]`: `(batch_index, class, cx, cy, w, h)` with coordinates normalised to
    `[0, 1]` of the input image, on any device (the host's keep the GPU from waiting: module
    docstring); the input size is read from the outputs' grid times stride.
    """

    def __init__(self, detector: Detector, weights: LossWeights) -> None:
        for name in ("lbox", "lobj", "lcls"):
            value = getattr(weights, name)
            if not value >= 0:
                raise ValueError(f"{name} must be >= 0, but got {name}={value}")
        if len(detector.strides) != len(OBJ_BALANCE):
            raise ValueError(
                f"expected {len(OBJ_BALANCE)} levels, but got strides={detector.strides}"
            )
        self.nc = detector.nc
        self.strides = detector.strides
        self.weights = weights
        # anchors in pixels; converted to grid cells per level (and moved to the outputs' device)
        self.anchors = detector.anchors.detach().clone().float()

    def __call__(self, outputs: list[Tensor], targets: Tensor) -> LossParts:
        """Compute the loss; non-finite values are left for the caller to detect."""
        device = outputs[0].device
        # at least float32, even under autocast: BCE and IoU on bf16 logits lose too much
        # precision (a float64 model keeps float64: the packing equivalence test runs so)
        dtype = torch.promote_types(outputs[0].dtype, torch.float32)
        with torch.autocast(device_type=device.type, enabled=False):
            outputs = [o.to(dtype) for o in outputs]
            targets = targets.to(dtype=dtype)
            lbox, lobj, lcls = self.components(outputs, targets)
        total = weighted_total(lbox, lobj, lcls, self.weights)
        return LossParts(total, lbox.detach(), lobj.detach(), lcls.detach())

    def components(self, outputs: list[Tensor], targets: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """The three unweighted components (box, obj, cls), with grad."""
        device = outputs[0].device
        zero = torch.zeros((), device=device, dtype=outputs[0].dtype)
        lbox, lobj, lcls = zero, zero, zero
        for pi, assigned, balance in zip(
            outputs, self.build_targets(outputs, targets), OBJ_BALANCE, strict=True
        ):
            tobj = torch.zeros(pi.shape[:4], device=device, dtype=pi.dtype)
            if assigned.b.numel():
                p = pi[assigned.b, assigned.a, assigned.gj, assigned.gi]  # [n, 5 + nc]
                pxy = p[:, 0:2].sigmoid() * 2 - 0.5
                pwh = (p[:, 2:4].sigmoid() * 2) ** 2 * assigned.anchor + _WH_EPS
                box_loss = complete_box_iou_loss(
                    _xywh_to_xyxy(pxy, pwh),
                    _xywh_to_xyxy(assigned.box[:, :2], assigned.box[:, 2:] + _WH_EPS),
                )
                lbox = lbox + box_loss.mean()
                # objectness target: how good the box is, not a gradient path into the box
                ciou = (1.0 - box_loss).detach().clamp(min=0)
                tobj[assigned.b, assigned.a, assigned.gj, assigned.gi] = ciou
                tcls = F.one_hot(assigned.cls, self.nc).to(p.dtype)
                lcls = lcls + F.binary_cross_entropy_with_logits(p[:, 5:], tcls)
            lobj = lobj + balance * F.binary_cross_entropy_with_logits(pi[..., 4], tobj)
        return lbox, lobj, lcls

    def build_targets(self, outputs: list[Tensor], targets: Tensor) -> list[Assigned]:
        """YOLOv5's assignment: per level, the (image, anchor, cell) slots each target trains,
        computed where `targets` are and returned on the outputs' device."""
        device = targets.device
        if targets.ndim != 2 or targets.shape[1] != 6:
            raise ValueError(f"targets must be [M, 6], but got shape {tuple(targets.shape)}")
        if targets.numel() and int(targets[:, 1].max()) >= self.nc:
            raise ValueError(f"target class must be < nc={self.nc}, but got {targets[:, 1].max()}")
        anchors_px = self.anchors.to(device)
        na, nt = anchors_px.shape[1], targets.shape[0]
        # [na, nt, 7]: every target once per anchor, with the anchor index appended
        anchor_index = torch.arange(na, device=device).to(targets.dtype).view(na, 1).expand(na, nt)
        t_all = torch.cat((targets.unsqueeze(0).expand(na, nt, 6), anchor_index[..., None]), 2)
        offsets = torch.tensor(_NEIGHBOUR_OFFSETS, device=device) * 0.5
        result = []
        for pi, stride, anchors in zip(outputs, self.strides, anchors_px, strict=True):
            h, w = pi.shape[2], pi.shape[3]
            anchors = anchors / stride  # grid cells
            gain = torch.tensor([1, 1, w, h, w, h, 1], device=device, dtype=targets.dtype)
            t = t_all * gain
            if nt:
                ratio = t[..., 4:6] / anchors[:, None]
                t = t[torch.max(ratio, 1 / ratio).max(2).values < ANCHOR_RATIO]
                # besides its own cell, a centre in a cell's left half also trains the cell to
                # the left (xy predictions reach -0.5..1.5 of a cell), likewise for the others
                gxy = t[:, 2:4]
                gxi = gain[[2, 3]] - gxy
                j, k = ((gxy % 1 < 0.5) & (gxy > 1)).T
                left, m = ((gxi % 1 < 0.5) & (gxi > 1)).T
                keep = torch.stack((torch.ones_like(j), j, k, left, m))
                t = t.unsqueeze(0).expand(5, -1, -1)[keep]
                off = (torch.zeros_like(gxy)[None] + offsets[:, None])[keep]
            else:
                t = t_all[0]
                off = torch.zeros_like(t[:, 2:4])
            b, c = t[:, 0].long(), t[:, 1].long()
            gxy, gwh, a = t[:, 2:4], t[:, 4:6], t[:, 6].long()
            gij = (gxy - off).long()
            gi = gij[:, 0].clamp(0, w - 1)
            gj = gij[:, 1].clamp(0, h - 1)
            box = torch.cat((gxy - torch.stack((gi, gj), 1), gwh), 1)
            assigned = Assigned(b, a, gj, gi, box, anchors[a], c)
            result.append(Assigned(*(x.to(pi.device, non_blocking=True) for x in assigned)))
        return result


def _xywh_to_xyxy(xy: Tensor, wh: Tensor) -> Tensor:
    return torch.cat((xy - wh / 2, xy + wh / 2), 1)
