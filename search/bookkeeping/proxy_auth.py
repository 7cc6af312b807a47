"""Who may talk to `tune proxy`, and over what: a shared token on every call, TLS when asked.

Optuna's proxy answers every storage call of whoever reaches its port, in plain text. tune's
proxy checks a token first, on every method (Optuna's and tune's own), before the call touches
the storage: a gRPC server interceptor compares the call's `authorization: Bearer TOKEN` metadata
with its own token in constant time and answers UNAUTHENTICATED otherwise. Clients add the
metadata through a client interceptor, which also turns the proxy's refusal, and a TLS handshake
that fails, into one `ProxyRefused` line instead of a retried outage.

- The token: `$TUNE_PROXY_TOKEN`, or the file `$TUNE_PROXY_TOKEN_FILE` names (a Docker or
  Kubernetes secret), never a command line (`ps` shows those). The same on both sides.
- TLS: the proxy serves it with a certificate and key the user gives (`tune proxy --tls-cert
  --tls-key`); a worker given `grpcs://HOST:PORT` speaks only TLS and verifies the proxy's
  certificate against `$TUNE_PROXY_CA` (a file; the system's roots when unset).
  `$TUNE_PROXY_TLS_NAME` overrides the name checked, for a certificate issued to another name.
"""

from __future__ import annotations

import collections
import hmac
import os
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import grpc

from search.bookkeeping.storage import PROXY_TOKEN_ENV as TOKEN_ENV
from search.bookkeeping.storage import StorageError

TOKEN_FILE_ENV = "TUNE_PROXY_TOKEN_FILE"
CA_ENV = "TUNE_PROXY_CA"
TLS_NAME_ENV = "TUNE_PROXY_TLS_NAME"
MIN_TOKEN_LENGTH = 16  # `openssl rand -hex 32` gives 64
_HEADER = "authorization"
_SCHEME = "Bearer "
_SAY_EVERY = 60.0  # seconds between two refusal lines for the same client and reason
_HOW = f"set ${TOKEN_ENV} or ${TOKEN_FILE_ENV} to the proxy's token"


class ProxyRefused(StorageError):
    """The proxy refused this client (no token, a wrong one) or its TLS could not be agreed:
    retrying cannot help, so it is no outage."""


def read_token(required: bool) -> str | None:
    """The proxy token from the environment (`TOKEN_ENV`, else the file `TOKEN_FILE_ENV` names),
    or None when neither is set and it is not `required`."""
    token = os.environ.get(TOKEN_ENV)
    path = os.environ.get(TOKEN_FILE_ENV)
    if not token and path:
        try:
            token = Path(path).read_text().strip()
        except OSError as exc:
            raise StorageError(
                f"cannot read the proxy token from ${TOKEN_FILE_ENV}={path}: {exc.strerror or exc}"
            ) from None
    if not token:
        if required:
            raise StorageError(
                f"tune proxy needs a token that every worker gives: {_HOW} "
                f"(e.g. `openssl rand -hex 32 > token`; export {TOKEN_FILE_ENV}=token)"
            )
        return None
    if len(token) < MIN_TOKEN_LENGTH:
        raise StorageError(
            f"the proxy token must be at least {MIN_TOKEN_LENGTH} characters, but got "
            f"{len(token)} (e.g. `openssl rand -hex 32`)"
        )
    return token


# --- server side -------------------------------------------------------------------------------


class TokenCheck(grpc.ServerInterceptor):
    """Refuses every call whose token is missing or wrong, before any handler runs."""

    def __init__(self, token: str, echo: Callable[[str], None]) -> None:
        self._token = token.encode()
        self._echo = echo
        self._said: dict[tuple[str, str], float] = {}
        self._mutex = threading.Lock()

    def intercept_service(self, continuation: Callable[[Any], Any], details: Any) -> Any:
        given = dict(details.invocation_metadata or ()).get(_HEADER, "")
        if isinstance(given, bytes):
            given = given.decode(errors="replace")
        if given.startswith(_SCHEME) and hmac.compare_digest(
            given.removeprefix(_SCHEME).encode(), self._token
        ):
            return continuation(details)
        reason = "a wrong token" if given else "no token"
        return grpc.unary_unary_rpc_method_handler(
            lambda request, context: self._refuse(context, details.method, reason)
        )

    def _refuse(self, context: grpc.ServicerContext, method: str, reason: str) -> None:
        peer = context.peer().rpartition(":")[0]  # the client's address, without its port
        now = time.monotonic()
        with self._mutex:
            say = now - self._said.get((peer, reason), -_SAY_EVERY) >= _SAY_EVERY
            if say:
                self._said[(peer, reason)] = now
        if say:  # a client retrying in a loop gets one line a minute, not one per call
            self._echo(f"refused {peer}: {reason} (first call refused: {method})")
        context.abort(grpc.StatusCode.UNAUTHENTICATED, f"the proxy refused {reason}")


