"""A worker's round: up to K trials (K >= 1) started, trained and told, one lifecycle for all.

Every trial a worker runs, alone or in a pack of `[trial] pack = K` (or "auto", `pack_size`),
goes through the same steps, with Optuna's ask/tell interface:

- it starts through the start gate (`search/control/start_gate.py`), one start at a time, so the
  study-wide budget holds for packs exactly as for single trials; it is asked (`study.ask()`);
- `TrialRun` (`search/running/trial_run.py`) records its heartbeat, placement, parameters, config
  and every evaluation, uploads its checkpoints and asks the pruner;
- the worker's reaper thread beats for every trial in the round (`in_flight`), so a killed worker
  leaves stale trials that are reaped, retried and resumed from their checkpoints;
- when a trial ends (it ran its length, was pruned or stopped, or failed) it is told at once
  (`study.tell()`) and `trial_told` counts it, drops its checkpoint if nothing resumes it and
  races it if it challenges the incumbent. A trial another worker finished meanwhile (reaped
  during a long pause) is dropped: its retry owns it. A trial that ends because the database
  went away is not told FAIL: it stays RUNNING, its heartbeats stop, and a reaper fails and
  retries it from its last checkpoint once the database is back.

K = 1 is a round of one trial on the trainer's `run` (`_OneAtATime`); K > 1 trains the trials
as one pack through the trainer's `run_pack` (`search/trainers/base.py`; tune's own trainer fuses
them into one model, `trainer/packed.py`), and at the pack's next epoch boundary refills a slot
whose trial ended with a newly started one while the budget allows it. The round ends when every
slot is empty.

Optuna's `study.optimize` is not used: its heartbeat thread would beat beside tune's reaper, and
it knows no packs.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Sequence
from typing import Literal, Protocol, cast

import optuna
from optuna.exceptions import UpdateFinishedTrialError
from optuna.trial import FrozenTrial, TrialState

from search.bookkeeping.optuna_compat import study_storage, trial_id
from search.bookkeeping.outage import is_connection_error
from search.control.start_gate import NoStart
from search.running.trial_run import (
    Interrupted,
    StartClaim,
    TrialRun,
    WorkerContext,
    record_failure,
    trial_told,
)
from search.trainers.base import Done, PackedJob, PackingTrainer, Refill, Trainer, TrialOutcome

# trials that may fail in a row while starting (a config the trainer refuses) before a round
# stops asking for more (never more than its slots); the worker loop counts the failures
SETUP_TRIES = 3
# a trial's end as this worker told it (as the storage has it then), or "dropped": another
# worker had finished it (reaped under this one)
Told = FrozenTrial | Literal["dropped"]
# what a round did: why it started nothing, or the trials it told
RoundResult = NoStart | list[Told]


class Starts(Protocol):
    """Where a round's trials start: the study and a claim on one start (`StartGate`)."""

    @property
    def study(self) -> optuna.Study: ...

    def claim(self, patient: bool = True) -> StartClaim | NoStart: ...


def pack_size(setting: int | str, device: str, probe: Callable[[], int]) -> int:
    """Trials a worker packs: the study's `[trial] pack`; "auto" is 1 on a CPU, where a pack
    measured slower than separate runs (docs/benchmarks.md), and on a GPU what the
    trainer's `probe` finds room for (`trainer/pack_probe.py`)."""
    if isinstance(setting, int):
        return setting
    return probe() if device.startswith("cuda") else 1


