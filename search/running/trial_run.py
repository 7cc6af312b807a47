"""One trial: from Optuna's drawn parameters to a trained, evaluated, recorded detector.

`TrialRun` builds a `TrialJob` from the study settings and the drawn (or, for a baseline,
enqueued) parameters for the study's trainer (`search/trainers/`: tune's own, Ultralytics or a
command), records config, placement and every evaluation through
`search/bookkeeping/trial_record.py`, lets the pruner stop it at evaluation steps
(`search/study/pruning.py`: never a baseline, which trains `[budget] baseline_epochs` of the
full-length schedule, or all of it, so that reports compare like with like), and gives the
objective metric. The round that runs it (`search/running/rounds.py`) trains it and tells its
end; a failure is stored on the trial as one masked line before it is told FAIL.

After each evaluation the trainer's checkpoint is uploaded to the artifact store
(`search/bookkeeping/checkpoints.py`). A retry of a reaped trial (same parameters, cloned by the
storage's heartbeat callback) downloads its predecessor's latest checkpoint, re-records the
evaluations up to it and trains on with `job.resume`: a lost worker costs at most one evaluation
interval. Storage writes are retried while the database is unreachable (`retry_while_down`).
"""

from __future__ import annotations

import contextlib
import gc
import signal
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from pathlib import Path
from types import FrameType
from typing import Any, Protocol, TypeVar

import optuna
from optuna.exceptions import UpdateFinishedTrialError
from optuna.trial import FrozenTrial, TrialState

from search.bookkeeping import trial_record
from search.bookkeeping.budget import hold_of
from search.bookkeeping.checkpoints import CheckpointStore
from search.bookkeeping.optuna_compat import record_heartbeat, trial_id
from search.bookkeeping.outage import Outage, retry_while_down
from search.bookkeeping.storage import mask_text
from search.control.failpoints import failpoint
from search.study.space import params_words
from search.study.study_file import StudySpec
from search.trainers.base import (
    Evaluation,
    Trainer,
    TrainerError,
    TrialJob,
    TrialOutcome,
    metric_value,
)
from trainer.records import NonFiniteLossError

T = TypeVar("T")


class StartClaim(Protocol):
    """What a trial starts under (a held study lock, `StartGate.claim`): released once the trial
    is RUNNING, when other workers may count it."""

    def release(self) -> None: ...


class Interrupted(KeyboardInterrupt):
    """SIGINT or SIGTERM arrived while a trial was training."""


class GracefulStop:
    """Turns SIGINT/SIGTERM into a clean stop.

    A signal always sets `requested`. It interrupts (raises `Interrupted`) only inside
    `interruptible()` blocks (training, data loading), and never inside `shielded()` ones (storage
    writes), so a stop never tears a write in half or leaves a claimed trial behind. A second
    signal while stopping is ignored so that the cleanup can finish.
    """

    def __init__(self) -> None:
        self.requested = False
        self._armed = False
        self._previous: dict[int, Any] = {}

    def install(self) -> None:
        if threading.current_thread() is not threading.main_thread():
            return  # Python delivers signals to the main thread only
        for sig in (signal.SIGINT, signal.SIGTERM):
            self._previous[sig] = signal.signal(sig, self._handle)

    def restore(self) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        self._previous.clear()

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        if self.requested:
            return
        self.requested = True
        if self._armed:
            self._armed = False
            raise Interrupted(signal.Signals(signum).name)

    @contextmanager
    def interruptible(self) -> Iterator[None]:
        """A stop signal raises `Interrupted` anywhere inside this block."""
        if self.requested:
            raise Interrupted("stop requested")
        self._armed = True
        try:
            yield
        finally:
            self._armed = False

    @contextmanager
    def shielded(self) -> Iterator[None]:
        """Defer a stop signal to the end of this block (inside an interruptible one)."""
        armed, self._armed = self._armed, False
        try:
            yield
        finally:
            self._armed = armed
        if armed and self.requested:
            raise Interrupted("stop requested")

    def wait(self, seconds: float) -> None:
        """Sleep up to `seconds`, waking early when a stop is requested."""
        end = time.monotonic() + seconds
        while not self.requested and time.monotonic() < end:
            time.sleep(min(0.1, max(0.0, end - time.monotonic())))


