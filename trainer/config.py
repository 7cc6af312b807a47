"""The one configuration object of a training run.

A `TrainConfig` is frozen, validated on construction, saved as `config.json` in every run
directory and stored with every trial. Nothing else carries hyperparameters: the model, the loss
and the optimizer are built from it and keep no copy of their own (unlike yolov5's `model.hyp`).
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from trainer.params import (
    AUG,
    LOSS_WEIGHT,
    OPT,
    SCHED,
    ParamRegistry,
    SearchRange,
    param,
    registry_of,
)
from trainer.records import EvalReport

Optimizer = Literal["SGD", "Adam", "AdamW"]
OPTIMIZERS: tuple[str, ...] = ("SGD", "Adam", "AdamW")
MODEL_SIZES: tuple[str, ...] = ("nano", "small", "medium")
# lr decay over the run, multiplied by MultiStepLR's gamma at each milestone (trainer.optim)
LR_DECAYS: tuple[str, ...] = ("none", "linear", "cosine")
WARMUP_MIN_ITERS = 100  # the field's floor on warmup length (Ultralytics, YOLOv5)


# what the trials of one pack share (trainer/packed.py): the architecture and the batch stream
# (a trial's epochs, eval interval and resume are its own); a study that draws one of these
# cannot pack its trials (search/study/study_file.py)
PACK_SHARED_FIELDS: tuple[str, ...] = (
    "data", "model", "imgsz", "batch", "skip_bad", "augment", "mosaic", "close_mosaic",
    "scale", "translate", "fliplr", "hsv_h", "hsv_s", "hsv_v", "device", "amp", "threads",
)  # fmt: skip


def evaluates_after(epoch: int, epochs: int, eval_interval: int) -> bool:
    """Whether a run of `epochs` evaluates (and reports) once `epoch` epochs are completed:
    every `eval_interval` epochs and after the last. The one rule for tune's `fit`, a pack, the
    Ultralytics adapter and the search's budget and rungs (`search/study/pruning.py`)."""
    return epoch % eval_interval == 0 or epoch >= epochs


