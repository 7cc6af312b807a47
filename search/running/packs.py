"""A worker's pack: up to K trials of the study trained at once on one device.

With `[trial] pack = K` (or "auto", `pack_size`) a worker runs its trials K at a time through
the trainer's `run_pack` (`search/trainers/base.py`; tune's own trainer fuses them into one
model, `trainer/packed.py`). Each trial is its own Optuna trial from start to end:

- it starts through the same start gate as a trial run alone (`search/control/start_gate.py`),
  one start at a time, so the study-wide budget holds for packs exactly as for single trials;
- `TrialRun` (`search/running/objective.py`) records its heartbeat, placement, parameters, config
  and every evaluation, uploads its checkpoints and asks the pruner, as for a trial run alone;
- the worker's reaper thread beats for every trial of the pack, so a killed worker leaves K
  stale trials that are reaped, retried and resumed from their checkpoints like any other;
- when a trial ends (it ran its length, was pruned or stopped at its baseline length, or
  failed) it is told at once, and at the pack's next epoch boundary its slot is refilled with a
  newly started trial while the budget allows it (`refill`); the pack ends when every slot is
  empty.

Trials are asked with `study.ask()` and told with `study.tell()`, not inside
`study.optimize()`: Optuna's heartbeat thread exists only there, tune's reaper beats instead.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from typing import Literal

import optuna
from optuna.exceptions import UpdateFinishedTrialError
from optuna.trial import TrialState

from search.bookkeeping.optuna_compat import study_storage, trial_id
from search.control.start_gate import NoStart, StartGate
from search.running.objective import (
    InFlight,
    Interrupted,
    TrialRun,
    WorkerContext,
    record_failure,
    trial_told,
)
from search.trainers.base import PackedJob, PackingTrainer, TrialOutcome

# trials that may fail in a row while starting (a config the trainer refuses) before a pack stops
# asking for more; the worker loop then counts the failures as it does for single trials
SETUP_TRIES = 3
# what a pack round did: why it started nothing, or the states of the trials it ran
PackRound = NoStart | list[TrialState | Literal["dropped"]]


def pack_size(setting: int | str, device: str, probe: Callable[[], int]) -> int:
    """Trials a worker packs: the study's `[trial] pack`; "auto" is 1 on a CPU, where a pack
    measured slower than separate runs (docs/benchmarks.md), and on a GPU what the
    trainer's `probe` finds room for (`trainer/pack_probe.py`)."""
    if isinstance(setting, int):
        return setting
    return probe() if device.startswith("cuda") else 1


def run_pack(
    gate: StartGate,
    ctx: WorkerContext,
    trainer: PackingTrainer,
    slots: int,
    in_flight: InFlight,
) -> PackRound:
    """Start up to `slots` trials through `gate`, train them as one pack with refills, tell
    each its end (`in_flight` holds the ids of those in the pack). "budget" or "wait" when not
    even one could start."""
    study = gate.study
    states: list[TrialState | Literal["dropped"]] = []
    runs: dict[int, TrialRun] = {}  # the trials in the pack now, by id() of their PackedJob

    def start(patient: bool) -> PackedJob | NoStart | None:
        """A newly started trial, or why none may start; None: it failed while setting up
        (told FAIL already, the next one may do better)."""
        if ctx.stop.requested:
            return "wait"
        claim = gate.claim(patient=patient)
        if isinstance(claim, str):
            return claim
        try:
            with warnings.catch_warnings():  # "heartbeat ... supposed to be used with optimize"
                warnings.simplefilter("ignore", UserWarning)
                trial = study.ask()
            run = TrialRun(ctx, trial)
            in_flight.trial_ids.add(trial_id(trial))
            try:
                job = run.begin(claim)  # releases the claim once the trial is RUNNING
            except Exception as exc:  # a bad config, say: this trial fails, the pack goes on
                _tell_failed(run, exc, states)
                in_flight.trial_ids.discard(trial_id(trial))
                return None
            except BaseException as exc:  # a stop
                _tell_failed(run, exc, states)
                in_flight.trial_ids.discard(trial_id(trial))
                raise
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
            _tell(run, outcome, states)
        finally:
            in_flight.trial_ids.discard(trial_id(run.trial))

    try:
        first: list[PackedJob] = []
        why: NoStart = "wait"
        setup_failures = 0
        while len(first) < slots and setup_failures < SETUP_TRIES:
            started = start(patient=not first and not states)
            if started is None:
                setup_failures += 1
                continue
            if isinstance(started, str):
                why = started
                break
            first.append(started)
        if not first:
            return states or why
        ctx.log(f"training a pack of {len(first)} trial{'s' if len(first) > 1 else ''}")
        with ctx.stop.interruptible():
            trainer.run_pack(first, refill, done)
    except BaseException as exc:
        # the pack as a whole failed (data, memory, a stop): every trial still in it with it
        for run in list(runs.values()):
            _tell_failed(run, exc, states)
            in_flight.trial_ids.discard(trial_id(run.trial))
        runs.clear()
        raise
    if ctx.stop.requested:
        raise Interrupted("stop requested")
    return states


def _tell(
    run: TrialRun,
    outcome: TrialOutcome | BaseException,
    states: list[TrialState | Literal["dropped"]],
) -> None:
    """Record and tell one trial's end, as `study.optimize` would for a trial run alone."""
    if isinstance(outcome, BaseException):
        run.stopped(outcome)
        if isinstance(outcome, optuna.TrialPruned):
            _told(run, states, lambda: run.trial.study.tell(run.trial, state=TrialState.PRUNED))
            return
        if isinstance(outcome, UpdateFinishedTrialError):
            _dropped(run, states, outcome)
            return
        _tell_failed(run, outcome, states, stopped=True)
        return
    try:
        value = run.complete(outcome)
    except Exception as exc:  # a result without the objective metric, a latency not reported
        _tell_failed(run, exc, states)
        return
    _told(run, states, lambda: run.trial.study.tell(run.trial, value))


def _tell_failed(
    run: TrialRun,
    exc: BaseException,
    states: list[TrialState | Literal["dropped"]],
    stopped: bool = False,
) -> None:
    if not stopped:
        run.stopped(exc)
    record_failure(run.trial, exc)
    _told(run, states, lambda: run.trial.study.tell(run.trial, state=TrialState.FAIL))


def _told(
    run: TrialRun,
    states: list[TrialState | Literal["dropped"]],
    tell: Callable[[], object],
) -> None:
    ctx = run.ctx
    try:
        ctx.store(tell)
    except (UpdateFinishedTrialError, ValueError) as exc:
        # reaped meanwhile (a long pause) and finished elsewhere: its retry owns it now
        _dropped(run, states, exc)
        return
    frozen = study_storage(run.trial.study).get_trial(trial_id(run.trial))
    trial_told(ctx, frozen)
    states.append(frozen.state)


def _dropped(
    run: TrialRun, states: list[TrialState | Literal["dropped"]], exc: BaseException
) -> None:
    run.ctx.tally.dropped += 1
    run.ctx.log(f"dropped trial {run.trial.number}, already finished elsewhere: {exc}")
    states.append("dropped")
