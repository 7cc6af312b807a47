"""Where studies live: the Optuna RDB storage, opened one way everywhere, plus the little SQL tune
needs of its own (counting trials by state, a study-wide lock), all behind `session()`.

- The URL comes from `--storage`, else `$TUNE_STORAGE`, else `sqlite:///tune.db` in the working
  folder, so the first command works without a server. PostgreSQL
  (`postgresql+psycopg2://user:password@host/db`) is for several processes or machines.
- Heartbeats with `RetryHeartbeatStaleTrialCallback` (they act only inside `study.optimize()`;
  workers also reap in a thread, see `search/control/reaper.py`), connection pre-ping and a small
  pool per process for PostgreSQL, a busy timeout for SQLite. `StorageSettings.from_env()` reads
  short heartbeat settings for tests from `$TUNE_HEARTBEAT_INTERVAL` and friends.
- A database that goes away (restart, network) is retried with backoff for up to
  `storage_down_limit` seconds (`search/bookkeeping/outage.py`); after that `StorageDown` says so.
- The schema is created only by `open_storage(create_schema=True)` (`tune launch`), never by
  workers: many workers creating tables at once fail.
- Passwords never leave this module unmasked: every message that shows a URL uses `mask_url`, and
  error text that may contain one goes through `mask_text`.
"""

from __future__ import annotations

import fcntl
import hashlib
import os
import re
import tempfile
import time
import urllib.parse
import warnings
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

import optuna
import sqlalchemy as sa
from optuna.storages import RDBStorage, RetryHeartbeatStaleTrialCallback
from optuna.trial import FrozenTrial, TrialState
from sqlalchemy import orm

from search.bookkeeping.optuna_compat import (
    ChannelGrpcStorageProxy,
    HeartbeatRDBStorage,
    TrialModel,
)

ENV_VAR = "TUNE_STORAGE"
# the token every call to `tune proxy` carries (`search/bookkeeping/proxy_auth.py`): masked too
PROXY_TOKEN_ENV = "TUNE_PROXY_TOKEN"
DEFAULT_URL = "sqlite:///tune.db"
_LOCK_NAMESPACE = 0x74756E65  # "tune": first key of the PostgreSQL advisory lock
_LOCK_NOT_AVAILABLE = "55P03"  # PostgreSQL: lock_timeout expired
_CREDENTIALS = re.compile(r"(?P<head>[A-Za-z][\w+.-]*://[^:/@\s]*):[^@\s]*@")
_PASSWORD_PARAM = re.compile(r"(?i)(password=)[^&\s'\"]+")
# environment variables read by `StorageSettings.from_env` (tests use seconds, not minutes)
SETTINGS_ENV = {
    "heartbeat_interval": "TUNE_HEARTBEAT_INTERVAL",
    "grace_period": "TUNE_GRACE_PERIOD",
    "max_retry": "TUNE_MAX_RETRY",
    "storage_down_limit": "TUNE_STORAGE_DOWN_LIMIT",
}


class StorageError(RuntimeError):
    """The storage cannot be used; the message is one line with the URL masked."""


class LockAbandoned(RuntimeError):
    """A `StudyLock` wait given up because its waiter stops (`abandon()` said so)."""


class StorageDown(StorageError):
    """The database stayed unreachable for longer than `StorageSettings.storage_down_limit`."""