def server_credentials(cert: Path, key: Path) -> grpc.ServerCredentials:
    """TLS for the proxy from a PEM certificate (chain) and its private key."""
    try:
        pair = (key.read_bytes(), cert.read_bytes())
    except OSError as exc:
        raise StorageError(
            f"cannot read the proxy's TLS {'key' if exc.filename == str(key) else 'certificate'} "
            f"{exc.filename}: {exc.strerror or exc}"
        ) from None
    return grpc.ssl_server_credentials([pair])


# --- client side -------------------------------------------------------------------------------


class _CallDetails(
    collections.namedtuple(
        "_CallDetails",
        ["method", "timeout", "metadata", "credentials", "wait_for_ready", "compression"],
    ),
    grpc.ClientCallDetails,
):
    """A call's details with the token added (gRPC's own class cannot be built)."""


class TokenClient(grpc.UnaryUnaryClientInterceptor):
    """Adds the token to every call; the proxy's refusal and a failed TLS handshake become
    `ProxyRefused` (Optuna's client and tune's retries would take them for an outage)."""

    def __init__(self, token: str | None, url: str) -> None:
        self._metadata = ((_HEADER, _SCHEME + token),) if token else ()
        self._url = url

    def intercept_unary_unary(
        self, continuation: Callable[[Any, Any], Any], details: Any, request: Any
    ) -> Any:
        with_token = _CallDetails(
            details.method,
            details.timeout,
            (*(details.metadata or ()), *self._metadata),
            details.credentials,
            details.wait_for_ready,
            details.compression,
        )
        call = continuation(with_token, request)
        code = call.code()
        if code == grpc.StatusCode.UNAUTHENTICATED:
            sent = "no token" if not self._metadata else "its token"
            raise ProxyRefused(f"the proxy at {self._url} refused {sent}: {_HOW}")
        if code == grpc.StatusCode.UNAVAILABLE and "handshake failed" in (call.details() or ""):
            raise ProxyRefused(
                f"no TLS with the proxy at {self._url}: {_tls_reason(call.details())} "
                f"(does it serve TLS? ${CA_ENV} names the certificate to trust)"
            )
        return call


# OpenSSL's reasons at the end of gRPC's text ("...:CERTIFICATE_VERIFY_FAILED: self signed ...")
_TLS_REASONS = {
    "CERTIFICATE_VERIFY_FAILED": "its certificate is not trusted",
    "WRONG_VERSION_NUMBER": "the server does not speak TLS",
}


def _tls_reason(details: str) -> str:
    for reason, plain in _TLS_REASONS.items():
        if reason in details:
            return plain
    return " ".join(details.split())[-200:]


def target(host: str, port: int) -> str:
    """gRPC's address of `host`:`port` (an IPv6 host in brackets)."""
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def client_channel(host: str, port: int, tls: bool, url: str) -> grpc.Channel:
    """A channel to the proxy: TLS verified against `$TUNE_PROXY_CA` when `tls`, the token from
    the environment on every call, and a lost server retried every second at most (gRPC's
    default backoff grows to two minutes: a worker could not beat that long after a restart,
    and the proxy would reap its live trial)."""
    options: list[tuple[str, Any]] = [
        ("grpc.max_receive_message_length", -1),  # as Optuna's own channel
        ("grpc.initial_reconnect_backoff_ms", 200),
        ("grpc.min_reconnect_backoff_ms", 200),
        ("grpc.max_reconnect_backoff_ms", 1000),
    ]
    address = target(host, port)
    if tls:
        ca = os.environ.get(CA_ENV)
        try:
            roots = Path(ca).read_bytes() if ca else None
        except OSError as exc:
            raise StorageError(
                f"cannot read ${CA_ENV}={ca} (the proxy's certificate): {exc.strerror or exc}"
            ) from None
        name = os.environ.get(TLS_NAME_ENV)
        if name:
            options.append(("grpc.ssl_target_name_override", name))
        channel = grpc.secure_channel(address, grpc.ssl_channel_credentials(roots), options)
    else:
        channel = grpc.insecure_channel(address, options)
    return grpc.intercept_channel(channel, TokenClient(read_token(required=False), url))
