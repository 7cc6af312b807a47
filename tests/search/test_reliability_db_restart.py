"""The database goes away under running workers: a PostgreSQL server of the test's own.

The module starts its own server (`tests/search/own_postgres.py`: `initdb`/`pg_ctl` of the
installed PostgreSQL on a free port in a temporary folder), so that it can restart and stop it
without disturbing the shared one. The workers are real `tune worker` processes with the fake
trainer (checkpoints on).
"""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import sqlalchemy as sa
from optuna.trial import TrialState

from search.bookkeeping import trial_record
from search.bookkeeping.outage import is_connection_error, retry_while_down
from search.bookkeeping.storage import StorageDown, StorageSettings
from tests.search.chaos import ChaosPlan, check_study, run_chaos
from tests.search.own_postgres import NoPostgres, OwnPostgres, free_port, own_postgres_server
from tests.search.reliability_support import (
    Worker,
    fast_env,
    finished,
    make_study,
    start_worker,
    states,
    trials,
    wait_for,
    work_here,
)

pytestmark = [pytest.mark.postgres, pytest.mark.slow]


@pytest.fixture(scope="module")
def own_postgres() -> Iterator[OwnPostgres]:
    try:
        with own_postgres_server() as server:
            yield server
    except NoPostgres as exc:
        if os.environ.get("TUNE_REQUIRE_POSTGRES") == "1":
            pytest.fail(f"{exc} (TUNE_REQUIRE_POSTGRES=1)")
        pytest.skip(str(exc))


def _complete_curves(url: str, epochs: int) -> bool:
    return all(
        [p["eval"]["epoch"] for p in trial_record.read_curve(t)] == list(range(1, epochs + 1))
        for t in trials(url)
        if t.state == TrialState.COMPLETE
    )


def test_workers_ride_out_a_database_restart(
    own_postgres: OwnPostgres, tmp_path: Path, workers: list[Worker]
) -> None:
    url = own_postgres.new_database()
    make_study(url, n_trials=6, epochs=4)
    env = fast_env(tmp_path, FAKE_STEP_SECONDS="0.3", TUNE_STORAGE_DOWN_LIMIT="60")
    workers.extend(start_worker(url, tmp_path, env, f"worker-{i}") for i in range(2))
    wait_for("two finished trials", lambda: finished(trials(url)) >= 2, 120)
    running_before = sum(t.state == TrialState.RUNNING for t in trials(url))
    down_at = time.monotonic()
    own_postgres.stop()
    time.sleep(1.0)
    own_postgres.start()
    outage = time.monotonic() - down_at

    for w in workers:
        assert w.wait(timeout=120) == 0, w.text()
    all_trials = trials(url)
    assert finished(all_trials) == 6, states(all_trials)  # the right number, no overshoot
    assert not [t for t in all_trials if t.state in (TrialState.RUNNING, TrialState.WAITING)]
    assert [t.number for t in all_trials] == list(range(len(all_trials)))
    assert _complete_curves(url, 4)
    logs = "".join(w.text() for w in workers)
    assert "is unreachable, retrying in" in logs  # they did meet the outage
    # what the outage cost: a trial whose tell or heartbeat fell into it is failed and resumed
    lost = [t for t in all_trials if t.state == TrialState.FAIL]
    for t in lost:
        retry = next(r for r in all_trials if trial_record.read_retry_of(r) == t.number)
        evaluated = max((p["eval"]["epoch"] for p in trial_record.read_curve(t)), default=0)
        assert evaluated - (trial_record.read_resumed_step(retry) or 0) <= 1
    print(
        f"\nrestart: server down {outage:.1f} s with {running_before} trials running; "
        f"{len(lost)} trial(s) failed and resumed; study complete ({states(all_trials)})"
    )


