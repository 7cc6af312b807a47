"""Trial starts that scale: workers start trials without queueing at one lock, and the
study-wide budget still holds.

While the budget is far from spent, a worker holds the study lock *shared*, counts the other
starters holding it and starts when the budget leaves room for all of them
(`budget.decide(racing=)`); near the end it takes the lock exclusively as before
(`search/running/worker.py`). Checked here: the lock's two modes on PostgreSQL and in the proxy, the
budget's room for racers, and 16 worker processes racing for the last 3 trials of a budget on
PostgreSQL and through `tune proxy`, with no trial too many.
"""

from __future__ import annotations

import dataclasses
import multiprocessing as mp
import threading
import time
from pathlib import Path
from typing import Any

import pytest
from optuna.trial import TrialState

from search.bookkeeping.budget import BudgetUse, decide
from search.bookkeeping.proxy_control import Leases
from search.bookkeeping.storage import StorageSettings, open_storage
from search.bookkeeping.study_lock import StudyLock
from tests.search.reliability_support import Proxy, fast_env, free_port, make_study, trials
from tests.search.test_budget import SPEC

WORKERS = 16
N_TRIALS = WORKERS + 3  # a first round of 16, then 16 workers race for the last 3


def test_the_budget_leaves_room_for_every_racing_starter() -> None:
    # 30 epochs; 12-epoch trials with a first rung at epoch 2, baselines of 4 epochs
    assert decide(SPEC, BudgetUse(finished=1, epochs_spent=28))[0] == "start"  # a first rung
    # any starter may get a baseline: each racer, and this worker, counts 4 epochs
    alone = BudgetUse(finished=1, epochs_spent=18)  # 12 free
    assert decide(SPEC, alone, racing=2)[0] == "start"  # three starters of 4 epochs
    assert decide(SPEC, alone, racing=3)[0] == "wait"  # four would not fit: one at a time then
    assert decide(SPEC, BudgetUse(finished=1, epochs_spent=28), racing=1)[0] == "wait"
    # a waiting retry always starts, but only for a starter that races nobody
    retry = BudgetUse(finished=1, epochs_spent=30, running=1, retries_waiting=1)
    assert decide(SPEC, retry)[0] == "start"
    assert decide(SPEC, retry, racing=1)[0] == "wait"
    # a trial budget: finished + running + racers
    counted = dataclasses.replace(SPEC, budget=dataclasses.replace(SPEC.budget, n_trials=5))
    assert decide(counted, BudgetUse(finished=2, running=1), racing=1)[0] == "start"
    assert decide(counted, BudgetUse(finished=2, running=1), racing=2)[0] == "wait"


@pytest.mark.postgres
def test_the_study_lock_is_shared_by_starters_and_exclusive_for_everyone_else(
    pg_url: str,
) -> None:
    storage = open_storage(pg_url, create_schema=True, settings=StorageSettings())
    sid = 7  # any study id: the lock is an advisory key, no row
    assert StudyLock.shares(storage)
    first = StudyLock(storage, sid, shared=True).acquire()
    second = StudyLock(storage, sid, shared=True).acquire()  # does not wait
    assert first.holders() == second.holders() == 2
    order: list[str] = []

    def take(name: str, shared: bool) -> None:
        with StudyLock(storage, sid, shared=shared):
            order.append(name)
            time.sleep(0.2)

    exclusive = threading.Thread(target=take, args=("exclusive", False))
    exclusive.start()
    time.sleep(0.5)
    late = threading.Thread(target=take, args=("late starter", True))
    late.start()  # queued behind the exclusive taker, which waits for the two holders
    time.sleep(0.5)
    assert order == []
    first.release()
    second.release()
    exclusive.join(10)
    late.join(10)
    assert order == ["exclusive", "late starter"]
    storage.engine.dispose()


def test_proxy_leases_are_shared_or_exclusive() -> None:
    leases = Leases(lease=5.0, writer_first=0.3)
    assert leases.take(1, "a", shared=True) and leases.take(1, "b", shared=True)
    assert leases.sharers(1) == 2
    assert not leases.take(1, "reaper")  # exclusive: refused while starters hold it ...
    assert not leases.take(1, "c", shared=True)  # ... and new starters wait behind it
    leases.give_back(1, "a")
    leases.give_back(1, "b")
    assert leases.take(1, "reaper") and leases.sharers(1) == 0
    assert not leases.take(1, "c", shared=True)
    leases.give_back(1, "reaper")
    assert leases.take(1, "c", shared=True)
    time.sleep(0.35)  # the exclusive taker's head start lapses when it stops trying
    lapsing = Leases(lease=0.2)
    assert lapsing.take(2, "dead", shared=True)
    time.sleep(0.25)  # a starter that died holding its lease
    assert lapsing.sharers(2) == 0 and lapsing.take(2, "reaper")


def _race_worker(url: str, index: int, folder: str, results: Any, go: Any) -> None:
    """One of the racing workers (a process of the forkserver): run the real worker loop."""
    from search.running.worker import WorkerOptions, run_worker
    from search.trainers.builtin import TuneTrainer
    from tests.search import fake_trainer

    go.wait(60)
    options = WorkerOptions(
        worker_index=index,
        threads=1,
        runs_dir=Path(folder) / "runs",
        artifacts=Path(folder) / "artifacts",
        poll_interval=0.1,
        handle_signals=False,
        log=lambda line: None,
    )
    stats = run_worker("smoke", url, options, trainer=TuneTrainer(fake_trainer.fit))
    results.put((index, stats.stopped_because, stats.trials.started_racing))


def _race(url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> list[tuple[Any, ...]]:
    # short heartbeats as in the reliability tests; 2-epoch trials of 0.6 s that overlap
    for key, value in fast_env(tmp_path, FAKE_STEP_SECONDS="0.3", FAKE_CHECKPOINT="0").items():
        monkeypatch.setenv(key, value)
    context = mp.get_context("forkserver")
    context.set_forkserver_preload(["search.running.worker", "tests.search.fake_trainer"])
    results, go = context.Queue(), context.Event()
    procs = [
        context.Process(target=_race_worker, args=(url, i, str(tmp_path), results, go))
        for i in range(WORKERS)
    ]
    for p in procs:
        p.start()
    go.set()
    for p in procs:
        p.join(180)
    assert [p.exitcode for p in procs] == [0] * WORKERS
    return [results.get(timeout=5) for _ in procs]


@pytest.mark.postgres
@pytest.mark.slow
@pytest.mark.parametrize("through", ["postgresql", "proxy"])
def test_sixteen_workers_racing_for_the_last_three_trials_take_exactly_three(
    through: str, pg_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    make_study(pg_url, n_trials=N_TRIALS, epochs=2)
    url, proxy = pg_url, None
    if through == "proxy":
        port = free_port()
        proxy = Proxy(pg_url, port, fast_env(tmp_path), tmp_path / "proxy.log").start()
        url = f"grpc://127.0.0.1:{port}"
    try:
        results = _race(url, tmp_path, monkeypatch)
    finally:
        if proxy is not None:
            proxy.stop()
    done = trials(pg_url)
    assert len(done) == N_TRIALS, [t.state for t in done]  # not one trial too many
    assert {t.state for t in done} <= {TrialState.COMPLETE, TrialState.PRUNED}
    assert {why for _, why, _ in results} == {"budget"}
    racing = sum(n for _, _, n in results)
    assert racing > 0  # the race was run without the exclusive lock, not only through it
    print(f"{racing} of {N_TRIALS} trials started racing, through {through}")
