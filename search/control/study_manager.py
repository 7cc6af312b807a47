"""The study-manager layer: what workers, `tune launch`, `tune status` and the benchmarks ask of a
study, in one place.

`ManagedStudy` holds an opened Optuna study, the RDB storage under it (None behind `tune proxy`,
which does the database's side for its workers: search/control/proxy_server.py) and the
storage's id of the study, and answers:

- `stored_spec()`: the study file `tune launch` stored with the study (search/study/study_file.py);
- `counts()`: trials by state (in the database when tune's SQL reaches it);
- `budget_use(spec)`: what the study has spent and promised of its budget
  (search/bookkeeping/budget.py);
- `extend_hold(trial, step, spec)`: under the study lock, raise a kept trial's hold on the epoch
  budget, or say that the budget cannot pay for its next stop point;
- `race(trial, spec)`: under the study lock, enqueue the next race of a challenger (a setting
  that beat the incumbent on one seed) against the incumbent, when none is running and the
  budget pays for it (search/confirm/incumbent.py);
- `fail_running(worker_id, ...)`: fail what these workers left RUNNING ("interrupted");
- `claim()`: a worker's way to a trial start, through its start gate
  (search/control/start_gate.py);
- `lock()`: the study lock (search/bookkeeping/study_lock.py `StudyLock`).

`ManagedStudy.open(url, name)` opens one (a database URL, or `tune proxy`'s address), and
`searching(sampler, pruner)` gives the same study with what a worker asks and prunes with.

Callers hold a `ManagedStudy` instead of reaching for `count_states`, `StudyLock`, study ids or
the stored spec themselves; the storage details stay here and in the modules named above.
"""

from __future__ import annotations

import dataclasses
from collections import Counter
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING

import optuna
from optuna.trial import FrozenTrial, TrialState

from search.bookkeeping import trial_record
from search.bookkeeping.budget import BudgetUse, extended_hold, race_room, use_of
from search.bookkeeping.optuna_compat import study_id, study_storage, trial_id
from search.bookkeeping.storage import (
    StateCounts,
    StorageSettings,
    count_states,
    load_study,
    open_storage,
)
from search.bookkeeping.study_lock import StudyLock
from search.confirm import incumbent
from search.study.study_file import StudySpec

if TYPE_CHECKING:  # the gate is a worker's: `tune status` and launch do not import it
    from search.control.start_gate import GateContext, NoStart, StartGate

# a held study lock under which one trial may start (the trial's start releases it)
Claim = StudyLock


