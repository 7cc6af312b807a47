"""A chaos supervisor: real `tune worker` processes on PostgreSQL, killed at random instants.

The kind of test Ray Tune runs: while a study runs, a supervisor SIGKILLs a random worker every
few seconds (a bounded number of times) and starts a new one in its place, as a preemptible pool
or a crashing node would. Random kills from outside rarely land in the narrow windows that matter
(most hit a worker loading its data), so the workers also arm fail points
(`search/control/failpoints.py`): they kill themselves while holding the study lock, right after a
trial is created (before its first heartbeat), or between an evaluation and its checkpoint. With
`outage` set (a stop and a start of the test's own PostgreSQL server), some disruptions are database
outages instead.

`run_chaos` returns what happened; `check_study` asserts what must hold at the end. Used by
`test_reliability_chaos.py` (CI size) and `tests/search/chaos_soak.py` (a longer soak).
"""

from __future__ import annotations

import datetime as dt
import random
import signal
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from optuna.trial import FrozenTrial, TrialState

from search.bookkeeping import trial_record
from tests.search.reliability_support import (
    Worker,
    fast_env,
    finished,
    make_study,
    start_worker,
    states,
    trials,
)

FAILPOINTS = "claim-taken=0.05,trial-created=0.2,eval-recorded=0.05"


@dataclass(frozen=True)
class ChaosPlan:
    """How much chaos: every number is an upper bound, so a run always ends."""

    workers: int = 3
    n_trials: int = 12
    epochs: int = 3
    step_seconds: float = 0.25  # the fake trainer's epoch
    kills: int = 6  # SIGKILLs the supervisor sends
    failpoint_deaths: int = 4  # replacements are armed until this many died at a fail point
    outages: int = 0  # database stops (needs `outage`)
    gap: tuple[float, float] = (0.5, 3.0)  # seconds between disruptions, uniform
    outage_seconds: tuple[float, float] = (0.3, 3.0)  # how long the database stays down
    time_limit: float = 300.0
    seed: int = 0


@dataclass(frozen=True)
class Death:
    worker_id: str
    at: dt.datetime  # wall clock of this machine, naive local (as Optuna's datetimes)
    cause: str  # "kill" (the supervisor) | "failpoint" (the worker itself)


@dataclass
class ChaosRun:
    """What a chaos run did, and the study it left."""

    deaths: list[Death] = field(default_factory=list)
    outages: list[float] = field(default_factory=list)  # seconds each outage lasted
    workers_started: int = 0
    seconds: float = 0.0
    trials: list[FrozenTrial] = field(default_factory=list)
    workers: list[Worker] = field(default_factory=list)

    def logs(self) -> str:
        return "\n".join(f"--- {w.log.name}\n{w.text()[-3000:]}" for w in self.workers)

    def lost(self) -> list[FrozenTrial]:
        """Trials failed because their worker died (reaped), with the retry of each."""
        return [t for t in self.trials if t.state == TrialState.FAIL]

    def running_after_death(self) -> dict[int, float]:
        """Per reaped trial: seconds from its worker's death to FAIL in the storage.

        A trial whose worker died before recording its placement cannot be matched to its death;
        for it the time since it started counts, an upper bound.
        """
        died = {d.worker_id: d.at for d in self.deaths}
        seconds = {}
        for t in self.lost():
            if t.datetime_complete is None or t.datetime_start is None:
                continue
            since = died.get(trial_record.read_placement(t).get("worker") or "", t.datetime_start)
            seconds[t.number] = (t.datetime_complete - since).total_seconds()
        return seconds

    def longest_running_after_death(self) -> float:
        return max(self.running_after_death().values(), default=0.0)

    def summary(self) -> str:
        kills = sum(d.cause == "kill" for d in self.deaths)
        return (
            f"{len(self.deaths)} worker deaths ({kills} SIGKILLs, {len(self.deaths) - kills} at "
            f"fail points), {len(self.outages)} database outages "
            f"({', '.join(f'{s:.1f}' for s in self.outages) or '-'} s), "
            f"{self.workers_started} workers started, {len(self.lost())} trials reaped and "
            f"retried, {len(self.trials)} trials in all ({states(self.trials)}), "
            f"{self.seconds:.0f} s; RUNNING after its worker died: "
            + ", ".join(f"trial {n} {s:.1f} s" for n, s in self.running_after_death().items())
        )


