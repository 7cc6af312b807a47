"""The database goes away under running workers: a PostgreSQL server of the test's own.

The module starts its own server (`initdb`/`pg_ctl` of the installed PostgreSQL, run as the
`postgres` user when the tests run as root, since PostgreSQL refuses root) on a free port in a
temporary folder, so that it can restart and stop it without disturbing the shared one. The
workers are real `tune worker` processes with the fake trainer (checkpoints on).
"""

from __future__ import annotations

import contextlib
import os
import pwd
import shutil
import signal
import socket
import subprocess
import tempfile
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import sqlalchemy as sa
from optuna.trial import TrialState

from search import trial_record
from search.outage import is_connection_error, retry_while_down
from search.storage import StorageDown, StorageSettings
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


def _pg_bin() -> Path | None:
    found = sorted(Path("/usr/lib/postgresql").glob("*/bin/pg_ctl"))
    if found:
        return found[-1].parent
    on_path = shutil.which("pg_ctl")
    return Path(on_path).parent if on_path else None


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class OwnPostgres:
    """A PostgreSQL server this module started (and may stop and start again)."""

    bin: Path
    base: Path
    port: int
    as_postgres: list[str]

    @property
    def admin_url(self) -> str:
        return f"postgresql+psycopg2://postgres@127.0.0.1:{self.port}/postgres"

    def pg_ctl(self, *args: str) -> None:
        cmd = [*self.as_postgres, str(self.bin / "pg_ctl"), "-D", str(self.base / "data"), "-w"]
        subprocess.run([*cmd, *args], check=True, capture_output=True, timeout=60)

    def start(self) -> None:
        options = f"-p {self.port} -k {self.base} -c listen_addresses=127.0.0.1 -c fsync=off"
        self.pg_ctl("-l", str(self.base / "server.log"), "-o", options, "start")

    def stop(self) -> None:
        self.pg_ctl("-m", "fast", "stop")  # closes every client connection, as a restart does

    def new_database(self) -> str:
        name = f"tune_test_{uuid.uuid4().hex[:12]}"
        engine = sa.create_engine(self.admin_url, isolation_level="AUTOCOMMIT")
        try:
            with engine.connect() as conn:
                conn.execute(sa.text(f'CREATE DATABASE "{name}"'))
        finally:
            engine.dispose()
        return self.admin_url.rsplit("/", 1)[0] + f"/{name}"


@pytest.fixture(scope="module")
def own_postgres() -> Iterator[OwnPostgres]:
    pg_bin = _pg_bin()
    if pg_bin is None:
        message = "no PostgreSQL server binaries (initdb, pg_ctl) are installed"
        if os.environ.get("TUNE_REQUIRE_POSTGRES") == "1":
            pytest.fail(message + " (TUNE_REQUIRE_POSTGRES=1)")
        pytest.skip(message)
    # PostgreSQL refuses to run as root; its folder must belong to the user that runs it
    as_postgres = ["runuser", "-u", "postgres", "--"] if os.geteuid() == 0 else []
    base = Path(tempfile.mkdtemp(prefix="tune-pg-"))
    if as_postgres:
        user = pwd.getpwnam("postgres")
        os.chown(base, user.pw_uid, user.pw_gid)
    server = OwnPostgres(pg_bin, base, _free_port(), as_postgres)
    try:
        subprocess.run(
            [*as_postgres, str(pg_bin / "initdb"), "-D", str(base / "data"), "-U", "postgres",
             "-A", "trust", "--no-sync", "-E", "UTF8"],
            check=True, capture_output=True, timeout=120,
        )  # fmt: skip
        server.start()
        yield server
    finally:
        with contextlib.suppress(subprocess.CalledProcessError):  # not running: a test failed
            server.pg_ctl("-m", "immediate", "stop")
        shutil.rmtree(base, ignore_errors=True)


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


def _refused() -> sa.exc.OperationalError:
    """A real driver error: a connection to a port nobody listens on."""
    engine = sa.create_engine(f"postgresql+psycopg2://postgres@127.0.0.1:{_free_port()}/x")
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
