"""trainer/mean_ap.py against COCOeval itself (pycocotools, and faster-coco-eval, which tune used
before) on the same predictions: random scenes built to hit COCOeval's corners."""

from __future__ import annotations

from collections.abc import Sequence

import pytest
import torch

from bench.coco_reference import cocoeval_map as _cocoeval
from trainer.mean_ap import MAX_DETECTIONS, GroundTruth, mean_average_precision

Scene = tuple[list[torch.Tensor], list[torch.Tensor]]  # per image: truth [n, 5], detections [m, 6]


def _scene(seed: int, images: int = 12, nc: int = 4, crowded: bool = False) -> Scene:
    """Ground truth and detections near it: jittered copies, duplicates, misses, strays, tied
    scores, classes without truth or without detections, images without either."""
    g = torch.Generator().manual_seed(seed)
    truth, dets = [], []
    for i in range(images):
        n = 0 if i % 5 == 4 else int(torch.randint(1, 6, (1,), generator=g))
        xy = torch.rand(n, 2, generator=g) * 400
        wh = 10 + torch.rand(n, 2, generator=g) * 150
        cls = torch.randint(0, nc - 1, (n, 1), generator=g).float()  # class nc-1 has no truth
        boxes = torch.cat([cls, xy, xy + wh], 1)
        truth.append(boxes)
        copies = 3 if not crowded else 60
        near = boxes.repeat(copies, 1)
        size = (near[:, 3:5] - near[:, 1:3]).repeat(1, 2)
        jitter = torch.randn(len(near), 4, generator=g) * size * 0.08
        near_xyxy = near[:, 1:] + jitter
        strays = int(torch.randint(0, 8 if not crowded else 150, (1,), generator=g))
        s_xy = torch.rand(strays, 2, generator=g) * 400
        stray_xyxy = torch.cat([s_xy, s_xy + 5 + torch.rand(strays, 2, generator=g) * 100], 1)
        xyxy = torch.cat([near_xyxy, stray_xyxy])
        xyxy = torch.cat([xyxy[:, :2], torch.maximum(xyxy[:, 2:], xyxy[:, :2] + 0.5)], 1)
        labels = torch.cat([near[:, :1], torch.randint(0, nc, (strays, 1), generator=g).float()])
        flip = torch.rand(len(labels), 1, generator=g) < 0.1  # some with the wrong class
        labels = torch.where(flip, (labels + 1) % nc, labels)
        # scores on a coarse grid, so that many tie
        scores = (torch.rand(len(labels), 1, generator=g) * 20).floor() / 20 + 0.01
        if len(labels) and i % 3 == 0:
            xyxy[-1] = xyxy[0]  # an exact duplicate: equal IoUs with every box
            labels[-1], scores[-1] = labels[0], scores[0]
        dets.append(torch.cat([xyxy, scores, labels], 1)[: 10 * MAX_DETECTIONS])
    return truth, dets


def _ours(truth: Sequence[torch.Tensor], runs: Sequence[Sequence[torch.Tensor]],
          nc: int) -> list[tuple[float, float]]:  # fmt: skip
    return mean_average_precision(runs, GroundTruth.of(truth, nc, torch.device("cpu")))


@pytest.mark.parametrize("seed", range(6))
def test_equals_pycocotools_on_random_scenes(seed: int) -> None:
    truth, dets = _scene(seed)
    (ours,) = _ours(truth, [dets], nc=4)
    reference = _cocoeval(truth, dets, nc=4)
    assert ours == pytest.approx(reference, rel=1e-12, abs=1e-15)
    assert 0.1 < ours[1] < ours[0] < 1  # a scene that scores something, but not everything


def test_equals_faster_coco_eval_on_the_same_scenes() -> None:
    for seed in range(3):
        truth, dets = _scene(seed)
        (ours,) = _ours(truth, [dets], nc=4)
        assert ours == pytest.approx(_cocoeval(truth, dets, nc=4, faster=True), rel=1e-12)


