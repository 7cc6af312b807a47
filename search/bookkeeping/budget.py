"""The study's budget: may a worker start another trial? Counted from the storage.

A study spends its `[budget]` (search/study/study_file.py `Budget`) in two units:

- **trials**: COMPLETE + PRUNED trials, at most `n_trials`;
- **epochs**: training epochs, summed over every trial of the study, at most `epochs`. A trial's
  epochs are its last evaluation step (epochs completed) minus, for a retry, the step of the
  checkpoint it resumed from (those epochs were trained, and counted, by its predecessor). A
  failed trial's epochs count too: they were spent.

The epoch budget is a hard cap: the epochs spent never exceed `epochs`. Two rules share it:

- **Start**: a new trial starts only when the epochs still free cover its first stop point (the
  pruner's first rung, or its full length without a pruner). Epochs already promised count as
  taken.
- **Hold**: a running trial holds the budget up to an epoch, its *hold* (`trial_record`
  ``budget_hold``; its first stop point until it has one). It promises what lies between its
  progress and its hold. At a stop point the pruner keeps it at, it raises its hold under the
  study's exclusive lock (`extended_hold`): to its full length when the free epochs pay for that
  (a trial the pruner kept once is the kind that runs to the end), else to its furthest stop
  point they pay for. When they do not pay for even the next one, it ends at this evaluation,
  "stopped: budget spent" (PRUNED, with that reason; never counted as the pruner's).

So a kept trial takes the free epochs before any trial that has not started (its start needs
them free), a new trial only starts on epochs nobody holds, and what is left idle at the end is
less than a first rung or a trial's next stretch. A waiting retry of a reaped trial always
starts: it continues its predecessor's hold, which the budget already admitted.

Workers start trials without the exclusive study lock while the budget is far from spent
(`search/running/worker.py`): `decide(..., racing=k)` then leaves room for the k starts by other
workers that its reading of the trials cannot see yet.

`decide` is a pure function of the trials' states and progress, so workers, `tune launch`,
`tune status` and the tests read the budget the same way (`ManagedStudy.budget_use` reads it from a
study, search/control/study_manager.py).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

import optuna
from optuna.trial import FrozenTrial, TrialState

from search.bookkeeping import trial_record
from search.study.pruning import stop_points
from search.study.study_file import Budget, StudySpec

Decision = Literal["start", "wait", "spent"]


@dataclass(frozen=True)
class BudgetUse:
    """What a study has spent and promised, read from its trials."""

    finished: int = 0  # COMPLETE + PRUNED
    running: int = 0
    epochs_spent: int = 0  # epochs trained, all trials
    epochs_promised: int = 0  # epochs running trials hold: to their first stop point, then the end
    retries_waiting: int = 0  # WAITING retries of reaped trials
    baseline_next: bool = False  # the next trial a worker gets (the oldest WAITING) is a baseline
    races_waiting: int = 0  # WAITING race runs (full length, never pruned)
    race_next: bool = False  # the next trial a worker gets is a race run

    def describe(self, budget: Budget) -> str:
        """`12/24 trials, 81/120 epochs (+9 promised to running trials)` (what is set)."""
        parts = []
        if budget.n_trials is not None:
            parts.append(f"{self.finished}/{budget.n_trials} trials")
        if budget.epochs is not None:
            promised = f" (+{self.epochs_promised} promised)" if self.epochs_promised else ""
            parts.append(f"{self.epochs_spent}/{budget.epochs} epochs{promised}")
        return ", ".join(parts)


def describe_plan(spec: StudySpec) -> str:
    """One line on what the study may spend and where trials may stop, for `tune launch`."""
    budget, trial = spec.budget, spec.trial
    amounts = [
        f"{n} {unit}" for n, unit in ((budget.epochs, "epochs"), (budget.n_trials, "trials")) if n
    ]
    trainer = "" if trial.trainer == "tune" else f" ({trial.trainer} trainer)"
    parts = [f"budget {' or '.join(amounts)}", f"trials of {trial.epochs} epochs{trainer}"]
    points = stop_points(spec.pruner, trial.epochs, trial.eval_interval)[:-1]
    if points:
        shown = ", ".join(map(str, points[:8])) + (", ..." if len(points) > 8 else "")
        parts.append(f"{spec.pruner.type} may stop them at epochs {shown}")
    if spec.baselines:
        length = stop_points(spec.pruner, trial.epochs, trial.eval_interval, spec.baseline_epochs)
        n = len(spec.baselines)
        parts.append(f"{n} baseline{'s' if n > 1 else ''} of {length[0]} epochs")
    return ", ".join(parts)


def trial_epochs(trial: FrozenTrial) -> int:
    """Epochs this trial trained itself (a retry: only those after its resumed checkpoint)."""
    last = trial.last_step or 0
    return max(0, last - (trial_record.read_resumed_step(trial) or 0))


def use_of(spec: StudySpec, trials: Sequence[FrozenTrial]) -> BudgetUse:
    """Spent and promised budget of a study with these trials (any states)."""
    finished = running = spent = promised = retries = races = 0
    oldest_waiting: FrozenTrial | None = None
    for t in trials:
        spent += trial_epochs(t)
        if t.state in (TrialState.COMPLETE, TrialState.PRUNED):
            finished += 1
        elif t.state == TrialState.RUNNING:
            running += 1
            promised += max(0, hold_of(spec, t) - _progress(t))
        elif t.state == TrialState.WAITING:
            retries += bool(trial_record.read_retry_history(t))
            races += trial_record.fixed_length(t) == "full"
            if oldest_waiting is None or t.number < oldest_waiting.number:
                oldest_waiting = t
    next_length = None if oldest_waiting is None else trial_record.fixed_length(oldest_waiting)
    return BudgetUse(
        finished,
        running,
        spent,
        promised,
        retries,
        baseline_next=next_length == "baseline",
        races_waiting=races,
        race_next=next_length == "full",
    )


def _length(spec: StudySpec, trial: FrozenTrial | optuna.Trial) -> int | None:
    """The fixed length a trial trains (a baseline's, a race run's), None for a prunable one."""
    fixed = trial_record.fixed_length(trial)
    if fixed is None:
        return None
    return spec.baseline_epochs if fixed == "baseline" else spec.trial.epochs


def _stop_points(spec: StudySpec, length: int | None) -> tuple[int, ...]:
    return stop_points(spec.pruner, spec.trial.epochs, spec.trial.eval_interval, length)


def hold_of(spec: StudySpec, trial: FrozenTrial | optuna.Trial) -> int:
    """The epoch a running trial may train up to: its recorded hold, else the first stop point
    its start was admitted for."""
    return trial_record.read_hold(trial) or _stop_points(spec, _length(spec, trial))[0]


def _progress(trial: FrozenTrial) -> int:
    """The epoch a trial has reached: its last evaluation, or a retry's resumed checkpoint."""
    return max(trial.last_step or 0, trial_record.read_resumed_step(trial) or 0)


