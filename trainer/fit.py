"""Training one detector: `train_one_epoch()` and `evaluate()` composed by `fit()`.

Reads top to bottom like a recipe: set up (device, data, model and its EMA, loss, optimizer,
schedule, resume), then per epoch train (mosaic until the last `close_mosaic` epochs), and every
`eval_interval` epochs evaluate the EMA weights, write the run directory, save a checkpoint and
call `report(step, metrics)`, which may raise to stop the run.

A checkpoint holds everything the next epoch depends on: raw and EMA weights, optimizer and
scheduler, the generator that draws shuffles and augmentations, torch's RNG, the counters. The
epoch decides whether mosaic is on and an optimizer step always closes an epoch (no gradient is
left half-accumulated across a checkpoint), so a resumed run repeats an uninterrupted one.
"""

from __future__ import annotations

import contextlib
import logging
import math
import statistics
import sys
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from trainer.augment import AugmentSpec
from trainer.config import TrainConfig, evaluates_after
from trainer.data import DetectionData, DetectionSplit, iterate_batches, load_data, on_device
from trainer.ema import ModelEMA
from trainer.evaluate import (
    Evaluation,
    coco_map,
    coco_predictions,
    evaluate,
    inference_latency_ms,
)
from trainer.iteration_log import (
    LogInterval,
    StepClock,
    TrainState,
    loss_values,
    record_iteration,
)
from trainer.loss import DetectionLoss, LossWeights
from trainer.model import Detector, build_detector, load_weights
from trainer.optim import (
    DECAY_GROUP,
    SCHEDULER_BEFORE_STEP_WARNING,
    build_optimizer,
    build_scheduler,
    optimizer_steps,
    set_warmup_momentum,
)
from trainer.records import EvalLine, EvalReport, FitResult, NonFiniteLossError
from trainer.run_dir import RunDir

logger = logging.getLogger("trainer")

Report = Callable[[int, EvalReport], None]


@dataclass(frozen=True)
class RunParts:
    """What a run's evaluations and its end read besides the weights: its loss, data set, config,
    progress, device and folder (`fit` has one; a pack, one per trial)."""

    loss_fn: DetectionLoss
    data: DetectionData
    config: TrainConfig
    state: TrainState
    device: torch.device
    run: RunDir


# The gradient is that of the loss summed over a batch's images (YOLOv5's `loss * bs`), so the
# notes' SGD learning rate of 0.001 trains a detector from scratch in a short run. The logged loss
# stays the per-image mean, on the scale of the notes' log lines. There is deliberately no
# gradient clipping: with the summed loss, gradient norms of 100-200 are normal, and YOLOv5's
# clip at 10 would silently divide the learning rate by 10-20 (measured).