def run_chaos(
    url: str,
    tmp_path: Path,
    plan: ChaosPlan,
    outage: Callable[[float], None] | None = None,
) -> ChaosRun:
    """Run the `smoke` study at `url` to its budget under `plan`'s disruptions.

    `outage(seconds)` takes the database away for that long (and brings it back). Raises
    AssertionError with the workers' logs when a worker fails otherwise or the time runs out.
    """
    rng = random.Random(plan.seed)
    make_study(url, n_trials=plan.n_trials, epochs=plan.epochs)
    # retries without limit: a trial may be hit more than once, and none may be given up
    base = fast_env(
        tmp_path,
        FAKE_STEP_SECONDS=str(plan.step_seconds),
        TUNE_MAX_RETRY="100",
        TUNE_STORAGE_DOWN_LIMIT="120",
    )
    run = ChaosRun()
    started = time.monotonic()
    alive: list[Worker] = []
    sent: set[int] = set()  # pids the supervisor killed
    disruptions = {"kill": plan.kills, "outage": plan.outages if outage else 0}

    def spawn() -> None:
        armed = sum(d.cause == "failpoint" for d in run.deaths) < plan.failpoint_deaths
        env = {**base, "TUNE_FAILPOINTS": FAILPOINTS} if armed else base
        w = start_worker(url, tmp_path, env, f"worker-{run.workers_started:02d}")
        run.workers_started += 1
        run.workers.append(w)
        alive.append(w)

    try:
        for _ in range(plan.workers):
            spawn()
        next_disruption = time.monotonic() + rng.uniform(*plan.gap)
        while alive:
            if time.monotonic() - started > plan.time_limit:
                raise AssertionError(
                    f"the study did not finish in {plan.time_limit:.0f} s "
                    f"({states(trials(url))}):\n{run.logs()}"
                )
            for w in list(alive):
                code = w.proc.poll()
                if code is None:
                    continue
                alive.remove(w)
                if code == 0:
                    continue  # the budget is spent: it stopped by itself
                if code != -signal.SIGKILL:
                    raise AssertionError(f"{w.log.name} exited with {code}:\n{w.text()}")
                cause = "kill" if w.proc.pid in sent else "failpoint"
                run.deaths.append(Death(w.worker_id, dt.datetime.now(), cause))
                spawn()  # a new worker takes its place, as a pool would
            left = [kind for kind, n in disruptions.items() if n > 0]
            if alive and left and time.monotonic() >= next_disruption:
                kind = rng.choice(left)
                disruptions[kind] -= 1
                if kind == "kill":
                    victim = rng.choice(alive)
                    sent.add(victim.proc.pid)
                    victim.signal(signal.SIGKILL)
                else:
                    assert outage is not None
                    seconds = rng.uniform(*plan.outage_seconds)
                    outage(seconds)
                    run.outages.append(seconds)
                next_disruption = time.monotonic() + rng.uniform(*plan.gap)
            time.sleep(0.05)
    finally:
        for w in alive:
            w.stop()
    run.seconds = time.monotonic() - started
    run.trials = trials(url)
    return run


def check_study(run: ChaosRun, n_trials: int) -> None:
    """What must hold after any amount of chaos: the budget exactly, nothing left behind, every
    reaped trial retried with its parameters."""
    all_trials = run.trials
    why = f"{states(all_trials)}\n{run.logs()}"
    assert finished(all_trials) == n_trials, why  # no trial lost, no overshoot
    assert not [t for t in all_trials if t.state in (TrialState.RUNNING, TrialState.WAITING)], why
    assert [t.number for t in all_trials] == list(range(len(all_trials))), why
    retried = {trial_record.read_retry_of(t): t for t in all_trials}
    for dead in run.lost():
        retry = retried.get(dead.number)
        assert retry is not None, f"trial {dead.number} was never retried: {why}"
        # a trial killed before it drew its values has none to keep; a baseline keeps its own
        assert all(retry.params.get(k) == v for k, v in dead.params.items()), (dead, retry)
        assert trial_record.read_baseline(retry) == trial_record.read_baseline(dead)