def extended_hold(spec: StudySpec, use: BudgetUse, trial: FrozenTrial, step: int) -> int | None:
    """The new hold of `trial`, kept by the pruner at evaluation `step` (which its hold has
    reached): its full length if the free epochs pay for it, else its furthest stop point they
    pay for; None when they pay for no stop point after `step` (it must stop). `use` is the
    study's, read under the exclusive lock, this trial included."""
    points = _stop_points(spec, _length(spec, trial))
    later = [p for p in points if p > step]
    if spec.budget.epochs is None:
        return later[-1] if later else None
    free = spec.budget.epochs - use.epochs_spent - use.epochs_promised
    payable = [p for p in later if p - step <= free]
    return payable[-1] if payable else None


def race_room(
    spec: StudySpec, trials: Sequence[FrozenTrial], runs: int, share: float
) -> str | None:
    """Why the study's budget cannot pay for `runs` more race runs (None: it can).

    Race runs train the full length and are never pruned, so each costs `trial.epochs` epochs (a
    whole trial of an `n_trials` budget). They are paid for from what nobody holds: epochs free
    after those spent, promised to running trials and owed to race runs already waiting; and all
    race runs together, these included, take at most `share` of the budget.
    """
    epochs = spec.trial.epochs
    racing = [t for t in trials if trial_record.fixed_length(t) == "full"]
    waiting = sum(t.state == TrialState.WAITING for t in racing)
    use = use_of(spec, trials)
    budget = spec.budget
    if budget.epochs is not None:
        raced = sum(
            epochs if t.state in (TrialState.WAITING, TrialState.RUNNING) else trial_epochs(t)
            for t in racing
        )
        free = budget.epochs - use.epochs_spent - use.epochs_promised - waiting * epochs
        cost = runs * epochs
        if cost > free:
            return f"{runs} runs of {epochs} epochs need {cost}, {max(free, 0)} are free"
        if raced + cost > share * budget.epochs:
            return (
                f"{runs} runs of {epochs} epochs would take races to {raced + cost} of the "
                f"{budget.epochs}-epoch budget, above their share of {share:.0%}"
            )
    if budget.n_trials is not None:
        taken = use.finished + use.running + waiting
        if taken + runs > budget.n_trials:
            return f"{runs} runs need {runs} trials, {max(budget.n_trials - taken, 0)} are left"
        if len(racing) + runs > share * budget.n_trials:
            return (
                f"{runs} runs would take races to {len(racing) + runs} of {budget.n_trials} "
                f"trials, above their share of {share:.0%}"
            )
    return None


