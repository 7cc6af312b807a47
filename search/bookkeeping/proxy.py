"""`tune proxy`: Optuna's gRPC storage proxy in front of the study database, for many workers.

Every worker process holds a few database connections of its own (`StorageSettings`: up to 4),
so a few dozen workers exhaust PostgreSQL's `max_connections`. Workers given
`--storage grpc://HOST:PORT` talk to this one server instead (Optuna's `GrpcStorageProxy`), and
only the server talks to the database, through one bounded pool (`PROXY_SETTINGS`): the
connections stay a handful whatever the worker count.

Optuna's proxy carries the storage API (studies, trials, params, values, attributes) and nothing
else. What tune needs beyond it, and how it gets it:

- heartbeats: `GrpcStorageProxy` is no heartbeat storage, so `study.optimize` neither beats nor
  reaps through it. A worker beats by writing the trial system attr `HEARTBEAT_ATTR` (tune's
  reaper thread, `search/optuna_compat.record_heartbeat`); this server turns that write into a
  real heartbeat row (the database's clock) and stores no attribute.
- reaping: the server runs the reaper for every study in the storage (`search/running/reaper.py`'s
  `reap_stale_trials`: fail the stale trial, enqueue its retry, which resumes from its checkpoint
  as usual); workers behind the proxy reap nothing themselves.
- the study lock (no two workers take the last slot of the budget): leases per study held in this
  server (`LOCK_ATTR` writes: take, exclusive or shared, or give back; a lease not to be had answers
  NOT_FOUND, which the client sees as KeyError and retries; the study's system attrs as the server
  hands them out carry `SHARERS_ATTR`, the count of shared leases, which a worker starting without
  the exclusive lock reads: `search/running/worker.py`). A lease not given back within `LOCK_LEASE`
  seconds (its worker died holding it) lapses. The server's reaper takes the same lease exclusively,
  and PostgreSQL's advisory lock too, so workers that use the database directly are excluded as
  well; workers behind the proxy do not take PostgreSQL's lock, so `tune launch` enqueueing
  baselines while proxied workers start trials is not excluded (launch first, as compose does).
- tune's own SQL (`count_states`, `running_trials`): not available through the proxy; the worker
  reads what it needs from the trials instead (`BudgetWait` names running trials without their
  heartbeat ages).
- the artifact store (checkpoints) is a folder and never went through the storage: workers
  behind the proxy need `$TUNE_ARTIFACTS` on a shared folder exactly as before.

A restarted proxy is ridden out: workers retry the unreachable server with backoff
(`search/bookkeeping/outage.py`, gRPC's UNAVAILABLE counts as a connection error) for
`storage_down_limit`. Leases die with the server (a lease held across a restart is simply gone).
"""

from __future__ import annotations

import contextlib
import random
import threading
import time
import warnings
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import optuna
from optuna.storages import BaseStorage, RDBStorage

from search.bookkeeping.optuna_compat import (
    HEARTBEAT_ATTR,
    CachedStorage,
    ReconnectingGrpcStorageProxy,
)
from search.bookkeeping.storage import (
    StorageError,
    StorageSettings,
    StudyLock,
    mask_url,
    open_storage,
    resolve_url,
)

SCHEME = "grpc://"
DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 13000
LOCK_ATTR = "tune:lock"  # study system attr: {"holder": id, "take": bool} (never stored)
SHARERS_ATTR = "tune:lock-sharers"  # read-only study system attr: shared leases held now
LOCK_LEASE = 60.0  # seconds a taken study lock lasts when its holder never gives it back
THREADS = 16  # server threads: concurrent requests (more wait in gRPC's queue)
# one pool for every worker behind the proxy: 8 connections, plus the reaper's lock and a spare
PROXY_SETTINGS = {"pool_size": 6, "max_overflow": 2}


def is_proxy_url(url: str | None) -> bool:
    """Whether a storage URL names a tune proxy (`grpc://HOST:PORT`)."""
    return url is not None and url.startswith(SCHEME)


def parse_proxy_url(url: str) -> tuple[str, int]:
    """(host, port) of `grpc://HOST:PORT`."""
    host, _, port = url.removeprefix(SCHEME).rstrip("/").rpartition(":")
    if not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise StorageError(f"not a proxy URL: {url} (e.g. grpc://127.0.0.1:{DEFAULT_PORT})")
    return host.strip("[]"), int(port)


class ProxyClient(ReconnectingGrpcStorageProxy):
    """Optuna's gRPC proxy client, with the URL it was opened with (for messages)."""

    def __init__(self, url: str) -> None:
        host, port = parse_proxy_url(url)
        with warnings.catch_warnings():  # "experimental" since Optuna 4.2
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            super().__init__(host=host, port=port)
        self.url = url


