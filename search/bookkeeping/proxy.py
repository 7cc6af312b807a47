"""The client side of `tune proxy` (`search/control/proxy_server.py`): its URLs and the storage
a worker given `--storage grpc://HOST:PORT` (`grpcs://` for TLS) talks to.

Every worker process holds a few database connections of its own (`StorageSettings`: up to 4),
so a few dozen workers exhaust PostgreSQL's `max_connections`. Workers behind the proxy talk to
it instead, and only the proxy talks to the database. A worker's client is Optuna's gRPC storage
client on tune's channel (the token, TLS: `proxy_auth.py`) with tune's own calls beside it
(`proxy_control.py`: heartbeats, the study lock).

A restarted proxy is ridden out: workers retry the unreachable server with backoff
(`search/bookkeeping/outage.py`, gRPC's UNAVAILABLE counts as a connection error) for
`storage_down_limit`. A refused token or a failed TLS handshake is no outage: the worker stops
with one line.
"""

from __future__ import annotations

import functools
import warnings

import optuna

from search.bookkeeping.optuna_compat import ChannelGrpcStorageProxy
from search.bookkeeping.proxy_auth import client_channel
from search.bookkeeping.proxy_control import ControlClient, ProxyLock
from search.bookkeeping.storage import StorageError

SCHEME, TLS_SCHEME = "grpc://", "grpcs://"
DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 13000


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

    def study_lease(self, study_id: int, holder: str, *, shared: bool) -> ProxyLock:
        return ProxyLock(self.control, study_id, holder, shared)


def connect(url: str) -> ProxyClient:
    """A client of the proxy at `url`. It does not wait for the server: the first call fails
    with gRPC's UNAVAILABLE while none answers, which workers ride out as an outage (a proxy
    that starts after them, or restarts)."""
    return ProxyClient(url)