def first_stop(spec: StudySpec, length: int | None) -> int:
    """The first epoch where a trial of `length` epochs (None: the study's) may stop."""
    return stop_points(spec.pruner, spec.trial.epochs, spec.trial.eval_interval, length)[0]


def decide(spec: StudySpec, use: BudgetUse, racing: int = 0) -> tuple[Decision, str]:
    """Start a trial, wait (running trials hold what is left; one may still fail and free it),
    or stop (spent); with the reason, for the worker's log.

    `racing`: other workers that may be starting a trial at this moment without it showing in
    `use` (a start without the exclusive study lock, `search/running/worker.py`). Each is counted as
    a running trial that holds the longest first stop point, and so is this worker's own trial: any
    of them may get the next baseline. With a retry waiting, racers never start (the retry's
    hold is not in `use` yet and any of them may get it): one worker at a time takes it.
    """
    budget = spec.budget
    # what the next trial will surely train (Optuna hands out the oldest WAITING one first)
    next_length = spec.baseline_epochs if use.baseline_next else None
    first = first_stop(spec, spec.trial.epochs if use.race_next else next_length)
    if racing:
        if use.retries_waiting:
            return "wait", "a retry waits: one worker at a time starts it"
        first = max(first_stop(spec, None), first_stop(spec, spec.baseline_epochs))
        if use.races_waiting:  # any of them may get a race run, which holds the full length
            first = spec.trial.epochs
        use = dataclasses.replace(
            use,
            running=use.running + racing,
            epochs_promised=use.epochs_promised + racing * first,
        )
    verdicts: list[tuple[Decision, str]] = []
    if budget.n_trials is not None:
        if use.finished >= budget.n_trials:
            verdicts.append(("spent", f"{use.finished}/{budget.n_trials} trials finished"))
        elif use.finished + use.running >= budget.n_trials:
            verdicts.append(("wait", "running trials hold the rest of the budget"))
    if budget.epochs is not None and not use.retries_waiting:
        free = budget.epochs - use.epochs_spent - use.epochs_promised
        if free < first:
            held = f"{use.epochs_spent} epochs spent, {use.epochs_promised} promised"
            if use.running:
                verdicts.append(("wait", f"{held}: running trials hold the rest"))
            else:
                verdicts.append(("spent", f"{held} of {budget.epochs}"))
    for decision in ("spent", "wait"):
        for verdict in verdicts:
            if verdict[0] == decision:
                return verdict
    return "start", "budget left"