def connect(url: str) -> ProxyClient:
    """A client of the proxy at `url`. It does not wait for the server: the first call fails
    with gRPC's UNAVAILABLE while none answers, which workers ride out as an outage (a proxy
    that starts after them, or restarts)."""
    try:
        import grpc  # noqa: F401  (Optuna imports it lazily, at the first call)
    except ImportError:
        raise StorageError(
            f"cannot open the storage {url}: the grpcio package is not installed"
        ) from None
    return ProxyClient(url)


# --- client side: the study lock through the proxy ----------------------------------------------


class ProxyLock:
    """`StudyLock`'s counterpart for a worker behind the proxy: a lease held in the server,
    exclusive or shared (`holders()`: the shared leases of the study, this one included)."""

    def __init__(
        self,
        proxy: BaseStorage,
        study_id: int,
        holder: str,
        *,
        shared: bool = False,
        log: Callable[[str], None] | None = None,
        say_every: float = 10.0,
    ) -> None:
        self._proxy = proxy
        self._study_id = study_id
        self._request: dict[str, str | bool] = {"holder": holder, "take": True, "shared": shared}
        self._log = log
        self._say_every = say_every
        self._held = False

    def acquire(self) -> None:
        started = next_line = time.monotonic()
        # each try is a request to the proxy: dozens of waiting workers polling every few ms
        # flooded it (64 workers on 2 cores: waits of a minute), so waits grow to half a second
        pause = 0.02
        while True:
            try:
                self._proxy.set_study_system_attr(self._study_id, LOCK_ATTR, self._request)
                self._held = True
                return
            except KeyError:
                pass  # taken by another worker
            if self._log is not None and time.monotonic() - next_line >= self._say_every:
                next_line = time.monotonic()
                waited = time.monotonic() - started
                self._log(f"waiting {waited:.0f} s for the study lock, held through the proxy")
            time.sleep(pause * random.uniform(0.5, 1.5))
            pause = min(0.5, pause * 1.5)

    def holders(self) -> int:
        return int(self._proxy.get_study_system_attrs(self._study_id).get(SHARERS_ATTR, 0))

    def release(self) -> None:
        if self._held:
            self._held = False
            with contextlib.suppress(Exception):  # a lease lost with the server lapses anyway
                self._proxy.set_study_system_attr(
                    self._study_id, LOCK_ATTR, {**self._request, "take": False}
                )


# --- server side -------------------------------------------------------------------------------


class Leases:
    """Study locks held in the proxy: per study one exclusive lease or any number of shared ones
    (what PostgreSQL's advisory locks give workers that use the database directly). A lease
    lapses `lease` seconds after it was taken. An exclusive taker refused because of shared
    leases keeps new shared ones out for `writer_first` seconds from each try, so that a steady
    stream of starters cannot starve the reaper (it retries well within that)."""

    def __init__(self, lease: float = LOCK_LEASE, writer_first: float = 1.0) -> None:
        self._lease = lease
        self._writer_first = writer_first
        self._exclusive: dict[int, tuple[str, float]] = {}
        self._shared: dict[int, dict[str, float]] = {}
        self._writer_waits_until: dict[int, float] = {}
        self._mutex = threading.Lock()

    def take(self, study_id: int, holder: str, *, shared: bool = False) -> bool:
        now = time.monotonic()
        with self._mutex:
            exclusive = self._exclusive.get(study_id)
            if exclusive is not None and exclusive[0] != holder and exclusive[1] > now:
                return False
            sharers = self._live_sharers(study_id, now)
            if shared:
                if self._writer_waits_until.get(study_id, 0.0) > now:
                    return False
                sharers[holder] = now + self._lease
                return True
            if set(sharers) - {holder}:
                self._writer_waits_until[study_id] = now + self._writer_first
                return False
            self._exclusive[study_id] = (holder, now + self._lease)
            self._writer_waits_until.pop(study_id, None)
            return True

    def sharers(self, study_id: int) -> int:
        """Shared leases of the study now."""
        with self._mutex:
            return len(self._live_sharers(study_id, time.monotonic()))

    def give_back(self, study_id: int, holder: str) -> None:
        with self._mutex:
            if self._exclusive.get(study_id, ("",))[0] == holder:
                del self._exclusive[study_id]
            self._shared.get(study_id, {}).pop(holder, None)

    def _live_sharers(self, study_id: int, now: float) -> dict[str, float]:
        live = {h: until for h, until in self._shared.get(study_id, {}).items() if until > now}
        self._shared[study_id] = live
        return live

    @contextlib.contextmanager
    def held(self, study_id: int, holder: str = "proxy-reaper") -> Iterator[None]:
        while not self.take(study_id, holder):
            time.sleep(0.02)
        try:
            yield
        finally:
            self.give_back(study_id, holder)


