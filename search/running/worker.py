"""A worker: joins a study from any machine and runs trials until the study's budget is spent.

The loop, per round (one trial, or a pack of them: `search/running/rounds.py`):

1. the start gate (`search/control/start_gate.py`) says whether a trial may start, under which
   hold of the study lock, or why not: the budget is spent (the worker stops), or running
   trials hold the rest (it waits and looks again). A confirm study's worker
   (`search/confirm/plan.py`) never samples: it runs only the enqueued runs;
2. the trial is asked, run and told; the lock is released once it is RUNNING;
3. whatever the trial does (exception, non-finite loss, out of memory, reaped by another worker),
   the worker records it and goes on; only a run of consecutive failures stops it.

The worker reaches its study through `ManagedStudy` (search/control/study_manager.py: the claim,
the stored spec, failing its own trials on exit), not through the storage's details. What a trial
needs of the worker is fixed when it starts (`WorkerContext`); what changes from trial to trial
is the set of trials in flight (for the reaper) and the claim its start hands over
(`TrialRun.begin(claim)`).

SIGINT/SIGTERM fail the current trial with the reason "interrupted" and end the loop: nothing is
left RUNNING. The study's trainer (`search/trainers/`) is prepared once per worker (tune's own
loads the data set then); torch gets cores // local workers threads. tune's training function is
replaceable (`run_worker(..., trainer=...)`): tests and soak runs use fakes.

A `Reaper` thread fails dead workers' trials (they are retried, resuming from their last
checkpoint) and keeps this worker's own trials beating. When the database goes away, a round of
the loop (and each write inside a trial) is retried with backoff; after `storage_down_limit`
seconds without it the worker exits with `StorageDown`.
"""

from __future__ import annotations

import contextlib
import functools
import os
import socket
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from optuna.trial import TrialState

from search.bookkeeping import trial_record
from search.bookkeeping.checkpoints import CheckpointStore
from search.bookkeeping.outage import retry_while_down
from search.bookkeeping.storage import (
    StorageDown,
    StorageError,
    StorageSettings,
    mask_url,
    resolve_url,
)
from search.control.reaper import Reaper
from search.control.study_manager import ManagedStudy
from search.running.command_trust import ALLOW_ENV, check_command
from search.running.log_masking import mask_library_logs
from search.running.rounds import pack_size, run_round
from search.running.trial_run import (
    GracefulStop,
    Interrupted,
    TrialTally,
    WorkerContext,
    describe_error,
)
from search.study.study_file import StudyFileError, StudySpec, read_study_table
from search.trainers.base import Trainer, packs

DEFAULT_RUNS_DIR = Path("runs/studies")


class WorkerError(RuntimeError):
    """The worker cannot go on (storage, data set, a run of failing trials): one clear line."""


@dataclass
class WorkerStats:
    """What a worker did, printed when it exits."""

    worker_id: str
    trials: TrialTally
    wall_seconds: float = 0.0
    stopped_because: str = ""  # budget | timeout | interrupted
    study_load_seconds: float = 0.0  # filling Optuna's trial cache once, before the first trial

    @property
    def duty_cycle(self) -> float:
        """Time in training and evaluation over the worker's wall time."""
        return self.trials.busy_seconds / self.wall_seconds if self.wall_seconds > 0 else 0.0


def is_study_file(name_or_path: str) -> bool:
    """Whether `tune worker --study` was given a study file's path rather than a study's name."""
    given = Path(name_or_path)
    return given.suffix == ".toml" or len(given.parts) > 1


def study_name_of(name_or_path: str) -> str:
    """The study name given `NAME` or the path of a study file (only its `name` is read)."""
    if not is_study_file(name_or_path):
        return name_or_path
    raw, path = read_study_table(name_or_path)
    name = raw.get("name")
    if not isinstance(name, str):
        raise StudyFileError(f"{path}: name must be a string, but got name={name!r}")
    return name


