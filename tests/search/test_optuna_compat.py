"""Each Optuna private name tune uses (`search/bookkeeping/optuna_compat.py`) still means what tune
needs, and the stale-trial rule that also reaps trials that never beat. Both back ends; on
PostgreSQL also with a session time zone other than UTC, where heartbeats and start times are stored
in different zones."""

from __future__ import annotations

import datetime as dt
import subprocess
import sys
import warnings
from collections.abc import Iterator
from pathlib import Path

import optuna
import pytest
import sqlalchemy as sa
from optuna.storages import RetryHeartbeatStaleTrialCallback
from optuna.trial import TrialState

from search.bookkeeping import optuna_compat
from search.bookkeeping.optuna_compat import (
    HeartbeatRDBStorage,
    TrialHeartbeatModel,
    TrialModel,
    record_heartbeat,
    running_trials,
    stale_trial_ids,
    study_storage,
    trial_id,
)
from search.bookkeeping.storage import count_states, session
from search.control.reaper import reap_stale_trials

GRACE = 3


def _storage(url: str, timezone: str | None = None) -> HeartbeatRDBStorage:
    kwargs = {"connect_args": {"options": f"-c timezone={timezone}"}} if timezone else {}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        return HeartbeatRDBStorage(
            url,
            engine_kwargs=kwargs,
            heartbeat_interval=1,
            grace_period=GRACE,
            heartbeat_stale_trial_callback=RetryHeartbeatStaleTrialCallback(max_retry=3),
        )


