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


@dataclass(frozen=True)
class TrainConfig:
    """Everything that decides how one detector is trained and evaluated.

    Defaults are the first hand-tuned setting of the notes (SGD, lr 0.001, lcls 0.5, lobj 1.0,
    lbox 0.05, MultiStepLR milestones 10000/20000/30000 iterations, gamma 0.5).
    """

    # data and model
    data: str = "shapes"
    model: str = "nano"
    weights: str | None = None
    imgsz: int = 128
    batch: int = 32
    epochs: int = 12
    skip_bad: bool = False
    augment: bool = True

    # loss weights: applied once, in trainer.loss, to the unweighted components
    lbox: float = 0.05
    lobj: float = 1.0
    lcls: float = 0.5

    # optimisation
    optimizer: str = "SGD"
    lr: float = 0.001
    momentum: float = 0.9
    nesterov: bool = False
    weight_decay: float = 0.0005
    warmup_iters: int | None = None  # None: 5% of the run, at most 1000 iterations
    # MultiStepLR milestones: iterations, or fractions of the run when every value is <= 1
    # (a fraction of 1.0 falls at the very end of the run, i.e. no decay)
    milestones: tuple[float, ...] = (10000, 20000, 30000)
    gamma: float = 0.5

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

    def resolved_warmup_iters(self, total_iters: int) -> int:
        """Warmup length in iterations: the configured value or 5% of the run (at most 1000)."""
        if self.warmup_iters is not None:
            return self.warmup_iters
        return min(1000, total_iters // 20)

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