@dataclass(frozen=True)
class StorageSettings:
    """How a process talks to the storage. Defaults suit trials of minutes on a LAN database."""

    heartbeat_interval: int = 10  # seconds between a running trial's heartbeats
    grace_period: int = 30  # a RUNNING trial without a heartbeat this long is stale (FAIL + retry)
    max_retry: int = 2  # retries of a stale trial (its parameters are enqueued again)
    pool_size: int = 2  # per process: the optimize session and the heartbeat thread
    max_overflow: int = 2  # plus the study lock and a spare
    sqlite_timeout: float = 60.0  # seconds SQLite waits on a locked database
    storage_down_limit: float = 300.0  # seconds a worker retries an unreachable database

    def __post_init__(self) -> None:
        # Optuna takes whole seconds; a grace shorter than the interval would reap live trials
        hb, grace = self.heartbeat_interval, self.grace_period
        if not (isinstance(hb, int) and hb >= 1):
            raise ValueError(f"heartbeat_interval must be an integer >= 1 s, but got {hb=}")
        if not (isinstance(grace, int) and grace > hb):
            raise ValueError(
                f"grace_period must be an integer > heartbeat_interval, but got {grace=}, {hb=}"
            )
        if not (isinstance(self.max_retry, int) and self.max_retry >= 0):
            raise ValueError(f"max_retry must be an integer >= 0, but got {self.max_retry=}")
        if not self.storage_down_limit > 0:
            raise ValueError(
                f"storage_down_limit must be > 0 s, but got {self.storage_down_limit=}"
            )

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> StorageSettings:
        """Defaults, overridden by `$TUNE_HEARTBEAT_INTERVAL`, `$TUNE_GRACE_PERIOD`,
        `$TUNE_MAX_RETRY` and `$TUNE_STORAGE_DOWN_LIMIT` where set (seconds; retries)."""
        environ = os.environ if environ is None else environ
        values: dict[str, Any] = {}
        for field_name, var in SETTINGS_ENV.items():
            raw = environ.get(var, "").strip()
            if not raw:
                continue
            kind = float if field_name == "storage_down_limit" else int
            try:
                values[field_name] = kind(raw)
            except ValueError:
                raise ValueError(f"${var} must be a number, but got {var}={raw!r}") from None
        return cls(**values)


@dataclass(frozen=True)
class StateCounts:
    """Trials of a study by state."""

    complete: int = 0
    pruned: int = 0
    fail: int = 0
    running: int = 0
    waiting: int = 0

    @property
    def finished(self) -> int:
        """What the budget counts: COMPLETE + PRUNED."""
        return self.complete + self.pruned

    @classmethod
    def of(cls, by_state: Mapping[TrialState, int]) -> StateCounts:
        """The counts from trials counted by state (a state missing counts 0)."""
        return cls(
            complete=by_state.get(TrialState.COMPLETE, 0),
            pruned=by_state.get(TrialState.PRUNED, 0),
            fail=by_state.get(TrialState.FAIL, 0),
            running=by_state.get(TrialState.RUNNING, 0),
            waiting=by_state.get(TrialState.WAITING, 0),
        )


def resolve_url(url: str | None = None) -> str:
    """`url`, else `$TUNE_STORAGE`, else the default SQLite file in the working folder."""
    return url or os.environ.get(ENV_VAR) or DEFAULT_URL


def mask_url(url: str) -> str:
    """The URL with its password replaced by `***` (also a `password=` query parameter)."""
    try:
        rendered = sa.engine.make_url(url).render_as_string(hide_password=True)
    except Exception:
        return _PASSWORD_PARAM.sub(r"\1***", _CREDENTIALS.sub(r"\g<head>:***@", url))
    # the query as written (`sslrootcert=/etc/ssl/ca.pem`, not `%2Fetc%2Fssl%2Fca.pem`), its
    # password masked while still encoded (a decoded `&` would end the masked part early)
    head, mark, query = rendered.partition("?")
    return head + mark + urllib.parse.unquote(_PASSWORD_PARAM.sub(r"\1***", query))


def mask_text(text: str) -> str:
    """Any text (an error message, a log line) with the passwords of URLs in it masked, and the
    proxy token of this process's environment."""
    masked = _PASSWORD_PARAM.sub(r"\1***", _CREDENTIALS.sub(r"\g<head>:***@", text))
    token = os.environ.get(PROXY_TOKEN_ENV)
    return masked.replace(token, "***") if token and len(token) >= 8 else masked


