"""Riding out a database that goes away (a restart, a network cut): how long, and how to tell.

`retry_while_down` retries a storage call with backoff while the error says the database cannot
be reached, and gives up with `StorageDown` after `storage_down_limit` seconds, timed from the
first failure by an `Outage` that a worker shares between its loop and its trial's writes.
Any other error propagates at once.
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable
from typing import TypeVar

import sqlalchemy as sa

from search.bookkeeping.storage import StorageDown, mask_text

T = TypeVar("T")


def is_connection_error(exc: BaseException) -> bool:
    """Whether `exc` (or an exception it came from) says the database cannot be reached.

    Optuna wraps driver errors (`StorageInternalError`) and may raise a second error while
    handling the first, so the whole chain is searched.
    """
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        if _is_refusal(current):
            return False
        if isinstance(current, sa.exc.OperationalError | sa.exc.InterfaceError):
            return True
        if isinstance(current, sa.exc.DBAPIError) and current.connection_invalidated:
            return True
        if _proxy_unreachable(current):
            return True
        current = current.__cause__ or current.__context__
    return False


def _proxy_unreachable(exc: BaseException) -> bool:
    """A `tune proxy` that does not answer (gRPC's UNAVAILABLE: not started yet, restarting), or
    one whose database does not (the server's error comes back as UNKNOWN with its text)."""
    code = getattr(exc, "code", None)
    if not callable(code) or not type(exc).__module__.startswith("grpc"):
        return False
    status = getattr(code(), "name", "")
    details = getattr(exc, "details", None)
    text = str(details()) if callable(details) else ""
    return status == "UNAVAILABLE" or (status == "UNKNOWN" and "OperationalError" in text)


# A server that answered and said no (waiting will not change its mind). psycopg2 gives no
# SQLSTATE for errors while connecting, so its words are matched: no such database or role, bad
# password, no pg_hba.conf entry. "The database system is starting up" stays an outage.
_REFUSAL = re.compile(
    r"FATAL: +(database .* does not exist|role .* does not exist|password authentication failed"
    r"|no pg_hba\.conf entry)"
)


def _is_refusal(exc: BaseException) -> bool:
    orig = getattr(exc, "orig", None)
    return isinstance(exc, sa.exc.DBAPIError) and bool(_REFUSAL.search(str(orig)))


class Outage:
    """Since when the database has been unreachable (None: it answered last time).

    Shared by the calls of one thread, so that an outage is timed from the first failure
    whichever call saw it, and the limit is not restarted by every new caller.
    """

    def __init__(self) -> None:
        self.since: float | None = None

    def failed(self) -> float:
        """Note a failure; the seconds since the first failure of this outage."""
        now = time.monotonic()
        if self.since is None:
            self.since = now
        return now - self.since

    def ended(self) -> None:
        self.since = None


def connection_reason(exc: BaseException) -> str:
    """One masked line: the driver's own words for the connection error behind `exc` (Optuna's
    wrapper only says that "an exception is raised during the commit")."""
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        if isinstance(current, sa.exc.DBAPIError):
            return _one_line(current.orig or current)
        current = current.__cause__ or current.__context__
    return _one_line(exc)


def retry_while_down(
    call: Callable[[], T],
    *,
    limit: float,
    what: str = "the storage",
    outage: Outage | None = None,
    sleep: Callable[[float], None] = time.sleep,
    should_stop: Callable[[], bool] = lambda: False,
    log: Callable[[str], None] | None = None,
) -> T:
    """`call()`, retried with backoff (0.5 s doubling to 10 s) while the database is unreachable.

    Raises `StorageDown` once it has been unreachable for `limit` seconds, timed by `outage`
    (or a stop is requested meanwhile); any other error propagates at once.
    """
    outage = outage or Outage()
    delay = 0.5
    while True:
        try:
            result = call()
        except Exception as exc:
            if not is_connection_error(exc):
                raise
            down = outage.failed()
            reason = connection_reason(exc)
            if down >= limit or should_stop():
                raise StorageDown(
                    f"{what} has been unreachable for {down:.0f} s (limit {limit:.0f} s), "
                    f"giving up: {reason}"
                ) from None
            if log is not None:
                log(f"{what} is unreachable, retrying in {delay:.1f} s: {reason}")
            sleep(min(delay, max(0.0, limit - down)))
            delay = min(10.0, delay * 2)
        else:
            outage.ended()
            return result


def _one_line(exc: BaseException) -> str:
    return mask_text(" ".join(str(exc).split()))[:300]