def resolve_device(name: str) -> torch.device:
    """`auto` picks CUDA when present; an unavailable CUDA device is a clear error."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device={name!r} asked for CUDA, but no CUDA device is available")
    if device.type == "cuda" and device.index is not None:
        count = torch.cuda.device_count()
        if device.index >= count:
            raise ValueError(
                f"device={name!r}: this machine has {count} CUDA device(s), numbered from 0"
            )
    return device


def augment_spec(config: TrainConfig, epoch: int) -> AugmentSpec | None:
    """The augmentation of epoch `epoch` (0-based): mosaic only before the last `close_mosaic`."""
    if not config.augment:
        return None
    return AugmentSpec(
        mosaic=config.mosaic if config.mosaic_on(epoch) else 0.0,
        scale=config.scale,
        translate=config.translate,
        fliplr=config.fliplr,
        hsv_h=config.hsv_h,
        hsv_s=config.hsv_s,
        hsv_v=config.hsv_v,
    )


def train_one_epoch(
    model: Detector,
    ema: ModelEMA | None,
    loss_fn: DetectionLoss,
    optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LRScheduler,
    split: DetectionSplit,
    config: TrainConfig,
    state: TrainState,
    device: torch.device,
    generator: torch.Generator,
    run: RunDir,
) -> None:
    """One pass over the training split; logs a line every `log_interval` iterations.

    Gradients of `accumulate_at(...)` batches are summed before each optimizer step (the EMA
    follows every step); the epoch's last batch always steps.
    """
    model.train()
    autocast = autocast_for(device, config)
    interval = LogInterval()
    clock = StepClock(device)
    iters_per_epoch = max(len(split) // config.batch, 1)
    warmup = config.resolved_warmup_iters(iters_per_epoch * config.epochs, iters_per_epoch)
    spec = augment_spec(config, state.epoch)
    batches = iterate_batches(
        split, config.batch, shuffle=True, augment=spec or False, generator=generator
    )
    last_batch = state.iteration + iters_per_epoch
    with warnings.catch_warnings():
        # the schedule counts batches; while the first step is still being accumulated,
        # torch warns that the scheduler stepped before the optimizer: intended here (set
        # once for the epoch, not per batch)
        warnings.filterwarnings("ignore", SCHEDULER_BEFORE_STEP_WARNING)
        for images, targets, _ in batches:
            started = clock.start()
            set_warmup_momentum(optimizer, config, warmup, state.iteration)
            lr = optimizer.param_groups[DECAY_GROUP]["lr"]
            images = images.to(device, non_blocking=True)
            images = images.contiguous(memory_format=torch.channels_last)
            with autocast():
                outputs = model(images)
            parts = loss_fn(outputs, targets)  # assigned on the host (trainer/loss.py)
            (parts.total * images.shape[0]).backward()
            if optimizer_steps(config, warmup, state.iteration, state.last_step, last_batch):
                optimizer.step()
                optimizer.zero_grad(set_to_none=True)
                state.last_step = state.iteration + 1
                if ema is not None:
                    ema.update(model)
            scheduler.step()
            step = clock.stop(started)
            record_iteration(loss_values(parts), step, lr, config, state, interval, run)
            _progress(state, config, len(split) // config.batch)
    interval.settle(config, state)  # the epoch's losses and times, before it is evaluated


def prepare_run(
    config: TrainConfig, data: DetectionData | None
) -> tuple[torch.device, DetectionData, int]:
    """The set-up `fit` and `fit_pack` share: torch's threads, the device, the data set (loaded
    unless given, checked against `config`, on the device when it fits) and the iterations an
    epoch has (a `ValueError` when the batch exceeds the training images)."""
    if config.threads is not None:
        torch.set_num_threads(config.threads)
    device = resolve_device(config.device)
    if data is None:
        data = load_data(config.data, config.imgsz, skip_bad=config.skip_bad)
    check_data_matches(data, config)
    data = on_device(data, device)  # its images, when they fit a GPU
    iters_per_epoch = len(data.train) // config.batch
    if iters_per_epoch == 0:
        raise ValueError(
            f"batch must not exceed the {len(data.train)} training images, but got "
            f"batch={config.batch}"
        )
    return device, data, iters_per_epoch


def fit(
    config: TrainConfig, report: Report | None = None, data: DetectionData | None = None
) -> FitResult:
    """Train and evaluate one detector as `config` says; see the module docstring.

    `data` lets a worker load a data set once and reuse it for many runs. `report(step, metrics)`
    is called after each evaluation with step = epochs completed; an exception it raises stops
    the run (after the checkpoint of that evaluation is saved) and propagates.
    """
    torch.manual_seed(config.seed)
    device, data, iters_per_epoch = prepare_run(config, data)

    model = build_detector(config.model, nc=len(data.names))
    if config.weights:
        load_weights(model, config.weights)
    # channels_last: faster convolutions on CUDA (tensor cores) and, measured, on CPU too
    model.to(device=device, memory_format=torch.channels_last)  # type: ignore[call-overload]
    # the averaged weights are what the run evaluates, predicts with and keeps
    ema = ModelEMA(model, config.ema_decay, config.ema_tau) if config.ema_decay > 0 else None
    loss_fn = DetectionLoss(model, LossWeights.of(config))

    total_iters = iters_per_epoch * config.epochs
    optimizer = build_optimizer(model, config)
    optimizer.zero_grad(set_to_none=True)
    scheduler = build_scheduler(optimizer, config, total_iters, iters_per_epoch)
    generator = torch.Generator().manual_seed(config.seed)

    run = RunDir(Path(config.out))
    state = TrainState()
    resumable = Resumable(model, ema, optimizer, scheduler, generator, state)
    checkpoint = run.load_checkpoint() if config.resume else None
    if checkpoint is not None:
        resumable.restore(checkpoint)
        logger.info(
            f"resumed from {run.checkpoint} at epoch {state.epoch} / iter {state.iteration}"
        )
    run.write_config(config)
    run.start_metrics(keep_through_iter=state.iteration)

    parts = RunParts(loss_fn, data, config, state, device, run)
    last_eval: EvalLine | None = None
    while state.epoch < config.epochs:
        train_one_epoch(
            model, ema, loss_fn, optimizer, scheduler, data.train, config, state, device,
            generator, run,
        )  # fmt: skip
        state.epoch += 1
        if not evaluates_after(state.epoch, config.epochs, config.eval_interval):
            continue
        last_eval, eval_report = evaluate_and_record(final_weights(model, ema), parts)
        run.save_checkpoint(resumable.checkpoint())
        if report is not None:
            report(state.epoch, eval_report)

    return finish_run(final_weights(model, ema), parts, last_eval)


def finish_run(final: Detector, parts: RunParts, last_eval: EvalLine | None) -> FitResult:
    """The end of a run: an evaluation when none was made (resumed from a finished run), the
    inference latency, `summary.json`; returns the `FitResult`."""
    config, state, device = parts.config, parts.state, parts.device
    if last_eval is None:  # resumed from a finished run: evaluate once more to fill the summary
        last_eval, _ = evaluate_and_record(final, parts)
    inference_ms = inference_latency_ms(
        final, parts.data.val.images[0], device, autocast_for(device, config), channels_last=True
    )
    result = FitResult(
        mAP50=last_eval.mAP50,
        mAP50_95=last_eval.mAP50_95,
        inference_ms=inference_ms,
        train_latency=statistics.median(state.latencies) if state.latencies else 0.0,
        epochs_completed=state.epoch,
        iterations=state.iteration,
        images_per_second=(len(state.latencies) * config.batch) / max(sum(state.latencies), 1e-9),
        seconds_training=state.seconds_training,
        seconds_evaluating=state.seconds_evaluating,
        device=str(device),
        run_dir=str(parts.run.path),
    )
    parts.run.write_summary(result)
    return result


def evaluate_and_record(model: Detector, parts: RunParts) -> tuple[EvalLine, EvalReport]:
    """Evaluate `model` on the validation split and record it (`record_evaluation`)."""
    data, config, device = parts.data, parts.config, parts.device
    start = time.perf_counter()
    result = evaluate(
        model,
        parts.loss_fn,
        data.val,
        config.batch,
        device,
        autocast_for(device, config),
        channels_last=True,
    )
    maps = coco_map(data.val, result.detections, nc=len(data.names))
    return record_evaluation(result, maps, time.perf_counter() - start, parts)


def record_evaluation(
    result: Evaluation, maps: tuple[float, float], seconds: float, parts: RunParts
) -> tuple[EvalLine, EvalReport]:
    """Write an evaluation (its `mAP50, mAP50-95` and the `seconds` it took so far) to the run:
    predictions.json, the metrics line, the log; returns the line and the report for the
    search. A non-finite validation loss raises `NonFiniteLossError` after the line is written.
    """
    state, run = parts.state, parts.run
    start = time.perf_counter()
    mAP50, mAP50_95 = maps
    run.write_predictions(coco_predictions(parts.data.val, result.detections))
    seconds += time.perf_counter() - start
    state.seconds_evaluating += seconds
    line = EvalLine(
        epoch=state.epoch,
        iter=state.iteration,
        mAP50=mAP50,
        mAP50_95=mAP50_95,
        val_lbox=result.val_lbox,
        val_lobj=result.val_lobj,
        val_lcls=result.val_lcls,
        val_loss=result.val_loss,
    )
    run.append(line)
    logger.info(
        f"eval epoch {line.epoch} / iter {line.iter} mAP50 {mAP50:.4f} mAP50-95 {mAP50_95:.4f} "
        f"val lbox {line.val_lbox:.4f} lobj {line.val_lobj:.4f} lcls {line.val_lcls:.4f} "
        f"({seconds:.1f}s)"
    )
    if not all(math.isfinite(v) for v in (line.val_lbox, line.val_lobj, line.val_lcls)):
        raise NonFiniteLossError(f"validation loss became non-finite at epoch {line.epoch}: {line}")
    eval_report = EvalReport(
        eval=line,
        train=state.pending,
        seconds_training=state.seconds_training - state.seconds_training_reported,
        seconds_evaluating=seconds,
    )
    state.pending = []
    state.seconds_training_reported = state.seconds_training
    return line, eval_report


def autocast_for(
    device: torch.device, config: TrainConfig
) -> Callable[[], contextlib.AbstractContextManager[Any]]:
    """bf16 autocast on CUDA when `amp` is set (no loss scaling needed for bf16); none on CPU."""
    if device.type == "cuda" and config.amp:
        return lambda: torch.autocast("cuda", dtype=torch.bfloat16)
    return contextlib.nullcontext


def check_data_matches(data: DetectionData, config: TrainConfig) -> None:
    size = data.val.images.shape[-1]
    if size != config.imgsz:
        raise ValueError(f"the data set was loaded at imgsz={size}, but got imgsz={config.imgsz}")


def final_weights(model: Detector, ema: ModelEMA | None) -> Detector:
    """The weights a run evaluates and keeps: the EMA's when there is one."""
    if ema is None:
        return model
    assert isinstance(ema.module, Detector)
    return ema.module