@dataclass
class TrialTally:
    """What one worker's trials did; `busy_seconds` is time inside training and evaluation."""

    complete: int = 0
    pruned: int = 0
    failed: int = 0
    dropped: int = 0  # reaped by another worker while this one still ran it
    started_racing: int = (
        0  # started without the exclusive study lock (search/control/start_gate.py)
    )
    busy_seconds: float = 0.0
    last_error: str | None = None
    errors: list[str] = field(default_factory=list)

    def count(self, trial: FrozenTrial) -> None:
        """Count a trial this worker ran to its end (its final state)."""
        if trial.state == TrialState.COMPLETE:
            self.complete += 1
        elif trial.state == TrialState.PRUNED:
            self.pruned += 1
        elif trial.state == TrialState.FAIL:
            self.failed += 1
            error = trial_record.read_error(trial) or "unknown error"
            self.last_error = error
            self.errors.append(f"trial {trial.number}: {error}")


@dataclass(frozen=True)
class WorkerContext:
    """Everything a trial run needs besides the trial and its start claim, fixed when the
    worker starts."""

    spec: StudySpec
    trainer: Trainer  # prepared (its data loaded) by the worker
    device: str
    device_label: str
    worker_id: str
    threads: int | None
    runs_dir: Path
    stop: GracefulStop
    tally: TrialTally
    log: Callable[[str], None]
    checkpoints: CheckpointStore | None = None  # None: no upload, no resume
    storage_down_limit: float = 300.0  # seconds to retry a write while the database is down
    outage: Outage = field(default_factory=Outage)  # shared with the worker loop
    # a confirm study's worker runs only enqueued runs and never samples (search/confirm/plan.py)
    enqueued_only: bool = False
    # the study's epoch budget: raise a kept trial's hold past a step, or None when it must stop
    # (`ManagedStudy.extend_hold`); None: no budget to ask
    extend_hold: Callable[[optuna.Trial, int], int | None] | None = None
    # `time.monotonic()` past which a trial ends at its next evaluation (`[budget] timeout`)
    deadline: float | None = None
    # a trial's end as told (`ManagedStudy.race`: a challenger races the incumbent); None: nothing
    after_told: Callable[[FrozenTrial], object] | None = None

    def store(self, call: Callable[[], T], what: str = "the storage") -> T:
        """`call()` (a storage write), retried while the database is unreachable."""
        return retry_while_down(
            call,
            limit=self.storage_down_limit,
            what=what,
            outage=self.outage,
            sleep=self.stop.wait,
            should_stop=lambda: self.stop.requested,
            log=self.log,
        )


def describe_error(exc: BaseException) -> str:
    """One line saying why a trial failed, with credentials masked."""
    if isinstance(exc, Interrupted):
        return "interrupted"
    if isinstance(exc, NonFiniteLossError):
        return mask_text(f"non-finite loss: {exc}")[:500]
    if is_out_of_memory(exc):
        return mask_text(f"out of memory: {exc}")[:500]
    return mask_text(f"{type(exc).__name__}: {exc}")[:500]


def is_out_of_memory(exc: BaseException) -> bool:
    """torch.OutOfMemoryError (CUDA or otherwise), without importing torch for fake trainers."""
    torch = sys.modules.get("torch")
    oom = getattr(torch, "OutOfMemoryError", None) if torch else None
    return (
        isinstance(exc, oom) if isinstance(oom, type) else type(exc).__name__ == "OutOfMemoryError"
    )