def open_storage(
    url: str | None = None,
    *,
    create_schema: bool = False,
    settings: StorageSettings | None = None,
    on_reap: Callable[[str], None] | None = None,
) -> RDBStorage:
    """Open the RDB storage at `url` (see `resolve_url`).

    Only `create_schema=True` (launch) creates tables; otherwise a storage without the Optuna
    schema is an error that says how to create it. Unreachable servers, bad URLs and missing
    drivers become one `StorageError` line with the password masked. `settings` default to
    `StorageSettings.from_env()`; `on_reap` hears one line per stale trial this process reaps.
    """
    url = resolve_url(url)
    settings = settings or StorageSettings.from_env()
    shown = mask_url(url)
    if url.startswith(("grpc://", "grpcs://")):
        raise StorageError(
            f"{shown} is a tune proxy, which only workers use (`tune worker --storage {shown}`); "
            "give this command the database URL the proxy serves"
        )
    try:
        parsed = sa.engine.make_url(url)
    except sa.exc.ArgumentError:
        raise StorageError(
            f"not a database URL: {shown} (e.g. sqlite:///tune.db or "
            "postgresql+psycopg2://user:password@host:5432/db)"
        ) from None
    kwargs = _engine_kwargs(parsed, settings)
    if parsed.get_backend_name() == "sqlite" and not create_schema:
        path = parsed.database or ""
        if path and path != ":memory:" and not Path(path).is_file():
            raise StorageError(f"no study database at {shown} (create it with `tune launch`)")
    try:
        if not create_schema:
            _check_schema(url, kwargs, shown)
        return _rdb_storage(url, kwargs, settings, create_schema, on_reap)
    except StorageError:
        raise
    except (sa.exc.SQLAlchemyError, ImportError) as exc:
        if create_schema and isinstance(exc, sa.exc.IntegrityError | sa.exc.ProgrammingError):
            # another launch created the tables at the same moment: they exist now
            try:
                return _rdb_storage(url, kwargs, settings, create_schema, on_reap)
            except sa.exc.SQLAlchemyError as again:
                exc = again
        raise StorageError(f"cannot open the storage {shown}: {_reason(exc)}") from None


class StaleTrialRetry(RetryHeartbeatStaleTrialCallback):
    """Optuna's retry of a stale trial (same parameters, the chain in its retry history), plus
    one line to `on_reap` saying what became of the stale trial."""

    def __init__(self, max_retry: int, on_reap: Callable[[str], None] | None = None) -> None:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            super().__init__(max_retry=max_retry)
        self.max_retry = max_retry
        self.on_reap = on_reap

    def __call__(self, study: optuna.Study, trial: FrozenTrial) -> None:
        # counted before the call, which appends to the trial's own list: the chain so far
        retries = len(trial.system_attrs.get("retry_history", [])) + 1
        super().__call__(study, trial)
        if self.on_reap is None:
            return
        if retries > self.max_retry:
            what = f"given up after {self.max_retry} retries"
        else:
            what = f"enqueued again with the same parameters (retry {retries}/{self.max_retry})"
        self.on_reap(f"trial {trial.number} lost its worker (no heartbeat): {what}")


def _rdb_storage(
    url: str,
    kwargs: dict[str, Any],
    settings: StorageSettings,
    create_schema: bool,
    on_reap: Callable[[str], None] | None = None,
) -> RDBStorage:
    with warnings.catch_warnings():
        # heartbeats and the retry callback are "experimental" in Optuna 5; tune depends on them
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        # Optuna's storage, with a stale-trial rule that also reaps trials that never beat
        return HeartbeatRDBStorage(
            url,
            engine_kwargs=kwargs,
            skip_table_creation=not create_schema,
            heartbeat_interval=settings.heartbeat_interval,
            grace_period=settings.grace_period,
            heartbeat_stale_trial_callback=StaleTrialRetry(settings.max_retry, on_reap),
        )


def _engine_kwargs(parsed: sa.engine.URL, settings: StorageSettings) -> dict[str, Any]:
    backend = parsed.get_backend_name()
    if backend == "sqlite":
        return {"connect_args": {"timeout": settings.sqlite_timeout}}
    kwargs: dict[str, Any] = {"pool_pre_ping": True}
    if backend in ("postgresql", "mysql"):
        kwargs.update(pool_size=settings.pool_size, max_overflow=settings.max_overflow)
    if backend == "postgresql":
        kwargs["connect_args"] = {"connect_timeout": 10}
    return kwargs


def _check_schema(url: str, kwargs: dict[str, Any], shown: str) -> None:
    engine = sa.create_engine(url, **kwargs)
    try:
        with engine.connect() as conn:
            has_schema = sa.inspect(conn).has_table("version_info")
    finally:
        engine.dispose()
    if not has_schema:
        raise StorageError(
            f"the storage {shown} holds no Optuna study yet "
            "(create one with `tune launch --study NAME --workers 0`)"
        )


def _reason(exc: BaseException) -> str:
    orig = getattr(exc, "orig", None) or exc
    text = " ".join(str(orig).split())  # one line
    return mask_text(text)[:300]


