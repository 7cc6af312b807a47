"""Graceful stop with real signals to real processes, against PostgreSQL.

Already covered elsewhere: SIGTERM to an in-process worker (test_worker.py) and Ctrl-C to
`tune launch` (test_launch_cli.py). Here: SIGTERM and SIGINT to a `tune worker` process in the
middle of a trial, SIGTERM to `tune launch`, and a stop while a worker only waits for the
budget. Each must end within seconds with status 130, the current trial FAIL as "interrupted"
(never left RUNNING for the reaper, so never retried), and the study able to go on afterwards.
"""

from __future__ import annotations

import signal
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from optuna.trial import FrozenTrial, TrialState

from search.bookkeeping import trial_record
from tests.search.reliability_support import (
    FAKE,
    ROOT,
    TUNE,
    Worker,
    fast_env,
    finished,
    make_study,
    running_of,
    start_worker,
    states,
    trials,
    wait_for,
    work_here,
)

pytestmark = [pytest.mark.postgres, pytest.mark.slow]


def _evaluated(url: str, number: int) -> FrozenTrial | None:
    t = next(t for t in trials(url) if t.number == number)
    return t if t.state == TrialState.RUNNING and trial_record.read_curve(t) else None


def _evaluation(url: str, number: int) -> Callable[[], FrozenTrial | None]:
    return lambda: _evaluated(url, number)


def _running(url: str, worker: Worker) -> Callable[[], FrozenTrial | None]:
    return lambda: running_of(url, worker)


def _assert_cleanly_stopped(url: str) -> list[FrozenTrial]:
    all_trials = trials(url)
    assert not [t for t in all_trials if t.state == TrialState.RUNNING], states(all_trials)
    failed = [t for t in all_trials if t.state == TrialState.FAIL]
    assert failed and all(trial_record.read_error(t) == "interrupted" for t in failed)
    assert not [t for t in all_trials if trial_record.read_retry_of(t) is not None]
    return all_trials


def test_sigterm_and_sigint_stop_worker_processes_mid_trial(
    pg_url: str, tmp_path: Path, workers: list[Worker], monkeypatch: pytest.MonkeyPatch
) -> None:
    make_study(pg_url, n_trials=4, epochs=6)
    env = fast_env(tmp_path, FAKE_STEP_SECONDS="1.0")
    signals = {"sigterm": signal.SIGTERM, "sigint": signal.SIGINT}  # Ctrl-C in a terminal
    started = {name: start_worker(pg_url, tmp_path, env, name) for name in signals}
    workers.extend(started.values())
    current = {
        name: wait_for(f"a trial of {name}", _running(pg_url, w), 90) for name, w in started.items()
    }
    for t in current.values():
        wait_for("an evaluation", _evaluation(pg_url, t.number), 30, every=0.1)
    sent = {name: started[name].signal(sig) for name, sig in signals.items()}
    stop_seconds = {}
    for name, w in started.items():
        assert w.wait(timeout=30) == 130, w.text()
        stop_seconds[name] = time.monotonic() - sent[name]
        assert stop_seconds[name] < 10, f"{name}: took {stop_seconds[name]:.1f} s to stop"
        assert "stopped (interrupted)" in w.text()
    all_trials = _assert_cleanly_stopped(pg_url)
    failed = sorted(t.number for t in all_trials if t.state == TrialState.FAIL)
    assert failed == sorted(t.number for t in current.values())

    # the study goes on where it stopped: a new worker spends the rest of the budget
    for key, value in {**env, "FAKE_STEP_SECONDS": "0.05"}.items():
        monkeypatch.setenv(key, value)
    log: list[str] = []
    assert work_here(pg_url, tmp_path, env, log).stopped_because == "budget", log
    all_trials = trials(pg_url)
    assert finished(all_trials) == 4, states(all_trials)
    took = ", ".join(f"{k} {v:.1f} s" for k, v in stop_seconds.items())
    print(f"\nworkers exited 130 after: {took}")


def test_sigterm_stops_launch_and_its_workers(pg_url: str, tmp_path: Path) -> None:
    env = fast_env(tmp_path, FAKE_STEP_SECONDS="1.0", TUNE_STORAGE=pg_url)
    proc = subprocess.Popen(
        [*TUNE, "launch", "--study", "smoke", "--workers", "2", "--n-trials", "6",
         "--epochs", "6", "--progress-interval", "1", "--runs-dir", str(tmp_path / "runs"),
         *FAKE],
        cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        wait_for(
            "two evaluated trials",
            lambda: (
                sum(
                    t.state == TrialState.RUNNING and bool(trial_record.read_curve(t))
                    for t in trials(pg_url)
                )
                >= 2
            ),
            90,
        )
        sent = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    stop_seconds = time.monotonic() - sent
    assert proc.returncode == 130, err
    assert "stopping" in out and "interrupted in" in out
    # seen once in CI (33 s, while the whole suite ran at half speed), not again in 8 runs under
    # load: the workers' logs say where a slow stop spent its time
    logs = "\n".join(
        f"--- {log.name}\n{log.read_text(errors='replace')[-2000:]}"
        for log in sorted((tmp_path / "runs" / "smoke").glob("worker-*.log"))
    )
    assert stop_seconds < 15, f"took {stop_seconds:.1f} s to stop\n{out[-2000:]}\n{logs}"
    all_trials = _assert_cleanly_stopped(pg_url)
    assert sum(t.state == TrialState.FAIL for t in all_trials) == 2  # one per worker
    logs = sorted((tmp_path / "runs" / "smoke").glob("worker-*.log"))
    assert len(logs) == 2 and all("stopped (interrupted)" in p.read_text() for p in logs)
    print(f"\nlaunch SIGTERM: exited 130 {stop_seconds:.1f} s after the signal")


def test_a_worker_waiting_for_the_budget_stops_at_once(
    pg_url: str, tmp_path: Path, workers: list[Worker]
) -> None:
    # one trial, taken by the first worker (held in place): the second can only wait
    make_study(pg_url, n_trials=1, epochs=2)
    hold = tmp_path / "hold"
    hold.touch()
    env = fast_env(tmp_path, FAKE_HOLD_FILE=str(hold))
    busy = start_worker(pg_url, tmp_path, env, "busy")
    idle = start_worker(pg_url, tmp_path, env, "idle")
    workers.extend([busy, idle])
    wait_for("the one trial", lambda: running_of(pg_url, busy) or running_of(pg_url, idle), 90)
    waiting = idle if running_of(pg_url, busy) else busy
    wait_for("the other to join", lambda: "joined study" in waiting.text(), 60)
    # it waits for the budget now: its start gate says so in its log
    wait_for("the other to wait", lambda: "hold the rest" in waiting.text(), 60, every=0.05)
    sent = waiting.signal(signal.SIGTERM)
    assert waiting.wait(timeout=30) == 130, waiting.text()
    assert time.monotonic() - sent < 5
    assert "stopped (interrupted): 0 complete" in waiting.text()
    hold.unlink()
    other = busy if waiting is idle else idle
    assert other.wait(timeout=60) == 0, other.text()
    all_trials = trials(pg_url)
    assert [t.state for t in all_trials] == [TrialState.COMPLETE]