@dataclass
class Resumable:
    """What a checkpoint holds and a resume restores: the weights, their EMA, the optimizer,
    the schedule, the batch order's generator and the run's counters."""

    model: Detector
    ema: ModelEMA | None
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler
    generator: torch.Generator
    state: TrainState

    def checkpoint(self) -> dict[str, Any]:
        # "model" holds the weights to use (the EMA's, what `--weights` and exports load);
        # "train_model" the raw weights training continues from
        state = self.state
        return {
            "model": final_weights(self.model, self.ema).state_dict(),
            "train_model": self.model.state_dict(),
            "ema_updates": self.ema.updates if self.ema is not None else 0,
            "last_step": state.last_step,
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "generator": self.generator.get_state(),
            "torch_rng": torch.get_rng_state(),
            "epoch": state.epoch,
            "iteration": state.iteration,
            "seconds_training": state.seconds_training,
            "seconds_evaluating": state.seconds_evaluating,
            "latencies": state.latencies,
        }

    def restore(self, checkpoint: dict[str, Any]) -> None:
        self.model.load_state_dict(checkpoint["train_model"])
        if self.ema is not None:
            self.ema.load_state_dict(
                {"module": checkpoint["model"], "updates": checkpoint["ema_updates"]}
            )
        state = self.state
        state.last_step = checkpoint["last_step"]
        self.optimizer.load_state_dict(checkpoint["optimizer"])
        self.scheduler.load_state_dict(checkpoint["scheduler"])
        self.generator.set_state(checkpoint["generator"])
        torch.set_rng_state(checkpoint["torch_rng"])
        state.epoch = checkpoint["epoch"]
        state.iteration = checkpoint["iteration"]
        state.seconds_training = state.seconds_training_reported = checkpoint["seconds_training"]
        state.seconds_evaluating = checkpoint["seconds_evaluating"]
        state.latencies = list(checkpoint["latencies"])


def _progress(state: TrainState, config: TrainConfig, iters_per_epoch: int) -> None:
    """A one-line progress bar on an interactive terminal; nothing when output is captured."""
    if not sys.stderr.isatty():
        return
    done = state.iteration - state.epoch * iters_per_epoch
    width = 30
    filled = width * done // max(iters_per_epoch, 1)
    sys.stderr.write(
        f"\r  epoch {state.epoch + 1}/{config.epochs} [{'#' * filled}{'.' * (width - filled)}] "
        f"{done}/{iters_per_epoch}"
    )
    if done >= iters_per_epoch:
        sys.stderr.write("\r" + " " * (width + 40) + "\r")
    sys.stderr.flush()
