"""Hyperband as tune uses it: every trial informs a rung, but a rung decides only once it is full.

Optuna's `HyperbandPruner` (successive halving per bracket) compares a trial at a rung with the
values other trials recorded there and keeps the top 1/reduction_factor. Early in a study a rung
holds only a few values, and Optuna then keeps only the best trial so far: the third trial of a
study is stopped at the first rung whenever one earlier trial was ahead of it there, however good
it would have become. On `shapes` that stopped start-up draws that random search ran to more
than the best hand-tuned setting (docs/benchmarks.md, "Search efficiency").

`TuneHyperbandPruner` adds two rules on top of Hyperband's decision, never removing a value from
the rung:

- **`n_min_trials`**: a trial is stopped at an evaluation step only when at least this many trials
  (itself included) have been evaluated at that step, as Optuna's `MedianPruner` does;
- **baselines are never stopped** (reports compare them at full length), but they do record
  their rung values, so in a study with baselines the first sampled trials are measured against
  them rather than against each other alone.

Optuna has no such option: Hyperband's `bootstrap_count` stops (rather than spares) every trial
that reaches a rung holding fewer values. The class stays a `HyperbandPruner` subclass so that
Optuna's samplers still see Hyperband and fit their models on the trial's own bracket
(`optuna.pruners._filter_study`).

Cost: Hyperband already reads the study's trials at every rung decision; the count adds one more
read when Hyperband would stop a trial at a step this worker has not yet seen full, and none after.
"""

from __future__ import annotations

import optuna
from optuna.trial import FrozenTrial, TrialState

from search import trial_record

# trials whose evaluations count towards n_min_trials; a FAIL one is left out, since its retry
# re-records the same evaluations
_COUNTED = (TrialState.COMPLETE, TrialState.PRUNED, TrialState.RUNNING)


class TuneHyperbandPruner(optuna.pruners.HyperbandPruner):
    """`HyperbandPruner` that waits for `n_min_trials` evaluations at a step, sparing baselines."""

    def __init__(
        self, *, min_resource: int, max_resource: int, reduction_factor: int, n_min_trials: int
    ) -> None:
        super().__init__(
            min_resource=min_resource, max_resource=max_resource, reduction_factor=reduction_factor
        )
        self.n_min_trials = n_min_trials
        self._full_steps: set[int] = set()  # steps already seen with n_min_trials evaluations

    def prune(self, study: optuna.Study, trial: FrozenTrial) -> bool:
        # Hyperband first, always: it records the trial's value at a rung even when the decision
        # is then overruled, so a spared trial still counts as a competitor for later ones
        if not super().prune(study, trial):
            return False
        if trial_record.read_baseline(trial) is not None:
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