def test_more_than_100_detections_of_an_image_and_class_are_cut_as_cocoeval_cuts_them() -> None:
    truth, dets = _scene(7, images=4, crowded=True)
    counts = [int((d[:, 5] == c).sum()) for d in dets for c in range(4)]
    assert max(counts) > MAX_DETECTIONS
    (ours,) = _ours(truth, [dets], nc=4)
    assert ours == pytest.approx(_cocoeval(truth, dets, nc=4), rel=1e-12)


def test_runs_scored_together_score_as_each_alone() -> None:
    scenes = [_scene(seed) for seed in (11, 12, 13)]
    truth = scenes[0][0]
    runs = [scenes[0][1], scenes[1][1][: len(truth)], [d[:0] for d in scenes[2][1]]]
    together = _ours(truth, runs, nc=4)
    alone = [_ours(truth, [run], nc=4)[0] for run in runs]
    assert together == alone
    assert together[0] == pytest.approx(_cocoeval(truth, runs[0], nc=4), rel=1e-12)
    assert together[2] == (0.0, 0.0)  # no detections at all


def test_perfect_detections_score_one_and_no_truth_scores_zero() -> None:
    truth, _ = _scene(3)
    perfect = [torch.cat([b[:, 1:], torch.ones(len(b), 1), b[:, :1]], 1) for b in truth]
    assert _ours(truth, [perfect], nc=4) == [(1.0, 1.0)]
    empty = [b[:0] for b in truth]
    assert _ours(empty, [perfect], nc=4) == [(0.0, 0.0)]


def test_a_run_must_have_one_tensor_per_image() -> None:
    truth, dets = _scene(0)
    with pytest.raises(ValueError, match="one detection tensor per image"):
        _ours(truth, [dets[:-1]], nc=4)


def test_cocoeval_ties_an_iou_at_a_threshold_and_a_detection_between_two_boxes() -> None:
    """Built by hand: A overlaps two boxes equally (0.818 each) and takes the later one, which
    leaves the first to B (IoU 1 with it, 0.667 with the later box); C's IoU with its box is
    exactly 0.5, the first threshold."""
    truth = [
        torch.tensor(
            [[0, 0, 0, 10, 10], [0, 2, 0, 12, 10], [1, 50, 50, 60, 70]], dtype=torch.float
        ),
    ]
    dets = [
        torch.tensor(
            [
                [1, 0, 11, 10, 0.9, 0],  # A
                [0, 0, 10, 10, 0.8, 0],  # B
                [50, 50, 60, 60, 0.7, 1],  # C
            ]
        )
    ]
    (ours,) = _ours(truth, [dets], nc=2)
    assert ours == pytest.approx(_cocoeval(truth, dets, nc=2), rel=1e-12)
    assert ours[0] == pytest.approx(1.0)  # every detection matches at IoU 0.5


def test_a_run_scores_the_same_next_to_runs_of_another_dtype_and_bad_truth_is_refused() -> None:
    # w = x2 - x1 is 5 in float32 and just under in float64: IoU 0.5 with the box, or less
    truth = [torch.tensor([[0, 0, 0, 10, 10.0]])]
    dets = [torch.tensor([[0.0374, 0, 5.037399768829346, 10, 0.9, 0]], dtype=torch.float32)]
    (alone,) = _ours(truth, [dets], nc=1)
    assert alone == pytest.approx(_cocoeval(truth, dets, nc=1), rel=1e-12)
    assert alone == pytest.approx((1.0, 0.1))
    together = _ours(truth, [[d.double() for d in dets], dets], nc=1)
    assert together == [(0.0, 0.0), alone]
    with pytest.raises(ValueError, match=r"ground-truth classes .* \[0, 4\).*cls=4"):
        GroundTruth.of([torch.tensor([[4.0, 0, 0, 10, 10]])], 4, torch.device("cpu"))
    nothing = GroundTruth.of([], 4, torch.device("cpu"))
    assert mean_average_precision([[]], nothing) == [(0.0, 0.0)]