class TrialRun:
    """One trial from RUNNING to its end, alone or in a pack (`search/running/rounds.py` asks
    and tells it): `begin` (heartbeat, placement, parameters, job, resume, config), `report` (each
    evaluation: recorded, checkpointed, maybe pruned), then `complete` with the trainer's outcome,
    or `stopped` with what ended it."""

    def __init__(self, ctx: WorkerContext, trial: optuna.Trial) -> None:
        self.ctx = ctx
        self.trial = trial
        self.started = time.monotonic()
        self.metric = ctx.spec.objective.metric
        self.baseline_length: int | None = None
        self._job: TrialJob | None = None
        self._hold: int | None = None  # the epoch it holds the budget to, once read

    @property
    def job(self) -> TrialJob:
        if self._job is None:
            raise RuntimeError("TrialRun.begin() has not run")
        return self._job

    def begin(self, claim: StartClaim | None = None) -> TrialJob:
        """Record the trial's first heartbeat and placement, release the start `claim` (the held
        study lock the trial was started under), draw the parameters and build (and record) its
        job; for a retry, restore its checkpoint."""
        ctx, trial = self.ctx, self.trial
        failpoint("trial-created")
        # The first heartbeat and the placement, before anything else: a worker lost from here
        # on leaves a trial that beat and says whose it was. (One lost before the beat is reaped
        # by its start time: search/bookkeeping/optuna_compat.py.)
        ctx.store(lambda: record_heartbeat(trial.study, trial_id(trial)))
        ctx.store(lambda: trial_record.record_placement(trial, ctx.device_label, ctx.worker_id))
        if claim is not None:
            claim.release()  # the trial is RUNNING now: other workers may count it
        if ctx.stop.requested:
            raise Interrupted("stop requested")
        params = ctx.spec.space.sample(trial)
        baseline = trial_record.read_baseline(trial)
        # the Optuna study's name, not the spec's: a confirm study (`<study>:confirm`) runs its
        # parent's spec, and its runs must not share the parent trials' folders
        out = ctx.runs_dir / trial.study.study_name / f"trial-{trial.number:04d}"
        confirm = trial_record.read_confirm(trial)
        race = trial_record.read_race(trial)
        # a confirm run retrains a parent trial with its own seed (its length is the confirm
        # study's trial.epochs, search/confirm/plan.py), a race run reruns a setting with its
        # own (search/confirm/incumbent.py); every other trial keeps the recipe's seed
        seed = confirm[1] if confirm is not None else race.seed if race is not None else None
        job = ctx.spec.job(params, out, device=ctx.device, threads=ctx.threads, seed=seed)
        job = ctx.store(lambda: _resume_retry(trial, ctx, job))
        ctx.store(lambda: trial_record.record_config(trial, job.record()))
        start = trial_record.read_start(trial)
        what = f"baseline {baseline!r}" if baseline else (f"start: {start}" if start else "sampled")
        if confirm is not None:
            what = f"confirms trial {confirm[0]}, seed {confirm[1]}"
        if race is not None:
            what = f"races the setting of trial {race[0]}, seed {race[1]}"
        # baselines train the first `baseline_epochs` of the full-length schedule, then stop:
        # reports compare them with the trials at that length (search/report/gather.py)
        self.baseline_length = ctx.spec.baseline_epochs if baseline else None
        ctx.log(f"trial {trial.number} ({what}) started: {params_words(params)}")
        self.started = time.monotonic()
        self._job = job
        return job

    def report(self, evaluation: Evaluation) -> None:
        """The trainer's callback after each evaluation; raises `optuna.TrialPruned` to stop."""
        ctx, trial, job, metric = self.ctx, self.trial, self.job, self.metric
        step = evaluation.step
        value = evaluation.metric(metric)
        ctx.tally.busy_seconds += evaluation.seconds_training + evaluation.seconds_evaluating
        with ctx.stop.shielded():
            # the evaluation first, then its checkpoint: a worker lost in between is resumed
            # from the previous checkpoint and redoes this step, so the curve has no gap
            ctx.store(lambda: trial_record.record_eval(trial, step, evaluation, metric))
            failpoint("eval-recorded")
            file = evaluation.checkpoint
            if ctx.checkpoints is not None and ctx.trainer.checkpoint is not None and file:
                store = ctx.checkpoints
                ctx.store(lambda: store.upload(trial, file, step), "the checkpoint")
            # never at the last step: the run is already paid for, and Hyperband would
            # otherwise discard a finished result when the run length falls on one of its
            # rungs (epochs 1, 3, 9, ... with reduction factor 3). Baselines are asked too, so
            # that their values join the rungs; the pruner never stops them
            # (search/study/pruning.py)
            last_step = step >= job.epochs
            prune = not last_step and ctx.store(trial.should_prune)
            why = None if prune or last_step else ctx.store(lambda: self._stop_reason(step))
            if why is not None:
                ctx.store(lambda: trial_record.record_stopped(trial, why))
                raise optuna.TrialPruned(f"{why} at {value:.4f} {metric}")
        if prune:
            raise optuna.TrialPruned(f"pruned after {step} epochs at {value:.4f} {metric}")

    def _stop_reason(self, step: int) -> str | None:
        """Why a trial the pruner keeps ends at evaluation `step` anyway (stored as its
        ``stopped``, shown by status and the report), or None: a baseline at its length, an
        epoch budget that cannot pay for its next stop point, a worker past its time limit."""
        epochs = f"{step} epoch{'s' if step != 1 else ''}"
        length = self.baseline_length
        if length is not None and step >= length:
            return f"stopped at its length, {epochs}"
        if not self._budget_pays_on(step):
            return f"stopped: budget spent, after {epochs}"
        deadline = self.ctx.deadline
        if deadline is not None and time.monotonic() >= deadline:
            return f"stopped: time limit, after {epochs}"
        return None

    def _budget_pays_on(self, step: int) -> bool:
        """Whether the epoch budget lets the trial train past `step`: its hold reaches further,
        or the study's free epochs pay for its next stop point (its hold is raised)."""
        extend = self.ctx.extend_hold
        if extend is None:
            return True
        if self._hold is None:  # read once: only this run raises it
            self._hold = hold_of(self.ctx.spec, self.trial)
        if self._hold > step:
            return True
        self._hold = extend(self.trial, step)
        return self._hold is not None

    def stopped(self, exc: BaseException) -> None:
        """The trainer ended with `exc`: say so. Its checkpoint stays until the trial's end is
        stored (`discard_ended_checkpoint`): until then a reaper may still resume the trial."""
        ctx, number = self.ctx, self.trial.number
        if isinstance(exc, optuna.TrialPruned):
            ctx.log(f"trial {number} {exc}")
        elif isinstance(exc, UpdateFinishedTrialError):
            # reaped while we trained (a long pause): its retry owns the trial and checkpoint now
            ctx.log(f"trial {number} was reaped while this worker still ran it")
        else:
            reason = describe_error(exc)
            ctx.log(
                f"trial {number} failed after {time.monotonic() - self.started:.0f} s: {reason}"
            )

    def complete(self, outcome: TrialOutcome) -> float:
        """Record the trainer's final result; the objective value."""
        ctx, trial, metric = self.ctx, self.trial, self.metric
        value = metric_value(outcome.metrics, metric, f"the final result of trial {trial.number}")
        with ctx.stop.shielded():
            summary = dict(outcome.summary)
            ctx.store(lambda: trial_record.record_summary(trial, summary))
            budget = ctx.spec.objective.latency_budget_ms
            if budget is not None:
                inference_ms = outcome.inference_ms
                if inference_ms is None:
                    raise TrainerError(
                        f"objective.latency_budget_ms needs the inference latency, which trainer "
                        f"{ctx.trainer.name!r} did not report"
                    )
                # feasible when <= 0: inference latency within the budget
                ctx.store(lambda: trial.set_constraint("latency_ms", inference_ms - budget))
        ctx.log(
            f"trial {trial.number} complete: {metric} {value:.4f} "
            f"in {time.monotonic() - self.started:.0f} s"
        )
        return value


