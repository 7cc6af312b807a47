"""What the search needs of a trainer, and nothing more.

A trainer is whatever trains one detector per trial: tune's own (`builtin.py`), Ultralytics
(`ultralytics.py`) or any command (`command.py`). The search side (objective, study file, space,
report) depends on this module only:

- `params`: the parameters it accepts, one `trainer.params.Param` each (name, kind, range or
  choices, default, help). A study's `[space]` and `[trial]` pins are checked against them.
- `components`: the names of the unweighted loss components it reports ("box", "obj", "cls" for
  tune's detector; "box", "cls", "dfl" for Ultralytics). A training line carries component `c`
  as `l<c>`, an evaluation as `val_l<c>` (so `lbox`, `val_lbox`): the report draws one panel each.
- `run(job, report)`: trains one trial from `job.values`, calls `report(evaluation)` after each
  evaluation, and returns a `TrialOutcome`. `report` may raise (`optuna.TrialPruned` when the
  pruner stops the trial, `Interrupted` when the worker stops): the trainer lets it through, after
  stopping whatever it started.
- `checkpoint`: the file, relative to `job.out`, the trainer resumes from: a retry of a lost trial
  finds its predecessor's last uploaded checkpoint there, with `job.resume` set; None: the
  trainer cannot resume, a retry starts over. Each evaluation names the file holding the
  checkpoint of its own step, complete (`Evaluation.checkpoint`), which the search uploads
  before the trainer goes on; a trainer whose checkpoint another process writes reports a
  snapshot (`checkpoint_watch.py`), never a file that may be half written.

A trainer never sees Optuna: it receives frozen values and a callback (DESIGN.md, "Contracts").
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from trainer.params import ParamRegistry

TRAIN_KEYS: tuple[str, ...] = ("epoch", "iter", "lr", "loss", "latency")  # besides l<component>


class TrainerError(ValueError):
    """A trainer cannot run as asked: not installed, a bad option. One line for the user."""


def train_key(component: str) -> str:
    """A training line's key for loss component `component` (`box` -> `lbox`)."""
    return f"l{component}"


def val_key(component: str) -> str:
    """An evaluation's key for the unweighted validation loss `component` (`box` -> `val_lbox`)."""
    return f"val_l{component}"


@dataclass(frozen=True)
class TrialJob:
    """One trial as the trainer receives it.

    `record()` is what the trial's ``config`` user attr stores: for tune's own trainer exactly
    the fields of its `TrainConfig`."""

    values: Mapping[str, Any]  # every parameter of the trainer: its defaults, the pins, the draw
    data: str  # "shapes" or a data.yaml path
    epochs: int  # the full length; the search may stop the trial at an evaluation before it
    eval_interval: int  # evaluate (and report) every N epochs, and after the last
    out: Path  # the trial's own folder: run files, the checkpoint
    resume: bool = False  # continue from `out / checkpoint` (a retry of a lost trial)
    seed: int | None = None  # None: the trainer's own seed
    device: str = "auto"
    threads: int | None = None  # CPU threads this trial may use

    def record(self) -> dict[str, Any]:
        """The trainer's values and the job's settings (`JOB_KEYS`), JSON-ready."""
        record = {**self.values, "data": self.data, "epochs": self.epochs}
        record |= {"eval_interval": self.eval_interval, "device": self.device}
        record |= {"out": str(self.out), "threads": self.threads, "resume": self.resume}
        if self.seed is not None:
            record["seed"] = self.seed
        return {k: list(v) if isinstance(v, tuple) else v for k, v in record.items()}


# the keys a job's record adds to the trainer's values
JOB_KEYS: tuple[str, ...] = (
    "data",
    "epochs",
    "eval_interval",
    "device",
    "out",
    "threads",
    "resume",
    "seed",
)


