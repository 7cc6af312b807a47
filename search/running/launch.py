"""`tune launch`: create (or load) a study, enqueue its baselines once, run local workers, watch.
`tune confirm` (`confirm` below) runs a study's confirm study the same way (search/confirm/plan.py).

The study row, the schema and the baselines are made here, once, before any worker starts
(workers racing to create tables fail). Workers are `tune worker` subprocesses:
one per listed GPU with `CUDA_VISIBLE_DEVICES` set, else N CPU workers sharing the cores. Each
writes its log to `<runs_dir>/<study>/worker-<i>.log`; this process prints one progress line
every few seconds and a summary when the workers are done. Ctrl-C (or SIGTERM) is forwarded to
the workers, which fail their current trial as "interrupted"; nothing is left RUNNING.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import threading
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

import optuna
from optuna.storages import RDBStorage
from optuna.study import StudyDirection
from optuna.trial import FrozenTrial, TrialState

from search.bookkeeping import trial_record
from search.bookkeeping.budget import BudgetUse, describe_plan
from search.bookkeeping.storage import (
    ENV_VAR,
    StateCounts,
    load_study,
    mask_url,
    open_storage,
    resolve_url,
)
from search.confirm.incumbent import study_best
from search.confirm.plan import plan_confirm, prepare_confirm
from search.confirm.results import (
    Confirmation,
    confirmed_sentence,
    format_confirmation,
    read_confirmation,
)
from search.confirm.standing import Standing, standing_of
from search.control.study_manager import ManagedStudy
from search.running.command_trust import ALLOW_ENV, command_digest
from search.running.worker import DEFAULT_RUNS_DIR
from search.study.study_file import BUILTIN_DATA, Overrides, StudySpec, load_study_file
from search.trainers.builtin import TRAINER_MODULE_ENV

# parts of a stored study that may change between launches (everything else must match, or the
# trials of one study would not be comparable)
_MUTABLE = {("budget",), ("sampler", "seed"), ("baselines",)}


class LaunchError(RuntimeError):
    """The launch cannot go on: one clear line."""


@dataclass
class LaunchResult:
    counts: StateCounts
    best_value: float | None
    best_number: int | None
    wall_seconds: float
    use: BudgetUse = field(default_factory=BudgetUse)
    exit_codes: list[int] = field(default_factory=list)
    interrupted: bool = False
    standing: str = ""  # what the best trial is and is worth (`search/confirm/standing.py`)
    stopped: dict[str, int] = field(default_factory=dict)  # `trial_record.stopped_counts`

    @property
    def ok(self) -> bool:
        return not self.interrupted and all(code == 0 for code in self.exit_codes)


def default_workers(gpus: list[int] | None = None) -> int:
    """One worker per GPU; on CPU one per two cores, at least 2 (one trains while one evaluates)."""
    if gpus:
        return len(gpus)
    return max(2, (os.cpu_count() or 2) // 2)


def visible_gpus(device: str) -> list[int]:
    """The GPUs a study's trials run on when `--gpus` is not given: every visible one when the
    trial device is `cuda` (or `auto` on a machine with CUDA), the one named by `cuda:N`, none on
    the CPU. Without MPS, trials sharing a GPU were measured ten times slower or worse
    (docs/benchmarks.md, "GPU"), so a GPU machine gets one worker per GPU by default."""
    if not device.startswith(("auto", "cuda")):
        return []
    import torch

    if not torch.cuda.is_available():
        return []
    if device.startswith("cuda:"):
        return [int(device.removeprefix("cuda:"))]
    return list(range(torch.cuda.device_count()))


def plan_workers(
    workers: int | None, gpus: list[int] | None, cuda: list[int]
) -> tuple[int, list[int] | None, str | None]:
    """How many local workers, on which GPUs, and a warning when they would share GPUs.

    `cuda` is what `visible_gpus` found for the study's device. Given neither `workers` nor
    `gpus`, a CUDA machine gets one worker per GPU and a CPU machine `default_workers()`.
    """
    if gpus and workers not in (None, len(gpus)):
        raise LaunchError(
            f"--workers must match the number of --gpus, but got workers={workers}, gpus={gpus}"
        )
    if gpus is None and workers is None and cuda:
        gpus = cuda  # one worker per GPU, each pinned to its own
    n_workers = default_workers(gpus) if workers is None else workers
    warning = None
    if gpus is None and cuda and n_workers > len(cuda) and not mps_running():
        warning = (
            f"warning: {n_workers} workers will share {len(cuda)} GPU(s) without MPS; trials "
            "sharing a GPU were measured ten times slower or worse: give --gpus (one worker "
            "per GPU) or start MPS first (nvidia-cuda-mps-control -d)"
        )
    return n_workers, gpus, warning


def mps_running() -> bool:
    """Whether an NVIDIA MPS control daemon is up (its pipe directory holds a `control` pipe)."""
    pipes = Path(os.environ.get("CUDA_MPS_PIPE_DIRECTORY", "/tmp/nvidia-mps"))
    return (pipes / "control").exists()


def prepare_study(spec: StudySpec, storage: RDBStorage) -> optuna.Study:
    """Create or load the study, name its objective (the study file's metric), store its settings,
    and enqueue the trainer-defaults start trial and missing baselines exactly once.

    Holding the study lock makes this safe when launched twice or from two machines at once.
    """
    study = optuna.create_study(
        storage=storage, study_name=spec.name, direction="maximize", load_if_exists=True
    )
    if study.direction != StudyDirection.MAXIMIZE:
        raise LaunchError(f"study {spec.name!r} exists but minimises; tune studies maximise mAP")
    if study.metric_names != [spec.objective.metric]:
        # optuna-dashboard (and `trials_dataframe`) label the objective by it, not "Objective 0"
        with warnings.catch_warnings():  # "experimental" since Optuna 3.2
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            study.set_metric_names([spec.objective.metric])
    with ManagedStudy(study, storage).lock():
        stored = trial_record.read_study_spec(study)
        if stored is not None:
            differences = _differences(stored, spec.raw)
            if differences:
                raise LaunchError(
                    f"study {spec.name!r} already exists with other settings "
                    f"({'; '.join(differences[:3])}); "
                    "use the same settings, another study name, or another storage"
                )
        trial_record.record_study_spec(study, spec.raw)
        trials = study.get_trials(deepcopy=False)
        # the trainer's defaults first: every verdict compares with them, and a study its time
        # limit cuts short on a slow machine must still have run them
        start = spec.start_params()
        if start is not None and not any(trial_record.read_start(t) for t in trials):
            study.enqueue_trial(start, user_attrs=trial_record.start_attrs())
        present = {trial_record.read_baseline(t) for t in trials}
        for baseline in spec.baselines:
            if baseline.label not in present:
                study.enqueue_trial(
                    baseline.as_dict(), user_attrs=trial_record.baseline_attrs(baseline.label)
                )
    return study


def launch(
    study: str,
    storage: str | None = None,
    *,
    workers: int | None = None,
    gpus: list[int] | None = None,
    overrides: Overrides | None = None,
    runs_dir: Path = DEFAULT_RUNS_DIR,
    progress_interval: float = 5.0,
    trainer_module: str | None = None,
    out: Callable[[str], None] = print,
) -> LaunchResult:
    """Run `study` (a name in studies/ or a file) with local workers until its budget is spent.

    `workers=0` only creates the study and enqueues the baselines (for a compose service that
    prepares a shared database). Returns the final counts and best trial.
    """
    started = time.monotonic()
    overrides = overrides or Overrides()
    spec = load_study_file(study, overrides)
    check_data_set(spec)
    url = resolve_url(storage)
    rdb = open_storage(url, create_schema=True)
    optuna_study = prepare_study(spec, rdb)
    n_workers, gpus, warning = plan_workers(workers, gpus, visible_gpus(spec.trial.device))
    if warning:
        out(warning)
    shown = mask_url(url)
    out(f"study {spec.name!r} in {shown}: {describe_plan(spec)}")
    out(f"watch it: tune dashboard --storage '{shown}'   (or: tune status --study {spec.name})")
    if spec.trial.trainer == "command":
        digest = command_digest(dict(spec.trial.options))
        out(
            f"workers on other hosts: tune worker --study {spec.name} --allow-command {digest}  "
            "(the digest of this study file's command: a worker runs no other)"
        )
    if n_workers == 0:
        return _result(optuna_study, spec, rdb, started)
    log_dir = runs_dir / spec.name
    run = run_local_workers(
        optuna_study,
        spec,
        url,
        n_workers,
        gpus,
        log_dir,
        timeout=overrides.timeout,
        trainer_module=trainer_module,
        progress_interval=progress_interval,
        out=out,
        started=started,
    )
    result = _result(optuna_study, spec, rdb, started, run.exit_codes, run.interrupted)
    out(_summary_line(result, spec))
    run.say_failures(out)
    return result


@dataclass
class ConfirmResult:
    confirmation: Confirmation | None
    enqueued: int  # runs enqueued by this call (0: all were done or under way already)
    exit_codes: list[int] = field(default_factory=list)
    interrupted: bool = False
    standing: str = ""  # what the best trial is and is worth (`search/confirm/standing.py`)
    stopped: dict[str, int] = field(default_factory=dict)  # `trial_record.stopped_counts`

    @property
    def ok(self) -> bool:
        return not self.interrupted and all(code == 0 for code in self.exit_codes)


def confirm(
    study: str,
    storage: str | None = None,
    *,
    top: int = 3,
    seeds: int = 3,
    epochs: int | None = None,
    trials: tuple[int, ...] = (),
    workers: int | None = None,
    gpus: list[int] | None = None,
    runs_dir: Path = DEFAULT_RUNS_DIR,
    progress_interval: float = 5.0,
    trainer_module: str | None = None,
    out: Callable[[str], None] = print,
) -> ConfirmResult:
    """Retrain study `study`'s top trials and best baseline with `seeds` fresh seeds (its confirm
    study, search/confirm/plan.py) with local workers until every run is done; print the result.

    Crash-safe and resumable like a study: run it again (or `tune worker --study NAME:confirm`
    anywhere) and it goes on where it stopped. `workers=0` only enqueues the runs.
    """
    started = time.monotonic()
    url = resolve_url(storage)
    rdb = open_storage(url)
    parent = load_study(rdb, study)
    plan = plan_confirm(parent, top=top, seeds=seeds, epochs=epochs, trials=trials)
    prepared = prepare_confirm(rdb, parent, plan)
    check_data_set(prepared.spec)
    name = prepared.study.study_name
    plan = prepared.plan
    baseline = f" and baseline trial {plan.baseline}" if plan.baseline is not None else ""
    out(
        f"confirming trials {', '.join(map(str, plan.trials))}{baseline} of study {study!r} in "
        f"{mask_url(url)}: {len(plan.seeds)} seeds ({', '.join(map(str, plan.seeds))}) of "
        f"{plan.epochs} epochs each, {len(plan.runs)} runs ({prepared.enqueued} enqueued now)"
    )
    out(f"other machines may run them too: tune worker --study '{name}'")
    n_workers, gpus, warning = plan_workers(workers, gpus, visible_gpus(prepared.spec.trial.device))
    if warning:
        out(warning)
    result = ConfirmResult(None, prepared.enqueued)
    pending = prepared.study.get_trials(
        deepcopy=False, states=(TrialState.WAITING, TrialState.RUNNING)
    )
    if n_workers and pending:
        run = run_local_workers(
            prepared.study,
            prepared.spec,
            url,
            n_workers,
            gpus,
            runs_dir / name,
            timeout=None,
            trainer_module=trainer_module,
            progress_interval=progress_interval,
            out=out,
            started=started,
        )
        result.exit_codes, result.interrupted = [_code(c) for c in run.exit_codes], run.interrupted
        run.say_failures(out)
    result.confirmation = read_confirmation(rdb, study)
    if result.confirmation is not None:
        out(format_confirmation(result.confirmation))
        out(confirmed_sentence(result.confirmation))
    return result


def _code(code: int | None) -> int:
    return int(code) if code is not None else -1


@dataclass
class WorkersRun:
    """How local workers ended: their exit codes, whether they were stopped, their logs."""

    exit_codes: list[int | Any]
    interrupted: bool
    log_dir: Path

    def say_failures(self, out: Callable[[str], None]) -> None:
        """A line per worker that exited with an error (not when stopped), with its log."""
        for i, code in enumerate(self.exit_codes):
            if code != 0 and not self.interrupted:
                log_path = self.log_dir / f"worker-{i}.log"
                out(f"worker {i} exited with status {code}: {_last_error(log_path)}see {log_path}")


def run_local_workers(
    study: optuna.Study,
    spec: StudySpec,
    url: str,
    n_workers: int,
    gpus: list[int] | None,
    log_dir: Path,
    *,
    timeout: float | None,
    trainer_module: str | None,
    progress_interval: float,
    out: Callable[[str], None],
    started: float,
) -> WorkersRun:
    """Run `n_workers` `tune worker` processes on the prepared `study` (a study or a confirm
    study), print progress until they exit, forward Ctrl-C/SIGTERM to them."""
    log_dir.mkdir(parents=True, exist_ok=True)
    interrupted = False
    # Ctrl-C / SIGTERM only set a flag that the watch loop reads between polls: an exception
    # raised inside a database call (psycopg2 turns SIGINT into a cancelled query) could be
    # swallowed by the storage's retries and the stop lost. Installed before the workers start,
    # so a stop while they start still reaches them.
    stop = threading.Event()
    previous = {
        sig: signal.signal(sig, lambda signum, frame: stop.set())
        for sig in (signal.SIGINT, signal.SIGTERM)
    }
    procs: list[tuple[subprocess.Popen[bytes], IO[bytes]]] = []
    try:
        procs = _start_workers(
            study.study_name, spec, url, n_workers, gpus, log_dir, timeout, trainer_module
        )
        where = "GPUs " + ",".join(map(str, gpus)) if gpus else "CPU"
        out(f"started {n_workers} worker(s) on {where}; logs in {log_dir}/")
        _watch(study, spec, procs, started, progress_interval, out, stop)
        interrupted = stop.is_set()
        if interrupted:
            out("stopping: the workers fail their current trial as 'interrupted' ...")
            _stop_workers(procs)
            # what our (now stopped) workers left RUNNING, e.g. after a worker had to be killed
            ManagedStudy(study).fail_running(*(f"{socket.gethostname()}:{p.pid}" for p, _ in procs))
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        for _, log in procs:
            log.close()
    return WorkersRun([p.returncode for p, _ in procs], interrupted, log_dir)


def _start_workers(
    name: str,
    spec: StudySpec,
    url: str,
    n: int,
    gpus: list[int] | None,
    log_dir: Path,
    timeout: float | None,
    trainer_module: str | None,
) -> list[tuple[subprocess.Popen[bytes], IO[bytes]]]:
    # The URL travels in the environment, not argv: argv is visible to every user in `ps`.
    env = {**os.environ, ENV_VAR: url}
    if spec.trial.trainer == "command":  # the command launch read from the study file it has
        env[ALLOW_ENV] = command_digest(dict(spec.trial.options))
    if trainer_module:
        env[TRAINER_MODULE_ENV] = trainer_module
    threads = max(1, (os.cpu_count() or 1) // n)  # workers x threads <= cores
    env["OMP_NUM_THREADS"] = str(threads)
    procs: list[tuple[subprocess.Popen[bytes], IO[bytes]]] = []
    for i in range(n):
        cmd = [
            sys.executable,
            "-c",
            "from search.cli import app; app()",
            "worker",
            "--study",
            name,
        ]
        cmd += ["--local-workers", str(n), "--worker-index", str(i), "--threads", str(threads)]
        # the trial folders go beside the logs (`<runs_dir>/<study>/`), not the worker's default
        cmd += ["--runs-dir", str(log_dir.parent)]
        child_env = dict(env)
        if gpus:
            cmd += ["--gpu", str(gpus[i])]
            child_env["CUDA_VISIBLE_DEVICES"] = str(gpus[i])
        if timeout is not None or spec.budget.timeout is not None:
            cmd += ["--timeout", str(timeout if timeout is not None else spec.budget.timeout)]
        log = open(log_dir / f"worker-{i}.log", "ab")  # noqa: SIM115 (closed by launch)
        # own session: a terminal's Ctrl-C reaches launch only, which forwards one clean SIGTERM
        proc = subprocess.Popen(
            cmd, env=child_env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
        )
        procs.append((proc, log))
    return procs


def _watch(
    study: optuna.Study,
    spec: StudySpec,
    procs: list[tuple[subprocess.Popen[bytes], IO[bytes]]],
    started: float,
    interval: float,
    out: Callable[[str], None],
    stop: threading.Event,
) -> None:
    """Print progress until every worker has exited or `stop` is set."""
    last = ""
    next_line = time.monotonic() + interval
    while any(p.poll() is None for p, _ in procs):
        if stop.wait(0.2):
            return
        if time.monotonic() < next_line:
            continue
        next_line = time.monotonic() + interval
        line = _progress_line(study, spec)
        if line != last:
            out(f"[{time.monotonic() - started:5.0f} s] {line}")
            last = line


def _progress_line(study: optuna.Study, spec: StudySpec) -> str:
    managed = ManagedStudy(study)
    trials = study.get_trials(deepcopy=False)
    counts = managed.counts(trials)
    standing = _standing(study, trials, spec)
    best = (
        f"best mAP50-95 {standing.best.value:.4f} (trial {standing.best.number}, "
        f"{standing.short()})"
        if standing.best is not None and standing.best.value is not None
        else "no trial complete yet"
    )
    return (
        f"budget {managed.budget_use(spec, trials).describe(spec.budget)}: "
        f"{counts.complete} complete, "
        f"{trial_record.pruned_words(counts.pruned, trial_record.stopped_counts(trials))}, "
        f"failed {counts.fail}, running {counts.running}, "
        f"waiting {counts.waiting} | {best}"
    )


def _standing(
    study: optuna.Study, trials: list[FrozenTrial], spec: StudySpec | None = None
) -> Standing:
    """The study's best trial and what it is worth against the trainer's defaults."""
    best, incumbent = study_best(study, trials, spec)
    return standing_of(trials, best, study.direction, incumbent)


def _stop_workers(
    procs: list[tuple[subprocess.Popen[bytes], IO[bytes]]], grace: float = 60.0
) -> None:
    for p, _ in procs:
        if p.poll() is None:
            p.send_signal(signal.SIGTERM)
    deadline = time.monotonic() + grace
    for p, _ in procs:
        try:
            p.wait(timeout=max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait()


def _result(
    study: optuna.Study,
    spec: StudySpec,
    rdb: RDBStorage,
    started: float,
    exit_codes: list[int | Any] | None = None,
    interrupted: bool = False,
) -> LaunchResult:
    managed = ManagedStudy(study, rdb)
    counts = managed.counts()
    trials = study.get_trials(deepcopy=False)
    standing = _standing(study, trials, spec)
    best = standing.best
    codes = [_code(c) for c in (exit_codes or [])]
    use = managed.budget_use(spec)
    wall = time.monotonic() - started
    return LaunchResult(
        counts,
        best.value if best is not None else None,
        best.number if best is not None else None,
        wall,
        use,
        codes,
        interrupted,
        standing.describe(),
        trial_record.stopped_counts(trials),
    )


def _summary_line(result: LaunchResult, spec: StudySpec) -> str:
    c = result.counts
    best = (
        f"best mAP50-95 {result.best_value:.4f} (trial {result.best_number}): {result.standing}"
        if result.best_value is not None
        else "no trial complete"
    )
    how = "interrupted" if result.interrupted else "finished"
    pruned = trial_record.pruned_words(c.pruned, result.stopped)
    return (
        f"{how} in {result.wall_seconds:.0f} s: {result.use.describe(spec.budget)} "
        f"({c.complete} complete, {pruned}), {c.fail} failed, {c.running} running | {best}"
    )


def _differences(stored: dict[str, Any], new: dict[str, Any]) -> list[str]:
    old_flat, new_flat = _flatten(stored), _flatten(new)
    found = []
    for key in sorted(set(old_flat) | set(new_flat)):
        if any(key[: len(m)] == m for m in _MUTABLE):
            continue
        if old_flat.get(key) != new_flat.get(key):
            found.append(
                f"{'.'.join(key)}: stored {old_flat.get(key)!r}, now {new_flat.get(key)!r}"
            )
    return found


def _flatten(table: dict[str, Any], prefix: tuple[str, ...] = ()) -> dict[tuple[str, ...], Any]:
    flat: dict[tuple[str, ...], Any] = {}
    for key, value in table.items():
        if isinstance(value, dict):
            flat.update(_flatten(value, (*prefix, key)))
        else:
            flat[(*prefix, key)] = value
    return flat


def check_data_set(spec: StudySpec) -> None:
    """Fail before any study exists when the workers could not load the data set.

    Reads the data set's description and label files (not its images), so a missing folder or a
    malformed label line is one `DataError` line here instead of every worker failing at start.
    """
    if spec.trial.data in BUILTIN_DATA:
        return  # generated locally, always loadable
    from trainer.data import check_data  # imports torch: only for a user's data set

    check_data(spec.trial.data)


def _last_error(log_path: Path) -> str:
    """The worker's last `error:` line, followed by "; ", or "" when it has none."""
    try:
        lines = log_path.read_text(errors="replace").splitlines()
    except OSError:
        return ""
    errors = [line for line in lines if line.startswith("error: ")]
    return f"{errors[-1]}; " if errors else ""
