"""A thread in every worker that reaps dead workers' trials and keeps its own trial alive.

Optuna fails a stale trial (no heartbeat for the grace period) only when some process asks for
a trial, and a busy study may have no process asking for minutes. The reaper calls
`optuna.storages.fail_stale_trials` every heartbeat interval, so a killed worker's trial is FAIL
(and re-enqueued by the storage's retry callback) within grace + interval < 2 x grace of its
last heartbeat, whatever the other workers are doing. Several reapers may find the same trial;
the storage lets only one of them fail it, so it is retried once.

It also records a heartbeat for the trial this worker is running. Optuna's own heartbeat thread
dies at the first database error (a restart, say) and never beats again, after which the trial
would be reaped under a worker that is still training it.
"""

from __future__ import annotations

import threading
import warnings
from collections.abc import Callable

import optuna
from optuna.storages import RDBStorage

from search.storage import mask_text


class Reaper:
    """Every `interval` seconds: heartbeat `current_trial_id()` (when not None), reap stale trials.

    Errors (the database is down) are logged once per run of failures and never end the thread.
    """

    def __init__(
        self,
        study: optuna.Study,
        interval: float,
        current_trial_id: Callable[[], int | None] = lambda: None,
        log: Callable[[str], None] | None = None,
    ) -> None:
        if interval <= 0:
            raise ValueError(f"interval must be > 0 s, but got {interval=}")
        self._study = study
        self._interval = interval
        self._current_trial_id = current_trial_id
        self._log = log
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="tune-reaper", daemon=True)
        self._failing = False

    def start(self) -> Reaper:
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop and wait for the thread (at most one database call)."""
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout=30)

    def __enter__(self) -> Reaper:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def tick(self) -> None:
        """One round: beat for our trial, then reap (public so that tests can drive it)."""
        storage = self._study._storage
        trial_id = self._current_trial_id()
        if trial_id is not None and isinstance(storage, RDBStorage):
            storage.record_heartbeat(trial_id)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            optuna.storages.fail_stale_trials(self._study)

    def _run(self) -> None:
        while not self._stop.wait(self._interval):
            try:
                self.tick()
            except Exception as exc:
                if not self._failing and self._log is not None:
                    reason = mask_text(" ".join(str(exc).split()))[:200]
                    self._log(f"reaper: storage call failed, will keep trying: {reason}")
                self._failing = True
            else:
                self._failing = False
