"""Where studies live: the Optuna RDB storage, opened one way everywhere, plus the little SQL tune
needs of its own (counting trials by state), behind `session()`. The study-wide lock is
`search/bookkeeping/study_lock.py`.

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

import os
import re
import urllib.parse
import warnings
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import optuna
import sqlalchemy as sa
from optuna.storages import RDBStorage, RetryHeartbeatStaleTrialCallback
from optuna.trial import FrozenTrial, TrialState
from sqlalchemy import orm

from search.bookkeeping.optuna_compat import (
    HeartbeatRDBStorage,
    TrialModel,
)

ENV_VAR = "TUNE_STORAGE"
# the token every call to `tune proxy` carries (`search/bookkeeping/proxy_auth.py`): masked too
PROXY_TOKEN_ENV = "TUNE_PROXY_TOKEN"
DEFAULT_URL = "sqlite:///tune.db"
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
