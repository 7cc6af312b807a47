"""Pruners as tune uses them: any of Optuna's, wrapped in tune's two rules.

A study's `[pruner]` names one of Optuna's pruners over evaluation steps (epochs completed):

- `SuccessiveHalving` (ASHA: asynchronous successive halving, Li et al. 2020): rungs at
  `min_resource * reduction_factor**k` epochs; at each rung a trial goes on only when it is in the
  top `1 / reduction_factor` of the values recorded there so far;
- `Hyperband`: several successive-halving brackets with later first rungs (a hedge when the
  first rung ranks badly; on a small budget it spends most trials in the bracket of the earliest
  rung anyway);
- `Median`: stop a trial below the median of the others at the same step, at every evaluation
  from `min_resource` on;
- `None`: every trial runs to the full length.

`SparingPruner` wraps the chosen one, as Optuna's `PatientPruner` wraps any pruner, and adds:

- **baselines and race runs are never stopped** (a race run reruns a setting at the full length
  on a fresh seed, `search/confirm/incumbent.py`; reports compare baselines with the best trial
  at equal length, see `[budget] baseline_epochs`), but the wrapped pruner still sees them
  first, so their values join its rungs and the first sampled trials are measured against them,
  not only each other;
- **`n_min_trials`**: a trial is stopped at an evaluation step only when at least this many trials
  (itself included) have been evaluated at that step, as Optuna's `MedianPruner` does. Without
  it, successive halving with few values at a rung keeps only the best so far and stops good
  start-up draws (docs/benchmarks.md, "Search efficiency").

The wrapped pruner always decides first and its record is never undone: a spared trial keeps its
value at the rung, as a competitor for later ones. One thing is lost by wrapping: Optuna's
samplers fit their model on a trial's own Hyperband bracket only when `study.pruner` *is* a
`HyperbandPruner` (`optuna.pruners._filter_study`); with the wrapper TPE models all trials
together (it still weighs a pruned trial by the step it reached).

`stop_points` says at which evaluation steps a trial may end; the study's compute budget
(`search/bookkeeping/budget.py`) reserves the epochs a running trial will train up to its next one.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import optuna
from optuna.trial import FrozenTrial, TrialState

from trainer.config import evaluates_after

PRUNER_TYPES: tuple[str, ...] = ("SuccessiveHalving", "Hyperband", "Median", "None")
# trials whose evaluations count towards n_min_trials; a FAIL one is left out, since its retry
# re-records the same evaluations
_COUNTED = (TrialState.COMPLETE, TrialState.PRUNED, TrialState.RUNNING)


@dataclass(frozen=True)
class PrunerSpec:
    """A study's `[pruner]` table, validated."""

    type: str = "SuccessiveHalving"
    min_resource: int = 1  # epochs: the first rung (Median: the first step it may stop at)
    reduction_factor: int = 3
    n_min_trials: int = 1  # trials evaluated at a step before any is stopped there (1: Optuna's)


class SparingPruner(optuna.pruners.BasePruner):
    """Any pruner, plus: never stop a trial `spare` names (a baseline or a race run, which the
    storage's records tell); never stop before `n_min_trials` were seen."""

    def __init__(
        self,
        wrapped: optuna.pruners.BasePruner,
        spare: Callable[[FrozenTrial], bool],
        n_min_trials: int = 1,
    ) -> None:
        if n_min_trials < 1:
            raise ValueError(f"n_min_trials must be >= 1, but got {n_min_trials=}")
        self.wrapped = wrapped
        self.spare = spare
        self.n_min_trials = n_min_trials
        self._full_steps: set[int] = set()  # steps already seen with n_min_trials evaluations

    def prune(self, study: optuna.Study, trial: FrozenTrial) -> bool:
        # the wrapped pruner first, always: successive halving records the trial's value at a
        # rung even when the decision is then overruled
        if not self.wrapped.prune(study, trial):
            return False
        if self.spare(trial):  # a baseline or a race run
            return False
        step = trial.last_step
        return step is not None and self._enough_evaluated(study, step)

    def _enough_evaluated(self, study: optuna.Study, step: int) -> bool:
        # a step's count only grows, so once full it stays full: no more reads for it (and with
        # n_min_trials 1 the trial's own evaluation fills it: no read at all)
        if self.n_min_trials <= 1 or step in self._full_steps:
            return True
        trials = study.get_trials(deepcopy=False, states=_COUNTED)
        if sum(step in t.intermediate_values for t in trials) >= self.n_min_trials:
            self._full_steps.add(step)
            return True
        return False


def build_pruner(
    spec: PrunerSpec, epochs: int, spare: Callable[[FrozenTrial], bool]
) -> SparingPruner:
    """The study's pruner over evaluation steps up to `epochs` (a trial's full length), sparing
    the trials `spare` names."""
    return SparingPruner(_optuna_pruner(spec, epochs), spare, spec.n_min_trials)


def _optuna_pruner(spec: PrunerSpec, epochs: int) -> optuna.pruners.BasePruner:
    if spec.type == "SuccessiveHalving":
        return optuna.pruners.SuccessiveHalvingPruner(
            min_resource=spec.min_resource, reduction_factor=spec.reduction_factor
        )
    if spec.type == "Hyperband":
        return optuna.pruners.HyperbandPruner(
            min_resource=spec.min_resource,
            max_resource=epochs,
            reduction_factor=spec.reduction_factor,
        )
    if spec.type == "Median":
        # n_min_trials is the wrapper's (one rule for every pruner), so Optuna's is left at 1
        return optuna.pruners.MedianPruner(n_startup_trials=0, n_warmup_steps=spec.min_resource)
    if spec.type == "None":
        return optuna.pruners.NopPruner()
    raise ValueError(f"pruner type must be one of {', '.join(PRUNER_TYPES)}, but got {spec.type!r}")


def rungs(spec: PrunerSpec, epochs: int) -> tuple[int, ...]:
    """The epochs at which the pruner compares trials, before the full length.

    Successive halving: `min_resource * reduction_factor**k`. Hyperband: the same (the rungs of
    its first bracket; every later bracket's rungs are a subset). Median: every epoch from
    `min_resource` on. None: no rung.
    """
    if spec.type in ("SuccessiveHalving", "Hyperband"):
        found, rung = [], spec.min_resource
        while rung < epochs:
            found.append(rung)
            rung *= spec.reduction_factor
        return tuple(found)
    if spec.type == "Median":
        return tuple(range(spec.min_resource, epochs))
    return ()


def evaluation_steps(epochs: int, eval_interval: int) -> tuple[int, ...]:
    """The steps (epochs completed) at which a run evaluates and reports (`evaluates_after`:
    every `eval_interval` epochs and after the last, as every trainer does)."""
    return tuple(s for s in range(1, epochs + 1) if evaluates_after(s, epochs, eval_interval))


def stop_points(
    spec: PrunerSpec, epochs: int, eval_interval: int, length: int | None = None
) -> tuple[int, ...]:
    """The evaluation steps at which a trial may end: the first evaluation at or after each
    rung, and its last step (`length`: a baseline's, else the full `epochs`)."""
    steps = evaluation_steps(epochs, eval_interval)
    end = min(s for s in steps if s >= (length if length is not None else epochs))
    if length is not None:
        return (end,)  # a baseline is never stopped before its length
    points = {min(s for s in steps if s >= r) for r in rungs(spec, epochs)}
    return tuple(sorted(points | {end}))
