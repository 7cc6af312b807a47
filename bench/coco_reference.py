"""COCOeval itself (pycocotools, or faster-coco-eval) on tune's detections: the reference that
trainer/mean_ap.py is checked against (tests/trainer/test_mean_ap.py) and the host evaluation
that tune ran once per trial before it (bench/packing.py --eval)."""

from __future__ import annotations

import contextlib
import io
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch


def cocoeval_map(
    truth: Sequence[torch.Tensor],
    detections: Sequence[torch.Tensor],
    nc: int,
    faster: bool = False,
) -> tuple[float, float]:
    """(mAP50, mAP50-95) by COCOeval: `truth` per image `[n, 5]` (cls, x1, y1, x2, y2),
    `detections` per image `[m, 6]` (x1, y1, x2, y2, score, cls), in original pixels, loaded as
    tune loaded them (image ids are indices, w = x2 - x1 in the tensors' dtype)."""
    if faster:
        from faster_coco_eval import COCO
        from faster_coco_eval import COCOeval_faster as COCOeval
    else:
        from pycocotools.coco import COCO
        from pycocotools.cocoeval import COCOeval
    images: list[dict[str, Any]] = []
    annotations: list[dict[str, Any]] = []
    for index, boxes in enumerate(truth):
        images.append({"id": index, "width": 640, "height": 480})
        for cls, x1, y1, x2, y2 in boxes.tolist():
            w, h = x2 - x1, y2 - y1
            # COCOeval treats id 0 as "unmatched": ids start at 1
            annotations.append(
                {"id": len(annotations) + 1, "image_id": index, "category_id": int(cls),
                 "bbox": [x1, y1, w, h], "area": w * h, "iscrowd": 0}
            )  # fmt: skip
    rows = [
        np.column_stack(
            [
                np.full(len(d), i),
                d[:, 0].numpy(),
                d[:, 1].numpy(),
                (d[:, 2] - d[:, 0]).numpy(),
                (d[:, 3] - d[:, 1]).numpy(),
                d[:, 4].numpy(),
                d[:, 5].numpy(),
            ]
        )
        for i, d in enumerate(d.cpu() for d in detections)
        if len(d)
    ]
    if not rows or not annotations:
        return 0.0, 0.0
    with contextlib.redirect_stdout(io.StringIO()):
        gt = COCO()
        gt.dataset = {
            "images": images,
            "annotations": annotations,
            "categories": [{"id": c, "name": str(c)} for c in range(nc)],
        }
        gt.createIndex()
        evaluator = COCOeval(gt, gt.loadRes(np.concatenate(rows).astype(np.float64)), "bbox")
        evaluator.evaluate()
        evaluator.accumulate()
        evaluator.summarize()
    # stats[0] = AP@[.5:.95], stats[1] = AP@.5; -1 means "no ground truth", reported as 0
    return max(float(evaluator.stats[1]), 0.0), max(float(evaluator.stats[0]), 0.0)
