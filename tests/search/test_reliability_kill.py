"""Workers that die or stall mid-trial: real `tune worker` processes, real signals, PostgreSQL.

Heartbeat 1 s, grace 3 s (see `reliability_support`). A SIGKILLed worker's trial must be FAIL
within 2 x grace even while no other worker asks for a trial, retried with the same parameters,
resumed from its last evaluation checkpoint (fake trainer, and once the real trainer); a trial
that keeps killing its worker is given up after `max_retry` retries; a worker paused past the
grace period drops its reaped trial and goes on.
"""

from __future__ import annotations

import json
import signal
import subprocess
import time
import warnings
from pathlib import Path

import optuna
import pytest
from optuna.trial import FrozenTrial, TrialState

from search.bookkeeping import trial_record
from search.bookkeeping.storage import open_storage
from tests.search.reliability_support import (
    GRACE,
    HEARTBEAT,
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


def _by_number(url: str, number: int) -> FrozenTrial:
    return next(t for t in trials(url) if t.number == number)


def _failed(url: str, number: int) -> FrozenTrial | None:
    t = _by_number(url, number)
    return t if t.state == TrialState.FAIL else None


def _retry_of(url: str, number: int) -> FrozenTrial | None:
    return next((t for t in trials(url) if trial_record.read_retry_of(t) == number), None)


def _status(url: str) -> str:
    out = subprocess.run(
        [*TUNE, "status", "--study", "smoke", "--storage", url],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    return out.stdout


def test_a_killed_worker_is_reaped_without_asks_and_its_retry_resumes(
    pg_url: str, tmp_path: Path, workers: list[Worker], monkeypatch: pytest.MonkeyPatch
) -> None:
    make_study(pg_url, n_trials=2, epochs=6)
    env = fast_env(tmp_path, FAKE_STEP_SECONDS="0.4")
    # The bystander's trial is held in place (FAKE_HOLD_FILE) while the victim dies: it neither
    # finishes nor asks for a trial, so only a reaper thread can notice the dead one. The victim
    # is held too until the bystander has its trial (worker start-up times vary a lot here).
    hold_bystander, hold_victim = tmp_path / "hold-bystander", tmp_path / "hold-victim"
    hold_bystander.touch()
    hold_victim.touch()
    victim = start_worker(pg_url, tmp_path, {**env, "FAKE_HOLD_FILE": str(hold_victim)}, "victim")
    bystander = start_worker(
        pg_url, tmp_path, {**env, "FAKE_HOLD_FILE": str(hold_bystander)}, "bystander"
    )
    workers.extend([victim, bystander])
    busy = wait_for("the bystander's trial", lambda: running_of(pg_url, bystander), 90)
    doomed = wait_for("the victim's trial", lambda: running_of(pg_url, victim), 90)
    hold_victim.unlink()

    def checkpoint_at_2() -> FrozenTrial | None:
        t = _by_number(pg_url, doomed.number)
        mark = trial_record.read_checkpoint(t)
        return t if mark is not None and mark[1] >= 2 else None

    wait_for("two evaluations of the victim's trial", checkpoint_at_2, 60, every=0.1)
    killed_at = victim.signal(signal.SIGKILL)
    victim.wait()
    dead = wait_for(
        "the killed trial to be FAIL", lambda: _failed(pg_url, doomed.number), 4 * GRACE, 0.05
    )
    reclaim_seconds = time.monotonic() - killed_at
    assert reclaim_seconds <= 2 * GRACE, f"reaped after {reclaim_seconds:.1f} s"
    assert _by_number(pg_url, busy.number).state == TrialState.RUNNING  # it asked for nothing
    hold_bystander.unlink()
    mark = trial_record.read_checkpoint(dead)
    assert mark is not None
    checkpoint_step = mark[1]
    evaluated = max(p["eval"]["epoch"] for p in trial_record.read_curve(dead))

    # a restarted machine (here, this process) takes the retry and resumes it
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    log: list[str] = []
    stats = work_here(pg_url, tmp_path, env, log)
    assert stats.stopped_because == "budget", log
    assert bystander.wait() == 0, bystander.text()

    all_trials = trials(pg_url)
    assert finished(all_trials) == 2, states(all_trials)
    assert not [t for t in all_trials if t.state in (TrialState.RUNNING, TrialState.WAITING)]
    retry = _retry_of(pg_url, dead.number)
    assert retry is not None and retry.state == TrialState.COMPLETE, states(all_trials)
    assert retry.params == dead.params
    assert trial_record.read_resumed_step(retry) == checkpoint_step
    # at most one evaluation interval lost: the retry trained from the checkpoint on
    assert evaluated - checkpoint_step <= 1
    run_dir = tmp_path / "runs" / "smoke" / f"trial-{retry.number:04d}"
    assert json.loads((run_dir / "last.pt").read_text())["resumed_at"] == checkpoint_step
    # its curve and intermediate values are complete: the predecessor's steps re-recorded
    assert [p["eval"]["epoch"] for p in trial_record.read_curve(retry)] == [1, 2, 3, 4, 5, 6]
    assert sorted(retry.intermediate_values) == [1, 2, 3, 4, 5, 6]
    # only the latest checkpoint of each trial is kept (the dead trial's went with its retry's)
    kept = [p for p in (tmp_path / "artifacts").rglob("*") if p.is_file()]
    assert len(kept) == sum(t.state == TrialState.COMPLETE for t in all_trials)
    status = _status(pg_url)
    assert f"trial {retry.number} retries trial {dead.number}: complete, resumed at step" in status
    assert f"lost its worker (no heartbeat), retried as trial {retry.number}" in status
    assert f"trial {dead.number} lost its worker (no heartbeat): enqueued again" in (
        bystander.text()  # its reaper thread did it
    )
    print(
        f"\nreclaimed in {reclaim_seconds:.1f} s (grace {GRACE} s); checkpoint step "
        f"{checkpoint_step}, last evaluation {evaluated}, resumed at "
        f"{trial_record.read_resumed_step(retry)}"
    )


def test_a_trial_that_never_beat_is_reaped_and_the_study_finishes(
    pg_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # What a worker killed between creating its trial and its first heartbeat leaves (the hang
    # found in CI): a RUNNING trial with no heartbeat and no user attrs, here the enqueued
    # baseline, holding the last slot of the budget while the other trial finishes.
    make_study(pg_url, n_trials=2, epochs=2)
    orphan_study = optuna.load_study(study_name="smoke", storage=open_storage(pg_url))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # heartbeats outside optimize()
        orphan = orphan_study.ask()
    assert trial_record.read_baseline(_by_number(pg_url, orphan.number)) == "first model"
    env = fast_env(tmp_path, FAKE_STEP_SECONDS="0.1")
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    log: list[str] = []
    stats = work_here(pg_url, tmp_path, env, log, timeout=60)  # it waited forever before

    assert stats.stopped_because == "budget", log
    all_trials = trials(pg_url)
    assert finished(all_trials) == 2, states(all_trials)
    assert not [t for t in all_trials if t.state in (TrialState.RUNNING, TrialState.WAITING)]
    dead = _by_number(pg_url, orphan.number)
    assert dead.state == TrialState.FAIL
    assert dead.datetime_start is not None and dead.datetime_complete is not None
    reaped_after = (dead.datetime_complete - dead.datetime_start).total_seconds()
    # reaped within grace + one interval of its start (plus the reaping call itself)
    assert GRACE < reaped_after <= GRACE + HEARTBEAT + 1.0, f"reaped after {reaped_after:.1f} s"
    retry = _retry_of(pg_url, orphan.number)
    assert retry is not None and retry.state == TrialState.COMPLETE, states(all_trials)
    assert trial_record.read_baseline(retry) == "first model"  # the baseline kept its values
    assert retry.params["lcls"] == 0.5 and retry.params["lbox"] == 0.05
    # the worker said why it waited, and that the wait ended
    assert any("running trials hold the rest of the budget" in line for line in log), log
    assert any(f"trial {orphan.number}: no heartbeat yet, started" in line for line in log), log
    assert any(f"trial {orphan.number} lost its worker (no heartbeat)" in line for line in log)
    assert any(line.startswith("waited ") for line in log), log
    print(f"\na trial that never beat was reaped {reaped_after:.1f} s after it started")


def test_a_trial_that_keeps_killing_its_worker_is_given_up(
    pg_url: str, tmp_path: Path, workers: list[Worker]
) -> None:
    make_study(pg_url, n_trials=2, epochs=3)
    # the baseline (lcls 0.5) SIGKILLs its worker during epoch 2, however often it is resumed
    env = fast_env(
        tmp_path,
        FAKE_DIE_LCLS="0.5",
        FAKE_DIE_AT_EPOCH="2",
        FAKE_STEP_SECONDS="0.2",
        TUNE_MAX_RETRY="1",  # one retry: each death costs a worker start and a grace period
    )
    deaths = 0
    for i in range(6):  # a supervisor restarting the worker, as a preemptible pool would
        w = start_worker(pg_url, tmp_path, env, f"worker-{i}")
        workers.append(w)
        code = w.wait(timeout=60)
        if code == 0:
            break
        assert code == -signal.SIGKILL, w.text()
        deaths += 1
    else:
        pytest.fail("the study never finished: the deadly trial was not given up")

    assert deaths == 2  # the trial and its one retry (max_retry)
    all_trials = trials(pg_url)
    chain = [t for t in all_trials if trial_record.read_baseline(t) == "first model"]
    assert [t.state for t in chain] == [TrialState.FAIL] * 2, states(all_trials)
    assert [trial_record.read_retry_of(t) for t in chain] == [None, chain[0].number]
    assert chain[1].params == chain[0].params
    # the retry resumed from the checkpoint of epoch 1, and died redoing epoch 2
    assert trial_record.read_resumed_step(chain[1]) == 1
    assert finished(all_trials) == 2
    assert not [t for t in all_trials if t.state in (TrialState.RUNNING, TrialState.WAITING)]
    logs = "".join(w.text() for w in workers)
    assert f"trial {chain[1].number} lost its worker (no heartbeat): given up after 1" in logs
    status = _status(pg_url)
    assert f"trial {chain[1].number} (retry of trial {chain[0].number}): lost its worker" in status
    assert "not retried" in status


def test_a_paused_worker_drops_its_reaped_trial_and_goes_on(
    pg_url: str, tmp_path: Path, workers: list[Worker]
) -> None:
    make_study(pg_url, n_trials=3, epochs=5)
    env = fast_env(tmp_path, FAKE_STEP_SECONDS="0.5")
    # the other worker's trial is held until the pause is over, so the budget cannot run out
    # under the slow worker; it reaps the paused trial from its reaper thread meanwhile
    hold = tmp_path / "hold-other"
    hold.touch()
    slow = start_worker(pg_url, tmp_path, env, "slow")
    other = start_worker(pg_url, tmp_path, {**env, "FAKE_HOLD_FILE": str(hold)}, "other")
    workers.extend([slow, other])
    paused = wait_for("the slow worker's trial", lambda: running_of(pg_url, slow), 90)
    wait_for("the other worker's trial", lambda: running_of(pg_url, other), 90)
    wait_for(
        "its first evaluation",
        lambda: trial_record.read_checkpoint(_by_number(pg_url, paused.number)),
        60,
        every=0.1,
    )
    stopped_at = slow.signal(signal.SIGSTOP)  # a long pause: swapping, a debugger, a VM hiccup
    wait_for(
        "the paused trial to be reaped",
        lambda: _by_number(pg_url, paused.number).state == TrialState.FAIL,
        4 * GRACE,
        every=0.1,
    )
    reaped_after = time.monotonic() - stopped_at
    slow.signal(signal.SIGCONT)
    hold.unlink()

    assert slow.wait() == 0, slow.text()
    assert other.wait() == 0, other.text()
    log = slow.text()
    assert f"dropped trial {paused.number}, already finished elsewhere" in log
    assert ", 1 dropped;" in log  # the exit summary
    all_trials = trials(pg_url)
    assert finished(all_trials) == 3, states(all_trials)
    assert not [t for t in all_trials if t.state in (TrialState.RUNNING, TrialState.WAITING)]
    retry = _retry_of(pg_url, paused.number)
    assert retry is not None and retry.state in (TrialState.COMPLETE, TrialState.PRUNED)
    assert trial_record.read_resumed_step(retry) is not None
    # the slow worker went on to run other trials after dropping its own
    mine = [t for t in all_trials if trial_record.read_placement(t)["worker"] == slow.worker_id]
    assert any(t.number > paused.number for t in mine)
    print(f"\npaused trial reaped {reaped_after:.1f} s after SIGSTOP (grace {GRACE} s)")


def test_the_real_trainer_resumes_a_killed_trial(
    pg_url: str, tmp_path: Path, workers: list[Worker], monkeypatch: pytest.MonkeyPatch
) -> None:
    from trainer.shapes import shapes_yaml

    data = shapes_yaml(tmp_path / "data", n_train=64, n_val=16)
    epochs = 3
    make_study(pg_url, n_trials=1, epochs=epochs, data=str(data))  # smoke: imgsz 64, batch 16
    env = fast_env(tmp_path)
    first = start_worker(pg_url, tmp_path, env, "first", real_trainer=True)
    workers.append(first)
    wait_for(
        "the first checkpoint upload",
        lambda: trial_record.read_checkpoint(_by_number(pg_url, 0)),
        120,
        every=0.1,
    )
    first.signal(signal.SIGKILL)
    first.wait()
    dead = _by_number(pg_url, 0)
    if dead.state != TrialState.RUNNING:
        pytest.fail(f"the trial ended ({dead.state.name}) before the kill; make it longer")
    mark = trial_record.read_checkpoint(dead)
    assert mark is not None and mark[1] < epochs
    step = mark[1]

    # the retry runs in this process (torch is imported already: a worker start costs ~20 s
    # on a busy 2-core machine)
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    log: list[str] = []
    stats = work_here(pg_url, tmp_path, env, log, real_trainer=True)
    assert stats.stopped_because == "budget", log

    retry = _retry_of(pg_url, 0)
    assert retry is not None and retry.state == TrialState.COMPLETE, log
    assert trial_record.read_resumed_step(retry) == step
    assert [p["eval"]["epoch"] for p in trial_record.read_curve(retry)] == list(
        range(1, epochs + 1)
    )
    summary = trial_record.read_summary(retry)
    assert summary is not None and summary["epochs_completed"] == epochs
    # the retry's own run trained only after the checkpoint: fit really resumed
    run_dir = tmp_path / "runs" / "smoke" / f"trial-{retry.number:04d}"
    lines = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    iters_per_epoch = 64 // 16
    assert lines and min(line["iter"] for line in lines) > step * iters_per_epoch
    assert f"trial {retry.number} retries trial 0, resuming from its checkpoint at step {step}" in (
        log
    )