def run_round(starts: Starts, ctx: WorkerContext, slots: int, in_flight: set[int]) -> RoundResult:
    """Start up to `slots` trials through `starts`, train them (refilling a pack's freed
    slots), tell each its end; `in_flight` holds the ids of the trials running now. "budget"
    or "wait" when not even one could start."""
    trainer = _trainer_for(ctx.trainer, slots)
    study = starts.study
    told: list[Told] = []
    runs: dict[int, TrialRun] = {}  # the trials in the round now, by id() of their PackedJob

    def start(patient: bool) -> PackedJob | NoStart | None:
        """A newly started trial, or why none may start; None: it failed while setting up
        (told FAIL already, the next one may do better)."""
        if ctx.stop.requested:
            return "wait"
        claim = starts.claim(patient=patient)
        if isinstance(claim, str):
            return claim
        try:
            with warnings.catch_warnings():  # "heartbeat ... supposed to be used with optimize"
                warnings.simplefilter("ignore", UserWarning)
                trial = study.ask()
            run = TrialRun(ctx, trial)
            in_flight.add(trial_id(trial))
            try:
                job = run.begin(claim)  # releases the claim once the trial is RUNNING
            except BaseException as exc:  # a bad config, say, a stop, an outage
                in_flight.discard(trial_id(trial))
                _tell_failed(run, exc, told)
                if not isinstance(exc, Exception):
                    raise
                return None  # this trial failed, the round goes on
        finally:
            claim.release()
        packed = PackedJob(job, run.report)
        runs[id(packed)] = run
        return packed

    def refill() -> PackedJob | None:
        for _ in range(SETUP_TRIES):
            started = start(patient=False)
            if started is not None:
                return None if isinstance(started, str) else started
        return None  # trials keep failing as they start: the worker loop counts them

    def done(packed: PackedJob, outcome: TrialOutcome | BaseException) -> None:
        run = runs.pop(id(packed))
        try:
            _tell(run, outcome, told)
        finally:
            in_flight.discard(trial_id(run.trial))

    try:
        first: list[PackedJob] = []
        why: NoStart = "wait"
        setup_failures = 0
        while len(first) < slots and setup_failures < min(slots, SETUP_TRIES):
            started = start(patient=not first and not told)
            if started is None:
                setup_failures += 1
                continue
            if isinstance(started, str):
                why = started
                break
            first.append(started)
        if not first:
            return told or why
        if slots > 1:
            ctx.log(f"training a pack of {len(first)} trial{'s' if len(first) > 1 else ''}")
        with ctx.stop.interruptible():
            trainer.run_pack(first, refill, done)
    except BaseException as exc:
        # the round as a whole failed (data, memory, a stop, an outage): every trial still in it
        # with it
        left = list(runs.values())
        runs.clear()
        for run in left:
            in_flight.discard(trial_id(run.trial))
        if not is_connection_error(exc):  # an outage leaves them to be reaped (`_tell_failed`)
            for run in left:
                _tell_failed(run, exc, told)
        raise
    if ctx.stop.requested:
        raise Interrupted("stop requested")
    return told


class _OneAtATime:
    """A trainer's `run` as a pack of one that is never refilled: a round of a single trial."""

    def __init__(self, trainer: Trainer) -> None:
        self.trainer = trainer

    def run_pack(self, first: Sequence[PackedJob], refill: Refill, done: Done) -> None:
        (packed,) = first
        try:
            outcome: TrialOutcome | BaseException = self.trainer.run(packed.job, packed.report)
        except Exception as exc:  # this trial's end; a stop (BaseException) ends the round
            outcome = exc
        done(packed, outcome)


def _trainer_for(trainer: Trainer, slots: int) -> PackingTrainer | _OneAtATime:
    # a pack's trainer packs: the study file refuses a pack otherwise, and the worker checks
    return _OneAtATime(trainer) if slots == 1 else cast(PackingTrainer, trainer)


def _tell(run: TrialRun, outcome: TrialOutcome | BaseException, told: list[Told]) -> None:
    """Record and tell one trial's end."""
    if isinstance(outcome, BaseException):
        run.stopped(outcome)
        if isinstance(outcome, optuna.TrialPruned):
            _told(run, told, lambda: run.trial.study.tell(run.trial, state=TrialState.PRUNED))
            return
        if isinstance(outcome, UpdateFinishedTrialError):
            _dropped(run, told, outcome)
            return
        _tell_failed(run, outcome, told, stopped=True)
        return
    try:
        value = run.complete(outcome)
    except Exception as exc:  # a result without the objective metric, a latency not reported
        _tell_failed(run, exc, told)
        return
    _told(run, told, lambda: run.trial.study.tell(run.trial, value))


def _tell_failed(
    run: TrialRun, exc: BaseException, told: list[Told], stopped: bool = False
) -> None:
    if is_connection_error(exc):
        # the database went away, not the trial: it stays RUNNING, nothing beats for it any
        # more, and a reaper fails and retries it from its last checkpoint, as a lost worker's;
        # the worker loop waits for the database and goes on
        raise exc
    if not stopped:
        run.stopped(exc)
    # the one place a failure's reason is stored, also for failures before training starts
    # (a stop that arrives while the trial is being set up, a bad config)
    record_failure(run.trial, exc)
    _told(run, told, lambda: run.trial.study.tell(run.trial, state=TrialState.FAIL))


def _told(run: TrialRun, told: list[Told], tell: Callable[[], object]) -> None:
    ctx = run.ctx
    try:
        ctx.store(tell)
    except (UpdateFinishedTrialError, ValueError) as exc:
        # reaped meanwhile (a long pause) and finished elsewhere: its retry owns it now
        _dropped(run, told, exc)
        return
    frozen = study_storage(run.trial.study).get_trial(trial_id(run.trial))
    trial_told(ctx, frozen)
    told.append(frozen)


def _dropped(run: TrialRun, told: list[Told], exc: BaseException) -> None:
    run.ctx.tally.dropped += 1
    run.ctx.log(f"dropped trial {run.trial.number}, already finished elsewhere: {exc}")
    told.append("dropped")
