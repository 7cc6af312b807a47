"""A thread in every worker that reaps dead workers' trials and keeps its own trial alive.

A trial is stale with no heartbeat for the grace period, or no heartbeat at all and RUNNING that
long (`search/optuna_compat.stale_trial_ids`). Optuna would fail stale trials only when some
process asks for a trial (a busy study may have none asking for minutes), and in an unsafe order;
with tune's storage it does not at all, and tune reaps: this thread, a worker that waits for the
budget, and a worker before it starts a trial under the exclusive lock. The reaper looks every
heartbeat interval, so a killed worker's trial is FAIL (and re-enqueued by the storage's retry
callback) within grace + interval < 2 x grace of its last heartbeat, whatever the other workers
are doing. Re-enqueueing and failing happen under the study lock, in that order
(`reap_stale_trials`), so that no worker counts the budget between the two and a reaper killed
between them loses no retry; so each stale trial is retried once.

It also records a heartbeat for every trial this worker is running, and keeps beating through a
database outage (Optuna's own heartbeat thread, which only `study.optimize` starts and tune does
not use, dies at the first database error). After an outage the reaper waits one grace period
before it reaps again: no worker could write a heartbeat while the database was away.
"""

from __future__ import annotations

import contextlib
import copy
import threading
import time
from collections.abc import Callable, Collection

import optuna
from optuna.exceptions import UpdateFinishedTrialError
from optuna.trial import TrialState

from search.bookkeeping.optuna_compat import (
    record_heartbeat,
    stale_trial_ids,
    study_id,
    study_storage,
)
from search.bookkeeping.outage import connection_reason, is_connection_error
from search.bookkeeping.storage import mask_text
from search.bookkeeping.study_lock import LockAbandoned, StudyLock


def reap_stale_trials(
    study: optuna.Study,
    rdb: optuna.storages.RDBStorage,
    *,
    lock_held: bool = False,
    log: Callable[[str], None] | None = None,
    abandon: Callable[[], bool] | None = None,
) -> None:
    """Enqueue the retry of each stale trial, then fail it, under the study lock.

    Two things differ from `optuna.storages.fail_stale_trials`, which fails the trials first
    and enqueues their retries after:

    - the lock: a worker that counted the budget between the two steps saw a slot free that the
      retry was about to fill, started a fresh trial instead, and the study ended with the retry
      left WAITING. Workers count under the same lock, so nobody sees the in-between state;
    - the order: a reaper killed between the steps leaves the stale trial RUNNING with its retry
      already WAITING, and the next reaper only fails it (it sees the retry), where Optuna's order
      left a FAIL trial that nothing would ever retry.

    The lock is taken only when there is something to reap (one read otherwise); `lock_held`
    says the caller holds it already; `abandon()` True gives up waiting for it (`LockAbandoned`).
    """
    sid = study_id(study)
    if not stale_trial_ids(rdb, sid):
        return
    with contextlib.nullcontext() if lock_held else StudyLock(rdb, sid, log=log, abandon=abandon):
        storage = study_storage(study)
        retry = rdb.get_heartbeat_stale_trial_callback()
        retried = {
            chain[-1]
            for t in study.get_trials(deepcopy=False)
            if (chain := t.system_attrs.get("retry_history"))
        }
        for tid in stale_trial_ids(rdb, sid):  # looked at again, under the lock
            stale = copy.deepcopy(storage.get_trial(tid))
            if retry is not None and stale.number not in retried:
                retry(study, stale)
            with contextlib.suppress(UpdateFinishedTrialError):
                storage.set_trial_state_values(tid, state=TrialState.FAIL)


class Reaper:
    """Every `interval` seconds: heartbeat the trials `running_trial_ids()` names (this worker's:
    one, or a pack's), then reap stale trials.

    Errors (the database is down) are logged once per run of failures and never end the thread;
    after one, reaping resumes only when the database has answered for `settle` seconds. With
    `rdb` None (a worker behind `tune proxy`, which reaps for everyone) it only beats.
    """

    def __init__(
        self,
        study: optuna.Study,
        rdb: optuna.storages.RDBStorage | None,
        interval: float,
        running_trial_ids: Callable[[], Collection[int]] = tuple,
        log: Callable[[str], None] | None = None,
        settle: float = 0.0,
    ) -> None:
        if interval <= 0:
            raise ValueError(f"interval must be > 0 s, but got {interval=}")
        self._study = study
        self._rdb = rdb
        self._interval = interval
        self._running_trial_ids = running_trial_ids
        self._log = log
        self._settle = settle
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="tune-reaper", daemon=True)
        self._failing = False
        self._answered_since = float("-inf")  # the database has answered since then

    def start(self) -> Reaper:
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop and wait for the thread (at most one database call: a wait for the study lock is
        given up)."""
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout=30)

    def __enter__(self) -> Reaper:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def tick(self) -> None:
        """One round: beat for our trials, then reap (public so that tests can drive it)."""
        for trial_id in list(self._running_trial_ids()):  # a copy: the set changes meanwhile
            record_heartbeat(self._study, trial_id)
        if self._rdb is None or time.monotonic() - self._answered_since < self._settle:
            return
        # a reaper that stops gives up waiting for the study lock: the other workers' reapers reap
        with contextlib.suppress(LockAbandoned):
            reap_stale_trials(self._study, self._rdb, log=self._log, abandon=self._stop.is_set)

    def _run(self) -> None:
        while not self._stop.wait(self._interval):
            try:
                self.tick()
            except Exception as exc:
                if not self._failing and self._log is not None:
                    self._log(f"reaper: storage call failed, will keep trying: {_reason(exc)}")
                self._failing = True
            else:
                if self._failing:
                    self._answered_since = time.monotonic()
                self._failing = False


def _reason(exc: BaseException) -> str:
    return connection_reason(exc) if is_connection_error(exc) else mask_text(str(exc))[:200]