class ProxyBackend(CachedStorage):
    """Optuna's cached storage as the proxy serves it, with tune's two protocol writes turned
    into actions: a heartbeat, a study lock taken or given back (neither is stored)."""

    def __init__(self, rdb: RDBStorage, leases: Leases) -> None:
        super().__init__(rdb)
        self.rdb = rdb
        self.leases = leases

    def set_trial_system_attr(self, trial_id: int, key: str, value: Any) -> None:
        if key == HEARTBEAT_ATTR:
            self.rdb.record_heartbeat(trial_id)
            return
        super().set_trial_system_attr(trial_id, key, value)

    def get_study_system_attrs(self, study_id: int) -> dict[str, Any]:
        return {
            **super().get_study_system_attrs(study_id),
            SHARERS_ATTR: self.leases.sharers(study_id),
        }

    def set_study_system_attr(self, study_id: int, key: str, value: Any) -> None:
        if key == LOCK_ATTR and isinstance(value, dict):
            holder = str(value.get("holder"))
            if not value.get("take"):
                self.leases.give_back(study_id, holder)
            elif not self.leases.take(study_id, holder, shared=bool(value.get("shared"))):
                raise KeyError(f"the study lock is held by {holder}")  # NOT_FOUND: try again
            return
        super().set_study_system_attr(study_id, key, value)


def proxy_settings() -> StorageSettings:
    """The proxy's storage settings: heartbeats as `$TUNE_HEARTBEAT_INTERVAL` and friends say
    (the workers behind it must use the same), one bounded pool."""
    import dataclasses

    return dataclasses.replace(StorageSettings.from_env(), **PROXY_SETTINGS)


def reap_all(backend: ProxyBackend, log: Callable[[str], None]) -> None:
    """One round of the proxy's reaper: stale trials of every study failed and retried."""
    from search.bookkeeping.optuna_compat import stale_trial_ids
    from search.running.reaper import reap_stale_trials

    for frozen in backend.get_all_studies():
        study_id = backend.get_study_id_from_name(frozen.study_name)
        if not stale_trial_ids(backend.rdb, study_id):
            continue
        study = optuna.load_study(study_name=frozen.study_name, storage=backend)
        with backend.leases.held(study_id), StudyLock(backend.rdb, study_id, log=log):
            reap_stale_trials(study, backend.rdb, lock_held=True, log=log)


def serve(
    storage_url: str | None = None,
    host: str = DEFAULT_HOST,
    port: int = DEFAULT_PORT,
    echo: Callable[[str], None] = print,
) -> None:
    """Serve the storage at `storage_url` to workers on `grpc://host:port` until interrupted,
    reaping stale trials every heartbeat interval.

    Raises `StorageError` for a storage that cannot be opened (the schema must exist: `tune
    launch` creates it), `OSError` when the port is taken.
    """
    url = resolve_url(storage_url)
    if is_proxy_url(url):
        raise StorageError(f"tune proxy needs a database URL, not another proxy: {url}")
    settings = proxy_settings()
    rdb = open_storage(url, settings=settings, on_reap=echo)
    backend = ProxyBackend(rdb, Leases())
    reaper = threading.Thread(
        target=_reap_forever, args=(backend, settings, echo), name="tune-proxy-reaper", daemon=True
    )
    reaper.start()
    echo(
        f"tune proxy for {mask_url(url)} at grpc://{host}:{port} "
        f"(at most {settings.pool_size + settings.max_overflow} database connections; "
        f"heartbeats every {settings.heartbeat_interval} s, stale after {settings.grace_period} s)"
    )
    try:
        with warnings.catch_warnings():  # "experimental" since Optuna 4.2
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            optuna.storages.run_grpc_proxy_server(
                backend, host=host, port=port, thread_pool=ThreadPoolExecutor(THREADS)
            )
    except RuntimeError as exc:  # grpc: "Failed to bind to address"
        raise OSError(f"cannot serve on {host}:{port}: {exc}") from None
    finally:
        rdb.engine.dispose()


def _reap_forever(
    backend: ProxyBackend, settings: StorageSettings, echo: Callable[[str], None]
) -> None:
    # no worker could beat while this server (or its database) was away: a grace period passes
    # after a start or an outage before anything is reaped, as in a worker's reaper
    settle_until = time.monotonic() + settings.grace_period
    failing = False
    while True:
        time.sleep(settings.heartbeat_interval)
        if time.monotonic() < settle_until:
            continue
        try:
            reap_all(backend, echo)
        except Exception as exc:
            if not failing:
                echo(f"reaper: storage call failed, will keep trying: {exc}"[:300])
            failing = True
        else:
            if failing:
                settle_until = time.monotonic() + settings.grace_period
            failing = False
