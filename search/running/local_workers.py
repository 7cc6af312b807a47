"""Local workers: how many and on which GPUs (`plan_workers`), and running them as `tune worker`
subprocesses while printing progress (`run_local_workers`), for `tune launch` and `tune confirm`.

One worker per listed GPU with `CUDA_VISIBLE_DEVICES` set, else N CPU workers sharing the cores.
Each writes its log to `<runs_dir>/<study>/worker-<i>.log`; this process prints one progress line
every few seconds. Ctrl-C (or SIGTERM) is forwarded to the workers, which fail their current
trial as "interrupted"; nothing is left RUNNING.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

import optuna
from optuna.trial import FrozenTrial, TrialState

from search.bookkeeping import trial_record
from search.bookkeeping.storage import ENV_VAR
from search.confirm.standing import study_standing
from search.control.study_manager import ManagedStudy
from search.control.study_setup import LaunchError
from search.running.command_trust import ALLOW_ENV, command_digest
from search.study.study_file import StudySpec
from search.trainers.builtin import TRAINER_MODULE_ENV


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


def code_of(code: int | None) -> int:
    """A worker's exit status; -1 for one that has none."""
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
        line = progress_line(study, spec)
        if line != last:
            out(f"[{time.monotonic() - started:5.0f} s] {line}")
            last = line


def progress_line(study: optuna.Study, spec: StudySpec) -> str:
    managed = ManagedStudy(study)
    trials = study.get_trials(deepcopy=False)
    counts = managed.counts(trials)
    best = (
        _best_retrain(trials)
        if trial_record.read_confirm_plan(study) is not None
        else _best_found(study, trials, spec)
    )
    return (
        f"budget {managed.budget_use(spec, trials).describe(spec.budget)}: "
        f"{counts.complete} complete, "
        f"{trial_record.pruned_words(counts.pruned, trial_record.stopped_counts(trials))}, "
        f"failed {counts.fail}, running {counts.running}, "
        f"waiting {counts.waiting} | {best}"
    )


def _best_found(study: optuna.Study, trials: list[FrozenTrial], spec: StudySpec) -> str:
    """A study's best trial and what it is (the defaults, a find, the incumbent over seeds)."""
    standing = study_standing(study, trials, spec)
    if standing.best is None or standing.best.value is None:
        return "no trial complete yet"
    return (
        f"best mAP50-95 {standing.best.value:.4f} (trial {standing.best.number}, "
        f"{standing.short()})"
    )


def _best_retrain(trials: list[FrozenTrial]) -> str:
    """A confirm study's best run so far, named by the parent trial and the seed it retrains:
    its runs are retrains, not finds (`tune confirm` states the verdict when they are done)."""
    done = [t for t in trials if t.state == TrialState.COMPLETE and t.value is not None]
    if not done:
        return "no confirm run complete yet"
    best = max(done, key=lambda t: t.value or 0.0)
    mark = trial_record.read_confirm(best)
    what = f"trial {mark[0]} retrained on seed {mark[1]}" if mark else f"run {best.number}"
    return f"best confirm run mAP50-95 {best.value:.4f} ({what})"


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


def _last_error(log_path: Path) -> str:
    """The worker's last `error:` line, followed by "; ", or "" when it has none."""
    try:
        lines = log_path.read_text(errors="replace").splitlines()
    except OSError:
        return ""
    errors = [line for line in lines if line.startswith("error: ")]
    return f"{errors[-1]}; " if errors else ""
