"""Evaluation: NMS with torchvision.ops, COCO mAP, COCO-format predictions.

One pass over the validation split gives both the detections and the unweighted validation
losses. mAP is COCO's AP against ground truth built from the split's labels, in original image
pixels, computed by `trainer.mean_ap` with torch on the device the detections are on: COCOeval's
numbers (tests/trainer/test_mean_ap.py checks them against pycocotools' COCOeval), without
moving the detections to the host or paying COCOeval's host time once per trial of a pack.
"""

from __future__ import annotations

import contextlib
import statistics
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass

import torch
from torchvision.ops import batched_nms

from trainer.data import DetectionSplit, iterate_batches
from trainer.loss import DetectionLoss
from trainer.mean_ap import GroundTruth, mean_average_precision
from trainer.model import Detector, decode

CONF_THRESHOLD = 0.001  # low, as for mAP: the precision/recall curve needs the low-score tail
IOU_THRESHOLD = 0.6
MAX_DETECTIONS = 100  # per image, COCO's maxDets
MAX_CANDIDATES = 3000  # per image before NMS, bounds NMS cost on an untrained model


@dataclass(frozen=True)
class Evaluation:
    """Validation results: per-image detections and the mean unweighted validation losses."""

    detections: list[torch.Tensor]  # per image [n, 6]: x1, y1, x2, y2 (original px), score, cls
    val_lbox: float
    val_lobj: float
    val_lcls: float
    val_loss: float  # their weighted total, with this run's weights


def non_max_suppression(decoded: torch.Tensor) -> list[torch.Tensor]:
    """Per image: [n, 6] rows of x1, y1, x2, y2, score, class after class-aware NMS.

    `decoded` is [B, N, 5 + nc] from `trainer.model.decode` (boxes, objectness, class probs).
    Score = objectness x best class probability, as in YOLOv5 with one label per box.
    """
    results = []
    for image in decoded.float():
        class_prob, cls = image[:, 5:].max(dim=1)
        scores = image[:, 4] * class_prob
        keep = scores > CONF_THRESHOLD
        boxes, scores, cls = image[keep, :4], scores[keep], cls[keep]
        if scores.numel() > MAX_CANDIDATES:
            top = scores.topk(MAX_CANDIDATES).indices
            boxes, scores, cls = boxes[top], scores[top], cls[top]
        kept = batched_nms(boxes, scores, cls, IOU_THRESHOLD)[:MAX_DETECTIONS]
        results.append(torch.cat([boxes[kept], scores[kept, None], cls[kept, None].float()], 1))
    return results


@torch.no_grad()
def evaluate(
    model: Detector,
    loss_fn: DetectionLoss,
    split: DetectionSplit,
    batch_size: int,
    device: torch.device,
    autocast: Callable[[], contextlib.AbstractContextManager[None]],
    channels_last: bool,
) -> Evaluation:
    """Run the model over `split` once: detections in original pixels plus validation losses."""
    slots = evaluate_slots(model, {0: loss_fn}, split, batch_size, device, autocast, channels_last)
    return slots[0]


