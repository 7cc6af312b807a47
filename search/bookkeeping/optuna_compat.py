"""The one place tune touches Optuna's private names; each has a test in
`tests/search/test_optuna_compat.py`, so an Optuna upgrade that moves one fails there first.

What tune needs beyond Optuna's public API:

- a trial's storage id (`Trial._trial_id`, `FrozenTrial._trial_id`) to write to the storage
  directly (heartbeats, error records on a trial this process does not hold);
- a study's storage (`Study._storage`, Optuna's cache in front of the RDB storage) to beat and to
  reap from a thread of our own;
- the RDB models (`optuna.storages._rdb.models`) to count trials by state in SQL and to read the
  heartbeat table;
- `RDBStorage._get_stale_trial_ids`, overridden by `HeartbeatRDBStorage` below to turn off
  Optuna's own reaping inside `ask` (unsafe order, no lock); tune's `stale_trial_ids` also
  covers a RUNNING trial that never recorded a heartbeat, which Optuna's rule skips (a worker
  that died between creating a trial and its first beat left a trial no reaper ever failed);
- `RDBStorage._get_trials`, also overridden there: the same trials read with plain SQL instead
  of the ORM (a worker joining a study of 10,000 trials spent 12 s building an ORM
  object per row; `tune status` and `tune report` as long);
- `optuna.storages._CachedStorage` (`CachedStorage`), the cache `optuna.storages.get_storage`
  puts in front of an RDB storage, which `tune proxy` serves (`search/control/proxy_server.py`),
  and its `_backend`, the RDB storage behind a study's cache (`rdb_backend`), which `tune status`
  and `tune report` read with `read_trials` leaving bulky user attrs in the database (`AttrKeys`);
- `GrpcStorageProxy._setup` and the generated gRPC stub, to open the proxy's client on a channel
  of tune's own (TLS, the token, short reconnect backoffs: `ChannelGrpcStorageProxy`), and the
  generated servicer, to serve Optuna's storage service from a server of tune's own
  (`add_storage_service`);
- the RDB models a benchmark writes big studies with (`RDB_MODELS`);
- not a name but a side effect: `import optuna.visualization` imports its matplotlib twin, and
  with it matplotlib (about 1 s, a fifth of `tune report` on a 10,000-trial study, where the
  Ultralytics extra installs matplotlib); `without_matplotlib_views` skips that.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import sys
from collections import defaultdict
from collections.abc import Callable, Collection, Container, Iterable, Iterator
from dataclasses import dataclass
from functools import cache
from typing import Any

import optuna
import sqlalchemy as sa
from optuna.distributions import json_to_distribution
from optuna.exceptions import StorageInternalError
from optuna.storages import BaseStorage, GrpcStorageProxy, RDBStorage
from optuna.storages._cached_storage import _CachedStorage
from optuna.storages._heartbeat import BaseHeartbeat
from optuna.storages._rdb import models
from optuna.trial import FrozenTrial, TrialState
from sqlalchemy import orm

TrialModel = models.TrialModel
TrialHeartbeatModel = models.TrialHeartbeatModel
# Optuna's RDB tables, which `bench/control_plane.py` fills directly to build big studies fast
RDB_MODELS = models
CachedStorage = _CachedStorage


class ChannelGrpcStorageProxy(GrpcStorageProxy):
    """Optuna's gRPC proxy client on a channel tune makes (`make_channel`: TLS, the token,
    reconnect backoff: `search/bookkeeping/proxy_auth.py`), which tune's own calls share."""

    def __init__(self, make_channel: Callable[[], Any]) -> None:
        self._make_channel = make_channel  # picklable (a partial), as Optuna's client is
        self._setup()

    def _setup(self) -> None:
        from optuna.storages._grpc.auto_generated import api_pb2_grpc
        from optuna.storages._grpc.client import GrpcClientCache

        self._channel = self._make_channel()
        self._stub = api_pb2_grpc.StorageServiceStub(self._channel)
        self._cache = GrpcClientCache(self._stub)

    @property
    def channel(self) -> Any:
        """The channel Optuna's calls go over (a `grpc.Channel`)."""
        return self._channel

    def beat(self, trial_id: int) -> None:
        """A heartbeat for `trial_id` through the proxy (Optuna's proxy carries none)."""
        raise NotImplementedError

    def study_lease(self, study_id: int, holder: str, *, shared: bool) -> Any:
        """A lease on the study's lock, held in the proxy (not yet taken): a `StudyLock` back end
        (`search/bookkeeping/proxy_control.py` `ProxyLock`)."""
        raise NotImplementedError


