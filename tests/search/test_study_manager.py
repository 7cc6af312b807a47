"""The study-manager layer (`search/control/study_manager.py`) on a real SQLite storage: the
stored spec, trials by state, the budget's use and failing a stopped worker's trials."""

from __future__ import annotations

from pathlib import Path

import optuna
import pytest
from optuna.trial import TrialState

from search.bookkeeping import trial_record
from search.bookkeeping.budget import use_of
from search.bookkeeping.storage import StateCounts, StorageError, open_storage
from search.control.study_manager import ManagedStudy
from search.control.study_setup import prepare_study
from search.study.study_file import StudySpec
from tests.search.test_budget import SPEC

pytestmark = pytest.mark.filterwarnings("ignore:Heartbeat of storage:UserWarning")


def _managed(tmp_path: Path, spec: StudySpec = SPEC) -> ManagedStudy:
    rdb = open_storage(f"sqlite:///{tmp_path / 'study.db'}", create_schema=True)
    return ManagedStudy(prepare_study(spec, rdb), rdb)


def _run(managed: ManagedStudy, worker: str, steps: int) -> optuna.Trial:
    """A RUNNING trial of `worker` that trained `steps` epochs."""
    trial = managed.study.ask()
    trial_record.record_placement(trial, "cpu", worker)
    for step in range(1, steps + 1):
        trial.report(0.1 * step, step)
    return trial


@pytest.fixture
def managed(tmp_path: Path) -> ManagedStudy:
    managed = _managed(tmp_path)
    waiting = managed.counts().waiting  # the study's baselines, enqueued by launch
    for _ in range(waiting):  # run them out of the way: the trials below are sampled ones
        managed.study.tell(managed.study.ask(), 0.5)
    done = _run(managed, "w1", 12)
    managed.study.tell(done, 0.9)
    pruned = _run(managed, "w1", 2)
    managed.study.tell(pruned, state=TrialState.PRUNED)
    kept = _run(managed, "w1", 3)
    trial_record.record_hold(kept, 12)  # kept at its first rung, paid to its end
    _run(managed, "w2", 1)
    return managed


def test_the_stored_spec_is_the_launched_one(tmp_path: Path) -> None:
    managed = _managed(tmp_path)
    stored = managed.stored_spec()
    assert stored is not None
    assert stored.raw == SPEC.raw
    plain = optuna.create_study(storage=managed.rdb, study_name="not-tune")
    assert ManagedStudy(plain, managed.rdb).stored_spec() is None


def test_counts_in_the_database_match_the_trials(managed: ManagedStudy) -> None:
    baselines = len(SPEC.baselines)
    expected = StateCounts(complete=1 + baselines, pruned=1, fail=0, running=2, waiting=0)
    assert managed.counts() == expected  # SQL
    assert managed.counts(managed.study.get_trials()) == expected  # trials read already
    assert ManagedStudy(managed.study).counts() == expected  # no RDB storage (behind a proxy)


def test_budget_use_reads_the_studys_trials(managed: ManagedStudy) -> None:
    use = managed.budget_use(SPEC)
    assert use == use_of(SPEC, managed.study.get_trials())
    assert use.finished == 2 + len(SPEC.baselines)
    assert use.running == 2
    assert use.epochs_spent == 12 + 2 + 3 + 1
    # running trials hold up to their first stop point (2), or to the hold they were given (12)
    assert use.epochs_promised == (12 - 3) + (2 - 1)
    assert managed.budget_use(SPEC, []) == use_of(SPEC, [])


def test_fail_running_fails_only_that_workers_trials(managed: ManagedStudy) -> None:
    assert managed.fail_running("w1") == 1
    running = managed.study.get_trials(states=(TrialState.RUNNING,))
    assert [trial_record.read_placement(t)["worker"] for t in running] == ["w2"]
    failed = managed.study.get_trials(states=(TrialState.FAIL,))
    assert [trial_record.read_error(t) for t in failed] == ["interrupted"]
    assert managed.fail_running("w1", "w3") == 0
    assert managed.fail_running("w1", "w2") == 1
    assert managed.counts().running == 0


def test_open_finds_the_study_and_searching_keeps_it_with_the_workers_sampler(
    tmp_path: Path,
) -> None:
    launched = _managed(tmp_path)
    url = f"sqlite:///{tmp_path / 'study.db'}"
    opened = ManagedStudy.open(url, SPEC.name)
    assert opened.rdb is not None and opened.id == launched.id
    assert opened.stored_spec() is not None
    sampler = optuna.samplers.RandomSampler(seed=3)
    pruner = optuna.pruners.NopPruner()
    searching = opened.searching(sampler, pruner)
    assert (searching.study.sampler, searching.study.pruner) == (sampler, pruner)
    assert (searching.id, searching.rdb) == (opened.id, opened.rdb)
    assert searching.counts() == launched.counts()
    with pytest.raises(StorageError, match=f"no study named 'missing'.*{SPEC.name}"):
        ManagedStudy.open(url, "missing")