@dataclass(frozen=True)
class WorkerOptions:
    """How a worker runs, besides which study and where (`tune worker`'s options)."""

    gpu: int | None = None  # the CUDA device to train on (sets CUDA_VISIBLE_DEVICES)
    # stop taking new trials after this many seconds (None: the study file's `budget.timeout`)
    timeout: float | None = None
    local_workers: int = 1  # workers on this machine, which share its cores
    # offsets the sampler's seed (None: the process id); tests fix it to draw the same trials
    worker_index: int | None = None
    threads: int | None = None  # torch threads (None: cores // local_workers)
    runs_dir: Path = DEFAULT_RUNS_DIR
    artifacts: str | Path | None = None  # checkpoints (None: $TUNE_ARTIFACTS or tune-artifacts/)
    # the SHA-256 of a stored command this worker may run (None: $TUNE_ALLOW_COMMAND)
    allow_command: str | None = None
    settings: StorageSettings | None = None  # None: `StorageSettings.from_env()`
    poll_interval: float = 1.0  # seconds between looks while running trials hold the budget
    max_consecutive_failures: int = 5
    # False: take the exclusive study lock for every start (a benchmark's comparison)
    fast_starts: bool = True
    handle_signals: bool = True  # False where the caller is not the main thread or owns them
    log: Callable[[str], None] | None = None  # None: stamped lines on stdout