def add_storage_service(server: Any, storage: BaseStorage) -> None:
    """Optuna's storage service (what `run_grpc_proxy_server` serves) on a gRPC server of
    tune's own, which checks tokens and may serve TLS (`search/control/proxy_server.py`)."""
    from optuna.storages._grpc.auto_generated import api_pb2_grpc
    from optuna.storages._grpc.servicer import OptunaStorageProxyService

    api_pb2_grpc.add_StorageServiceServicer_to_server(OptunaStorageProxyService(storage), server)


@contextlib.contextmanager
def without_matplotlib_views() -> Iterator[None]:
    """Import `optuna.visualization` (its Plotly views) inside this block without matplotlib.

    Optuna's `optuna.visualization.matplotlib` guards its matplotlib import and, finding none,
    says so when one of its functions is called; tune draws with Plotly only. Where matplotlib is
    imported already, nothing changes. Afterwards matplotlib imports as usual, except into
    `optuna.visualization.matplotlib` in this process.
    """
    if "matplotlib" in sys.modules or "optuna.visualization" in sys.modules:
        yield
        return
    sys.modules["matplotlib"] = None  # type: ignore[assignment]  # makes `import` raise
    try:
        yield
    finally:
        del sys.modules["matplotlib"]


def trial_id(trial: optuna.Trial | FrozenTrial) -> int:
    """The storage's id of a trial (not its number within the study)."""
    return int(trial._trial_id)


def study_storage(study: optuna.Study) -> BaseStorage:
    """The storage a study object talks to (Optuna's cache in front of the RDB storage)."""
    return study._storage


def study_id(study: optuna.Study) -> int:
    """The storage's id of a study."""
    return int(study._study_id)


def rdb_backend(study: optuna.Study) -> RDBStorage | None:
    """The RDB storage behind a study (behind Optuna's cache), or None for any other storage
    (in memory, a gRPC proxy)."""
    storage = study_storage(study)
    if isinstance(storage, CachedStorage):
        storage = storage._backend
    return storage if isinstance(storage, RDBStorage) else None


def stale_trial_ids(storage: RDBStorage, study_id: int) -> list[int]:
    """The study's stale trials now (`RunningTrial.is_stale`: a read, no lock). tune's reapers
    fail them (`search/control/reaper.py`); Optuna's `fail_stale_trials` does not
    (`HeartbeatRDBStorage`).
    """
    interval = storage.heartbeat_interval
    if interval is None:
        return []
    grace = storage.grace_period if storage.grace_period is not None else 2 * interval
    return [t.trial_id for t in running_trials(storage, study_id) if t.is_stale(grace)]


def record_heartbeat(study: optuna.Study, trial_id: int) -> None:
    """Beat for `trial_id` now (nothing when the storage has no heartbeats)."""
    storage = study_storage(study)
    if isinstance(storage, BaseHeartbeat) and storage.get_heartbeat_interval() is not None:
        storage.record_heartbeat(trial_id)
    elif isinstance(storage, ChannelGrpcStorageProxy):
        storage.beat(trial_id)


@dataclass(frozen=True)
class RunningTrial:
    """A RUNNING trial as the database's clock sees it."""

    trial_id: int
    number: int
    started_ago: float  # seconds since it became RUNNING
    heartbeat_ago: float | None  # seconds since its last heartbeat; None: it never beat

    def is_stale(self, grace_period: float) -> bool:
        """No heartbeat for `grace_period` s, or none at all and RUNNING for that long."""
        age = self.started_ago if self.heartbeat_ago is None else self.heartbeat_ago
        return age > grace_period


def running_trials(storage: RDBStorage, study_id: int) -> list[RunningTrial]:
    """The study's RUNNING trials with their ages, measured on the database's clock.

    Heartbeats are written with the database's `now()` (in its session time zone, as Optuna
    stores them); `datetime_start` is written by the worker that started the trial, in UTC. Both
    are compared with the database's clock, so workers' clocks matter only for the start of a
    trial that never beat: a worker whose clock is behind the database by more than the grace
    period would see that trial reaped at once, one ahead would see it reaped late.
    """
    trial, beat = TrialModel, TrialHeartbeatModel
    with orm.Session(bind=storage.engine) as session:
        now = session.execute(sa.select(sa.func.now())).scalar_one()
        rows = session.execute(
            sa.select(trial.trial_id, trial.number, trial._datetime_start_utc, beat.heartbeat)
            .outerjoin(beat, beat.trial_id == trial.trial_id)
            .where(trial.study_id == study_id, trial.state == TrialState.RUNNING)
            .order_by(trial.number)
        ).all()
    now_local, now_utc = _local_and_utc(now)
    return [
        RunningTrial(
            trial_id=int(tid),
            number=int(number),
            started_ago=(now_utc - started).total_seconds() if started is not None else 0.0,
            heartbeat_ago=(now_local - _naive(heartbeat)).total_seconds()
            if heartbeat is not None
            else None,
        )
        for tid, number, started, heartbeat in rows
    ]