@pytest.fixture(params=["sqlite", "postgres", "postgres-seoul"])
def storage(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[HeartbeatRDBStorage]:
    if request.param == "sqlite":
        yield _storage(f"sqlite:///{tmp_path / 'c.db'}")
        return
    url = request.getfixturevalue("pg_url")
    # a zone far from UTC: heartbeats are local to the session's zone, start times UTC
    rdb = _storage(url, "Asia/Seoul" if request.param == "postgres-seoul" else None)
    yield rdb
    rdb.engine.dispose()


def _study(storage: HeartbeatRDBStorage) -> optuna.Study:
    return optuna.create_study(storage=storage, study_name="compat")


def _ask_quietly(study: optuna.Study) -> optuna.Trial:
    # outside optimize(), as a worker that dies before its first beat leaves it: RUNNING, silent
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # "Heartbeat ... used with Study.optimize"
        return study.ask()


def _age_start(storage: HeartbeatRDBStorage, tid: int, seconds: float) -> None:
    with session(storage) as s:
        trial = s.get(TrialModel, tid)
        assert trial is not None
        trial._datetime_start_utc = trial._datetime_start_utc - dt.timedelta(seconds=seconds)


def _age_heartbeat(storage: HeartbeatRDBStorage, tid: int, seconds: float) -> None:
    with session(storage) as s:
        beat = s.scalars(sa.select(TrialHeartbeatModel).filter_by(trial_id=tid)).one()
        beat.heartbeat = beat.heartbeat - dt.timedelta(seconds=seconds)


def test_trial_id_and_study_storage_name_the_trial_in_the_storage(
    storage: HeartbeatRDBStorage,
) -> None:
    study = _study(storage)
    study.enqueue_trial({"x": 1.0})
    trial = _ask_quietly(study)
    assert study_storage(study).get_trial(trial_id(trial)).number == trial.number
    frozen = study.get_trials()[0]
    assert trial_id(frozen) == trial_id(trial)
    assert count_states(storage, study._study_id).running == 1  # TrialModel counts in SQL


def test_running_trials_ages_are_on_the_databases_clock(storage: HeartbeatRDBStorage) -> None:
    study = _study(storage)
    trial = _ask_quietly(study)
    (silent,) = running_trials(storage, study._study_id)
    assert (silent.number, silent.heartbeat_ago) == (trial.number, None)
    assert -2 < silent.started_ago < 5, silent  # a zone mix-up would be hours off

    record_heartbeat(study, trial_id(trial))
    (beating,) = running_trials(storage, study._study_id)
    assert beating.heartbeat_ago is not None and -2 < beating.heartbeat_ago < 5, beating
    record_heartbeat(study, trial_id(trial))  # the second beat updates the same row
    assert len(running_trials(storage, study._study_id)) == 1


def test_a_trial_that_never_beat_is_stale_after_the_grace_period(
    storage: HeartbeatRDBStorage,
) -> None:
    study = _study(storage)
    study.enqueue_trial({"x": 0.25})
    silent_old = _ask_quietly(study)
    silent_old.suggest_float("x", 0, 1)
    silent_new = _ask_quietly(study)
    beating = _ask_quietly(study)
    beating_late = _ask_quietly(study)
    for t in (beating, beating_late):
        record_heartbeat(study, trial_id(t))
    _age_start(storage, trial_id(silent_old), GRACE + 60)
    _age_heartbeat(storage, trial_id(beating_late), GRACE + 60)
    # Optuna's own rule would find only `beating_late`
    stale = stale_trial_ids(storage, study._study_id)
    assert sorted(stale) == sorted([trial_id(silent_old), trial_id(beating_late)])

    # Optuna's own reaping (what `study.optimize` runs before each ask) leaves them to tune ...
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        optuna.storages.fail_stale_trials(study)
    assert len(study.get_trials(states=(TrialState.RUNNING,))) == 4
    # ... whose reaper fails both and enqueues their retries, the silent one with its parameters
    reap_stale_trials(study, storage)
    by_number = {t.number: t for t in study.get_trials()}
    assert by_number[silent_old.number].state == TrialState.FAIL
    assert by_number[beating_late.number].state == TrialState.FAIL
    assert by_number[silent_new.number].state == TrialState.RUNNING
    waiting = study.get_trials(states=(TrialState.WAITING,))
    assert len(waiting) == 2
    retry = next(t for t in waiting if t.system_attrs.get("failed_trial") == silent_old.number)
    assert retry.params == {"x": 0.25}


def test_the_storage_tune_opens_uses_the_rule(tmp_path: Path) -> None:
    from search.bookkeeping.storage import open_storage

    rdb = open_storage(f"sqlite:///{tmp_path / 't.db'}", create_schema=True)
    assert isinstance(rdb, HeartbeatRDBStorage)
    # the override must still override something: renamed upstream, it would never be called
    assert callable(getattr(optuna.storages.RDBStorage, "_get_stale_trial_ids", None))
    assert hasattr(optuna_compat.TrialModel, "_datetime_start_utc")


def test_cached_storage_is_what_get_storage_puts_in_front_of_an_rdb_storage(
    tmp_path: Path,
) -> None:
    rdb = _storage(f"sqlite:///{tmp_path / 'c.db'}")
    assert type(optuna.storages.get_storage(rdb)) is optuna_compat.CachedStorage


def test_rdb_backend_is_the_storage_behind_a_studys_cache(tmp_path: Path) -> None:
    rdb = _storage(f"sqlite:///{tmp_path / 'b.db'}")
    assert optuna_compat.rdb_backend(optuna.create_study(storage=rdb)) is rdb
    assert optuna_compat.rdb_backend(optuna.create_study()) is None  # in memory


def test_the_report_imports_optunas_plotly_views_without_matplotlib() -> None:
    # a fresh interpreter: in this one another test may have imported matplotlib already
    code = (
        "import sys; import search.report.views as v; "
        "assert 'matplotlib' not in sys.modules, 'matplotlib imported'; "
        "assert v.ov.plot_slice is not None; "
        "import importlib, importlib.util; "
        "print(importlib.util.find_spec('matplotlib') is None "
        "or importlib.import_module('matplotlib').__name__)"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() in (
        "matplotlib",
        "True",
    )  # imports as usual afterwards, if installed


def test_every_override_still_matches_what_optuna_calls() -> None:
    """Renamed or re-signed upstream, an override would silently never be called (or fail at
    the first call in a worker): each one is checked against Optuna's own method here."""
    import inspect

    from optuna.storages import GrpcStorageProxy, RDBStorage

    for cls, name in (
        (RDBStorage, "_get_stale_trial_ids"),
        (RDBStorage, "_get_trials"),
        (GrpcStorageProxy, "_setup"),
    ):
        theirs = getattr(cls, name, None)
        assert callable(theirs), f"{cls.__name__}.{name} is gone"
    ours = {
        "_get_stale_trial_ids": HeartbeatRDBStorage._get_stale_trial_ids,
        "_get_trials": HeartbeatRDBStorage._get_trials,
        "_setup": optuna_compat.ChannelGrpcStorageProxy._setup,
    }
    for name, method in ours.items():
        cls = GrpcStorageProxy if name == "_setup" else RDBStorage
        assert list(inspect.signature(method).parameters) == list(
            inspect.signature(getattr(cls, name)).parameters
        ), name
    # what Optuna's proxy client reads after `_setup`, which the override must set
    setup = inspect.getsource(GrpcStorageProxy._setup)
    assert "self._stub" in setup and "self._cache" in setup and "self._channel" in setup


def test_optunas_storage_service_serves_from_a_server_and_channel_of_our_own() -> None:
    """`add_storage_service` and `ChannelGrpcStorageProxy` reach Optuna's generated servicer
    and stub: a study made through them is the storage's own."""
    from concurrent.futures import ThreadPoolExecutor

    import grpc

    from search.bookkeeping.optuna_compat import ChannelGrpcStorageProxy, add_storage_service

    storage = optuna.storages.InMemoryStorage()
    server = grpc.server(ThreadPoolExecutor(2))
    add_storage_service(server, storage)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    try:
        client = ChannelGrpcStorageProxy(lambda: grpc.insecure_channel(f"127.0.0.1:{port}"))
        study = optuna.create_study(storage=client, study_name="through-our-server")
        study.set_user_attr("k", 1)
        assert storage.get_study_user_attrs(storage.get_study_id_from_name(study.study_name)) == {
            "k": 1
        }
        client.close()
    finally:
        server.stop(None)


def test_a_benchmark_can_write_optunas_tables() -> None:
    """`RDB_MODELS` holds the tables `bench/control_plane.py` writes."""
    from search.bookkeeping.optuna_compat import RDB_MODELS

    for name in ("TrialModel", "TrialParamModel", "TrialValueModel", "TrialUserAttributeModel"):
        assert hasattr(RDB_MODELS, name), name
    assert RDB_MODELS.TrialValueModel.TrialValueType.FINITE is not None
