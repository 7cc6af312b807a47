"""`tune proxy` in front of PostgreSQL: workers on `grpc://` run a study through it.

One real proxy subprocess (heartbeat 1 s, grace 3 s, see `reliability_support`) on a free port,
one real worker subprocess and one in-process worker behind it. The proxy is restarted while the
first worker trains (the worker rides it out), then that worker is SIGKILLed: the proxy's reaper
fails its trial, and the in-process worker takes the retry, resumes it from its checkpoint and
spends the budget. The pure parts (URLs, leases) are checked without a server.
"""

from __future__ import annotations

import signal
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from optuna.trial import FrozenTrial, TrialState

from search.bookkeeping import trial_record
from search.bookkeeping.proxy import is_proxy_url, parse_proxy_url
from search.bookkeeping.proxy_control import Leases
from search.bookkeeping.storage import StorageError, open_storage
from tests.search.reliability_support import (
    GRACE,
    Proxy,
    Worker,
    fast_env,
    finished,
    free_port,
    make_study,
    running_of,
    start_worker,
    states,
    trials,
    wait_for,
    work_here,
)


def test_proxy_urls_and_leases() -> None:
    assert is_proxy_url("grpc://h:13000") and not is_proxy_url("postgresql://h/db")
    assert is_proxy_url("grpcs://h:13000")
    assert parse_proxy_url("grpc://10.0.0.5:13000") == ("10.0.0.5", 13000, False)
    assert parse_proxy_url("grpcs://proxy.lan:13000") == ("proxy.lan", 13000, True)
    assert parse_proxy_url("grpc://[::1]:9") == ("::1", 9, False)
    with pytest.raises(StorageError, match="not a proxy URL"):
        parse_proxy_url("grpc://host")
    for url in ("grpc://127.0.0.1:13000", "grpcs://127.0.0.1:13000"):
        with pytest.raises(StorageError, match="only workers use"):
            open_storage(url)
    leases = Leases(lease=0.2)
    assert leases.take(1, "a") and not leases.take(1, "b") and leases.take(2, "b")
    leases.give_back(1, "b")  # not b's to give back
    assert not leases.take(1, "b")
    time.sleep(0.25)  # a holder that died: its lease lapses
    assert leases.take(1, "b")


@pytest.fixture
def cleanup() -> Iterator[list[Worker | Proxy]]:
    started: list[Worker | Proxy] = []
    yield started
    for thing in started:
        thing.stop()
        print(f"--- {thing.log.name}\n{thing.text()[-3000:]}")  # shown when the test fails


@pytest.mark.postgres
@pytest.mark.slow
def test_workers_behind_the_proxy_survive_a_restart_and_a_killed_worker_is_resumed(
    pg_url: str, tmp_path: Path, cleanup: list[Worker | Proxy], monkeypatch: pytest.MonkeyPatch
) -> None:
    make_study(pg_url, n_trials=2, epochs=8)
    env = fast_env(tmp_path, FAKE_STEP_SECONDS="0.4")
    port = free_port()
    grpc_url = f"grpc://127.0.0.1:{port}"
    proxy = Proxy(pg_url, port, env, tmp_path / "proxy.log").start()
    cleanup.append(proxy)
    victim = start_worker(grpc_url, tmp_path, env, "victim")
    cleanup.append(victim)
    doomed = wait_for("the victim's trial", lambda: running_of(pg_url, victim), 90)

    def checkpoint_at(step: int) -> Callable[[], FrozenTrial | None]:
        def check() -> FrozenTrial | None:
            t = next(t for t in trials(pg_url) if t.number == doomed.number)
            mark = trial_record.read_checkpoint(t)
            return t if mark is not None and mark[1] >= step else None

        return check

    wait_for("a first evaluation of the victim's trial", checkpoint_at(1), 60, every=0.1)
    # a restarted proxy, mid-trial: the worker's writes fail meanwhile, and it retries them
    proxy.stop()
    proxy.start()  # on the same port, a few seconds later (a Python start-up)
    wait_for("the victim's trial to go on", checkpoint_at(3), 60, every=0.1)
    killed_at = victim.signal(signal.SIGKILL)
    victim.wait()

    def failed() -> FrozenTrial | None:
        t = next(t for t in trials(pg_url) if t.number == doomed.number)
        return t if t.state == TrialState.FAIL else None

    dead = wait_for("the proxy to reap the killed trial", failed, 6 * GRACE, 0.1)
    reaped_after = time.monotonic() - killed_at
    mark = trial_record.read_checkpoint(dead)
    assert mark is not None

    # a second worker behind the proxy takes the retry and resumes it
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    log: list[str] = []
    stats = work_here(grpc_url, tmp_path, env, log)
    assert stats.stopped_because == "budget", log
    all_trials = trials(pg_url)
    assert finished(all_trials) == 2, states(all_trials)  # the budget held through the proxy
    assert not [t for t in all_trials if t.state in (TrialState.RUNNING, TrialState.WAITING)]
    retry = next(t for t in all_trials if trial_record.read_retry_of(t) == dead.number)
    assert retry.state == TrialState.COMPLETE and retry.params == dead.params
    assert trial_record.read_resumed_step(retry) == mark[1]
    assert [p["eval"]["epoch"] for p in trial_record.read_curve(retry)] == list(range(1, 9))
    assert "is unreachable, retrying" in victim.text(), victim.text()
    # only the killed trial was reaped: the restart did not cost the live one its trial
    assert [t.number for t in all_trials if trial_record.read_retry_of(t) is not None] == [
        retry.number
    ]
    assert "lost its worker (no heartbeat)" in proxy.text(), proxy.text()
    print(f"reaped {reaped_after:.1f} s after the kill")