def _augmentation(
    default: float,
    help: str,
    hyp: str,
    search: tuple[float, float],
    high: float | None = 1,
    high_open: bool = False,
) -> Any:
    """An augmentation's chance or strength: from 0, searched over `search`, named `hyp` as
    Ultralytics names it."""
    return param(
        default, help, low=0, high=high, high_open=high_open, hyp=hyp,
        search=SearchRange(*search), group=AUG,
    )  # fmt: skip


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
    data: str = param("shapes", "'shapes' (built-in) or a path to a YOLO data.yaml", group="data")
    # nano is 0.05 GFLOPs at 128 px, small (YOLOv5n-like) 0.17, YOLOv8n 0.35
    model: str = param("small", "model size", choices=MODEL_SIZES, group="model")
    weights: str | None = param(None, "local weights (.pt) to start from", group="model")
    imgsz: int = param(128, "input size, a multiple of 32", low=32, group="data")
    batch: int = param(32, "images per batch", low=1, group="data")
    epochs: int = param(12, "epochs to train", low=1, group=SCHED)
    skip_bad: bool = param(False, "skip bad samples with a warning, don't stop", group="data")
    augment: bool = param(True, "training augmentation (off: none of it)", group="augmentation")

    # `search=`: a natural search range (a `[space]` entry `{}`, search/study/space.py),
    # a factor of 3 to 4 around the recipe's values for what it tuned, Ultralytics' Tuner's
    # bounds (`ultralytics/engine/tuner.py`) for the schedule and augmentation

    # loss weights: applied once, in trainer.loss, to the unweighted components
    # (YOLOv5's hyp.scratch 0.05 / 1.0 / 0.5 with its scaling for 128 px and a few classes:
    # obj * (imgsz / 640)^2, cls * nc / 80; the notes' first model is 0.05 / 1.0 / 0.5)
    lbox: float = param(
        0.05, "box loss weight", low=0, hyp="box", search=SearchRange(around=3), group=LOSS_WEIGHT
    )
    lobj: float = param(
        0.04,
        "objectness loss weight",
        low=0,
        hyp="obj",
        search=SearchRange(around=3),
        group=LOSS_WEIGHT,
    )
    lcls: float = param(
        0.03,
        "classification loss weight",
        low=0,
        hyp="cls",
        search=SearchRange(around=3),
        group=LOSS_WEIGHT,
    )

    # optimisation
    optimizer: str = param(
        "AdamW", "optimizer", choices=OPTIMIZERS, hyp="optimizer", search=SearchRange(), group=OPT
    )
    # measured: 0.001 learns ~10x slower in 10 epochs here (benchmarks.md)
    lr: float = param(
        0.01,
        "initial learning rate",
        low=0,
        low_open=True,
        hyp="lr0",
        search=SearchRange(around=3),
        group=OPT,
    )
    momentum: float = param(
        0.9,
        "SGD momentum (Adam: beta1)",
        low=0,
        high=1,
        high_open=True,
        hyp="momentum",
        search=SearchRange(0.8, 0.98),
        group=OPT,
    )
    nesterov: bool = param(False, "Nesterov momentum (SGD)", group=OPT)
    weight_decay: float = param(
        0.0005,
        "weight decay",
        low=0,
        high=1,
        high_open=True,
        hyp="weight_decay",
        search=SearchRange(around=4),
        group=OPT,
    )
    # warmup: lr from 0 (biases: from warmup_bias_lr) and SGD momentum from warmup_momentum, over
    # warmup_iters iterations, or when None over max(warmup_epochs of iterations, 100)
    warmup_iters: int | None = param(None, "warmup iterations (unset: from warmup_epochs)", low=0)
    warmup_epochs: float = param(
        3.0, "warmup epochs", low=0, hyp="warmup_epochs", search=SearchRange(0, 5), group=SCHED
    )
    # Ultralytics: 0.1 for SGD, 0 for Adam (lr is a step size)
    warmup_bias_lr: float = param(
        0.0, "bias lr at the start of warmup", low=0, hyp="warmup_bias_lr", group=SCHED
    )
    warmup_momentum: float = param(
        0.8,
        "momentum at the start of warmup",
        low=0,
        high=1,
        high_open=True,
        hyp="warmup_momentum",
        group=SCHED,
    )
    # the lr falls from lr to lr * lrf over the run ("none": constant, the notes' schedule) ...
    lr_decay: str = param(
        "linear", "lr decay over the run", choices=LR_DECAYS, hyp="lr_decay", group=SCHED
    )
    lrf: float = param(
        0.01,
        "final lr, a fraction of lr",
        low=0,
        low_open=True,
        high=1,
        hyp="lrf",
        search=SearchRange(0.01, 1.0, log=True),
        group=SCHED,
    )
    # ... times gamma at each MultiStepLR milestone: iterations, or fractions of the run when
    # every value is <= 1 (a fraction of 1.0 falls at the very end of the run, i.e. no decay)
    milestones: tuple[float, ...] = param(
        (),
        "MultiStepLR milestones: iterations, or fractions of the run (e.g. 0.6,0.85)",
        low=0,
        low_open=True,
        hyp="milestones",
        search=SearchRange(),
        group=SCHED,
    )
    gamma: float = param(
        0.5,
        "lr factor at each milestone",
        low=0,
        low_open=True,
        high=1,
        hyp="gamma",
        search=SearchRange(0.1, 0.9),
        group=SCHED,
    )
    # nominal batch: gradients of ceil(nbs / batch) batches are summed before a step, and weight
    # decay is scaled by batch * accumulate / nbs, so lr and weight decay mean the same at any
    # batch size (YOLOv5, Ultralytics). nbs <= batch: a step every batch.
    nbs: int = param(64, "nominal batch size", low=1, hyp="nbs", group=OPT)
    # exponential moving average of the weights, used for evaluation, predictions, checkpoints:
    # decay ema_decay * (1 - exp(-updates / ema_tau)), ramped so early weights fade fast; 0: off
    ema_decay: float = param(
        0.9999,
        "EMA decay of the weights (0: off)",
        low=0,
        high=1,
        high_open=True,
        hyp="ema_decay",
        group=OPT,
    )
    ema_tau: float = param(2000.0, "EMA ramp, in updates", low=0, low_open=True, group=OPT)

    # augmentation (training only; `augment=False` turns all of it off)
    mosaic: float = _augmentation(1.0, "probability of a 2x2 mosaic batch", "mosaic", (0, 1))
    close_mosaic: int = param(
        10, "no mosaic in the last N epochs", low=0, hyp="close_mosaic", group=AUG
    )
    scale: float = _augmentation(
        0.5, "random zoom in [1 - scale, 1 + scale]", "scale", (0, 0.9), high_open=True
    )
    translate: float = _augmentation(
        0.1, "random shift, fraction of the image", "translate", (0, 0.5), high=None
    )
    fliplr: float = _augmentation(0.5, "horizontal flip chance", "fliplr", (0, 1))
    hsv_h: float = _augmentation(0.015, "hue jitter, fraction of the circle", "hsv_h", (0, 0.1))
    hsv_s: float = _augmentation(0.7, "saturation gain jitter", "hsv_s", (0, 0.9))
    hsv_v: float = _augmentation(0.4, "value gain jitter", "hsv_v", (0, 0.9))

    # bookkeeping
    eval_interval: int = param(1, "evaluate (and report) every N epochs, and after the last", low=1)
    log_interval: int = param(20, "print a training line every N iterations", low=1)
    device: str = param("auto", "auto | cpu | cuda | cuda:N")
    amp: bool = param(True, "bf16 autocast on CUDA; ignored on CPU")
    threads: int | None = param(None, "torch intra-op threads (unset: torch's default)", low=1)
    seed: int = param(0, "random seed")
    out: str = "runs/train"
    resume: bool = False  # continue from `out`/last.pt when it exists
    extra: dict[str, Any] = field(default_factory=dict, compare=False)  # free-form labels

    def __post_init__(self) -> None:
        # milestones may arrive as a list (JSON, CLI); keep the frozen object hashable-ish
        if isinstance(self.milestones, list | tuple):
            object.__setattr__(self, "milestones", tuple(self.milestones))
        # each parameter's own range (declared once, with the field), then what ties them
        for p in TRAIN_PARAMS:
            p.check(getattr(self, p.name))
        object.__setattr__(self, "milestones", tuple(float(m) for m in self.milestones))
        if self.imgsz % 32:
            raise ValueError(f"imgsz must be a multiple of 32, but got imgsz={self.imgsz}")
        if self.lbox + self.lobj + self.lcls <= 0:
            raise ValueError(
                "at least one loss weight must be > 0, but got "
                f"lbox={self.lbox}, lobj={self.lobj}, lcls={self.lcls}"
            )
        ms = self.milestones
        if list(ms) != sorted(ms):
            raise ValueError(
                f"milestones must be in increasing order, but got milestones={list(ms)}"
            )
        if ms and any(m <= 1 for m in ms) and any(m > 1 for m in ms):
            raise ValueError(
                "milestones must be all fractions of the run (<= 1) or all iterations (> 1), "
                f"but got milestones={list(ms)}"
            )
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


# tune's own trainer's parameters: every `param(...)` field above, in declaration order
TRAIN_PARAMS: ParamRegistry = registry_of(TrainConfig, "tune")


@dataclass
class PackMember:
    """One trial of a pack (`trainer.packed.fit_pack`): its config, and its
    `report(step, metrics)`, called after each of its evaluations (after its checkpoint is
    saved); an exception it raises stops this trial. Here, beside `TrainConfig`, so that the
    search builds members without importing torch."""

    config: TrainConfig
    report: Callable[[int, EvalReport], None] | None = None
