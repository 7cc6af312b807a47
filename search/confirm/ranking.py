"""Trials ranked by their objective: complete ones best first, feasible before infeasible.

What `tune confirm` retrains (its top trials) and what the report draws first come from the same
ranking.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

from optuna.study import StudyDirection
from optuna.trial import FrozenTrial, TrialState


def finite(value: Any) -> float | None:
    """`value` as a float when it is a finite number, else None."""
    if isinstance(value, int | float) and math.isfinite(value):
        return float(value)
    return None


def feasible(trial: FrozenTrial) -> bool | None:
    """Whether the trial meets the study's constraints; None when it carries none."""
    constraints = trial.constraints
    if not constraints:
        return None
    return all(v <= 0 for v in constraints.values())


def rank_complete(trials: Sequence[FrozenTrial], direction: StudyDirection) -> list[FrozenTrial]:
    """Complete trials best first; with constraints, feasible trials rank before infeasible ones."""
    done = [t for t in trials if t.state == TrialState.COMPLETE and finite(t.value) is not None]
    sign = -1.0 if direction == StudyDirection.MAXIMIZE else 1.0
    return sorted(done, key=lambda t: (feasible(t) is False, sign * float(t.value), t.number))  # type: ignore[arg-type]
