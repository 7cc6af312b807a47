"""`tune proxy`: Optuna's gRPC storage proxy in front of the study database, for many workers.

Every worker process holds a few database connections of its own (`StorageSettings`: up to 4),
so a few dozen workers exhaust PostgreSQL's `max_connections`. Workers given
`--storage grpc://HOST:PORT` (or `grpcs://` for TLS) talk to this one server instead, and only
the server talks to the database, through one bounded pool (`PROXY_SETTINGS`): the connections
stay a handful whatever the worker count.

The server is Optuna's storage service, unchanged (through it, every storage call returns what
the database holds, so the dashboard, the `optuna` CLI and a user's script see the same study as
on the database), beside tune's own service for what tune needs beyond it
(`search/bookkeeping/proxy_control.py`: heartbeats and the study lock). Both sit behind a token
and optionally TLS (`search/bookkeeping/proxy_auth.py`); the proxy binds to loopback unless told
otherwise and warns when it serves another address in plain text.

- reaping: the server runs the reaper for every study in the storage (`search/running/reaper.py`'s
  `reap_stale_trials`: fail the stale trial, enqueue its retry, which resumes from its checkpoint
  as usual); workers behind the proxy reap nothing themselves. It takes the study's lease
  exclusively, and PostgreSQL's advisory lock too, so workers that use the database directly are
  excluded as well; workers behind the proxy do not take PostgreSQL's lock, so `tune launch`
  enqueueing baselines while proxied workers start trials is not excluded (launch first, as
  compose does).
- tune's own SQL (`count_states`, `running_trials`): not available through the proxy; the worker
  reads what it needs from the trials instead (`BudgetWait` names running trials without their
  heartbeat ages).
- the artifact store (checkpoints) is a folder and never went through the storage: workers
  behind the proxy need `$TUNE_ARTIFACTS` on a shared folder exactly as before.

A restarted proxy is ridden out: workers retry the unreachable server with backoff
(`search/bookkeeping/outage.py`, gRPC's UNAVAILABLE counts as a connection error) for
`storage_down_limit`. Leases die with the server (a lease held across a restart is simply gone).
A refused token or a failed TLS handshake is no outage: the worker stops with one line.
"""

from __future__ import annotations

import dataclasses
import functools
import ipaddress
import threading
import time
import warnings
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import grpc
import optuna
from optuna.storages import RDBStorage

from search.bookkeeping.optuna_compat import (
    CachedStorage,
    ChannelGrpcStorageProxy,
    add_storage_service,
    stale_trial_ids,
)
from search.bookkeeping.proxy_auth import (
    TokenCheck,
    client_channel,
    read_token,
    server_credentials,
)
from search.bookkeeping.proxy_control import ControlClient, Leases, control_handler
from search.bookkeeping.storage import (
    StorageError,
    StorageSettings,
    StudyLock,
    mask_url,
    open_storage,
    resolve_url,
)

SCHEME, TLS_SCHEME = "grpc://", "grpcs://"
DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 13000
THREADS = 16  # server threads: concurrent requests (more wait in gRPC's queue)
# one pool for every worker behind the proxy: 8 connections, plus the reaper's lock and a spare
PROXY_SETTINGS = {"pool_size": 6, "max_overflow": 2}


def is_proxy_url(url: str | None) -> bool:
    """Whether a storage URL names a tune proxy (`grpc://HOST:PORT`, `grpcs://` for TLS)."""
    return url is not None and url.startswith((SCHEME, TLS_SCHEME))


def parse_proxy_url(url: str) -> tuple[str, int, bool]:
    """(host, port, tls) of `grpc://HOST:PORT` or `grpcs://HOST:PORT`."""
    tls = url.startswith(TLS_SCHEME)
    host, _, port = url.removeprefix(TLS_SCHEME if tls else SCHEME).rstrip("/").rpartition(":")
    if not is_proxy_url(url) or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise StorageError(
            f"not a proxy URL: {url} (e.g. grpc://127.0.0.1:{DEFAULT_PORT}, "
            f"or grpcs://proxy.example:{DEFAULT_PORT} for TLS)"
        )
    return host.strip("[]"), int(port), tls


class ProxyClient(ChannelGrpcStorageProxy):
    """Optuna's gRPC proxy client on tune's channel (token, TLS for `grpcs://`), with tune's
    own calls (`control`: heartbeats, the study lock) and the URL it was opened with."""

    def __init__(self, url: str) -> None:
        host, port, tls = parse_proxy_url(url)
        self.url = url
        with warnings.catch_warnings():  # "experimental" since Optuna 4.2
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            super().__init__(functools.partial(client_channel, host, port, tls, url))

    def _setup(self) -> None:
        super()._setup()
        self.control = ControlClient(self.channel)

    def __getstate__(self) -> dict[str, object]:
        state = super().__getstate__()
        state.pop("control", None)  # calls on the channel, which is made again
        return state

    def beat(self, trial_id: int) -> None:
        self.control.heartbeat(trial_id)