class ManagedStudy:
    """An opened study with its storage: see the module docstring."""

    def __init__(self, study: optuna.Study, rdb: optuna.storages.RDBStorage | None = None) -> None:
        self.study = study
        self.rdb = rdb  # None behind `tune proxy` (or for a study opened without tune's SQL)
        self.storage = rdb or study_storage(study)
        self.id = study_id(study)
        self._gate: StartGate | None = None

    @classmethod
    def open(
        cls,
        url: str,
        name: str,
        settings: StorageSettings | None = None,
        on_reap: Callable[[str], None] | None = None,
    ) -> ManagedStudy:
        """Study `name` at `url`: a database URL (tune's RDB storage, `settings` and `on_reap`
        as `open_storage` takes them) or the address of `tune proxy` (no RDB storage here)."""
        from search.bookkeeping.proxy import (  # the gRPC client only when asked for
            connect,
            is_proxy_url,
        )

        if is_proxy_url(url):
            return cls(load_study(connect(url), name))
        rdb = open_storage(url, settings=settings, on_reap=on_reap)
        return cls(load_study(rdb, name), rdb)

    def searching(
        self,
        sampler: optuna.samplers.BaseSampler | None,
        pruner: optuna.pruners.BasePruner | None,
    ) -> ManagedStudy:
        """The same study on the same storage, loaded with the sampler and pruner a worker asks
        and prunes with (a stored spec's, which needs the study open first to be read)."""
        storage = self.rdb if self.rdb is not None else study_storage(self.study)
        return ManagedStudy(load_study(storage, self.name, sampler, pruner), self.rdb)

    @property
    def name(self) -> str:
        return self.study.study_name

    def stored_spec(self, *, check_data: bool = False) -> StudySpec | None:
        """The validated study file stored with the study, or None for a study tune did not
        create (raises `StudyFileError` for one it cannot read)."""
        return trial_record.read_stored_spec(self.study, check_data=check_data)

    def counts(self, trials: Sequence[FrozenTrial] | None = None) -> StateCounts:
        """Trials by state: of `trials` when the caller has read them already, else counted in
        the database (no trial loaded), or from the study's trials behind a proxy."""
        if trials is None and self.rdb is not None:
            return count_states(self.rdb, self.id)
        if trials is None:
            trials = self.study.get_trials(deepcopy=False)
        return StateCounts.of(Counter(t.state for t in trials))

    def budget_use(self, spec: StudySpec, trials: Sequence[FrozenTrial] | None = None) -> BudgetUse:
        """What the study has spent and promised of `spec`'s budget: from `trials` when given,
        else from the study's trials as the storage has them now."""
        if trials is None:
            trials = self.study.get_trials(deepcopy=False)
        return use_of(spec, trials)

    def extend_hold(
        self,
        trial: optuna.Trial,
        step: int,
        spec: StudySpec,
        log: Callable[[str], None] | None = None,
    ) -> int | None:
        """The new hold of `trial`, which the pruner kept at evaluation `step` where its hold
        ended (`budget.extended_hold`), recorded on it; None: the budget cannot pay for its next
        stop point, and it must stop. Read and written under the study's exclusive lock, so
        that no start and no other hold takes the same epochs; with the budget stored now (a
        later `tune launch --budget-epochs` may have raised it)."""
        stored = self.stored_spec()
        if stored is not None:
            spec = dataclasses.replace(spec, budget=stored.budget)
        if spec.budget.epochs is None:  # nothing to share: the trial holds its full length
            hold = spec.trial.epochs
        else:
            with self.lock(log=log):
                trials = self.study.get_trials(deepcopy=False)
                own = next(t for t in trials if t.number == trial.number)
                found = extended_hold(spec, use_of(spec, trials), own, step)
                if found is None:
                    return None
                hold = found
        trial_record.record_hold(trial, hold)
        return hold

    def race(
        self,
        told: FrozenTrial,
        spec: StudySpec,
        log: Callable[[str], None] | None = None,
    ) -> int:
        """After `told` (a trial just told) ended COMPLETE at full length, enqueue the next race
        (`incumbent.next_race`: the best challenger, one that beat the incumbent on the recipe's
        seed, against the incumbent on seeds of their own) when none is running and the budget
        pays for it (`budget.race_room`); the number of runs enqueued. Read and enqueued under
        the study's exclusive lock, so that two workers do not enqueue the same runs and no start
        takes the epochs they need."""
        if (
            told.state != TrialState.COMPLETE
            or trial_record.read_baseline(told) is not None
            or trial_record.read_confirm(told) is not None
            or (told.last_step or 0) < spec.trial.epochs
            # a latency budget makes the best a feasible one (Optuna's constraint), which a race
            # on the metric alone cannot choose
            or spec.objective.latency_budget_ms is not None
        ):
            return 0
        say = log or (lambda _line: None)
        stored = self.stored_spec()
        if stored is not None:
            spec = dataclasses.replace(spec, budget=stored.budget)
        with self.lock(log=log):
            trials = self.study.get_trials(deepcopy=False)
            standing = incumbent.incumbent_of_study(spec, trials, self.study.direction)
            first = incumbent.first_race_seed(spec)
            found = None if standing is None else incumbent.next_race(trials, standing, first)
            if standing is None or found is None:
                return 0
            challenger, runs = found
            why = race_room(spec, trials, len(runs), incumbent.RACE_SHARE)
            beat = (
                f"trial {challenger.number} beat the incumbent (trial {standing.setting.number}) "
                "on one seed"
            )
            if why is not None:
                say(f"{beat}; not raced: {why}")
                return 0
            params = {s.number: s.params for s in (challenger, standing.setting)}
            for run in runs:
                self.study.enqueue_trial(params[run.of], user_attrs=trial_record.race_attrs(run))
        seeds = ", ".join(str(s) for s in sorted({run.seed for run in runs}))
        say(f"{beat}: racing them on seeds {seeds} ({len(runs)} runs enqueued)")
        return len(runs)

    def fail_running(self, *worker_ids: str) -> int:
        """Fail (reason "interrupted") every RUNNING trial placed on one of these workers: what a
        stopped or killed worker left behind. The number failed."""
        failed = 0
        for frozen in self.study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
            if trial_record.read_placement(frozen).get("worker") in worker_ids:
                trial_record.record_error(optuna.Trial(self.study, trial_id(frozen)), "interrupted")
                self.study.tell(frozen.number, state=TrialState.FAIL)
                failed += 1
        return failed

    def lock(self, *, log: Callable[[str], None] | None = None) -> StudyLock:
        """The study's exclusive lock (not yet held: use it as a context manager)."""
        return StudyLock(self.storage, self.id, log=log)

    def open_gate(
        self, ctx: GateContext, poll_interval: float, fast_starts: bool = True
    ) -> StartGate:
        """Set up this worker's start gate (`claim` goes through it); the gate."""
        from search.control.start_gate import StartGate

        self._gate = StartGate(self, ctx, poll_interval, fast_starts)
        return self._gate

    @property
    def gate(self) -> StartGate:
        if self._gate is None:
            raise RuntimeError("ManagedStudy.open_gate() has not run")
        return self._gate

    def claim(self, patient: bool = True) -> Claim | NoStart:
        """A held lock under which this worker may start one trial, or why it may not
        (`StartGate.claim`)."""
        return self.gate.claim(patient)