def _local_and_utc(now: Any) -> tuple[dt.datetime, dt.datetime]:
    """The database's `now()` as the heartbeat column holds it, and in UTC.

    PostgreSQL returns an aware timestamp: the heartbeat column holds it as local time of the
    session's zone (Optuna drops the zone the same way), `datetime_start` as UTC. SQLite's
    CURRENT_TIMESTAMP is naive UTC already.
    """
    if isinstance(now, str):  # some SQLite drivers hand back the text
        now = dt.datetime.fromisoformat(now)
    if now.tzinfo is None:
        return now, now
    return now.replace(tzinfo=None), now.astimezone(dt.UTC).replace(tzinfo=None)


def _naive(value: Any) -> dt.datetime:
    if isinstance(value, str):
        value = dt.datetime.fromisoformat(value)
    return value.replace(tzinfo=None)


class HeartbeatRDBStorage(RDBStorage):
    """Optuna's RDB storage that leaves reaping to tune, and reads trials with plain SQL.

    Reaping: Optuna's `fail_stale_trials`, which `study.optimize` runs before every `ask`, finds
    nothing here (`_get_stale_trial_ids`). It fails a stale trial first and enqueues its retry
    after, holding no lock, so a worker starting a trial in between saw a slot free that the
    retry was about to fill; and workers start trials concurrently (search/running/worker.py).
    tune's reapers (`search/control/reaper.py`) fail them in the safe order under the exclusive
    study lock, by tune's rule (`stale_trial_ids`): Optuna's (no heartbeat for the grace period)
    plus a RUNNING trial that never beat and is RUNNING for longer than the grace period.
    """

    def _get_stale_trial_ids(self, study_id: int) -> list[int]:
        return []

    def _get_trials(
        self,
        study_id: int,
        states: Container[TrialState] | None,
        included_trial_ids: set[int],
        trial_id_greater_than: int,
    ) -> list[FrozenTrial]:
        try:
            return read_trials(self, study_id, states, included_trial_ids, trial_id_greater_than)
        except sa.exc.SQLAlchemyError as exc:  # as Optuna's own sessions report it
            raise StorageInternalError("An exception is raised while reading trials.") from exc


# the trial tables `read_trials` reads besides `trials`: model and columns (trial_id first)
_TRIAL_TABLES: dict[str, tuple[Any, tuple[str, ...]]] = {
    "params": (
        models.TrialParamModel,
        ("param_id", "param_name", "param_value", "distribution_json"),
    ),
    "values": (models.TrialValueModel, ("objective", "value", "value_type")),
    "steps": (
        models.TrialIntermediateValueModel,
        ("step", "intermediate_value", "intermediate_value_type"),
    ),
    "user": (models.TrialUserAttributeModel, ("key", "value_json")),
    "system": (models.TrialSystemAttributeModel, ("key", "value_json")),
}
_distribution = cache(json_to_distribution)  # a study has few distinct ones


@dataclass(frozen=True)
class AttrKeys:
    """A set of user-attr keys, matched in SQL: these `keys` and those that start with one of
    these `prefixes`."""

    keys: tuple[str, ...] = ()
    prefixes: tuple[str, ...] = ()

    def clause(self, column: Any) -> Any:
        """The SQL condition that `column` (a user attr's key) is one of these."""
        return sa.or_(
            column.in_(self.keys),
            *(column.startswith(p, autoescape=True) for p in self.prefixes),
        )


