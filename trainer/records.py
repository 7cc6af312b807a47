"""What a training run reports: the records shared by the trainer, the run directory and the search.

These are the contract between `trainer/` and `search/`. `fit()` calls
`report(step, metrics)` after every evaluation with an `EvalReport`; `search/` stores it on the
Optuna trial so that reports can be drawn from the storage alone.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any


class NonFiniteLossError(RuntimeError):
    """The training loss became NaN or infinite: the run stops with this, never a score of 0."""


@dataclass(frozen=True)
class TrainLine:
    """One logged training iteration (a `metrics.jsonl` training line).

    `loss` is the weighted total (what was back-propagated, not comparable across weights);
    `lbox`, `lobj`, `lcls` are the unweighted components, comparable across trials.
    `latency` is seconds per training iteration (CUDA events on a GPU: trainer/iteration_log.py).
    """

    epoch: int
    iter: int
    lr: float
    loss: float
    lbox: float
    lobj: float
    lcls: float
    latency: float

    def log_line(self) -> str:
        """The hand-tuning notes' line.

        For example `epoch 6 / iter 1073 lr 0.00100 , loss 1.00232 latency 0.03125`.
        """
        return (
            f"epoch {self.epoch} / iter {self.iter} lr {self.lr:.5f} , "
            f"loss {self.loss:.5f} latency {self.latency:.5f}"
        )

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class EvalLine:
    """One evaluation on the validation set (a `metrics.jsonl` evaluation line).

    `val_lbox/val_lobj/val_lcls` are unweighted validation losses; `val_loss` is their weighted
    total with this run's weights.
    """

    epoch: int
    iter: int
    mAP50: float
    mAP50_95: float
    val_lbox: float
    val_lobj: float
    val_lcls: float
    val_loss: float

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class EvalReport:
    """What `report(step, metrics)` receives after each evaluation.

    `step` (the first argument of `report`) is the number of epochs completed. `train` holds the
    training lines logged since the previous report, so that the search side can store the whole
    curve incrementally.
    """

    eval: EvalLine
    train: list[TrainLine] = field(default_factory=list)
    seconds_training: float = 0.0  # wall time in training iterations since the previous report
    seconds_evaluating: float = 0.0  # wall time of this evaluation

    def to_dict(self) -> dict[str, Any]:
        return {
            "eval": self.eval.to_dict(),
            "train": [t.to_dict() for t in self.train],
            "seconds_training": self.seconds_training,
            "seconds_evaluating": self.seconds_evaluating,
        }


@dataclass(frozen=True)
class FitResult:
    """The end of a run (also written as `summary.json`)."""

    mAP50: float
    mAP50_95: float
    inference_ms: float  # per image, batch 1, after warm-up
    train_latency: float  # median seconds per training iteration
    epochs_completed: int
    iterations: int
    images_per_second: float  # training throughput
    seconds_training: float
    seconds_evaluating: float
    device: str
    run_dir: str

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @property
    def path(self) -> Path:
        return Path(self.run_dir)
