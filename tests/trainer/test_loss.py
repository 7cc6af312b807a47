"""The detection loss: components on hand-made targets, assignment, and weights applied once."""

from __future__ import annotations

import math

import pytest
import torch

from trainer.loss import DetectionLoss, LossParts, LossWeights, weighted_total
from trainer.model import Detector, build_detector

IMGSZ = 64
DEFAULT = LossWeights(lbox=0.05, lobj=1.0, lcls=0.5)


@pytest.fixture(scope="module")
def model() -> Detector:
    return build_detector("nano", 3)


def _blank_outputs(model: Detector, batch: int = 1, fill: float = -12.0) -> list[torch.Tensor]:
    """Raw outputs saying 'nothing here' everywhere (objectness and classes strongly negative)."""
    return [
        torch.full((batch, model.na, IMGSZ // s, IMGSZ // s, 5 + model.nc), fill)
        for s in model.strides
    ]


def _logit(p: torch.Tensor) -> torch.Tensor:
    return torch.log(p / (1 - p))


def _perfect_outputs(model: Detector, targets: torch.Tensor, batch: int = 1) -> list[torch.Tensor]:
    """Raw outputs that predict every target exactly in every slot the loss assigns it to."""
    loss = DetectionLoss(model, DEFAULT)
    outputs = _blank_outputs(model, batch)
    for out, assigned in zip(outputs, loss.build_targets(outputs, targets), strict=True):
        raw = torch.empty(assigned.b.numel(), 5 + model.nc)
        raw[:, 0:2] = _logit((assigned.box[:, :2] + 0.5) / 2)
        raw[:, 2:4] = _logit(torch.sqrt(assigned.box[:, 2:] / assigned.anchor) / 2)
        raw[:, 4] = 12.0
        raw[:, 5:] = -12.0
        raw[torch.arange(len(raw)), 5 + assigned.cls] = 12.0
        out[assigned.b, assigned.a, assigned.gj, assigned.gi] = raw
    return outputs


TARGETS = torch.tensor([[0, 1, 0.30, 0.40, 0.20, 0.30], [0, 2, 0.70, 0.65, 0.45, 0.35]])


def test_perfect_prediction_gives_near_zero_loss(model: Detector) -> None:
    parts = DetectionLoss(model, DEFAULT)(_perfect_outputs(model, TARGETS), TARGETS)
    assert parts.lbox.item() < 1e-4
    assert parts.lobj.item() < 1e-3
    assert parts.lcls.item() < 1e-3


def test_wrong_class_raises_only_cls_loss(model: Detector) -> None:
    loss = DetectionLoss(model, DEFAULT)
    outputs = _perfect_outputs(model, TARGETS)
    right = loss(outputs, TARGETS)
    wrong_targets = TARGETS.clone()
    wrong_targets[:, 1] = torch.tensor([0, 1])
    wrong = loss(outputs, wrong_targets)
    assert wrong.lcls > 1.0 > 1e-3 > right.lcls
    assert wrong.lbox == pytest.approx(right.lbox.item(), abs=1e-6)
    assert wrong.lobj == pytest.approx(right.lobj.item(), abs=1e-6)


def test_shifted_box_raises_box_loss(model: Detector) -> None:
    loss = DetectionLoss(model, DEFAULT)
    moved = TARGETS.clone()
    moved[:, 2] += 0.1
    parts = loss(_perfect_outputs(model, moved), TARGETS)
    assert parts.lbox > 0.05
    # objectness targets follow the (now lower) IoU, so predicting 1 costs something
    assert parts.lobj > 1e-3


def test_collapsed_boxes_stay_finite(model: Detector) -> None:
    # sigmoid(-30) * 2 squared underflows: every predicted box has zero width and height
    outputs = [o.requires_grad_() for o in _blank_outputs(model, fill=-30.0)]
    parts = DetectionLoss(model, DEFAULT)(outputs, TARGETS)
    parts.total.backward()
    assert torch.isfinite(parts.total) and parts.lbox > 1.0
    assert all(o.grad is not None and torch.isfinite(o.grad).all() for o in outputs)


def test_no_targets_gives_only_objectness(model: Detector) -> None:
    torch.manual_seed(0)
    outputs = [o.requires_grad_() for o in _blank_outputs(model, batch=2, fill=0.0)]
    parts = DetectionLoss(model, DEFAULT)(outputs, torch.zeros(0, 6))
    assert parts.lbox.item() == 0.0
    assert parts.lcls.item() == 0.0
    # every objectness logit is 0: BCE(0, 0) = log 2 on each level, balanced 4.0 + 1.0 + 0.4
    assert parts.lobj.item() == pytest.approx(5.4 * math.log(2), rel=1e-5)
    parts.total.backward()
    assert outputs[0].grad is not None and outputs[0].grad[..., 4].abs().sum() > 0


def test_image_without_objects_contributes_only_objectness(model: Detector) -> None:
    loss = DetectionLoss(model, DEFAULT)
    outputs = _perfect_outputs(model, TARGETS, batch=2)  # image 1 has no targets
    before = loss(outputs, TARGETS)
    for out in outputs:
        out[1, ..., :4] = 3.0  # boxes of the empty image: irrelevant
        out[1, ..., 5:] = 5.0  # classes of the empty image: irrelevant
    after = loss(outputs, TARGETS)
    assert after.lbox == before.lbox and after.lcls == before.lcls
    outputs[0][1, ..., 4] = 5.0  # objectness of the empty image: penalised
    assert loss(outputs, TARGETS).lobj > before.lobj + 0.1


def test_fresh_model_total_is_in_the_notes_range(model: Detector) -> None:
    torch.manual_seed(0)
    m = 24  # ~6 objects per image, 8-60 px at 128 px
    targets = torch.zeros(m, 6)
    targets[:, 0] = torch.arange(m) % 4
    targets[:, 1] = torch.arange(m) % 3
    targets[:, 4:6] = torch.rand(m, 2) * 52 / 128 + 8 / 128
    targets[:, 2:4] = targets[:, 4:6] / 2 + torch.rand(m, 2) * (1 - targets[:, 4:6])
    with torch.no_grad():
        parts = DetectionLoss(model, DEFAULT)(model.train()(torch.randn(4, 3, 128, 128)), targets)
    assert 0.8 < parts.total.item() < 2.5


def test_doubling_lbox_doubles_only_the_box_term(model: Detector) -> None:
    torch.manual_seed(0)
    outputs = model(torch.randn(2, 3, IMGSZ, IMGSZ))
    targets = TARGETS.clone()
    targets[1, 0] = 1
    base = DetectionLoss(model, DEFAULT)(outputs, targets)
    doubled = DetectionLoss(model, LossWeights(lbox=0.1, lobj=1.0, lcls=0.5))(outputs, targets)
    assert base.lbox.item() > 0.1
    torch.testing.assert_close(doubled.total - base.total, 0.05 * base.lbox)
    for name in ("lbox", "lobj", "lcls"):
        assert getattr(doubled, name) == getattr(base, name)


@pytest.mark.parametrize(
    "weights", [LossWeights(0.5, 1.0, 0.05), LossWeights(0.25, 1.0, 0.25), LossWeights(0, 0, 1)]
)
def test_components_do_not_depend_on_weights(model: Detector, weights: LossWeights) -> None:
    torch.manual_seed(0)
    outputs = model(torch.randn(2, 3, IMGSZ, IMGSZ))
    base = DetectionLoss(model, DEFAULT)(outputs, TARGETS)
    other = DetectionLoss(model, weights)(outputs, TARGETS)
    assert (other.lbox, other.lobj, other.lcls) == (base.lbox, base.lobj, base.lcls)
    expected = weighted_total(base.lbox, base.lobj, base.lcls, weights)
    torch.testing.assert_close(other.total.detach(), expected)
    assert other.total.requires_grad
    assert not (other.lbox.requires_grad or other.lobj.requires_grad or other.lcls.requires_grad)
    assert isinstance(other, LossParts) and other.lbox.ndim == 0


def test_assignment_follows_anchor_ratio_and_neighbours(model: Detector) -> None:
    loss = DetectionLoss(model, DEFAULT)
    outputs = _blank_outputs(model)
    # a 56 px square at 64 px input: > 4x every P3 anchor, so it never trains P3
    big = torch.tensor([[0, 0, 0.5, 0.5, 56 / 64, 56 / 64]])
    per_level = [len(a.b) for a in loss.build_targets(outputs, big)]
    assert per_level[0] == 0 and per_level[2] > 0
    # a 6 px box centred at (0.3, 0.3) of cell (2, 2) on P3: its own cell plus left and upper
    small = torch.tensor([[0, 0, 2.3 * 8 / 64, 2.3 * 8 / 64, 6 / 64, 6 / 64]])
    p3 = loss.build_targets(outputs, small)[0]
    cells = {(int(j), int(i)) for j, i in zip(p3.gj, p3.gi, strict=True)}
    assert cells == {(2, 2), (2, 1), (1, 2)}
    assert len(p3.b) == 3 * model.na  # every P3 anchor is within 4x of 6 px


def test_loss_is_float32_under_autocast(model: Detector) -> None:
    outputs = [o.to(torch.bfloat16) for o in _perfect_outputs(model, TARGETS)]
    with torch.autocast("cpu", dtype=torch.bfloat16):
        parts = DetectionLoss(model, DEFAULT)(outputs, TARGETS)
    assert parts.total.dtype == torch.float32
    assert math.isfinite(parts.total.item())


def test_bad_targets_and_weights_are_named(model: Detector) -> None:
    loss = DetectionLoss(model, DEFAULT)
    with pytest.raises(ValueError, match="shape"):
        loss(_blank_outputs(model), torch.zeros(2, 5))
    with pytest.raises(ValueError, match="nc=3"):
        loss(_blank_outputs(model), torch.tensor([[0, 3, 0.5, 0.5, 0.1, 0.1]]))
    with pytest.raises(ValueError, match="lcls=-1"):
        DetectionLoss(model, LossWeights(lbox=0.05, lobj=1.0, lcls=-1.0))