def test_workers_give_up_when_the_database_stays_down(
    own_postgres: OwnPostgres,
    tmp_path: Path,
    workers: list[Worker],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    url = own_postgres.new_database()
    make_study(url, n_trials=6, epochs=4)
    limit = 4.0
    env = fast_env(tmp_path, FAKE_STEP_SECONDS="1.0", TUNE_STORAGE_DOWN_LIMIT=str(limit))
    workers.extend(start_worker(url, tmp_path, env, f"worker-{i}") for i in range(2))

    def frozen_with_a_checkpointed_trial() -> bool:
        # the workers are paused (SIGSTOP) while the study is read, and stay paused when it holds
        # a finished trial and a RUNNING one with a checkpoint: nothing can finish that trial
        # before the database goes down (a 2-core CI machine under load once let a trial with one
        # epoch left complete between this check and the stop)
        for w in workers:
            w.signal(signal.SIGSTOP)
        caught = False
        try:
            now = trials(url)
            caught = finished(now) >= 1 and any(
                t.state == TrialState.RUNNING and trial_record.read_checkpoint(t) is not None
                for t in now
            )
        finally:
            if not caught:
                for w in workers:
                    w.signal(signal.SIGCONT)
        return caught

    wait_for("a finished and a checkpointed running trial", frozen_with_a_checkpointed_trial, 120)
    down_at = time.monotonic()
    own_postgres.stop()
    for w in workers:
        w.signal(signal.SIGCONT)
    try:
        codes = [w.wait(timeout=60) for w in workers]
        gone_after = time.monotonic() - down_at
    finally:
        own_postgres.start()
    for w, code in zip(workers, codes, strict=True):
        text = w.text()
        assert code == 1, text
        assert "error: the storage has been unreachable for" in text, text
        assert f"(limit {limit:.0f} s), giving up" in text
    assert gone_after < limit + 20, f"workers took {gone_after:.0f} s to give up"

    # once the database is back, a new worker (in this process) reaps what the others left
    # RUNNING, resumes it and finishes the study
    env["TUNE_STORAGE_DOWN_LIMIT"] = "60"
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    log: list[str] = []
    assert work_here(url, tmp_path, env, log).stopped_because == "budget", log
    assert any("resuming from its checkpoint" in line for line in log), log
    all_trials = trials(url)
    assert finished(all_trials) == 6, states(all_trials)
    assert not [t for t in all_trials if t.state in (TrialState.RUNNING, TrialState.WAITING)]
    print(f"\nstayed down: both workers exited (status 1) {gone_after:.1f} s after the stop")


def test_a_study_survives_random_database_outages_and_kills(
    own_postgres: OwnPostgres, tmp_path: Path
) -> None:
    # the chaos supervisor (tests/search/chaos.py) with its disruptions split between SIGKILLs
    # and stops of this module's server at random instants, for 0.3 to 3 s each
    seed = int(os.environ.get("TUNE_CHAOS_SEED", int.from_bytes(os.urandom(2))))
    plan = ChaosPlan(seed=seed, kills=3, failpoint_deaths=2, outages=4, time_limit=240)

    def outage(seconds: float) -> None:
        own_postgres.stop()
        time.sleep(seconds)
        own_postgres.start()

    run = run_chaos(own_postgres.new_database(), tmp_path, plan, outage)
    print(f"\noutage chaos (seed {seed}): {run.summary()}")
    check_study(run, plan.n_trials)
    assert run.outages, run.summary()  # the outages really happened


def _refused() -> sa.exc.OperationalError:
    """A real driver error: a connection to a port nobody listens on."""
    engine = sa.create_engine(f"postgresql+psycopg2://postgres@127.0.0.1:{free_port()}/x")
    try:
        engine.connect()
    except sa.exc.OperationalError as exc:
        return exc
    finally:
        engine.dispose()
    raise AssertionError("a closed port accepted a connection")


def test_retry_while_down_retries_connection_errors_only_and_gives_up() -> None:
    refused = _refused()
    assert is_connection_error(refused) and not is_connection_error(ValueError("bad"))
    calls: list[int] = []

    def flaky() -> str:
        calls.append(1)
        if len(calls) < 3:
            raise refused
        return "ok"

    slept: list[float] = []
    assert retry_while_down(flaky, limit=60, sleep=slept.append) == "ok"
    assert slept == [0.5, 1.0]  # backoff

    def down() -> None:
        raise refused

    with pytest.raises(StorageDown, match=r"unreachable for \d+ s \(limit 0 s\).*refused"):
        retry_while_down(down, limit=0.2, sleep=time.sleep)

    def broken() -> None:
        calls.append(1)
        raise ValueError("not a connection problem")

    calls.clear()
    with pytest.raises(ValueError, match="not a connection problem"):
        retry_while_down(broken, limit=60)
    assert len(calls) == 1


def test_storage_settings_come_from_the_environment_and_are_checked() -> None:
    env = {"TUNE_HEARTBEAT_INTERVAL": "1", "TUNE_GRACE_PERIOD": "3", "TUNE_MAX_RETRY": "0"}
    settings = StorageSettings.from_env({**env, "TUNE_STORAGE_DOWN_LIMIT": "4.5"})
    assert (settings.heartbeat_interval, settings.grace_period, settings.max_retry) == (1, 3, 0)
    assert settings.storage_down_limit == 4.5
    assert StorageSettings.from_env({}) == StorageSettings()
    with pytest.raises(ValueError, match=r"grace_period must be an integer > heartbeat_interval"):
        StorageSettings.from_env({**env, "TUNE_GRACE_PERIOD": "1"})
    with pytest.raises(ValueError, match=r"\$TUNE_MAX_RETRY must be a number, but got"):
        StorageSettings.from_env({"TUNE_MAX_RETRY": "two"})


def test_a_server_that_says_no_is_not_an_outage(own_postgres: OwnPostgres) -> None:
    # a database that does not exist: the server answered, so a worker fails at once instead of
    # retrying for storage_down_limit seconds
    url = own_postgres.admin_url.rsplit("/", 1)[0] + "/tune_no_such_database"
    engine = sa.create_engine(url)
    try:
        with pytest.raises(sa.exc.OperationalError) as caught:
            engine.connect()
    finally:
        engine.dispose()
    assert not is_connection_error(caught.value)
    assert is_connection_error(_refused())
