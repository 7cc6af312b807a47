"""COCO's box mAP computed with torch, on the device the detections are on, for many runs at once.

A pack of K trials evaluates K runs at each evaluation boundary. COCOeval on the host
(faster-coco-eval, 0.2 to 1.2 s per run on this machine, more for an untrained model's many
boxes) was paid K times there, after every run's detections had crossed to the host. This
module computes COCOeval's two numbers, mAP50 and mAP50-95 (bbox, area "all", at most 100
detections per image and class, IoU thresholds .50:.05:.95, 101 recall points), as tensor
operations over every run together: the same matches, the same precision envelope and the
same recall points, in float64 with COCO's own formulas, so the result is COCOeval's up to
the order of its final mean (tests/trainer/test_mean_ap.py compares it with pycocotools and
faster-coco-eval on the same predictions, edge cases included).

The two sequential parts of COCOeval are kept sequential, but across all runs, images and
classes at once: greedy matching walks detection ranks (at most 100 steps, each over every
(run, image, class) group), and the precision envelope walks (run, class) segments. Neither
reads a value back to the host inside its loop.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

# COCOeval's parameters, built as COCOeval builds them (np.linspace), so that every comparison
# with a threshold sees the same float64 value
IOU_THRESHOLDS = torch.from_numpy(np.linspace(0.5, 0.95, round((0.95 - 0.5) / 0.05) + 1))
RECALL_POINTS = torch.from_numpy(np.linspace(0.0, 1.0, round(1.0 / 0.01) + 1))
MAX_DETECTIONS = 100  # per image and class (COCOeval's maxDets[-1])
AREA_RANGE = (0.0, 1e5**2)  # area "all"; an unmatched detection outside it is ignored
_EPS = float(np.spacing(1))  # COCOeval's guard in precision = tp / (tp + fp + eps)


@dataclass(frozen=True)
class GroundTruth:
    """A split's boxes as COCOeval holds them: image index, class, and x, y, w, h in float64
    (w = x2 - x1 of float32 corners, taken in float64 as COCO's annotations are)."""

    image: Tensor  # [M] int64
    cls: Tensor  # [M] int64
    xywh: Tensor  # [M, 4] float64
    num_images: int
    num_classes: int

    @classmethod
    def of(cls, boxes: Sequence[Tensor], num_classes: int, device: torch.device) -> GroundTruth:
        """From per-image `[n, 5]` (cls, x1, y1, x2, y2) boxes in original pixels."""
        counts = torch.tensor([len(b) for b in boxes], dtype=torch.long)
        rows = torch.cat([b.double().reshape(-1, 5) for b in boxes]) if boxes else torch.empty(0, 5)
        bad = (rows[:, 0] < 0) | (rows[:, 0] >= num_classes) | (rows[:, 0] != rows[:, 0].round())
        if bool(bad.any()):
            raise ValueError(
                f"ground-truth classes must be whole numbers in [0, {num_classes}), but got "
                f"cls={rows[bad, 0][0].item()}"
            )
        corners = rows[:, 1:].double()
        xywh = torch.cat([corners[:, :2], corners[:, 2:] - corners[:, :2]], dim=1)
        return cls(
            image=torch.arange(len(boxes)).repeat_interleave(counts).to(device),
            cls=rows[:, 0].long().to(device),
            xywh=xywh.to(device),
            num_images=len(boxes),
            num_classes=num_classes,
        )


def mean_average_precision(
    runs: Sequence[Sequence[Tensor]], truth: GroundTruth
) -> list[tuple[float, float]]:
    """(mAP50, mAP50-95) of each run, as COCOeval gives them (a class without ground truth is
    left out; no class with ground truth gives 0).

    A run is its per-image detections, `[n, 6]` rows of x1, y1, x2, y2, score, class in
    original pixels (`trainer.evaluate.Evaluation.detections`), one tensor per image of
    `truth`, on `truth`'s device. Within an image, rows of equal score keep their order, as
    COCO's results keep the order they are loaded in.
    """
    for r, run in enumerate(runs):
        if len(run) != truth.num_images:
            raise ValueError(
                f"each run needs one detection tensor per image ({truth.num_images}), but run "
                f"{r} has {len(run)}"
            )
    if not runs:
        return []
    dets = _Detections.of(runs, truth)
    matched = _match(dets, truth)
    precision = _precision(dets, matched, truth, len(runs))  # [runs, T, R, classes]
    scored = precision[0, 0, 0] > -1  # the classes with ground truth
    if not bool(scored.any()):
        return [(0.0, 0.0)] * len(runs)
    kept = precision[..., scored]
    means = torch.stack([kept[:, 0].mean(dim=(1, 2)), kept.mean(dim=(1, 2, 3))], dim=1)
    return [(m50, m50_95) for m50, m50_95 in means.tolist()]


@dataclass(frozen=True)
class _Detections:
    """Every run's detections, at most `MAX_DETECTIONS` per (run, image, class), as rows
    ordered by group (run, image, class) and by score within it (ties in loaded order)."""

    run: Tensor  # [D] int64
    image: Tensor  # [D]
    cls: Tensor  # [D]
    score: Tensor  # [D], in float64 as COCO holds it
    xywh: Tensor  # [D, 4] float64
    rank: Tensor  # [D] its place in its group by score, 0 first

    @classmethod
    def of(cls, runs: Sequence[Sequence[Tensor]], truth: GroundTruth) -> _Detections:
        device = truth.xywh.device
        counts = torch.tensor(
            [len(d) for run in runs for d in run], dtype=torch.long, device=device
        )
        # COCO's results hold x, y as given and w = x2 - x1 in the detections' own dtype: taken
        # per run, before runs of other dtypes would promote it
        per_run = [
            torch.cat([d.reshape(-1, 6) for d in run]).to(device)
            if run
            else torch.empty(0, 6, device=device)
            for run in runs
        ]
        xywh = torch.cat(
            [torch.cat([r[:, :2], r[:, 2:4] - r[:, :2]], dim=1).double() for r in per_run]
        )
        flat = torch.cat([r.double() for r in per_run])
        slot = torch.arange(len(counts), device=device).repeat_interleave(counts)
        run, image = slot // truth.num_images, slot % truth.num_images
        label = flat[:, 5].long()
        known = (label >= 0) & (label < truth.num_classes)  # COCOeval scores the gt's classes
        run, image, label, score, xywh = (t[known] for t in (run, image, label, flat[:, 4], xywh))
        group = (run * truth.num_images + image) * truth.num_classes + label
        order = _by_group_then_score(group, score)  # rows are in load order here
        group = group[order]
        _, sizes = torch.unique_consecutive(group, return_counts=True)
        starts = torch.cumsum(sizes, 0) - sizes
        rank = torch.arange(len(group), device=device) - starts.repeat_interleave(sizes)
        keep = order[rank < MAX_DETECTIONS]
        return cls(
            run=run[keep],
            image=image[keep],
            cls=label[keep],
            score=score[keep],
            xywh=xywh[keep],
            rank=rank[rank < MAX_DETECTIONS],
        )

    def __len__(self) -> int:
        return len(self.run)


def _by_group_then_score(group: Tensor, score: Tensor) -> Tensor:
    """The order of rows by group, and by score (highest first) within it; rows of equal group
    and score keep their order (COCO's mergesort by score, per group)."""
    by_score = torch.sort(score, descending=True, stable=True).indices
    return by_score[torch.sort(group[by_score], stable=True).indices]


def _iou(d: Tensor, g: Tensor) -> Tensor:
    """IoU of pairs of x, y, w, h boxes, as pycocotools' bbIou computes it (in float64)."""
    w = torch.minimum(d[:, 0] + d[:, 2], g[:, 0] + g[:, 2]) - torch.maximum(d[:, 0], g[:, 0])
    h = torch.minimum(d[:, 1] + d[:, 3], g[:, 1] + g[:, 3]) - torch.maximum(d[:, 1], g[:, 1])
    inter = w * h
    union = d[:, 2] * d[:, 3] + g[:, 2] * g[:, 3] - inter
    overlap = (w > 0) & (h > 0)
    return torch.where(overlap, inter / torch.where(overlap, union, 1.0), 0.0)


def _match(dets: _Detections, truth: GroundTruth) -> Tensor:
    """[D, T] whether each detection matched a ground-truth box at each IoU threshold.

    COCOeval's greedy rule: within an (image, class), detections in score order each take the
    unmatched box of highest IoU that reaches the threshold (of equal IoUs, the later box).
    Every group's detection of rank r is matched in the same step, for every threshold.
    """
    device = truth.xywh.device
    thresholds = IOU_THRESHOLDS.to(device)
    steps = len(thresholds)
    matched = torch.zeros(len(dets), steps, dtype=torch.bool, device=device)
    if not len(dets) or not len(truth.image):
        return matched
    # ground truth grouped by (image, class), keeping annotation order within a group
    truth_group = truth.image * truth.num_classes + truth.cls
    truth_order = torch.sort(truth_group, stable=True).indices
    per_group = torch.bincount(truth_group, minlength=truth.num_images * truth.num_classes)
    group_start = torch.cumsum(per_group, 0) - per_group
    # every (detection, box of its image and class) pair, detections taken rank by rank
    by_rank = torch.sort(dets.rank, stable=True).indices
    group = (dets.image * truth.num_classes + dets.cls)[by_rank]
    boxes = per_group[group]
    pair_det = torch.arange(len(by_rank), device=device).repeat_interleave(boxes)
    first_pair = torch.cumsum(boxes, 0) - boxes
    nth = torch.arange(len(pair_det), device=device) - first_pair.repeat_interleave(boxes)
    pair_truth = truth_order[group_start[group].repeat_interleave(boxes) + nth]
    det = by_rank[pair_det]
    iou = _iou(dets.xywh[det], truth.xywh[pair_truth])
    # a box is taken per run and threshold: one flag per (run, box, threshold), plus a sink
    taken = torch.zeros(int(dets.run.max()) + 1, len(truth.image), steps, dtype=torch.bool,
                        device=device).view(-1)  # fmt: skip
    taken = torch.cat([taken, taken.new_zeros(1)])
    sink = len(taken) - 1
    # where each rank's detections and pairs begin (one read of sizes before the loop)
    ranks = torch.bincount(dets.rank, minlength=MAX_DETECTIONS)
    pairs_per_rank = torch.zeros(MAX_DETECTIONS, dtype=torch.long, device=device)
    pairs_per_rank.index_add_(0, dets.rank[by_rank], boxes)
    det_bounds = [0, *torch.cumsum(ranks, 0).tolist()]
    pair_bounds = [0, *torch.cumsum(pairs_per_rank, 0).tolist()]
    step_index = torch.arange(steps, device=device)
    for r in range(MAX_DETECTIONS):
        d0, d1, p0, p1 = det_bounds[r], det_bounds[r + 1], pair_bounds[r], pair_bounds[r + 1]
        if p0 == p1:
            continue
        local = (pair_det[p0:p1] - d0)[:, None].expand(-1, steps)
        runs = dets.run[det[p0:p1]]
        flag = (runs[:, None] * len(truth.image) + pair_truth[p0:p1, None]) * steps + step_index
        value = iou[p0:p1, None].expand(-1, steps)
        eligible = (value >= thresholds) & ~taken[flag]
        candidate = torch.where(eligible, value, -1.0)
        best = torch.full((d1 - d0, steps), -1.0, dtype=value.dtype, device=device)
        best = best.scatter_reduce(0, local, candidate, "amax")
        chosen = eligible & (candidate == best.gather(0, local))
        # of equal IoUs the later box: the highest pair position among the chosen
        position = torch.arange(p0, p1, device=device)[:, None].expand(-1, steps)
        winner = torch.full((d1 - d0, steps), -1, dtype=torch.long, device=device)
        winner = winner.scatter_reduce(0, local, torch.where(chosen, position, -1), "amax")
        hit = winner >= 0
        matched[by_rank[d0:d1]] = hit
        won = flag.gather(0, (winner - p0).clamp(min=0))  # the taken box's flag
        taken[torch.where(hit, won, sink)] = True
        taken[sink] = False
    return matched


def _precision(dets: _Detections, matched: Tensor, truth: GroundTruth, runs: int) -> Tensor:
    """[runs, T, R, classes] COCOeval's precision at each recall point (-1 where a class has
    no ground truth), from the matches."""
    device = truth.xywh.device
    steps, points = len(IOU_THRESHOLDS), len(RECALL_POINTS)
    thresholds = RECALL_POINTS.to(device)
    precision = torch.full((runs, steps, points, truth.num_classes), -1.0, dtype=torch.float64,
                           device=device)  # fmt: skip
    positives = torch.bincount(truth.cls, minlength=truth.num_classes).tolist()
    area = dets.xywh[:, 2] * dets.xywh[:, 3]
    out_of_range = (area < AREA_RANGE[0]) | (area > AREA_RANGE[1])
    ignored = ~matched & out_of_range[:, None]
    # each (run, class) segment in COCO's order: by score, ties by image, then in load order.
    # The rows are by (run, image, class) and by score within that, ties in load order, so a
    # stable sort keeps exactly those ties
    segment = dets.run * truth.num_classes + dets.cls
    order = _by_group_then_score(segment, dets.score)
    true_pos = (matched & ~ignored)[order].long()
    false_pos = (~matched & ~ignored)[order].long()
    tp_sum, fp_sum = torch.cumsum(true_pos, 0), torch.cumsum(false_pos, 0)
    sizes = torch.bincount(segment, minlength=runs * truth.num_classes).tolist()
    start = 0
    for index, size in enumerate(sizes):
        run, cls = divmod(index, truth.num_classes)
        npig = positives[cls]  # ground-truth boxes of the class (none is ignored in "all")
        if npig == 0:
            start += size
            continue
        if size == 0:
            precision[run, :, :, cls] = 0.0
            continue
        end = start + size
        before_tp = tp_sum[start - 1] if start else torch.zeros_like(tp_sum[0])
        before_fp = fp_sum[start - 1] if start else torch.zeros_like(fp_sum[0])
        tp = (tp_sum[start:end] - before_tp).T.double()  # [T, n]
        fp = (fp_sum[start:end] - before_fp).T.double()
        recall = tp / npig
        prec = tp / (fp + tp + _EPS)
        envelope = torch.flip(torch.cummax(torch.flip(prec, [1]), dim=1).values, [1])
        at = torch.searchsorted(recall.contiguous(), thresholds.expand(steps, -1).contiguous())
        reached = at < size
        value = envelope.gather(1, at.clamp(max=size - 1))
        precision[run, :, :, cls] = torch.where(reached, value, 0.0)
        start = end
    return precision
