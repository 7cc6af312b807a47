"""A trial as the report's table has it: one row, with the facts the panels, the headline and
the verdict need about it, and the role it plays in the drawing."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

from search.confirm.ranking import finite

BEST, TOP, BASELINE, OTHER = "best", "top", "baseline", "other"


@dataclass(frozen=True)
class TrialRow:
    """One line of the trials table (and the facts the other parts need about a trial)."""

    number: int
    state: str  # COMPLETE, PRUNED, FAIL, RUNNING, WAITING
    label: str  # legend text: "#3 baseline: first model", "#12 best", "#7 pruned"
    role: str  # BEST, TOP, BASELINE or OTHER
    baseline: str | None
    params: dict[str, Any]
    value: float | None  # the objective (COMPLETE only)
    mAP50_95: float | None  # final, or the last evaluation of a pruned/running/failed trial
    mAP50: float | None
    val_losses: dict[str, float]  # last unweighted validation loss by component: box, cls, ...
    inference_ms: float | None
    train_latency: float | None  # seconds per training iteration (median)
    duration_s: float | None
    host: str | None
    error: str | None
    feasible: bool | None  # None when the study sets no constraint
    last_iter: int | None
    retry_of: int | None
    # evaluation lines by step (epochs completed): mAP50_95, mAP50, val_lbox, ...
    evals: dict[int, dict[str, Any]] = dataclasses.field(default_factory=dict)
    stopped: str | None = None  # why a trial that was not pruned ended early (a baseline's length)

    def metric_at(self, step: int, metric: str = "mAP50_95") -> float | None:
        """The evaluation metric at `step`, if the trial was evaluated there."""
        return finite(self.evals.get(step, {}).get(metric))

    @property
    def last_step(self) -> int | None:
        return max(self.evals) if self.evals else None
