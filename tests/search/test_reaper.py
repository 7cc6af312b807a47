"""`reap_stale_trials`: the retry is enqueued before the stale trial fails, both under the study
lock, and a retry that already exists is not enqueued twice."""

from __future__ import annotations

import threading
import time
import warnings
from pathlib import Path

import optuna
import pytest
from optuna.trial import TrialState

from search.bookkeeping.optuna_compat import TrialModel, study_id, trial_id
from search.bookkeeping.storage import StorageSettings, open_storage, session
from search.bookkeeping.study_lock import StudyLock
from search.control.reaper import Reaper, reap_stale_trials


@pytest.fixture(params=["sqlite", "postgres"])
def url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'r.db'}"
    return str(request.getfixturevalue("pg_url"))


def _study_with_a_dead_trial(url: str) -> tuple[optuna.Study, optuna.storages.RDBStorage, int]:
    """A study whose trial 0 lost its worker long ago, before its first heartbeat."""
    settings = StorageSettings(heartbeat_interval=1, grace_period=3, max_retry=5)
    rdb = open_storage(url, create_schema=True, settings=settings)
    study = optuna.create_study(storage=rdb, study_name="r")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # heartbeats outside optimize()
        trial = study.ask()
    trial.suggest_float("x", 0, 1)
    with session(rdb) as s:
        model = s.get(TrialModel, trial_id(trial))
        assert model is not None
        model._datetime_start_utc = model._datetime_start_utc.replace(year=2000)
    return study, rdb, trial.number


def _states(study: optuna.Study) -> list[str]:
    return [t.state.name for t in study.get_trials()]


def test_a_stale_trial_is_retried_once_even_when_a_reaper_died_half_way(url: str) -> None:
    study, rdb, dead = _study_with_a_dead_trial(url)
    # what a reaper killed after enqueueing the retry, before failing the trial, leaves behind
    frozen = study.get_trials()[dead]
    rdb.get_heartbeat_stale_trial_callback()(study, frozen)  # type: ignore[misc]
    assert _states(study) == ["RUNNING", "WAITING"]

    reap_stale_trials(study, rdb)
    assert _states(study) == ["FAIL", "WAITING"]  # failed, and not retried a second time
    reap_stale_trials(study, rdb)  # nothing stale: nothing happens
    assert _states(study) == ["FAIL", "WAITING"]
    waiting = study.get_trials(states=(TrialState.WAITING,))
    assert waiting[0].system_attrs["retry_history"] == [dead]
    assert waiting[0].params == frozen.params  # the same values


def test_reaping_waits_for_the_study_lock(url: str) -> None:
    study, rdb, _ = _study_with_a_dead_trial(url)
    holder = StudyLock(rdb, study_id(study)).acquire()  # a worker counting the budget
    reaper = threading.Thread(target=reap_stale_trials, args=(study, rdb))
    reaper.start()
    time.sleep(0.5)
    assert _states(study) == ["RUNNING"]  # nothing changes while the budget is being counted
    holder.release()
    reaper.join(timeout=10)
    assert _states(study) == ["FAIL", "WAITING"]


def test_a_stopping_reaper_gives_up_waiting_for_the_study_lock(url: str) -> None:
    """A worker that exits stops its reaper; one waiting for the lock (another process holds
    it) must not hold the exit up until the lock is free."""
    study, rdb, _ = _study_with_a_dead_trial(url)
    holder = StudyLock(rdb, study_id(study)).acquire()  # another worker, counting the budget
    try:
        reaper = Reaper(study, rdb, interval=0.1).start()
        time.sleep(0.5)  # it found the dead trial and waits for the lock to reap it
        stopping = time.monotonic()
        reaper.stop()
        assert time.monotonic() - stopping < 2.0
        assert _states(study) == ["RUNNING"]  # it reaped nothing: it gave up
    finally:
        holder.release()
