"""`tune status`: where a study stands, read from the storage alone.

Trials by state, the budget, the best trial with its parameters, the baselines, running trials
with their host and age, retries of trials that lost their worker (which trial each retries and
the step it resumed from), failed trials with their error, and the study's confirmation when
`tune confirm` ran (search/confirm/results.py). `study_status` gathers (tested),
`format_status` writes the text.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass, field
from typing import Any

import optuna
from optuna.trial import FrozenTrial, TrialState

from search.bookkeeping import trial_record
from search.bookkeeping.storage import StateCounts
from search.confirm.incumbent import study_best
from search.confirm.results import Confirmation, format_confirmation, read_confirmation_of
from search.confirm.standing import standing_of
from search.control.study_manager import ManagedStudy
from search.study.study_file import StudyFileError


@dataclass(frozen=True)
class TrialLine:
    number: int
    state: str
    value: float | None
    label: str | None  # baseline label
    params: dict[str, Any]
    host: str | None
    worker: str | None
    age_seconds: float | None  # running trials: time since start
    error: str | None
    retry_of: int | None
    resumed_step: int | None = None  # a retry: the checkpoint step it resumed from
    retried_by: int | None = None  # a trial that lost its worker: its retry, if any
    stopped: str | None = None  # why it ended early without being pruned (a baseline's length)
    last_value: float | None = None  # the objective at its last evaluation


@dataclass(frozen=True)
class StudyStatus:
    name: str
    counts: StateCounts
    budget: str | None  # what the study spent of its stored budget, e.g. "81/120 epochs"
    best: TrialLine | None
    standing: str  # what the best is (the defaults, a baseline, a find) and is worth
    # PRUNED trials that the pruner did not stop, by why: "budget spent", "time limit", ...
    stopped: dict[str, int]
    baselines: list[TrialLine]
    running: list[TrialLine]
    failed: list[TrialLine]
    retries: list[TrialLine] = field(default_factory=list)
    confirmation: Confirmation | None = None  # `tune confirm`'s runs, from the confirm study


def study_status(study: optuna.Study, now: dt.datetime | None = None) -> StudyStatus:
    """Gather a study's status from one lean read of its trials (their curves, configs,
    parameters and details, most of their bytes, stay in the database: the budget counts their
    evaluations) and one whole read of the few it lists."""
    now = now or dt.datetime.now()
    # with parameters: the incumbent is a setting, the same parameters over several seeds
    trials = trial_record.read_lean_trials(study, details=False)
    by_state = {s: [t for t in trials if t.state == s] for s in TrialState}
    managed = ManagedStudy(study)
    counts = managed.counts(trials)
    best_trial, incumbent = study_best(study, trials)
    best = _line(best_trial, now) if best_trial is not None else None
    retried_by = {}
    for t in trials:
        retry_of = trial_record.read_retry_of(t)
        if retry_of is not None:
            retried_by[retry_of] = t.number
    baselines = [t for t in trials if trial_record.read_baseline(t)]
    retries = [t for t in trials if trial_record.read_retry_of(t) is not None]
    listed = baselines + by_state[TrialState.RUNNING] + by_state[TrialState.FAIL] + retries
    # the listed trials whole: a few (failures may be more; each is a small read)
    listed = list({t.number: t for t in listed}.values())
    whole = {t.number: t for t in trial_record.reread(study, listed)}

    def line(t: FrozenTrial, retried: int | None = None) -> TrialLine:
        return _line(whole[t.number], now, retried)

    return StudyStatus(
        name=study.study_name,
        counts=counts,
        budget=_budget_line(managed, trials),
        best=best,
        standing=standing_of(trials, best_trial, study.direction, incumbent).describe(),
        stopped=trial_record.stopped_counts(trials),
        baselines=[line(t) for t in baselines],
        running=[line(t) for t in by_state[TrialState.RUNNING]],
        failed=[line(t, retried_by.get(t.number)) for t in by_state[TrialState.FAIL]],
        retries=[line(t) for t in retries],
        confirmation=read_confirmation_of(study, trials),
    )


def _budget_line(managed: ManagedStudy, trials: list[FrozenTrial]) -> str | None:
    try:
        spec = managed.stored_spec()
    except StudyFileError:
        return None  # stored by another tune version: the counts still say what was done
    return None if spec is None else managed.budget_use(spec, trials).describe(spec.budget)


def _line(t: FrozenTrial, now: dt.datetime, retried_by: int | None = None) -> TrialLine:
    placement = trial_record.read_placement(t)
    age = None
    if t.state == TrialState.RUNNING and t.datetime_start is not None:
        age = (now - t.datetime_start).total_seconds()
    return TrialLine(
        number=t.number,
        state=t.state.name,
        value=t.value if t.state == TrialState.COMPLETE else None,
        label=trial_record.read_baseline(t),
        params=dict(t.params),
        host=placement.get("host"),
        worker=placement.get("worker"),
        age_seconds=age,
        error=trial_record.read_error(t),
        retry_of=trial_record.read_retry_of(t),
        resumed_step=trial_record.read_resumed_step(t),
        retried_by=retried_by,
        stopped=trial_record.read_stopped(t),
        last_value=t.intermediate_values.get(t.last_step) if t.last_step is not None else None,
    )


def format_status(status: StudyStatus, max_failed: int = 10) -> str:
    """The text `tune status` prints."""
    c = status.counts
    budget = f", budget {status.budget}" if status.budget else ""
    pruned = trial_record.pruned_words(c.pruned, status.stopped)
    lines = [
        f"study {status.name}: {c.finished} done ({c.complete} complete, {pruned}), "
        f"{c.fail} failed, {c.running} running, {c.waiting} waiting{budget}"
    ]
    if status.best is not None:
        b = status.best
        lines.append(f"best: trial {b.number}, mAP50-95 {b.value:.4f}: {status.standing}")
        lines.extend(f"  {k} = {_fmt(v)}" for k, v in b.params.items())
    else:
        lines.append("best: no trial complete yet")
    if status.baselines:
        lines.append("baselines:")
        for t in status.baselines:
            if t.value is not None:
                result = f"{t.value:.4f}"
            elif t.stopped is not None and t.last_value is not None:
                result = f"{t.last_value:.4f} ({t.stopped})"
            else:
                result = t.state.lower()
            lines.append(f"  trial {t.number} {t.label}: {result}")
    if status.running:
        lines.append("running:")
        for t in status.running:
            age = f"{t.age_seconds:.0f} s" if t.age_seconds is not None else "?"
            lines.append(f"  trial {t.number} on {t.host or '?'} (worker {t.worker or '?'}), {age}")
    if status.retries:
        lines.append("retries (trials whose worker was lost, run again with the same parameters):")
        for t in status.retries:
            if t.resumed_step is not None:
                how = f"resumed at step {t.resumed_step}"
            else:
                how = "waiting to run" if t.state == "WAITING" else "from scratch"
            lines.append(f"  trial {t.number} retries trial {t.retry_of}: {t.state.lower()}, {how}")
    if status.failed:
        lines.append(
            f"failed (last {min(max_failed, len(status.failed))} of {len(status.failed)}):"
        )
        for t in status.failed[-max_failed:]:
            retry = f" (retry of trial {t.retry_of})" if t.retry_of is not None else ""
            lines.append(f"  trial {t.number}{retry}: {_failure(t)}")
    if status.confirmation is not None:
        lines.append(format_confirmation(status.confirmation))
    return "\n".join(lines)


def _failure(t: TrialLine) -> str:
    if t.error:
        return t.error
    if t.retried_by is not None:
        # reaped trials carry no error: Optuna fails them without asking their dead worker
        return f"lost its worker (no heartbeat), retried as trial {t.retried_by}"
    return "lost its worker (no heartbeat) or no error recorded; not retried"


def _fmt(value: Any) -> str:
    return f"{value:.6g}" if isinstance(value, float) else str(value)
