"""The one place tune touches Optuna's private names; each has a test in
`tests/search/test_optuna_compat.py`, so an Optuna upgrade that moves one fails there first.

What tune needs beyond Optuna's public API:

- a trial's storage id (`Trial._trial_id`, `FrozenTrial._trial_id`) to write to the storage
  directly (heartbeats, error records on a trial this process does not hold);
- a study's storage (`Study._storage`, Optuna's cache in front of the RDB storage) to beat and to
  reap from a thread of our own;
- the RDB models (`optuna.storages._rdb.models`) to count trials by state in SQL and to read the
  heartbeat table;
- `RDBStorage._get_stale_trial_ids`, overridden by `HeartbeatRDBStorage` below: Optuna's version
  skips a RUNNING trial that never recorded a heartbeat, so a worker that died between creating
  a trial and its first beat left a trial that no reaper ever failed, and a study whose last
  budget slot it held waited forever;
- `optuna.storages._CachedStorage` (`CachedStorage`), the cache `optuna.storages.get_storage`
  puts in front of an RDB storage, which `tune proxy` subclasses (`search/proxy.py`);
- `GrpcStorageProxy._setup` and the generated gRPC stub, to open the proxy's channel with short
  reconnect backoffs (`ReconnectingGrpcStorageProxy`).
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from typing import Any

import optuna
import sqlalchemy as sa
from optuna.storages import BaseStorage, GrpcStorageProxy, RDBStorage
from optuna.storages._cached_storage import _CachedStorage
from optuna.storages._heartbeat import BaseHeartbeat
from optuna.storages._rdb import models
from optuna.trial import FrozenTrial, TrialState
from sqlalchemy import orm

TrialModel = models.TrialModel
TrialHeartbeatModel = models.TrialHeartbeatModel
CachedStorage = _CachedStorage
# Through `tune proxy`, a heartbeat is this trial system attr written through Optuna's gRPC proxy
# (which carries no heartbeat call); the proxy records a real heartbeat instead of storing it.
HEARTBEAT_ATTR = "tune:heartbeat"


class ReconnectingGrpcStorageProxy(GrpcStorageProxy):
    """Optuna's gRPC proxy client on a channel that retries a lost server every second at most.

    gRPC's default reconnect backoff grows to two minutes: a worker whose proxy restarted after a
    long outage could not beat for that long once the proxy was back, and the proxy would reap its
    live trial after the grace period.
    """

    def _setup(self) -> None:
        import grpc
        from optuna.storages._grpc.auto_generated import api_pb2_grpc
        from optuna.storages._grpc.client import GrpcClientCache

        self._channel = grpc.insecure_channel(
            f"{self._host}:{self._port}",
            options=[
                ("grpc.max_receive_message_length", -1),  # as Optuna's own channel
                ("grpc.initial_reconnect_backoff_ms", 200),
                ("grpc.min_reconnect_backoff_ms", 200),
                ("grpc.max_reconnect_backoff_ms", 1000),
            ],
        )
        self._stub = api_pb2_grpc.StorageServiceStub(self._channel)
        self._cache = GrpcClientCache(self._stub)


def trial_id(trial: optuna.Trial | FrozenTrial) -> int:
    """The storage's id of a trial (not its number within the study)."""
    return int(trial._trial_id)


def study_storage(study: optuna.Study) -> BaseStorage:
    """The storage a study object talks to (Optuna's cache in front of the RDB storage)."""
    return study._storage


def study_id(study: optuna.Study) -> int:
    """The storage's id of a study."""
    return int(study._study_id)


def stale_trial_ids(storage: RDBStorage, study_id: int) -> list[int]:
    """The trials `optuna.storages.fail_stale_trials` would fail now (a read, no lock)."""
    return list(storage._get_stale_trial_ids(study_id))


def record_heartbeat(study: optuna.Study, trial_id: int) -> None:
    """Beat for `trial_id` now (nothing when the storage has no heartbeats)."""
    storage = study_storage(study)
    if isinstance(storage, BaseHeartbeat) and storage.get_heartbeat_interval() is not None:
        storage.record_heartbeat(trial_id)
    elif isinstance(storage, GrpcStorageProxy):
        storage.set_trial_system_attr(trial_id, HEARTBEAT_ATTR, True)


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
    """Optuna's RDB storage whose stale-trial rule also covers a trial that never beat.

    Optuna's rule (kept): a RUNNING trial whose last heartbeat is older than the grace period.
    Added: a RUNNING trial with no heartbeat at all, RUNNING for longer than the grace period.
    Both `optuna.storages.fail_stale_trials` (tune's reaper, a waiting worker) and Optuna's own
    check on every `ask` inside `study.optimize` go through this method, so they all reap it.
    """

    def _get_stale_trial_ids(self, study_id: int) -> list[int]:
        assert self.heartbeat_interval is not None
        grace = self.grace_period if self.grace_period is not None else 2 * self.heartbeat_interval
        return [t.trial_id for t in running_trials(self, study_id) if t.is_stale(grace)]