def _resume_retry(trial: optuna.Trial, ctx: WorkerContext, job: TrialJob) -> TrialJob:
    """For a retry of a reaped trial: fetch the predecessor's checkpoint, re-record its
    evaluations up to it, and return the job with `resume=True` (else `job` unchanged)."""
    frozen = trial.storage.get_trial(trial_id(trial))  # system attrs: Optuna's retry history
    retry_of = trial_record.read_retry_of(frozen)
    if retry_of is None:
        return job
    step = None
    if ctx.checkpoints is not None and ctx.trainer.checkpoint is not None:
        step = ctx.checkpoints.restore(frozen, job.out / ctx.trainer.checkpoint, ctx.log)
    if step is not None:
        done = [p for p in trial_record.read_curve(frozen) if int(p["eval"]["epoch"]) <= step]
        trial_record.restore_curve(trial, done)
    trial_record.record_resume(trial, retry_of, step)
    how = f"resuming from its checkpoint at step {step}" if step is not None else "from scratch"
    ctx.log(f"trial {trial.number} retries trial {retry_of}, {how}")
    return replace(job, resume=True) if step is not None else job


def trial_told(ctx: WorkerContext, told: FrozenTrial) -> None:
    """What follows a trial's end once it is stored (`told`, as the storage has it now), alone or
    in a pack: count it, drop its checkpoint if nothing resumes it, race it if it challenges the
    incumbent."""
    ctx.tally.count(told)
    discard_ended_checkpoint(ctx, told)
    after = ctx.after_told
    if after is not None and told.state == TrialState.COMPLETE:
        ctx.store(lambda: after(told), "the race's runs")


def discard_ended_checkpoint(ctx: WorkerContext, told: FrozenTrial) -> None:
    """Drop the checkpoint of a trial this worker has told PRUNED or FAIL (`told`, as the storage
    has it now): nothing resumes it. Only once its end is stored: a worker lost (or a database
    gone) between a discard and the tell left the trial RUNNING with a checkpoint that was no
    longer there, and its retry started from scratch, blaming the artifact folder."""
    if ctx.checkpoints is not None and told.state in (TrialState.PRUNED, TrialState.FAIL):
        # a failed delete only costs disk
        with contextlib.suppress(Exception):
            ctx.checkpoints.discard(told)


def record_failure(trial: optuna.Trial, exc: BaseException) -> None:
    """Store why `trial` failed (one masked line) before Optuna marks it FAIL."""
    reason = describe_error(exc)
    if is_out_of_memory(exc):
        _free_accelerator_memory()
    # the trial may already be finished (reaped by another worker): nothing to record on it then
    with contextlib.suppress(Exception):
        trial_record.record_error(trial, reason)


def _free_accelerator_memory() -> None:
    gc.collect()
    torch = sys.modules.get("torch")
    if torch is not None and torch.cuda.is_available():
        torch.cuda.empty_cache()