def run_worker(
    study: str,
    storage: str | None = None,
    options: WorkerOptions | None = None,
    trainer: Trainer | None = None,
) -> WorkerStats:
    """Work on `study` (a name, or a study file whose name is used) until its budget is spent.

    The study must exist (created by `tune launch`); its settings are read from the storage so
    that every machine runs the same ones, except a command to run: a study of the command
    trainer runs only when the study file given as `study` holds the stored command, or
    `options.allow_command` (else `$TUNE_ALLOW_COMMAND`) is its digest
    (`search/running/command_trust.py`). `trainer` replaces the study's trainer by one of the
    same kind (tests and soak runs: tune's own with a fake `fit`). Raises `WorkerError`,
    `StorageError` (`StorageDown` when the database stayed away too long) or `StudyFileError`
    with one clear line when it cannot go on.
    """
    opts = options or WorkerOptions()
    started = time.monotonic()
    worker_id = f"{socket.gethostname()}:{os.getpid()}"
    say = opts.log or _printer(worker_id)
    mask_library_logs()  # Optuna logs a failed trial's exception unmasked
    if opts.gpu is not None:
        # before torch initialises CUDA; `tune launch --gpus` has already set it for its children
        os.environ["CUDA_VISIBLE_DEVICES"] = str(opts.gpu)
    stop = GracefulStop()
    if opts.handle_signals:
        stop.install()
    stats = WorkerStats(worker_id, TrialTally())
    managed: ManagedStudy | None = None
    reaper: Reaper | None = None
    settings = opts.settings or StorageSettings.from_env()
    try:
        name = study_name_of(study)
        index = opts.worker_index if opts.worker_index is not None else os.getpid()
        # a worker may start while the database is still coming up (compose) or restarting:
        # it retries, a line per attempt, for up to storage_down_limit (as Celery's workers
        # retry their broker on start-up); a server that answers "no" fails at once
        while_down = functools.partial(
            retry_while_down,
            limit=settings.storage_down_limit,
            what=f"the storage {mask_url(resolve_url(storage))}",
            sleep=stop.wait,
            should_stop=lambda: stop.requested,
            log=say,
        )
        managed, spec = while_down(lambda: _join(storage, name, index, settings, say))
        _check_command(study, spec, opts.allow_command)
        optuna_study = managed.study
        chosen = _trainer(spec, trainer)
        threads = opts.threads or max(1, (os.cpu_count() or 1) // max(1, opts.local_workers))
        _set_torch_threads(threads)
        say(f"joined study {name!r} at {mask_url(resolve_url(storage))} ({threads} threads)")
        with stop.interruptible():
            _prepare(chosen, spec)
        # Fill Optuna's per-process trial cache now, outside the study lock. Otherwise the first
        # ask loads the whole study while holding the lock every other worker waits on: measured
        # 23 s at 10,000 trials, so 32 workers starting together queued for minutes.
        loading = time.monotonic()
        joined = optuna_study
        while_down(lambda: joined.get_trials(deepcopy=False))
        stats.study_load_seconds = time.monotonic() - loading
        limit = opts.timeout if opts.timeout is not None else spec.budget.timeout
        deadline = None if limit is None else started + limit
        ctx = _context(managed, spec, chosen, opts, settings, threads, stop, stats, say, deadline)
        slots = pack_size(spec.trial.pack, ctx.device_label, lambda: _auto_pack(chosen, spec))
        if slots > 1 and not packs(chosen):  # the study file refuses it; a fake may not pack
            raise WorkerError(f"trainer {chosen.name!r} cannot train packs of {slots} trials")
        in_flight: set[int] = set()  # the trials running now, for which the reaper beats
        reaper = Reaper(
            optuna_study,
            managed.rdb,  # None behind `tune proxy`, which reaps for its workers
            settings.heartbeat_interval,
            lambda: in_flight,
            say,
            settle=settings.grace_period,
        ).start()
        stats.stopped_because = _loop(managed, ctx, in_flight, deadline, opts, slots)
    except Interrupted:
        stats.stopped_because = "interrupted"
    finally:
        if reaper is not None:
            reaper.stop()
        if opts.handle_signals:
            stop.restore()
        if managed is not None:
            _fail_own_running(managed, worker_id)
        stats.wall_seconds = time.monotonic() - started
    t = stats.trials
    say(
        f"stopped ({stats.stopped_because}): {t.complete} complete, {t.pruned} pruned, "
        f"{t.failed} failed, {t.dropped} dropped; duty cycle {stats.duty_cycle:.0%} "
        f"over {stats.wall_seconds:.0f} s"
    )
    return stats


def _context(
    managed: ManagedStudy,
    spec: StudySpec,
    trainer: Trainer,
    opts: WorkerOptions,
    settings: StorageSettings,
    threads: int,
    stop: GracefulStop,
    stats: WorkerStats,
    say: Callable[[str], None],
    deadline: float | None,
) -> WorkerContext:
    """What every trial of this worker needs, fixed for its life."""
    device = "cuda" if opts.gpu is not None else spec.trial.device
    return WorkerContext(
        spec=spec,
        trainer=trainer,
        device=device,
        device_label=f"cuda:{opts.gpu}" if opts.gpu is not None else _device_label(device),
        worker_id=stats.worker_id,
        threads=threads,
        runs_dir=opts.runs_dir,
        stop=stop,
        tally=stats.trials,
        log=say,
        checkpoints=CheckpointStore(opts.artifacts),
        storage_down_limit=settings.storage_down_limit,
        enqueued_only=trial_record.read_confirm_plan(managed.study) is not None,
        extend_hold=lambda trial, step: managed.extend_hold(trial, step, spec, say),
        after_told=lambda told: managed.race(told, spec, say),
        deadline=deadline,
    )


def _loop(
    managed: ManagedStudy,
    ctx: WorkerContext,
    in_flight: set[int],
    deadline: float | None,
    opts: WorkerOptions,
    slots: int,
) -> str:
    failures_in_a_row = 0
    managed.open_gate(ctx, opts.poll_interval, opts.fast_starts)
    while True:
        if ctx.stop.requested:
            return "interrupted"
        if deadline is not None and time.monotonic() >= deadline:
            return "timeout"
        try:
            # a round lost to the database (a restart, say) is simply done again: its trial,
            # if one had started, is reaped and resumed from its last checkpoint
            outcome = retry_while_down(
                lambda: run_round(managed.gate, ctx, slots, in_flight),
                limit=ctx.storage_down_limit,
                outage=ctx.outage,
                sleep=ctx.stop.wait,
                should_stop=lambda: ctx.stop.requested,
                log=ctx.log,
            )
        except StorageDown:
            if ctx.stop.requested:
                return "interrupted"
            raise
        if outcome == "budget":
            return "budget"
        for told in outcome if isinstance(outcome, list) else []:
            state = told if isinstance(told, str) else told.state
            if state == TrialState.FAIL:
                failures_in_a_row += 1
                if failures_in_a_row >= opts.max_consecutive_failures:
                    raise WorkerError(
                        f"{failures_in_a_row} trials failed in a row, stopping this worker "
                        f"(last error: {ctx.tally.last_error})"
                    )
            elif isinstance(state, TrialState):
                failures_in_a_row = 0


def _join(
    storage: str | None,
    name: str,
    index: int,
    settings: StorageSettings,
    say: Callable[[str], None],
) -> tuple[ManagedStudy, StudySpec]:
    """The study, loaded with the sampler and pruner of the study file stored with it."""
    url = resolve_url(storage)
    managed = ManagedStudy.open(url, name, settings, on_reap=say)
    spec = _stored_spec(managed, url)
    return managed.searching(
        spec.make_sampler(index), spec.make_pruner(trial_record.runs_fixed_length)
    ), spec


def _check_command(study: str, spec: StudySpec, allow_command: str | None) -> None:
    """Stop unless the stored spec runs no command, or the one this worker's side allows."""
    study_file = None
    if is_study_file(study):  # its own command is the allowed one
        raw, path = read_study_table(study)
        trial = raw.get("trial")
        trial = trial if isinstance(trial, dict) else {}
        own = trial.get("command", {}) if trial.get("trainer") == "command" else {}
        study_file = (str(path), own if isinstance(own, dict) else {})
    check_command(
        spec.name,
        spec.trial.trainer,
        dict(spec.trial.options),
        study_file=study_file,
        allowed_digest=allow_command or os.environ.get(ALLOW_ENV),
    )


def _stored_spec(managed: ManagedStudy, url: str) -> StudySpec:
    spec = managed.stored_spec(check_data=True)
    if spec is None:
        raise WorkerError(
            f"study {managed.name!r} in {mask_url(url)} was not created by `tune launch` "
            "(it has no stored study file)"
        )
    return spec


def _trainer(spec: StudySpec, given: Trainer | None) -> Trainer:
    """The study's trainer, or `given` in its place when it is of the same kind."""
    if given is None:
        return spec.trainer
    if given.name != spec.trial.trainer:
        raise WorkerError(
            f"the trainer given to this worker is {given.name!r}, but study {spec.name!r} runs "
            f"trainer {spec.trial.trainer!r}"
        )
    return given


def _auto_pack(trainer: Trainer, spec: StudySpec) -> int:
    probe = getattr(trainer, "auto_pack", None)
    return int(probe(spec.job({}, out="."))) if probe is not None else 1


def _prepare(trainer: Trainer, spec: StudySpec) -> None:
    try:
        trainer.prepare(spec.job({}, out="."))
    except Interrupted:
        raise
    except Exception as exc:
        raise WorkerError(
            f"cannot load data set {spec.trial.data!r} for trainer {trainer.name!r}: "
            f"{describe_error(exc)}"
        ) from None


def _fail_own_running(managed: ManagedStudy, worker_id: str) -> None:
    """Safety net on exit: no trial of this worker stays RUNNING."""
    # best effort while exiting (the storage may be the reason we exit)
    with contextlib.suppress(Exception):
        managed.fail_running(worker_id)


def _set_torch_threads(threads: int) -> None:
    os.environ.setdefault("OMP_NUM_THREADS", str(threads))
    torch = sys.modules.get("torch")
    if torch is not None:
        torch.set_num_threads(threads)


def _device_label(device: str) -> str:
    torch = sys.modules.get("torch")
    if device == "auto" and torch is not None:
        return "cuda" if torch.cuda.is_available() else "cpu"
    return device


def _printer(worker_id: str) -> Callable[[str], None]:
    def say(message: str) -> None:
        stamp = time.strftime("%H:%M:%S")
        print(f"{stamp} [worker {worker_id}] {message}", flush=True)

    return say


__all__ = [
    "StorageError",
    "WorkerError",
    "WorkerOptions",
    "WorkerStats",
    "run_worker",
    "study_name_of",
]