def connect(url: str) -> ProxyClient:
    """A client of the proxy at `url`. It does not wait for the server: the first call fails
    with gRPC's UNAVAILABLE while none answers, which workers ride out as an outage (a proxy
    that starts after them, or restarts)."""
    return ProxyClient(url)


# --- server side -------------------------------------------------------------------------------


def proxy_settings() -> StorageSettings:
    """The proxy's storage settings: heartbeats as `$TUNE_HEARTBEAT_INTERVAL` and friends say
    (the workers behind it must use the same), one bounded pool."""
    return dataclasses.replace(StorageSettings.from_env(), **PROXY_SETTINGS)


def reap_all(
    storage: CachedStorage, rdb: RDBStorage, leases: Leases, log: Callable[[str], None]
) -> None:
    """One round of the proxy's reaper: stale trials of every study failed and retried."""
    from search.running.reaper import reap_stale_trials

    for frozen in storage.get_all_studies():
        study_id = storage.get_study_id_from_name(frozen.study_name)
        if not stale_trial_ids(rdb, study_id):
            continue
        study = optuna.load_study(study_name=frozen.study_name, storage=storage)
        with leases.held(study_id), StudyLock(rdb, study_id, log=log):
            reap_stale_trials(study, rdb, lock_held=True, log=log)


def serve(
    storage_url: str | None = None,
    host: str = DEFAULT_HOST,
    port: int = DEFAULT_PORT,
    *,
    tls_cert: Path | None = None,
    tls_key: Path | None = None,
    echo: Callable[[str], None] = print,
) -> None:
    """Serve the storage at `storage_url` to workers on `grpc://host:port` (`grpcs://` with
    `tls_cert` and `tls_key`) until interrupted, reaping stale trials every heartbeat interval.
    Every call must carry the token of `$TUNE_PROXY_TOKEN` or `$TUNE_PROXY_TOKEN_FILE`.

    Raises `StorageError` for a storage that cannot be opened (the schema must exist: `tune
    launch` creates it), a missing token or TLS file; `OSError` when the port is taken.
    """
    url = resolve_url(storage_url)
    if is_proxy_url(url):
        raise StorageError(f"tune proxy needs a database URL, not another proxy: {url}")
    if (tls_cert is None) != (tls_key is None):
        raise StorageError(
            f"TLS needs both --tls-cert and --tls-key, but got only "
            f"{'--tls-cert' if tls_cert is not None else '--tls-key'}"
        )
    token = read_token(required=True)
    assert token is not None  # required
    credentials = (
        server_credentials(tls_cert, tls_key) if tls_cert is not None and tls_key else None
    )
    settings = proxy_settings()
    rdb = open_storage(url, settings=settings, on_reap=echo)
    storage = CachedStorage(rdb)
    leases = Leases()
    server = grpc.server(ThreadPoolExecutor(THREADS), interceptors=[TokenCheck(token, echo)])
    add_storage_service(server, storage)
    server.add_generic_rpc_handlers((control_handler(rdb, leases),))
    address = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
    try:
        if credentials is not None:
            server.add_secure_port(address, credentials)
        else:
            server.add_insecure_port(address)
    except RuntimeError as exc:  # grpc: "Failed to bind to address"
        raise OSError(f"cannot serve on {host}:{port}: {exc}") from None
    reaper = threading.Thread(
        target=_reap_forever,
        args=(storage, rdb, leases, settings, echo),
        name="tune-proxy-reaper",
        daemon=True,
    )
    reaper.start()
    scheme = TLS_SCHEME if credentials is not None else SCHEME
    echo(
        f"tune proxy for {mask_url(url)} at {scheme}{host}:{port} "
        f"(at most {settings.pool_size + settings.max_overflow} database connections; "
        f"heartbeats every {settings.heartbeat_interval} s, stale after {settings.grace_period} s; "
        f"every call needs the token)"
    )
    if credentials is None and not _is_loopback(host):
        echo(
            f"warning: serving {host} without TLS: the token and every trial cross the network "
            "in clear (give --tls-cert and --tls-key, and workers grpcs:// URLs)"
        )
    server.start()
    try:
        server.wait_for_termination()
    finally:
        server.stop(grace=None)
        rdb.engine.dispose()


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False  # a host name: it may resolve to anything


def _reap_forever(
    storage: CachedStorage,
    rdb: RDBStorage,
    leases: Leases,
    settings: StorageSettings,
    echo: Callable[[str], None],
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
            reap_all(storage, rdb, leases, echo)
        except Exception as exc:
            if not failing:
                echo(f"reaper: storage call failed, will keep trying: {exc}"[:300])
            failing = True
        else:
            if failing:
                settle_until = time.monotonic() + settings.grace_period
            failing = False