def read_trials(
    storage: RDBStorage,
    study_id: int,
    states: Container[TrialState] | None = None,
    included_trial_ids: set[int] | None = None,
    trial_id_greater_than: int = -1,
    without: AttrKeys | None = None,
    *,
    trial_ids: Collection[int] | None = None,
    params: bool = True,
    steps: bool = True,
) -> list[FrozenTrial]:
    """What `RDBStorage._get_trials` returns (the study's trials, or those in
    `included_trial_ids` or after `trial_id_greater_than`, by trial id), read with six SQL
    statements and no ORM objects. A missing study is a KeyError, as in Optuna.

    For readers of a whole study that show a few trials in full (`tune report`, `tune status`),
    less: `without` names user attrs left in the database (never sent, never decoded; read back
    with `read_user_attrs`), `trial_ids` keeps only these trials, and without `params` or
    `steps` the trials come with no parameters (and distributions) or no intermediate values:
    at 10,000 trials, 100,000 and 40,000 of a study's rows."""
    t = TrialModel
    included = {i for i in included_trial_ids or () if i <= trial_id_greater_than}
    where = [t.study_id == study_id]
    if trial_id_greater_than > -1:
        newer = t.trial_id > trial_id_greater_than
        where.append(sa.or_(t.trial_id.in_(included), newer) if included else newer)
    if states is not None:
        where.append(t.state.in_(list(states)))  # type: ignore[call-overload]
    if trial_ids is not None:
        where.append(t.trial_id.in_(list(trial_ids)))
    chosen = sa.select(t.trial_id).where(*where).scalar_subquery()
    skipped = {"params"} if not params else set()
    skipped |= {"steps"} if not steps else set()
    rows: dict[str, dict[int, list[Any]]] = {}
    with storage.engine.connect() as conn:
        if (
            conn.execute(
                sa.select(models.StudyModel.study_id).where(models.StudyModel.study_id == study_id)
            ).first()
            is None
        ):
            raise KeyError(f"No study with study_id {study_id} exists.")
        trials = conn.execute(
            sa.select(
                t.trial_id, t.number, t.state, t._datetime_start_utc, t._datetime_complete_utc
            )
            .where(*where)
            .order_by(t.trial_id)
        ).all()
        for name, (model, columns) in _TRIAL_TABLES.items():
            by_trial: dict[int, list[Any]] = defaultdict(list)
            rows[name] = by_trial
            if name in skipped:
                continue
            query = sa.select(model.trial_id, *(getattr(model, c) for c in columns))
            query = query.where(model.trial_id.in_(chosen))
            if name == "user" and without is not None:
                query = query.where(sa.not_(without.clause(model.key)))
            for row in conn.execute(query).all():  # one fetch: far cheaper than row by row
                by_trial[row[0]].append(row[1:])
    to_value = models.TrialValueModel.stored_repr_to_value
    to_step = models.TrialIntermediateValueModel.stored_repr_to_intermediate_value
    frozen = []
    for tid, number, state, start, complete in trials:
        drawn = sorted(rows["params"].get(tid, ()))  # Optuna orders them by param_id
        dists = {name: _distribution(text) for _, name, _, text in drawn}
        values = sorted(rows["values"].get(tid, ()))
        frozen.append(
            FrozenTrial(
                number=number,
                state=state,
                value=None,
                values=[to_value(v, kind) for _, v, kind in values] or None,
                datetime_start=_local(start),
                datetime_complete=_local(complete),
                params={name: dists[name].to_external_repr(v) for _, name, v, _ in drawn},
                distributions=dists,
                user_attrs={k: json.loads(v) for k, v in rows["user"].get(tid, ())},
                system_attrs={k: json.loads(v) for k, v in rows["system"].get(tid, ())},
                intermediate_values={
                    step: to_step(v, kind) for step, v, kind in rows["steps"].get(tid, ())
                },
                trial_id=tid,
            )
        )
    return frozen


def read_user_attrs(
    storage: RDBStorage, trial_ids: Iterable[int], keys: AttrKeys
) -> dict[int, dict[str, Any]]:
    """The user attrs of these trials (storage ids) whose keys are among `keys`, by trial id."""
    wanted = sorted(set(trial_ids))
    found: dict[int, dict[str, Any]] = {tid: {} for tid in wanted}
    model = models.TrialUserAttributeModel
    with storage.engine.connect() as conn:
        for start in range(0, len(wanted), _IN_CHUNK):
            chunk = wanted[start : start + _IN_CHUNK]
            query = sa.select(model.trial_id, model.key, model.value_json).where(
                model.trial_id.in_(chunk), keys.clause(model.key)
            )
            for tid, key, value in conn.execute(query):
                found[tid][key] = json.loads(value)
    return found


# trial ids per `IN (...)` list: well under SQLite's limit on bound parameters (32,766)
_IN_CHUNK = 500


def _local(utc: dt.datetime | None) -> dt.datetime | None:
    # as `TrialModel.datetime_start`: stored as naive UTC, handed out as naive local time
    if utc is None:
        return None
    return utc.replace(tzinfo=dt.UTC).astimezone().replace(tzinfo=None)