def load_study(
    storage: optuna.storages.BaseStorage,
    name: str,
    sampler: optuna.samplers.BaseSampler | None = None,
    pruner: optuna.pruners.BasePruner | None = None,
) -> optuna.Study:
    """Load an existing study, or fail with one line naming the studies that do exist."""
    try:
        return optuna.load_study(study_name=name, storage=storage, sampler=sampler, pruner=pruner)
    except KeyError:
        known = ", ".join(optuna.get_all_study_names(storage)) or "none"
        where = mask_url(getattr(storage, "url", "the storage"))
        raise StorageError(
            f"no study named {name!r} in {where} (studies there: {known}; "
            f"create it with `tune launch --study {name}`)"
        ) from None


@contextmanager
def session(storage: RDBStorage) -> Iterator[orm.Session]:
    """One transaction on the storage's engine: commit on success, roll back on error."""
    s = orm.Session(bind=storage.engine)
    try:
        yield s
        s.commit()
    except BaseException:
        s.rollback()
        raise
    finally:
        s.close()


def count_states(storage: RDBStorage, study_id: int) -> StateCounts:
    """Trials by state, counted in the database (no trial is loaded)."""
    trial = TrialModel
    with session(storage) as s:
        rows = (
            s.query(trial.state, sa.func.count(trial.trial_id))
            .filter(trial.study_id == study_id)
            .group_by(trial.state)
            .all()
        )
    return StateCounts.of({state: n for state, n in rows})