@dataclass(frozen=True)
class Evaluation:
    """What a trainer reports after each evaluation.

    `step` counts epochs completed (the pruner's step). `metrics` holds the evaluation's numbers
    by name, the objective metric (`mAP50_95`, `mAP50`) among them; `losses` the unweighted
    validation loss components by name; `train` the training lines logged since the previous
    evaluation (`TRAIN_KEYS` plus `l<component>`). `iter` places the evaluation on the training
    curves' axis (iterations; None: the trainer does not count them, the step is used).
    `checkpoint` is the file holding this step's checkpoint, complete and written by nobody
    while the search uploads it (None: no checkpoint of this step; a retry resumes from the
    last one uploaded, whose step the storage records).
    """

    step: int
    metrics: Mapping[str, float]
    losses: Mapping[str, float] = field(default_factory=dict)
    train: Sequence[Mapping[str, float]] = ()
    iter: int | None = None
    seconds_training: float = 0.0
    seconds_evaluating: float = 0.0
    checkpoint: Path | None = None

    def to_point(self) -> dict[str, Any]:
        """The curve point stored on the trial (`search/bookkeeping/trial_record.py`), in the layout
        `trainer.records.EvalReport.to_dict()` has always had."""
        evaluation: dict[str, Any] = {
            "epoch": self.step,
            "iter": self.iter if self.iter is not None else self.step,
            **{k: float(v) for k, v in self.metrics.items()},
            **{val_key(k): float(v) for k, v in self.losses.items()},
        }
        return {
            "eval": evaluation,
            "train": [dict(line) for line in self.train],
            "seconds_training": self.seconds_training,
            "seconds_evaluating": self.seconds_evaluating,
        }

    def metric(self, name: str) -> float:
        """The evaluation's `name` metric (see `metric_value`)."""
        return metric_value(self.metrics, name, f"the evaluation at step {self.step}")


def metric_value(metrics: Mapping[str, float], name: str, where: str) -> float:
    """`metrics[name]`; a `TrainerError` when the trainer did not report it, a `ValueError` when
    it is not finite (never a score of 0: DESIGN.md). `where` says whose metrics they are."""
    if name not in metrics:
        raise TrainerError(
            f"{where} has no {name} (the trainer reported: {', '.join(metrics) or 'nothing'})"
        )
    value = float(metrics[name])
    if not math.isfinite(value):
        raise ValueError(f"{name} in {where} is not finite, but got {name}={value}")
    return value


@dataclass(frozen=True)
class TrialOutcome:
    """The end of a trial that ran to its full length."""

    metrics: Mapping[str, float]  # the final evaluation's numbers, the objective among them
    summary: Mapping[str, Any]  # stored as the trial's summary (JSON-ready)
    inference_ms: float | None = None  # per image, batch 1; needed by a latency budget


ReportFn = Callable[[Evaluation], None]


class Trainer(Protocol):
    """A trainer the search can run (see the module docstring)."""

    name: str
    params: ParamRegistry
    components: tuple[str, ...]
    checkpoint: str | None

    def prepare(self, job: TrialJob) -> None:
        """Once per worker, before its first trial: load what every trial shares (data)."""
        ...

    def run(self, job: TrialJob, report: ReportFn) -> TrialOutcome:
        """Train one trial (see the module docstring)."""
        ...


@dataclass(frozen=True)
class PackedJob:
    """One trial of a pack (`PackingTrainer.run_pack`): its job and its report callback."""

    job: TrialJob
    report: ReportFn


Refill = Callable[[], PackedJob | None]  # a pack's next trial for a freed slot; None: none
Done = Callable[[PackedJob, TrialOutcome | BaseException], None]  # a trial of a pack ended


class PackingTrainer(Trainer, Protocol):
    """A trainer that can train several trials at once as one pack (`[trial] pack`).

    `run_pack` trains the `first` jobs together. After each epoch of the pack, every trial that
    ended (ran its length, failed, or was stopped by its `report` raising) is passed to
    `done(packed, outcome)`, its `TrialOutcome` or the exception that ended it; then `refill()`
    is asked for a trial to take the freed slot (None: the slot stays empty). It returns once
    every slot is empty. `pack_shared` names the parameters the trials of one pack must share
    (the architecture and batch stream): a study that draws one of them cannot pack.
    """

    pack_shared: tuple[str, ...]

    def run_pack(self, first: Sequence[PackedJob], refill: Refill, done: Done) -> None: ...


def packs(trainer: Trainer) -> bool:
    """Whether `trainer` can train packs."""
    return callable(getattr(trainer, "run_pack", None))
