"""The start gate: may this worker start a trial now, and holding which lock?

A worker asks `StartGate.claim()` before each trial. The answer is a held study lock (the trial
may start; the trial's run releases the lock once the trial is RUNNING) or why not: "budget" (the
study's budget is spent) or "wait" (running trials hold the rest; the gate has waited one poll
interval, saying why in the log: `BudgetWait`).

Two ways through, so that trial starts scale with the workers:

- **racing**, while the budget is far from spent: hold the study lock *shared* (`StudyLock`,
  PostgreSQL or the proxy), count the other starters holding it, and start when
  `decide(racing=...)` leaves room for all of them. Each starter holds the lock from before it
  counts the holders until its trial is RUNNING, so of any two starters the later one counts the
  earlier or sees its trial: room for every racer means none overshoots the budget.
- **exclusive**, otherwise (near the end of the budget, a stale trial to reap, a retry waiting,
  a confirm study, SQLite): hold the study lock alone, read the study's budget use (trials
  finished, epochs trained and promised to running trials, for every process on every machine:
  `search/bookkeeping/budget.py`) and decide with nobody else starting; reap stale trials (a dead
  worker's trial may hold the budget) before waiting and before starting.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable
from typing import Literal, Protocol

import optuna
from optuna.trial import TrialState

from search.bookkeeping.budget import BudgetUse, decide
from search.bookkeeping.optuna_compat import RunningTrial, running_trials, stale_trial_ids, study_id
from search.bookkeeping.study_lock import StudyLock
from search.confirm.plan import decide_enqueued
from search.control.failpoints import failpoint
from search.control.reaper import reap_stale_trials
from search.study.study_file import StudySpec

NoStart = Literal["budget", "wait"]


class GateStudy(Protocol):
    """What the gate needs of its study (`ManagedStudy` has it): the study, its storage (and the
    RDB storage under it, None behind the proxy), its id, its budget use and stored spec."""

    @property
    def study(self) -> optuna.Study: ...
    @property
    def rdb(self) -> optuna.storages.RDBStorage | None: ...
    @property
    def storage(self) -> optuna.storages.BaseStorage: ...
    @property
    def id(self) -> int: ...
    def budget_use(self, spec: StudySpec) -> BudgetUse: ...
    def stored_spec(self) -> StudySpec | None: ...


class _Counts(Protocol):
    started_racing: int  # trials this worker started holding the lock shared


class _Stop(Protocol):
    def wait(self, seconds: float) -> None: ...


class GateContext(Protocol):
    """What the gate needs of its worker (the worker's `WorkerContext` has it): the study's
    spec, whether it only runs enqueued trials, its log, its counts and its stop."""

    @property
    def spec(self) -> StudySpec: ...
    @property
    def enqueued_only(self) -> bool: ...
    @property
    def log(self) -> Callable[[str], None]: ...
    @property
    def tally(self) -> _Counts: ...
    @property
    def stop(self) -> _Stop: ...


class StartGate:
    """The worker's way to a trial start; see the module docstring. A worker opens it through
    its study's manager (`ManagedStudy.open_gate`, search/control/study_manager.py)."""

    def __init__(
        self,
        managed: GateStudy,
        ctx: GateContext,
        poll_interval: float,
        fast_starts: bool = True,
    ) -> None:
        self.managed = managed
        self.study = managed.study
        self.rdb = managed.rdb  # None behind `tune proxy`, which reaps for its workers
        self.ctx = ctx
        self.poll_interval = poll_interval
        storage = managed.storage
        self._storage = storage
        self._sid = managed.id
        self._racing = fast_starts and not ctx.enqueued_only and StudyLock.shares(storage)
        self.waiting = BudgetWait(managed.rdb, ctx.log)

    def claim(self, patient: bool = True) -> StudyLock | NoStart:
        """A held lock under which this worker may start one trial, or why it may not.
        `patient=False`: on "wait", return at once instead of waiting a poll interval."""
        if self._racing:
            shared = StudyLock(self._storage, self._sid, shared=True, log=self.ctx.log)
            shared.acquire()
            try:
                may_start = self._may_start_racing(shared.holders() - 1)
            except BaseException:
                shared.release()
                raise
            if may_start:
                self.waiting.over("a slot is free")
                self.ctx.tally.started_racing += 1
                failpoint("claim-taken")
                return shared
            shared.release()
        lock = StudyLock(self._storage, self._sid, log=self.ctx.log)
        lock.acquire()
        try:
            decision = self._decide_alone(patient)
        except BaseException:
            lock.release()
            raise
        if decision == "start":
            failpoint("claim-taken")
            return lock
        lock.release()
        if decision == "wait" and patient:
            self.ctx.stop.wait(self.poll_interval)
        return decision

    def _may_start_racing(self, racing: int) -> bool:
        spec = self.current_spec()
        decision, _ = decide(spec, self.managed.budget_use(spec), racing=racing)
        return decision == "start" and (
            self.rdb is None or not stale_trial_ids(self.rdb, self._sid)
        )

    def _decide_alone(self, patient: bool) -> Literal["start", "budget", "wait"]:
        """Under the exclusive lock: the budget's decision, reaping on the way."""
        spec = self.current_spec()
        decision, why = decide(spec, self.managed.budget_use(spec))
        if decision == "start" and self.ctx.enqueued_only:
            decision, why = decide_enqueued(self.study)
        if decision == "spent":
            self.waiting.over("the budget is spent")
            self.ctx.log(f"the budget is spent: {why}")
            return "budget"
        # running trials may hold the rest of the budget; one may still fail (or its worker be
        # dead) and free it: reap stale ones before waiting. And before a new trial: tune reaps
        # itself (Optuna's own reaping inside `ask` is off, search/bookkeeping/optuna_compat.py),
        # and a retry waiting is the trial this worker should get
        self._reap()
        if decision == "wait":
            if patient:
                self.waiting.still(self.study, why)
            return "wait"
        self.waiting.over("a slot is free")
        return "start"

    def _reap(self) -> None:
        if self.rdb is not None:  # behind a proxy, the proxy reaps
            reap_stale_trials(self.study, self.rdb, lock_held=True)

    def current_spec(self) -> StudySpec:
        """The worker's spec with the budget stored now: a later `tune launch --n-trials N` (or
        --budget-epochs) may have raised it."""
        stored = self.managed.stored_spec()
        spec = self.ctx.spec
        return spec if stored is None else dataclasses.replace(spec, budget=stored.budget)


class BudgetWait:
    """Says why a worker waits while running trials hold the rest of the budget.

    A line when the wait starts and every `every` seconds while it lasts, naming each running
    trial with the age of its heartbeat (on the database's clock) and the grace period after
    which a silent one is reaped; a line when the wait ends. The wait itself is bounded by the
    reaping: every RUNNING trial beats, finishes, or is failed within grace + interval of going
    silent.
    """

    def __init__(
        self,
        rdb: optuna.storages.RDBStorage | None,
        log: Callable[[str], None],
        every: float = 30.0,
    ) -> None:
        self._rdb = rdb
        self._log = log
        self._every = every
        self._since: float | None = None
        self._next_line = 0.0

    def still(self, study: optuna.Study, why: str) -> None:
        now = time.monotonic()
        if self._since is None:
            self._since = now
        elif now < self._next_line:
            return
        self._next_line = now + self._every
        if self._rdb is None:
            # behind a proxy: no heartbeat ages (tune's SQL does not go through it)
            running = study.get_trials(deepcopy=False, states=(TrialState.RUNNING,))
            holding = ", ".join(f"trial {t.number}" for t in running)
            self._log(
                f"waiting {now - self._since:.0f} s: {why} ({holding or 'none left'}); "
                "the proxy reaps silent ones"
            )
            return
        grace = self._rdb.grace_period or 0
        running_now = running_trials(self._rdb, study_id(study))
        holding = ", ".join(_describe_running(t) for t in running_now)
        self._log(
            f"waiting {now - self._since:.0f} s: {why} ({holding or 'none left'}); reaping "
            f"silent ones after {grace} s without a heartbeat"
        )

    def over(self, why: str) -> None:
        if self._since is not None:
            self._log(f"waited {time.monotonic() - self._since:.0f} s: {why}")
            self._since = None


def _describe_running(trial: RunningTrial) -> str:
    if trial.heartbeat_ago is None:
        return f"trial {trial.number}: no heartbeat yet, started {trial.started_ago:.0f} s ago"
    return f"trial {trial.number}: heartbeat {trial.heartbeat_ago:.0f} s ago"
