"""Shared by the reliability tests: real `tune worker` processes with short heartbeats, polling.

Workers run the fast fake trainer with checkpoints (`FAKE_CHECKPOINT=1`), a heartbeat every
second and a grace period of a few seconds (`$TUNE_HEARTBEAT_INTERVAL`, `$TUNE_GRACE_PERIOD`),
and keep their checkpoints in the test's own artifact folder (`$TUNE_ARTIFACTS`). Each
worker's output goes to a log file, read back by the tests (and shown when one fails).
"""

from __future__ import annotations

import functools
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

import optuna
from optuna.storages import RDBStorage
from optuna.trial import FrozenTrial, TrialState

from search.bookkeeping.storage import StorageSettings, open_storage
from search.control.study_setup import prepare_study
from search.running.worker import WorkerOptions, WorkerStats, run_worker
from search.study.study_file import Overrides, load_study_file
from search.trainers.builtin import TuneTrainer

ROOT = Path(__file__).parents[2]
BIN = Path(sys.executable).parent
TUNE = [str(BIN / "tune")] if (BIN / "tune").exists() else [sys.executable, "-m", "search.cli"]
FAKE = ["--trainer-module", "tests.search.fake_trainer"]
HEARTBEAT = 1  # seconds
GRACE = 3  # seconds: a trial without a heartbeat this long is reaped
T = TypeVar("T")
_PASSED_ON = (
    "TUNE_STORAGE", "TUNE_TRAINER_MODULE", "FAKE_FAIL_TRIALS", "FAKE_NAN_TRIALS",
    "TUNE_PROXY_TOKEN_FILE", "TUNE_PROXY_CA", "TUNE_PROXY_TLS_NAME",
)  # fmt: skip
PROXY_TOKEN = "test-token-0123456789abcdef"  # what the tests' proxies and workers share


def fast_env(tmp_path: Path, **extra: str) -> dict[str, str]:
    """The environment of a test worker: short heartbeats, checkpoints in `tmp_path`."""
    env = {k: v for k, v in os.environ.items() if k not in _PASSED_ON and not k.startswith("FAKE_")}
    return {
        **env,
        "TUNE_HEARTBEAT_INTERVAL": str(HEARTBEAT),
        "TUNE_GRACE_PERIOD": str(GRACE),
        "TUNE_MAX_RETRY": "2",
        "TUNE_ARTIFACTS": str(tmp_path / "artifacts"),
        "TUNE_PROXY_TOKEN": PROXY_TOKEN,
        "FAKE_CHECKPOINT": "1",
        "FAKE_STEP_SECONDS": "0.3",
        "OMP_NUM_THREADS": "1",
        **extra,
    }


def make_study(url: str, n_trials: int, epochs: int, data: str | None = None) -> None:
    """What `tune launch --workers 0` does: the `smoke` study with its baseline enqueued."""
    spec = load_study_file("smoke", Overrides(n_trials=n_trials, epochs=epochs, data=data))
    prepare_study(spec, open_storage(url, create_schema=True))


@dataclass
class Worker:
    """A `tune worker` subprocess and its log file."""

    proc: subprocess.Popen[bytes]
    log: Path

    @property
    def worker_id(self) -> str:
        import socket

        return f"{socket.gethostname()}:{self.proc.pid}"

    def text(self) -> str:
        return self.log.read_text(errors="replace") if self.log.exists() else ""

    def signal(self, sig: int) -> float:
        """Send `sig`; the monotonic time it was sent."""
        os.kill(self.proc.pid, sig)
        return time.monotonic()

    def wait(self, timeout: float = 90) -> int:
        try:
            return self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
            raise AssertionError(f"worker did not finish in {timeout} s:\n{self.text()}") from None

    def stop(self) -> None:
        """Kill it if it still runs (test cleanup), resuming it first if it was stopped."""
        if self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGCONT)
            self.proc.kill()
            self.proc.wait()


