"""The one configuration object of a training run.

A `TrainConfig` is frozen, validated on construction, saved as `config.json` in every run
directory and stored with every trial. Nothing else carries hyperparameters: the model, the loss
and the optimizer are built from it and keep no copy of their own (unlike yolov5's `model.hyp`).
"""

from __future__ import annotations

import dataclasses
import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

Optimizer = Literal["SGD", "Adam", "AdamW"]
OPTIMIZERS: tuple[str, ...] = ("SGD", "Adam", "AdamW")
MODEL_SIZES: tuple[str, ...] = ("nano", "small", "medium")
# lr decay over the run, multiplied by MultiStepLR's gamma at each milestone (trainer.optim)
LR_DECAYS: tuple[str, ...] = ("none", "linear", "cosine")
WARMUP_MIN_ITERS = 100  # the field's floor on warmup length (Ultralytics, YOLOv5)


@dataclass(frozen=True)
class TrainConfig:
    """Everything that decides how one detector is trained and evaluated.

    Defaults are the recipe measured best in docs/benchmarks.md ("Trainer recipe"): the field's
    from-scratch recipe (Ultralytics / YOLOv5): EMA weights, mosaic with random scale and
    translate (closed for the last epochs), HSV jitter, warmup over max(3 epochs, 100 iterations)
    with a high bias lr and momentum from 0.8, a nominal batch of 64 with gradient accumulation,
    linear decay to `lrf`. The notes' hand-tuned settings (SGD, lr 0.001, ...) are the study's
    baselines and set their values explicitly; `lr_decay="none"` with `milestones` is the
    notes' MultiStepLR schedule.
    """

    # data and model
    data: str = "shapes"
    model: str = "small"  # YOLOv5n-like, 0.17 GFLOPs at 128 px (YOLOv8n: 0.35); nano is 0.05
    weights: str | None = None
    imgsz: int = 128
    batch: int = 32
    epochs: int = 12
    skip_bad: bool = False
    augment: bool = True

    # loss weights: applied once, in trainer.loss, to the unweighted components
    # (YOLOv5's hyp.scratch 0.05 / 1.0 / 0.5 with its scaling for 128 px and a few classes:
    # obj * (imgsz / 640)^2, cls * nc / 80; the notes' first model is 0.05 / 1.0 / 0.5)
    lbox: float = 0.05
    lobj: float = 0.04
    lcls: float = 0.03

    # optimisation
    optimizer: str = "AdamW"
    lr: float = 0.01  # measured: 0.001 learns ~10x slower in 10 epochs here (benchmarks.md)
    momentum: float = 0.9
    nesterov: bool = False
    weight_decay: float = 0.0005
    # warmup: lr from 0 (biases: from warmup_bias_lr) and SGD momentum from warmup_momentum, over
    # warmup_iters iterations, or when None over max(warmup_epochs of iterations, 100)
    warmup_iters: int | None = None
    warmup_epochs: float = 3.0
    warmup_bias_lr: float = 0.0  # Ultralytics: 0.1 for SGD, 0 for Adam (lr is a step size)
    warmup_momentum: float = 0.8
    # the lr falls from lr to lr * lrf over the run ("none": constant, the notes' schedule) ...
    lr_decay: str = "linear"
    lrf: float = 0.01
    # ... times gamma at each MultiStepLR milestone: iterations, or fractions of the run when
    # every value is <= 1 (a fraction of 1.0 falls at the very end of the run, i.e. no decay)
    milestones: tuple[float, ...] = ()
    gamma: float = 0.5
    # nominal batch: gradients of ceil(nbs / batch) batches are summed before a step, and weight
    # decay is scaled by batch * accumulate / nbs, so lr and weight decay mean the same at any
    # batch size (YOLOv5, Ultralytics). nbs <= batch: a step every batch.
    nbs: int = 64
    # exponential moving average of the weights, used for evaluation, predictions, checkpoints:
    # decay ema_decay * (1 - exp(-updates / ema_tau)), ramped so early weights fade fast; 0: off
    ema_decay: float = 0.9999
    ema_tau: float = 2000.0

    # augmentation (training only; `augment=False` turns all of it off)
    mosaic: float = 1.0  # probability that a batch is built of 2x2 mosaics
    close_mosaic: int = 10  # no mosaic in the last N epochs (none at all when epochs <= N)
    scale: float = 0.5  # random zoom factor in [1 - scale, 1 + scale]
    translate: float = 0.1  # random shift, fraction of the image size
    fliplr: float = 0.5
    hsv_h: float = 0.015  # hue rotation, fraction of the colour circle
    hsv_s: float = 0.7  # saturation gain in [1 - hsv_s, 1 + hsv_s]
    hsv_v: float = 0.4  # value gain in [1 - hsv_v, 1 + hsv_v]

    # bookkeeping
    eval_interval: int = 1  # evaluate (and call report) every N epochs, and after the last
    log_interval: int = 20  # print a training line every N iterations
    device: str = "auto"  # auto | cpu | cuda | cuda:N
    amp: bool = True  # bf16 autocast on CUDA; ignored on CPU
    threads: int | None = None  # torch intra-op threads; None leaves torch's default
    seed: int = 0
    out: str = "runs/train"
    resume: bool = False  # continue from `out`/last.pt when it exists
    extra: dict[str, Any] = field(default_factory=dict, compare=False)  # free-form labels

    def __post_init__(self) -> None:
        # milestones may arrive as a list (JSON, CLI); keep the frozen object hashable-ish
        object.__setattr__(self, "milestones", tuple(float(m) for m in self.milestones))
        _check_positive_int("imgsz", self.imgsz)
        if self.imgsz % 32:
            raise ValueError(f"imgsz must be a multiple of 32, but got imgsz={self.imgsz}")
        _check_positive_int("batch", self.batch)
        _check_positive_int("epochs", self.epochs)
        _check_positive_int("eval_interval", self.eval_interval)
        _check_positive_int("log_interval", self.log_interval)
        for name in ("lbox", "lobj", "lcls"):
            value = getattr(self, name)
            if not (math.isfinite(value) and value >= 0):
                raise ValueError(f"{name} must be a finite number >= 0, but got {name}={value}")
        if self.lbox + self.lobj + self.lcls <= 0:
            raise ValueError(
                "at least one loss weight must be > 0, but got "
                f"lbox={self.lbox}, lobj={self.lobj}, lcls={self.lcls}"
            )
        if self.optimizer not in OPTIMIZERS:
            raise ValueError(
                f"optimizer must be one of {', '.join(OPTIMIZERS)}, but got "
                f"optimizer={self.optimizer!r}"
            )
        if self.model not in MODEL_SIZES:
            raise ValueError(
                f"model must be one of {', '.join(MODEL_SIZES)}, but got model={self.model!r}"
            )
        if not (math.isfinite(self.lr) and self.lr > 0):
            raise ValueError(f"lr must be > 0, but got lr={self.lr}")
        if not 0 <= self.momentum < 1:
            raise ValueError(f"momentum must be in [0, 1), but got momentum={self.momentum}")
        if not 0 <= self.weight_decay < 1:
            raise ValueError(
                f"weight_decay must be in [0, 1), but got weight_decay={self.weight_decay}"
            )
        if not 0 < self.gamma <= 1:
            raise ValueError(f"gamma must be in (0, 1], but got gamma={self.gamma}")
        if self.warmup_iters is not None and self.warmup_iters < 0:
            raise ValueError(f"warmup_iters must be >= 0, but got warmup_iters={self.warmup_iters}")
        for name in ("warmup_epochs", "warmup_bias_lr", "ema_tau", "scale", "translate"):
            value = getattr(self, name)
            if not (isinstance(value, int | float) and math.isfinite(value) and value >= 0):
                raise ValueError(f"{name} must be a finite number >= 0, but got {name}={value!r}")
        if self.ema_tau <= 0:
            raise ValueError(f"ema_tau must be > 0, but got ema_tau={self.ema_tau}")
        for name in ("warmup_momentum", "ema_decay"):
            value = getattr(self, name)
            if not 0 <= value < 1:
                raise ValueError(f"{name} must be in [0, 1), but got {name}={value}")
        for name in ("mosaic", "fliplr", "hsv_h", "hsv_s", "hsv_v"):
            value = getattr(self, name)
            if not 0 <= value <= 1:
                raise ValueError(f"{name} must be in [0, 1], but got {name}={value}")
        if not 0 < self.lrf <= 1:
            raise ValueError(f"lrf must be in (0, 1], but got lrf={self.lrf}")
        if self.scale >= 1:
            raise ValueError(f"scale must be in [0, 1), but got scale={self.scale}")
        if self.lr_decay not in LR_DECAYS:
            raise ValueError(
                f"lr_decay must be one of {', '.join(LR_DECAYS)}, but got "
                f"lr_decay={self.lr_decay!r}"
            )
        _check_positive_int("nbs", self.nbs)
        if not isinstance(self.close_mosaic, int) or self.close_mosaic < 0:
            raise ValueError(
                f"close_mosaic must be an integer >= 0, but got close_mosaic={self.close_mosaic!r}"
            )
        ms = self.milestones
        if any(not math.isfinite(m) or m <= 0 for m in ms):
            raise ValueError(f"milestones must be > 0, but got milestones={list(ms)}")
        if list(ms) != sorted(ms):
            raise ValueError(
                f"milestones must be in increasing order, but got milestones={list(ms)}"
            )
        if ms and any(m <= 1 for m in ms) and any(m > 1 for m in ms):
            raise ValueError(
                "milestones must be all fractions of the run (<= 1) or all iterations (> 1), "
                f"but got milestones={list(ms)}"
            )
        if self.threads is not None:
            _check_positive_int("threads", self.threads)
        if not (self.device in ("auto", "cpu", "cuda") or self.device.startswith("cuda:")):
            raise ValueError(
                f"device must be auto, cpu, cuda or cuda:N, but got device={self.device!r}"
            )

    def milestone_iters(self, total_iters: int) -> list[int]:
        """Milestones in iterations for a run of `total_iters` iterations."""
        if self.milestones and all(m <= 1 for m in self.milestones):
            return [max(1, round(m * total_iters)) for m in self.milestones]
        return [int(m) for m in self.milestones]

    def resolved_warmup_iters(self, total_iters: int, iters_per_epoch: int | None = None) -> int:
        """Warmup length in iterations: `warmup_iters` when set, else the field's
        max(warmup_epochs * iterations per epoch, 100), 0 when warmup_epochs is 0.

        `iters_per_epoch` defaults to `total_iters / epochs`. The warmup may be longer than a
        short run (then the run ends inside it), as with Ultralytics.
        """
        if self.warmup_iters is not None:
            return self.warmup_iters
        if self.warmup_epochs <= 0:
            return 0
        per_epoch = iters_per_epoch if iters_per_epoch is not None else total_iters / self.epochs
        return max(round(self.warmup_epochs * per_epoch), WARMUP_MIN_ITERS)

    def accumulate(self) -> int:
        """Batches whose gradients are summed before an optimizer step (after warmup)."""
        return max(round(self.nbs / self.batch), 1)

    def mosaic_on(self, epoch: int) -> bool:
        """Whether mosaic is used in epoch `epoch` (0-based): off for the last `close_mosaic`."""
        return self.augment and self.mosaic > 0 and epoch < self.epochs - self.close_mosaic

    def replace(self, **changes: Any) -> TrainConfig:
        """A copy with some fields changed (validated again)."""
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict (milestones as a list)."""
        d = dataclasses.asdict(self)
        d["milestones"] = list(self.milestones)
        return d

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> TrainConfig:
        """Build from a dict, rejecting unknown keys by name."""
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise ValueError(f"unknown training option(s): {', '.join(unknown)}")
        return cls(**values)

    def save(self, path: Path) -> None:
        path.write_text(json.dumps(self.to_dict(), indent=2, sort_keys=True) + "\n")

    @classmethod
    def load(cls, path: Path) -> TrainConfig:
        return cls.from_dict(json.loads(Path(path).read_text()))


def _check_positive_int(name: str, value: object) -> None:
    if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
        raise ValueError(f"{name} must be a positive integer, but got {name}={value!r}")
