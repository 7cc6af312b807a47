"""`tune proxy`: one server between many workers and the study database.

Only the server talks to the database, through one bounded pool (`PROXY_SETTINGS`): the
connections stay a handful whatever the worker count. Workers reach it with
`search/bookkeeping/proxy.py`'s client.

The server is Optuna's storage service, unchanged (through it, every storage call returns what
the database holds, so the dashboard, the `optuna` CLI and a user's script see the same study as
on the database), beside tune's own service for what tune needs beyond it
(`search/bookkeeping/proxy_control.py`: heartbeats and the study lock). Both sit behind a token
and optionally TLS (`search/bookkeeping/proxy_auth.py`); the proxy binds to loopback unless told
otherwise and warns when it serves another address in plain text.

- reaping: the server runs the reaper for every study in the storage (`search/control/reaper.py`'s
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

Leases die with the server (a lease held across a restart is simply gone).
"""

from __future__ import annotations

import dataclasses
import ipaddress
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import grpc
import optuna
from optuna.storages import RDBStorage

from search.bookkeeping.optuna_compat import CachedStorage, add_storage_service, stale_trial_ids
from search.bookkeeping.proxy import DEFAULT_HOST, DEFAULT_PORT, SCHEME, TLS_SCHEME, is_proxy_url
from search.bookkeeping.proxy_auth import TokenCheck, read_token, server_credentials, target
from search.bookkeeping.proxy_control import Leases, control_handler
from search.bookkeeping.storage import (
    StorageError,
    StorageSettings,
    mask_url,
    open_storage,
    resolve_url,
)
from search.bookkeeping.study_lock import StudyLock
from search.control.reaper import reap_stale_trials

THREADS = 16  # server threads: concurrent requests (more wait in gRPC's queue)
# one pool for every worker behind the proxy: 8 connections, plus the reaper's lock and a spare
PROXY_SETTINGS = {"pool_size": 6, "max_overflow": 2}


def proxy_settings() -> StorageSettings:
    """The proxy's storage settings: heartbeats as `$TUNE_HEARTBEAT_INTERVAL` and friends say
    (the workers behind it must use the same), one bounded pool."""
    return dataclasses.replace(StorageSettings.from_env(), **PROXY_SETTINGS)


def reap_all(
    storage: CachedStorage, rdb: RDBStorage, leases: Leases, log: Callable[[str], None]
) -> None:
    """One round of the proxy's reaper: stale trials of every study failed and retried."""
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
    address = target(host, port)
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