def start_worker(
    url: str,
    tmp_path: Path,
    env: dict[str, str],
    name: str,
    *,
    real_trainer: bool = False,
    study: str = "smoke",
) -> Worker:
    """Start `tune worker --study smoke` (or `study`) against `url`, logging to
    `tmp_path/<name>.log`."""
    log = tmp_path / f"{name}.log"
    args = [*TUNE, "worker", "--study", study, "--runs-dir", str(tmp_path / "runs")]
    args += ["--threads", "1"] + ([] if real_trainer else FAKE)
    with log.open("ab") as out:
        proc = subprocess.Popen(
            args, cwd=ROOT, env={**env, "TUNE_STORAGE": url}, stdout=out, stderr=subprocess.STDOUT
        )
    return Worker(proc, log)


def work_here(
    url: str,
    tmp_path: Path,
    env: dict[str, str],
    log: list[str],
    *,
    real_trainer: bool = False,
    timeout: float | None = None,
    study: str = "smoke",
) -> WorkerStats:
    """Run a worker in this process (no start-up cost) until the budget is spent.

    For the worker that takes over after a killed one; `env` must already be applied (the
    fake trainer reads it from `os.environ`: use `monkeypatch.setenv`).
    """
    from tests.search import fake_trainer

    options = WorkerOptions(
        runs_dir=tmp_path / "runs",
        threads=1,
        settings=StorageSettings.from_env(env),
        artifacts=env["TUNE_ARTIFACTS"],
        poll_interval=0.2,
        timeout=timeout,
        log=log.append,
    )
    fake = None if real_trainer else TuneTrainer(fake_trainer.fit)
    return run_worker(study, url, options, trainer=fake)


@functools.cache
def _reader(url: str) -> RDBStorage:
    # one engine per database for all the polling (a new one per poll costs a CPU core)
    return open_storage(url, settings=StorageSettings())


def trials(url: str) -> list[FrozenTrial]:
    return optuna.load_study(study_name="smoke", storage=_reader(url)).get_trials()


def wait_for(what: str, check: Callable[[], T | None], timeout: float, every: float = 0.2) -> T:
    """Poll `check()` until it returns something other than None/False; fail after `timeout`."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            value = check()
        except Exception:  # the study may not be readable yet (or the database is restarting)
            value = None
        if value is not None and value is not False:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(every)


def running_of(url: str, worker: Worker) -> FrozenTrial | None:
    """The trial `worker` is running now, if any."""
    from search.bookkeeping import trial_record

    for t in trials(url):
        if t.state == TrialState.RUNNING and (
            trial_record.read_placement(t).get("worker") == worker.worker_id
        ):
            return t
    return None


def finished(all_trials: list[FrozenTrial]) -> int:
    return sum(t.state in (TrialState.COMPLETE, TrialState.PRUNED) for t in all_trials)


def states(all_trials: list[FrozenTrial]) -> dict[str, int]:
    """Trial counts by state name (for assertion messages)."""
    counts: dict[str, int] = {}
    for t in all_trials:
        counts[t.state.name] = counts.get(t.state.name, 0) + 1
    return counts


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Proxy:
    """A `tune proxy` subprocess logging to a file (`args`: more options, e.g. TLS)."""

    def __init__(
        self, url: str, port: int, env: dict[str, str], log: Path, args: tuple[str, ...] = ()
    ) -> None:
        self.args = [*TUNE, "proxy", "--storage", url, "--port", str(port), *args]
        self.env, self.log = env, log
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> Proxy:
        with self.log.open("ab") as out:
            self.proc = subprocess.Popen(
                self.args, cwd=ROOT, env=self.env, stdout=out, stderr=subprocess.STDOUT
            )
        proc = self.proc
        # a proxy that exits (a bad option, no token) fails the test at once, with its line
        wait_for("the proxy to listen", lambda: "tune proxy for" in self.text() or proc.poll(), 60)
        assert proc.poll() is None, f"tune proxy exited with {proc.returncode}: {self.text()}"
        return self

    def text(self) -> str:
        return self.log.read_text(errors="replace") if self.log.exists() else ""

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(30)
