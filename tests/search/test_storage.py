"""The storage layer: URLs and masking, clear errors, schema creation, counting, the study lock."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import optuna
import pytest
import sqlalchemy

from search.bookkeeping.storage import (
    DEFAULT_URL,
    ENV_VAR,
    StorageError,
    count_states,
    load_study,
    mask_text,
    mask_url,
    open_storage,
    resolve_url,
    session,
)
from search.bookkeeping.study_lock import StudyLock


@pytest.mark.parametrize(
    ("url", "masked"),
    [
        (
            "postgresql+psycopg2://tune:s3cr3t@db:5432/tune",
            "postgresql+psycopg2://tune:***@db:5432/tune",
        ),
        ("postgresql://u:p%40ss@h/db?sslmode=require", "postgresql://u:***@h/db?sslmode=require"),
        ("postgresql://h/db?user=u&password=hunter2", "postgresql://h/db?password=***&user=u"),
        (  # certificate paths as written; an encoded `&` in a password masked with the rest
            "postgresql://h/db?password=x%26y&sslmode=verify-full&sslrootcert=/etc/ssl/ca.pem",
            "postgresql://h/db?password=***&sslmode=verify-full&sslrootcert=/etc/ssl/ca.pem",
        ),
        ("sqlite:///tune.db", "sqlite:///tune.db"),
        ("not a url://a:b@c", "not a url://a:***@c"),
    ],
)
def test_mask_url_hides_passwords(url: str, masked: str) -> None:
    assert mask_url(url) == masked


def test_mask_text_hides_passwords_inside_messages() -> None:
    text = "could not connect to postgresql://tune:s3cr3t@db/x (password=hunter2)"
    shown = mask_text(text)
    assert "s3cr3t" not in shown and "hunter2" not in shown
    assert "postgresql://tune:***@db/x" in shown


def test_url_comes_from_option_then_environment_then_default(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv(ENV_VAR, raising=False)
    assert resolve_url(None) == DEFAULT_URL == "sqlite:///tune.db"
    monkeypatch.setenv(ENV_VAR, "sqlite:///env.db")
    assert resolve_url(None) == "sqlite:///env.db"
    assert resolve_url("sqlite:///opt.db") == "sqlite:///opt.db"


def test_default_storage_is_a_file_in_the_working_folder(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv(ENV_VAR, raising=False)
    storage = open_storage(create_schema=True)
    optuna.create_study(storage=storage, study_name="s")
    assert (tmp_path / "tune.db").is_file()


def test_unreachable_server_is_one_masked_line() -> None:
    url = "postgresql+psycopg2://tune:s3cr3t@127.0.0.1:9/tune"  # port 9: nothing listens
    with pytest.raises(StorageError) as caught:
        open_storage(url)
    text = str(caught.value)
    assert text.startswith(
        "cannot open the storage postgresql+psycopg2://tune:***@127.0.0.1:9/tune"
    )
    assert "s3cr3t" not in text and "\n" not in text


def test_malformed_url_is_named() -> None:
    with pytest.raises(StorageError, match=r"not a database URL: tune\.db"):
        open_storage("tune.db")


def test_missing_sqlite_file_is_an_error_and_creates_nothing(tmp_path: Path) -> None:
    path = tmp_path / "none.db"
    with pytest.raises(StorageError, match=r"no study database at sqlite:///.*none\.db"):
        open_storage(f"sqlite:///{path}")
    assert not path.exists()


def test_a_database_without_schema_says_how_to_create_it(pg_url: str) -> None:
    with pytest.raises(StorageError, match=r"holds no Optuna study yet.*tune launch"):
        open_storage(pg_url)


def test_unknown_study_names_the_existing_ones(pg_url: str) -> None:
    storage = open_storage(pg_url, create_schema=True)
    optuna.create_study(storage=storage, study_name="alpha")
    with pytest.raises(StorageError, match=r"no study named 'beta'.*studies there: alpha"):
        load_study(open_storage(pg_url), "beta")


def test_postgres_storage_has_small_pool_pre_ping_and_heartbeats(pg_url: str) -> None:
    storage = open_storage(pg_url, create_schema=True)
    pool = storage.engine.pool
    assert isinstance(pool, sqlalchemy.pool.QueuePool) and pool.size() == 2
    assert pool._pre_ping
    assert storage.heartbeat_interval == 10 and storage.grace_period == 30
    assert isinstance(
        storage.heartbeat_stale_trial_callback, optuna.storages.RetryHeartbeatStaleTrialCallback
    )


def test_count_states_counts_in_the_database(pg_url: str) -> None:
    storage = open_storage(pg_url, create_schema=True)
    study = optuna.create_study(storage=storage, study_name="c")
    study.enqueue_trial({"x": 1.0})
    for value in (1.0, 2.0):
        trial = study.ask()
        study.tell(trial, value)
    study.tell(study.ask(), state=optuna.trial.TrialState.PRUNED)
    study.tell(study.ask(), state=optuna.trial.TrialState.FAIL)
    study.ask()  # left running
    study.enqueue_trial({"x": 2.0})
    counts = count_states(storage, study._study_id)
    assert (counts.complete, counts.pruned, counts.fail, counts.running, counts.waiting) == (
        2,
        1,
        1,
        1,
        1,
    )
    assert counts.finished == 3
    with session(storage) as s:  # the session helper commits and closes
        assert s.execute(optuna.storages._rdb.models.TrialModel.__table__.select()).all()


@pytest.mark.parametrize("backend", ["postgres", "sqlite"])
def test_study_lock_excludes_other_holders(backend: str, pg_url: str, tmp_path: Path) -> None:
    url = pg_url if backend == "postgres" else f"sqlite:///{tmp_path / 'l.db'}"
    storage = open_storage(url, create_schema=True)
    other = open_storage(url)  # another process would have its own engine
    study_id = optuna.create_study(storage=storage, study_name="l")._study_id
    events: list[str] = []
    first = StudyLock(storage, study_id).acquire()

    def contend() -> None:
        with StudyLock(other, study_id):
            events.append("second acquired")

    thread = threading.Thread(target=contend)
    thread.start()
    time.sleep(0.5)
    events.append("first releases")
    first.release()
    first.release()  # releasing twice is harmless
    thread.join(timeout=10)
    assert events == ["first releases", "second acquired"]


@pytest.mark.parametrize("backend", ["postgres", "sqlite"])
def test_waiting_for_the_study_lock_says_who_holds_it(
    backend: str, pg_url: str, tmp_path: Path
) -> None:
    url = pg_url if backend == "postgres" else f"sqlite:///{tmp_path / 'w.db'}"
    storage = open_storage(url, create_schema=True)
    other = open_storage(url)
    study_id = optuna.create_study(storage=storage, study_name="w")._study_id
    holder = StudyLock(storage, study_id).acquire()
    said: list[str] = []
    waiter = StudyLock(other, study_id, log=said.append, say_every=0.3)
    thread = threading.Thread(target=waiter.acquire)
    thread.start()
    time.sleep(1.2)
    assert thread.is_alive()  # still excluded while it talks
    holder.release()
    thread.join(timeout=10)
    assert not thread.is_alive()
    waiter.release()
    assert len(said) >= 2, said
    expected = "held by PostgreSQL server process " if backend == "postgres" else "held by another"
    assert all("for the study lock, " + expected in line for line in said), said
    if backend == "postgres":
        assert not said[0].endswith("process None"), said  # the holder was found
        with session(other) as s:  # the lock timeout did not leak into the pooled connection
            assert s.execute(sqlalchemy.text("SHOW lock_timeout")).scalar() == "0"
