"""The study lock: one lock over one study, shared by every process on every machine using the
storage, with one back end per kind of storage.

Exclusive (the default): one holder at a time. Launch holds it while enqueueing baselines, a
reaper while it fails and re-enqueues a stale trial, and a worker from "is there budget left?"
until its new trial is RUNNING when the budget is nearly spent, so that two workers never both
take the last trial. `shared=True` is a worker's claim while the budget is far from spent
(`search/control/start_gate.py`): any number of starters hold it at once, `holders()` says how
many, and none holds it while an exclusive holder has it or waits for it (so starters never see
a reaper's half-done work, and a waiting exclusive taker is not starved).

Back ends, chosen once by the storage:

- PostgreSQL: a session advisory lock in either mode, released by the server if the process dies
  (`search/bookkeeping/advisory_lock.py`);
- a worker behind `tune proxy`: a lease held in the proxy (`search/bookkeeping/proxy_control.py`
  `ProxyLock`);
- SQLite (one machine): an flock on a file, exclusive only (`shares()` is False: a claim there
  is an exclusive lock; `search/bookkeeping/file_lock.py`);
- any other storage (Optuna's in-memory one): no lock.

Each back end tries for a bounded time; this module waits, and a wait is never silent: every
`say_every` seconds a line to `log` says how long this process has waited and who holds the lock
(on PostgreSQL the server process: a holder that is paused or cut off keeps it until its
connection drops). `release()` may be called early and more than once.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Protocol

import optuna
from optuna.storages import RDBStorage

from search.bookkeeping.advisory_lock import AdvisoryLock
from search.bookkeeping.file_lock import FileLock
from search.bookkeeping.optuna_compat import ChannelGrpcStorageProxy

if TYPE_CHECKING:  # gRPC is loaded only where the proxy is used
    from search.bookkeeping.proxy_control import ProxyLock


class LockAbandoned(RuntimeError):
    """A wait for the study lock was given up (the waiting thread is stopping)."""


class LockBackEnd(Protocol):
    """One process's hold on the lock of one kind of storage."""

    def try_acquire(self, seconds: float) -> bool: ...  # wait up to `seconds`; True: held
    def holder(self) -> str: ...  # who holds it, for a line saying what a wait waits for
    def holders(self) -> int: ...  # shared holders, this one included (a shared mode only)
    def release(self, held: bool) -> None: ...  # unlock when `held`; free what it opened


class StudyLock:
    """The study lock; see the module docstring."""

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
        if shared and not StudyLock.shares(storage):
            raise ValueError(f"the study lock has no shared mode on {_kind(storage)}")
        self._storage = storage
        self._study_id = study_id
        self._shared = shared
        # asked between tries while waiting: True gives the wait up (`LockAbandoned`), so that a
        # thread that stops (the reaper) does not hold up its process for a lock it no longer needs
        self._abandon = abandon
        self._log = log
        self._say_every = say_every
        self._held: LockBackEnd | None = None

    @staticmethod
    def shares(storage: optuna.storages.BaseStorage) -> bool:
        """Whether the lock has a shared mode on `storage` (PostgreSQL, the proxy)."""
        return _kind(storage) in ("postgresql", "proxy")

    def holders(self) -> int:
        """How many processes hold the lock shared now, this one included (shared mode only)."""
        if not self._shared:
            raise ValueError("holders() counts shared holders; this lock is exclusive")
        if self._held is None:
            raise RuntimeError("holders() of a shared lock that is not held")
        return self._held.holders()

    def acquire(self) -> StudyLock:
        back_end = self._back_end()
        if back_end is None:
            return self
        try:
            self._wait_for(back_end)
        except BaseException:
            back_end.release(held=False)
            raise
        self._held = back_end
        return self

    def release(self) -> None:
        held, self._held = self._held, None
        if held is not None:
            held.release(held=True)

    def __enter__(self) -> StudyLock:
        return self.acquire()

    def __exit__(self, *exc: object) -> None:
        self.release()

    def _back_end(self) -> LockBackEnd | None:
        storage, kind = self._storage, _kind(self._storage)
        if kind == "postgresql" and isinstance(storage, RDBStorage):
            return AdvisoryLock(storage, self._study_id, self._shared)
        if kind == "sqlite" and isinstance(storage, RDBStorage):
            return FileLock(storage, self._study_id)
        if kind == "proxy" and isinstance(storage, ChannelGrpcStorageProxy):
            holder = f"{os.getpid()}:{id(self)}:{time.monotonic()}"
            lease: ProxyLock = storage.study_lease(self._study_id, holder, shared=self._shared)
            return lease
        return None

    def _wait_for(self, back_end: LockBackEnd) -> None:
        started = next_line = time.monotonic()
        # each try is bounded so that we can say why we wait, and shorter when the wait may be
        # abandoned
        bound = self._say_every if self._abandon is None else min(self._say_every, 0.5)
        while not back_end.try_acquire(bound):
            if self._abandon is not None and self._abandon():
                raise LockAbandoned(f"gave up waiting for the lock of study {self._study_id}")
            if time.monotonic() - next_line < self._say_every - 0.01:
                continue
            next_line = time.monotonic()
            if self._log is not None:
                waited = time.monotonic() - started
                self._log(f"waiting {waited:.0f} s for the study lock, {back_end.holder()}")


def _kind(storage: optuna.storages.BaseStorage) -> str:
    if isinstance(storage, RDBStorage):
        return str(storage.engine.dialect.name)
    if isinstance(storage, ChannelGrpcStorageProxy):
        return "proxy"
    return type(storage).__name__