@torch.no_grad()
def evaluate_slots(
    model: Detector,
    loss_fns: Mapping[int, DetectionLoss],
    split: DetectionSplit,
    batch_size: int,
    device: torch.device,
    autocast: Callable[[], contextlib.AbstractContextManager[None]],
    channels_last: bool,
) -> dict[int, Evaluation]:
    """`evaluate` for the trials in some slots of a packed detector, in one pass of the fused
    model: slot k's outputs are scored with `loss_fns[k]` (a solo detector is slot 0)."""
    with _evaluating(model):
        detections = {k: [torch.empty(0, 6, device=device)] * len(split) for k in loss_fns}
        # summed on the device, read once at the end: no wait for the device inside the pass
        totals = {k: torch.zeros(4, device=device) for k in loss_fns}
        batches = 0
        generator = torch.Generator().manual_seed(0)
        for images, targets, indices in iterate_batches(
            split, batch_size, shuffle=False, augment=False, generator=generator
        ):
            images = images.to(device, non_blocking=True)
            if channels_last:
                images = images.contiguous(memory_format=torch.channels_last)
            with autocast():
                outputs = model(images)
            if model.trials == 1:  # a solo detector's outputs have no trial dim
                outputs = [o.unsqueeze(0) for o in outputs]
            batches += 1
            rows = indices.tolist()
            for k, loss_fn in loss_fns.items():
                mine = [o[k] for o in outputs]
                parts = loss_fn(mine, targets)  # assigned on the host (trainer/loss.py)
                totals[k] += torch.stack([parts.lbox, parts.lobj, parts.lcls, parts.total]).float()
                for index, dets in zip(rows, non_max_suppression(decode(model, mine)), strict=True):
                    # they stay on the device: trainer.mean_ap scores them there
                    dets[:, :4] = split.to_original(dets[:, :4], index)
                    detections[k][index] = dets
        return {
            k: Evaluation(detections[k], *(totals[k] / max(batches, 1)).tolist()) for k in loss_fns
        }


@contextlib.contextmanager
def _evaluating(model: Detector) -> Iterator[None]:
    """`model` in eval mode for the block, then in the mode it had, also after an error."""
    was_training = model.training
    model.eval()
    try:
        yield
    finally:
        model.train(was_training)


def ground_truth(split: DetectionSplit, nc: int, device: torch.device) -> GroundTruth:
    """The split's labels, in original pixels, as `trainer.mean_ap` scores against them."""
    boxes = [split.original_boxes(index) for index in range(len(split))]
    return GroundTruth.of(boxes, nc, device)


def coco_map(split: DetectionSplit, detections: list[torch.Tensor], nc: int) -> tuple[float, float]:
    """(mAP50, mAP50-95) of `detections` (per image, on any one device) on `split`, as COCOeval
    computes them."""
    device = detections[0].device if detections else torch.device("cpu")
    return coco_maps(split, [detections], nc, ground_truth(split, nc, device))[0]


def coco_maps(
    split: DetectionSplit, runs: list[list[torch.Tensor]], nc: int, truth: GroundTruth
) -> list[tuple[float, float]]:
    """`coco_map` of several runs' detections on one split at once (a pack's trials)."""
    if len(split) != truth.num_images:
        raise ValueError(f"truth is of {truth.num_images} images, but the split has {len(split)}")
    return mean_average_precision(runs, truth)


def coco_predictions(
    split: DetectionSplit, detections: list[torch.Tensor]
) -> list[dict[str, object]]:
    """Detections in COCO results format: image_id from the file stem, bbox [x, y, w, h] px."""
    results: list[dict[str, object]] = []
    on_host = torch.cat(detections).cpu().split([len(d) for d in detections]) if detections else []
    for index, dets in enumerate(on_host):  # one read from the device, not one per image
        image_id = split.image_ids[index]
        for x1, y1, x2, y2, score, cls in dets.tolist():
            results.append(
                {
                    "image_id": image_id,
                    "category_id": int(cls),
                    "bbox": [round(x1, 2), round(y1, 2), round(x2 - x1, 2), round(y2 - y1, 2)],
                    "score": round(score, 5),
                }
            )
    return results


@torch.no_grad()
def inference_latency_ms(
    model: Detector,
    image: torch.Tensor,
    device: torch.device,
    autocast: Callable[[], contextlib.AbstractContextManager[None]],
    channels_last: bool,
    warmup: int = 5,
    runs: int = 20,
) -> float:
    """Median milliseconds per image at batch 1 (forward, decode and NMS), after warm-up."""
    with _evaluating(model):
        x = image[None].to(device).float() / 255
        if channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        times = []
        for i in range(warmup + runs):
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            start = time.perf_counter()
            with autocast():
                outputs = model(x)
            non_max_suppression(decode(model, outputs))
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            if i >= warmup:
                times.append(time.perf_counter() - start)
    return statistics.median(times) * 1000
