"""Counting trained batches, timing them and logging training lines, without waiting on a GPU.

A training iteration on a GPU queues kernels; anything that reads a result on the host (a loss
printed, a `torch.cuda.synchronize` for a timer) waits for the queue to drain, and a small
model's iteration then costs the host's launch time plus the GPU's, never the larger of the two.
So each batch's losses stay on the device, summed there (`LogInterval.add`), with the first
non-finite batch noted there too; its time is a pair of CUDA events (`StepClock`). The host
reads them once per training line (every `log_interval` iterations) and at the end of each epoch
(`LogInterval.settle`), which is where a non-finite loss raises `NonFiniteLossError`, naming the
batch where it first appeared as before. On a CPU the same code reads wall time and the losses
are on the host already.

Latency stays what it was: seconds per trained batch, the model's step (forward, loss, backward,
optimizer and EMA) without making the batch; on a GPU the events' span on its timeline.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field

import torch

from trainer.config import TrainConfig
from trainer.loss import LossParts
from trainer.records import NonFiniteLossError, TrainLine
from trainer.run_dir import RunDir

logger = logging.getLogger("trainer")


@dataclass
class TrainState:
    """What moves forward during a run (and is saved in checkpoints)."""

    epoch: int = 0  # epochs completed
    iteration: int = 0  # batches trained (the notes' "iter")
    last_step: int = 0  # the iteration of the last optimizer step (gradient accumulation)
    seconds_training: float = 0.0
    seconds_training_reported: float = 0.0  # seconds_training at the last report
    seconds_evaluating: float = 0.0
    latencies: list[float] = field(default_factory=list)  # per iteration, seconds
    pending: list[TrainLine] = field(default_factory=list)  # lines since the last report


@dataclass(frozen=True)
class StepTime:
    """One iteration's time, read when its interval is: wall seconds on a CPU, CUDA events on a
    GPU; `share` of it (a pack's iteration is shared by its trials)."""

    wall: float
    events: tuple[torch.cuda.Event, torch.cuda.Event] | None = None
    share: float = 1.0

    def shared(self, trials: int) -> StepTime:
        return StepTime(self.wall, self.events, self.share / trials)

    def seconds(self) -> float:
        if self.events is None:
            return self.wall * self.share
        start, end = self.events
        end.synchronize()
        return start.elapsed_time(end) / 1000 * self.share


class StepClock:
    """Times iterations on `device`: `start()` before the step, `stop(mark)` after it."""

    def __init__(self, device: torch.device) -> None:
        self.cuda = device.type == "cuda"

    def start(self) -> tuple[float, torch.cuda.Event | None]:
        event = None
        if self.cuda:
            event = torch.cuda.Event(enable_timing=True)
            event.record()
        return time.perf_counter(), event

    def stop(self, mark: tuple[float, torch.cuda.Event | None]) -> StepTime:
        started, start_event = mark
        if start_event is None:
            return StepTime(time.perf_counter() - started)
        end = torch.cuda.Event(enable_timing=True)
        end.record()
        return StepTime(time.perf_counter() - started, (start_event, end))


def loss_values(parts: LossParts) -> torch.Tensor:
    """`[4]` on the losses' device: weighted total, lbox, lobj, lcls (what a line logs)."""
    return torch.stack([parts.total.detach(), parts.lbox, parts.lobj, parts.lcls])


@dataclass
class LogInterval:
    """What was trained since the last training line, kept on the losses' device until read."""

    sums: torch.Tensor | None = None  # [4], float32, where the losses are
    iters: int = 0
    seconds: float = 0.0  # of this line's iterations settled so far
    # iterations not yet settled: (iteration, lr, time)
    unsettled: list[tuple[int, float, StepTime]] = field(default_factory=list)
    # the first non-finite batch since the last settle: its iteration (-1: none) and values
    bad_at: torch.Tensor | None = None
    bad_values: torch.Tensor | None = None

    def add(self, values: torch.Tensor, iteration: int, lr: float, step: StepTime) -> None:
        """Count one batch's `loss_values` (no read on the host)."""
        if self.sums is None or self.bad_at is None or self.bad_values is None:
            self.sums = torch.zeros(4, device=values.device)
            self.bad_at = torch.full((), -1, dtype=torch.int64, device=values.device)
            self.bad_values = torch.zeros(4, device=values.device)
        self.sums += values
        first_bad = ~torch.isfinite(values).all() & (self.bad_at < 0)
        self.bad_at = torch.where(first_bad, iteration, self.bad_at)
        self.bad_values = torch.where(first_bad, values.to(self.bad_values.dtype), self.bad_values)
        self.iters += 1
        self.unsettled.append((iteration, lr, step))

    def settle(self, config: TrainConfig, state: TrainState) -> None:
        """Read the device: raise `NonFiniteLossError` for the first non-finite batch since the
        last settle, else add the settled iterations' times to `state`."""
        if self.bad_at is not None and self.bad_values is not None:
            bad_at = int(self.bad_at)
            if bad_at >= 0:
                lr = next(lr for it, lr, _ in self.unsettled if it == bad_at)
                total, lbox, lobj, lcls = self.bad_values.tolist()
                epoch = state.epoch
                raise NonFiniteLossError(
                    f"loss became non-finite at epoch {epoch} / iter {bad_at}: "
                    f"loss={total}, lbox={lbox}, lobj={lobj}, lcls={lcls} "
                    f"(lr={lr:g}, optimizer={config.optimizer}); try a lower learning rate"
                )
        for _, _, step in self.unsettled:
            seconds = step.seconds()
            self.seconds += seconds
            state.seconds_training += seconds
            state.latencies.append(seconds)
        self.unsettled.clear()


def record_iteration(
    values: torch.Tensor,
    step: StepTime,
    lr: float,
    config: TrainConfig,
    state: TrainState,
    interval: LogInterval,
    run: RunDir,
) -> None:
    """Count a trained batch (`values` from `loss_values`, `step` from a `StepClock`) and log a
    line every `log_interval` iterations, which is when a non-finite loss raises
    `NonFiniteLossError` (or at the epoch's end: `LogInterval.settle`)."""
    state.iteration += 1
    interval.add(values, state.iteration, lr, step)
    if state.iteration != 1 and state.iteration % config.log_interval:
        return
    interval.settle(config, state)
    assert interval.sums is not None
    mean = (interval.sums / interval.iters).tolist()
    line = TrainLine(
        epoch=state.epoch,
        iter=state.iteration,
        lr=lr,
        loss=mean[0],
        lbox=mean[1],
        lobj=mean[2],
        lcls=mean[3],
        latency=interval.seconds / interval.iters,
    )
    logger.info(line.log_line())
    run.append(line)
    state.pending.append(line)
    interval.sums.zero_()
    interval.iters, interval.seconds = 0, 0.0