class StudyLock:
    """A lock over one study, shared by every process on every machine using the storage.

    Exclusive (the default): one holder at a time. Launch holds it while enqueueing baselines, a
    reaper while it fails and re-enqueues a stale trial, and a worker from "is there budget
    left?" until its new trial is RUNNING when the budget is nearly spent, so that two workers
    never both take the last trial. `shared=True` is a worker's claim while the budget is far
    from spent (`search/running/worker.py`): any number of starters hold it at once, `holders()`
    says how many, and none holds it while an exclusive holder has it or waits for it (so starters
    never see a reaper's half-done work, and a waiting exclusive taker is not starved).

    PostgreSQL: a session advisory lock in either mode (released by the server if the process
    dies). A worker behind `tune proxy`: a lease held in the proxy
    (`search/bookkeeping/proxy_control.py`).
    SQLite (one machine): an flock on a file in the temporary folder named after the database,
    exclusive only (`shares()` is False: a claim there is an exclusive lock). Other back ends: no
    lock. `release()` may be called early and more than once.

    Waiting for it is never silent: every `say_every` seconds a line to `log` says how long this
    process has waited and, on PostgreSQL, which server process holds the lock (a holder that is
    paused or cut off keeps it until its connection drops).
    """

    def __init__(
        self,
        storage: optuna.storages.BaseStorage,
        study_id: int,
        *,
        shared: bool = False,
        log: Callable[[str], None] | None = None,
        say_every: float = 10.0,
        abandon: Callable[[], bool] | None = None,
    ) -> None:
        self._storage = storage
        self._study_id = study_id
        self._shared = shared
        # asked between tries while waiting: True gives the wait up (`LockAbandoned`), so that a
        # thread that stops (the reaper) does not hold up its process for a lock it no longer needs
        self._abandon = abandon
        self._log = log
        self._say_every = say_every
        self._conn: sa.Connection | None = None
        self._file: IO[bytes] | None = None
        self._lease: Any = None  # a `search.bookkeeping.proxy_control.ProxyLock`

    @staticmethod
    def shares(storage: optuna.storages.BaseStorage) -> bool:
        """Whether the lock has a shared mode on `storage` (PostgreSQL, the proxy)."""
        if isinstance(storage, RDBStorage):
            return storage.engine.dialect.name == "postgresql"
        return isinstance(storage, ChannelGrpcStorageProxy)

    def holders(self) -> int:
        """How many processes hold the lock shared now, this one included (shared mode only).

        On PostgreSQL, the granted shared advisory locks on the study's key (`pg_locks` is the
        lock manager's state, not a snapshot: a lock granted a moment ago is counted).
        """
        if not self._shared:
            raise ValueError("holders() counts shared holders; this lock is exclusive")
        if self._lease is not None:
            return int(self._lease.holders())
        if self._conn is None:
            raise RuntimeError("holders() of a shared lock that is not held")
        count = self._conn.execute(
            sa.text(
                "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND granted "
                "AND mode = 'ShareLock' AND classid = :a AND objid = :b AND objsubid = 2"
            ),
            {"a": _LOCK_NAMESPACE, "b": self._study_id},
        ).scalar_one()
        self._conn.rollback()
        return int(count)

    def acquire(self) -> StudyLock:
        if not isinstance(self._storage, RDBStorage):
            if isinstance(self._storage, ChannelGrpcStorageProxy):
                holder = f"{os.getpid()}:{id(self)}:{time.monotonic()}"
                self._lease = self._storage.study_lease(
                    self._study_id, holder, shared=self._shared, log=self._log
                )
                self._lease.acquire()
            return self
        backend = self._storage.engine.dialect.name
        if backend == "postgresql":
            self._conn = self._storage.engine.connect()
            try:
                self._acquire_advisory(self._conn)
            except BaseException:
                self._conn.close()
                self._conn = None
                raise
        elif self._shared:
            raise ValueError(f"the study lock has no shared mode on {backend}")
        elif backend == "sqlite":
            database = self._storage.engine.url.database or ":memory:"
            key = hashlib.sha1(f"{Path(database).resolve()}:{self._study_id}".encode()).hexdigest()
            self._file = open(Path(tempfile.gettempdir()) / f"tune-{key[:16]}.lock", "wb")  # noqa: SIM115
            self._acquire_flock(self._file)
        return self

    def _acquire_advisory(self, conn: sa.Connection) -> None:
        keys = {"a": _LOCK_NAMESPACE, "b": self._study_id}
        started = next_line = time.monotonic()
        # a blocking wait (the lock passes on at once), bounded so that we can say why, and
        # shorter when the wait may be abandoned
        bound = self._say_every if self._abandon is None else min(self._say_every, 0.5)
        while True:
            try:
                conn.execute(
                    sa.text("SELECT set_config('lock_timeout', :t, true)"),
                    {"t": f"{round(bound * 1000)}ms"},
                )
                conn.execute(sa.text(f"SELECT {self._advisory('lock')}(:a, :b)"), keys)
                conn.commit()  # the session-level lock outlives the transaction
                return
            except sa.exc.OperationalError as exc:
                if getattr(exc.orig, "pgcode", None) != _LOCK_NOT_AVAILABLE:
                    raise
                conn.rollback()
            self._check_abandoned()
            if time.monotonic() - next_line < self._say_every - 0.01:
                continue
            next_line = time.monotonic()
            holder = conn.execute(
                sa.text(
                    "SELECT pid FROM pg_locks WHERE locktype = 'advisory' AND granted "
                    "AND classid = :a AND objid = :b"
                ),
                {"a": _LOCK_NAMESPACE, "b": self._study_id},
            ).scalar()
            conn.rollback()
            self._say(started, f"held by PostgreSQL server process {holder}")

    def _advisory(self, verb: str) -> str:
        return f"pg_advisory_{verb}_shared" if self._shared else f"pg_advisory_{verb}"

    def _acquire_flock(self, file: IO[bytes]) -> None:
        started = next_line = time.monotonic()
        while True:
            try:
                fcntl.flock(file, fcntl.LOCK_EX | fcntl.LOCK_NB)
                return
            except BlockingIOError:
                pass
            self._check_abandoned()
            if time.monotonic() - next_line >= self._say_every:
                next_line = time.monotonic()
                self._say(started, f"held by another process on this machine ({file.name})")
            time.sleep(0.01)

    def _check_abandoned(self) -> None:
        if self._abandon is not None and self._abandon():
            raise LockAbandoned(f"gave up waiting for the lock of study {self._study_id}")

    def _say(self, started: float, holder: str) -> None:
        if self._log is not None:
            self._log(f"waiting {time.monotonic() - started:.0f} s for the study lock, {holder}")

    def release(self) -> None:
        if self._lease is not None:
            lease, self._lease = self._lease, None
            lease.release()
        if self._conn is not None:
            conn, self._conn = self._conn, None
            try:
                conn.execute(
                    sa.text(f"SELECT {self._advisory('unlock')}(:a, :b)"),
                    {"a": _LOCK_NAMESPACE, "b": self._study_id},
                )
                conn.commit()
            except sa.exc.DBAPIError:
                # the server went away, and a session lock goes with its session: nothing to
                # release; drop the broken connection instead of returning it to the pool
                conn.invalidate()
            finally:
                conn.close()
        if self._file is not None:
            file, self._file = self._file, None
            fcntl.flock(file, fcntl.LOCK_UN)
            file.close()

    def __enter__(self) -> StudyLock:
        return self.acquire()

    def __exit__(self, *exc: object) -> None:
        self.release()
