"""The worker loop in-process (SQLite, the fast fake trainer): budget, records, failures, stop."""

from __future__ import annotations

import os
import signal
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import optuna
import pytest
from optuna.trial import TrialState

from search.bookkeeping import trial_record
from search.bookkeeping.storage import open_storage
from search.control.study_setup import LaunchError, prepare_study
from search.running.worker import WorkerError, WorkerOptions, run_worker
from search.study.study_file import Overrides, StudySpec, load_study_file
from search.trainers.builtin import TuneTrainer
from tests.search import fake_trainer
from trainer.config import TrainConfig
from trainer.records import EvalReport, FitResult, NonFiniteLossError

ReportFn = Callable[[int, EvalReport], None] | None


def _study(
    tmp_path: Path, n_trials: int = 6, epochs: int = 3, **raw_changes: Any
) -> tuple[str, StudySpec]:
    url = f"sqlite:///{tmp_path / 'tune.db'}"
    spec = load_study_file("smoke", Overrides(n_trials=n_trials, epochs=epochs))
    if raw_changes:
        from search.study.study_file import parse_study

        raw = dict(spec.raw)
        for table, values in raw_changes.items():
            raw[table] = {**raw.get(table, {}), **values}
        spec = parse_study(raw)
    prepare_study(spec, open_storage(url, create_schema=True))
    return url, spec


def _trials(url: str, name: str = "smoke") -> list[optuna.trial.FrozenTrial]:
    return optuna.load_study(study_name=name, storage=url).get_trials()


def _work(url: str, tmp_path: Path, train_fn: Any = fake_trainer.fit, **kwargs: Any) -> Any:
    trainer = TuneTrainer(train_fn, kwargs.pop("load_data", fake_trainer.load_data))
    kwargs = {"runs_dir": tmp_path / "runs", "poll_interval": 0.1, "log": lambda _: None, **kwargs}
    return run_worker("smoke", url, WorkerOptions(**kwargs), trainer=trainer)


def test_worker_spends_the_budget_and_records_everything(tmp_path: Path) -> None:
    url, spec = _study(tmp_path, n_trials=6)
    loads: list[str] = []

    def load_data(data: str, imgsz: int, skip_bad: bool) -> str:
        loads.append(data)
        return "DATA"

    seen: list[Any] = []

    def train(config: TrainConfig, report: ReportFn = None, data: Any = None) -> FitResult:
        seen.append(data)
        return fake_trainer.fit(config, report, data)

    stats = _work(url, tmp_path, train, load_data=load_data)
    trials = _trials(url)
    finished = [t for t in trials if t.state in (TrialState.COMPLETE, TrialState.PRUNED)]
    assert len(finished) == 6 and len(trials) == 6
    assert stats.stopped_because == "budget"
    assert loads == ["shapes"] and set(seen) == {"DATA"}  # loaded once, passed to every fit
    first = trials[0]
    assert trial_record.read_baseline(first) == "first model"
    assert first.params == spec.baselines[0].as_dict()
    assert first.state == TrialState.COMPLETE
    config = trial_record.read_config(first)
    assert config is not None and config["lcls"] == 0.5 and config["epochs"] == 3
    assert config["out"].endswith("smoke/trial-0000")
    assert trial_record.read_placement(first)["worker"] == stats.worker_id
    assert [p["eval"]["epoch"] for p in trial_record.read_curve(first)] == [1, 2, 3]
    assert sorted(first.intermediate_values) == [1, 2, 3]
    summary = trial_record.read_summary(first)
    assert summary is not None and summary["mAP50_95"] == first.value
    assert stats.trials.complete + stats.trials.pruned == 6
    assert stats.wall_seconds > 0


def test_a_second_worker_finds_the_budget_spent(tmp_path: Path) -> None:
    url, _ = _study(tmp_path, n_trials=3)
    _work(url, tmp_path)
    stats = _work(url, tmp_path)
    assert stats.stopped_because == "budget"
    assert stats.trials.complete + stats.trials.pruned == 0
    assert len(_trials(url)) == 3


def test_a_worker_reads_the_study_before_it_takes_the_study_lock(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The first read of a large study is slow; done under the lock, every worker waits on it."""
    import search.bookkeeping.study_lock
    import search.control.study_manager

    url, spec = _study(tmp_path, n_trials=4)  # its baselines wait in the storage already
    assert len(_trials(url)) == len(spec.baselines) > 0
    cached_at_first_lock: list[int] = []
    real_acquire = search.bookkeeping.study_lock.StudyLock.acquire

    def acquire(lock: Any) -> None:
        if not cached_at_first_lock:
            caches = [
                len(info.trials)
                for study in loaded
                for info in study._storage._studies.values()  # Optuna's per-process cache
            ]
            cached_at_first_lock.append(max(caches, default=0))
        real_acquire(lock)

    loaded: list[Any] = []
    real_load = search.control.study_manager.load_study

    def load_study(*args: Any, **kwargs: Any) -> Any:
        study = real_load(*args, **kwargs)
        loaded.append(study)
        return study

    monkeypatch.setattr(search.bookkeeping.study_lock.StudyLock, "acquire", acquire)
    monkeypatch.setattr(search.control.study_manager, "load_study", load_study)
    stats = _work(url, tmp_path)
    assert cached_at_first_lock == [len(spec.baselines)]  # the study was read before the lock
    assert stats.study_load_seconds > 0
    assert stats.trials.complete + stats.trials.pruned == 4


@pytest.mark.parametrize(
    ("error", "reason"),
    [
        (
            RuntimeError("boom at postgresql://u:secret@h/db"),
            "RuntimeError: boom at postgresql://u:***@h/db",
        ),
        (NonFiniteLossError("loss is nan"), "non-finite loss: loss is nan"),
        ("oom", "out of memory: CUDA out of memory"),
    ],
    ids=["exception", "nan", "oom"],
)
def test_a_failing_trial_is_recorded_and_the_worker_goes_on(
    tmp_path: Path, error: Any, reason: str
) -> None:
    import torch

    url, _ = _study(tmp_path, n_trials=4)
    if error == "oom":
        error = torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")

    def train(config: TrainConfig, report: ReportFn = None, data: Any = None) -> FitResult:
        if fake_trainer.trial_number(config) == 1:
            raise error
        return fake_trainer.fit(config, report, data)

    stats = _work(url, tmp_path, train)
    trials = _trials(url)
    assert trials[1].state == TrialState.FAIL
    assert (trial_record.read_error(trials[1]) or "").startswith(reason)
    assert sum(t.state in (TrialState.COMPLETE, TrialState.PRUNED) for t in trials) == 4
    assert stats.trials.failed == 1 and stats.stopped_because == "budget"


def test_a_run_of_failures_stops_the_worker_with_a_clear_message(tmp_path: Path) -> None:
    url, _ = _study(tmp_path, n_trials=4)

    def train(config: TrainConfig, report: ReportFn = None, data: Any = None) -> FitResult:
        raise ValueError("no labels found")

    with pytest.raises(WorkerError, match=r"3 trials failed in a row.*ValueError: no labels found"):
        _work(url, tmp_path, train, max_consecutive_failures=3)
    assert all(t.state == TrialState.FAIL for t in _trials(url))


def test_a_broken_data_set_stops_the_worker_before_any_trial(tmp_path: Path) -> None:
    url, _ = _study(tmp_path)

    def load_data(data: str, imgsz: int, skip_bad: bool) -> None:
        raise FileNotFoundError("images/train: no such folder")

    with pytest.raises(WorkerError, match=r"cannot load data set 'shapes'.*no such folder"):
        _work(url, tmp_path, load_data=load_data)
    assert _trials(url)[0].state == TrialState.WAITING  # the baseline is still there to run


def test_baselines_are_never_pruned(tmp_path: Path) -> None:
    # Hyperband with reduction factor 2 prunes the worse half; the baselines of smoke are bad
    url, _ = _study(tmp_path, n_trials=10, epochs=6)  # rungs 1, 2, 4 < 6

    def train(config: TrainConfig, report: ReportFn = None, data: Any = None) -> FitResult:
        if config.lcls == 0.5 and config.lbox == 0.05:  # the baseline: make it the worst by far
            config = config.replace(lr=1e-9)
        return fake_trainer.fit(config, report, data)

    # a fixed worker index: the sampler's draws (seed + index) are the same every run, so the
    # pruner always has trials to stop (by the process id, some runs drew none it would stop)
    _work(url, tmp_path, train, worker_index=0)
    trials = _trials(url)
    assert trials[0].state == TrialState.COMPLETE and trial_record.read_baseline(trials[0])
    assert any(t.state == TrialState.PRUNED for t in trials)  # the pruner did have data


def test_a_pruned_trial_keeps_its_checkpoint_until_it_is_told_pruned(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # a worker lost between dropping the checkpoint and the tell (killed, or the database gone)
    # left a RUNNING trial pointing at a deleted file: its retry started from scratch (seen as a
    # flaky test_workers_give_up_when_the_database_stays_down)
    url, _ = _study(tmp_path, n_trials=2, epochs=3)
    artifacts = tmp_path / "artifacts"
    monkeypatch.setenv("FAKE_CHECKPOINT", "1")
    monkeypatch.setattr(optuna.Trial, "should_prune", lambda self: True)
    at_tell: list[bool] = []
    real_set_state = optuna.storages.RDBStorage.set_trial_state_values

    def set_state(storage: Any, trial_id: int, state: TrialState, values: Any = None) -> bool:
        if state == TrialState.PRUNED:
            mark = trial_record.read_checkpoint(storage.get_trial(trial_id))
            at_tell.append(mark is not None and (artifacts / mark[0]).is_file())
        return bool(real_set_state(storage, trial_id, state, values))

    monkeypatch.setattr(optuna.storages.RDBStorage, "set_trial_state_values", set_state)
    _work(url, tmp_path, artifacts=artifacts)
    assert at_tell == [True, True]  # still there for a retry until the trial's end is stored
    assert [t.state for t in _trials(url)] == [TrialState.PRUNED] * 2
    assert not [p for p in artifacts.rglob("*") if p.is_file()]  # then dropped


def test_a_reaped_trial_is_dropped_and_the_worker_goes_on(tmp_path: Path) -> None:
    url, _ = _study(tmp_path, n_trials=3)
    reaper = optuna.load_study(study_name="smoke", storage=url)

    def train(config: TrainConfig, report: ReportFn = None, data: Any = None) -> FitResult:
        if fake_trainer.trial_number(config) == 1:
            # another worker marks this trial failed (as Optuna's heartbeat reaper does)
            reaper.tell(1, state=TrialState.FAIL)
        return fake_trainer.fit(config, report, data)

    stats = _work(url, tmp_path, train)
    assert stats.trials.dropped == 1 and stats.stopped_because == "budget"
    trials = _trials(url)
    assert trials[1].state == TrialState.FAIL
    assert sum(t.state in (TrialState.COMPLETE, TrialState.PRUNED) for t in trials) == 3


def test_sigterm_fails_the_current_trial_as_interrupted(tmp_path: Path) -> None:
    url, _ = _study(tmp_path, n_trials=5)

    def train(config: TrainConfig, report: ReportFn = None, data: Any = None) -> FitResult:
        if fake_trainer.trial_number(config) == 1:
            os.kill(os.getpid(), signal.SIGTERM)
            threading.Event().wait(5)  # "training": the signal interrupts it
        return fake_trainer.fit(config, report, data)

    stats = _work(url, tmp_path, train)
    assert stats.stopped_because == "interrupted"
    trials = _trials(url)
    assert [t.state for t in trials] == [TrialState.COMPLETE, TrialState.FAIL]
    assert trial_record.read_error(trials[1]) == "interrupted"
    assert signal.getsignal(signal.SIGTERM) == signal.SIG_DFL  # handlers restored


def test_latency_budget_is_a_constraint_not_an_objective(tmp_path: Path) -> None:
    url, _ = _study(tmp_path, n_trials=4, objective={"latency_budget_ms": 5.0})
    _work(url, tmp_path)
    study = optuna.load_study(study_name="smoke", storage=url)
    assert len(study.directions) == 1
    complete = [t for t in study.get_trials() if t.state == TrialState.COMPLETE]
    assert complete
    for t in complete:  # fake inference_ms = 2 + 10 * lbox
        assert t.system_attrs["constraints:latency_ms"] == pytest.approx(
            2 + 10 * t.params["lbox"] - 5
        )
    feasible = [t for t in complete if t.params["lbox"] <= 0.3]
    if feasible:
        assert study.best_trial.number in {t.number for t in feasible}


def test_baselines_are_enqueued_once_even_when_launched_concurrently(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'tune.db'}"
    spec = load_study_file("loss-weights")
    open_storage(url, create_schema=True)
    errors: list[BaseException] = []

    def launch_once() -> None:
        try:
            prepare_study(spec, open_storage(url))
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=launch_once) for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    prepare_study(spec, open_storage(url))  # and once more, later
    assert not errors
    trials = _trials(url, "loss-weights")
    labels = [b.label for b in spec.baselines]
    # the trial that starts the search from the trainer's defaults, then the baselines
    assert [trial_record.read_baseline(t) for t in trials] == [None, *labels]
    assert [trial_record.read_start(t) for t in trials] == ["trainer defaults"] + [None] * len(
        labels
    )
    assert all(t.state == TrialState.WAITING for t in trials)
    expected = [spec.start_params()] + [b.as_dict() for b in spec.baselines]
    assert [t.system_attrs["fixed_params"] for t in trials] == expected


def test_relaunching_with_other_settings_is_refused(tmp_path: Path) -> None:
    url, _ = _study(tmp_path, n_trials=4, epochs=3)
    changed = load_study_file("smoke", Overrides(n_trials=9, epochs=5))
    with pytest.raises(LaunchError, match=r"other settings \(trial\.epochs: stored 3, now 5\)"):
        prepare_study(changed, open_storage(url))
    more = load_study_file("smoke", Overrides(n_trials=9, epochs=3))
    study = prepare_study(more, open_storage(url))  # a bigger budget is fine
    assert trial_record.read_study_spec(study)["budget"]["n_trials"] == 9  # type: ignore[index]


def test_a_worker_refuses_a_study_tune_did_not_create(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'tune.db'}"
    optuna.create_study(storage=open_storage(url, create_schema=True), study_name="plain")
    with pytest.raises(WorkerError, match=r"study 'plain'.*was not created by `tune launch`"):
        run_worker("plain", url, WorkerOptions(log=lambda _: None), TuneTrainer(fake_trainer.fit))


def test_a_trainer_given_to_a_worker_must_be_of_the_studys_kind(tmp_path: Path) -> None:
    """A replacement trainer (tests, soak runs) stands in only for the trainer the study runs."""
    url, _ = _study(tmp_path, n_trials=1)
    before = [t.state for t in _trials(url)]

    class Other:
        name = "ultralytics"

    with pytest.raises(
        WorkerError,
        match=r"the trainer given to this worker is 'ultralytics', but study 'smoke' runs "
        r"trainer 'tune'",
    ):
        run_worker("smoke", url, WorkerOptions(log=lambda _: None), trainer=Other())  # type: ignore[arg-type]
    assert [t.state for t in _trials(url)] == before  # nothing ran


def test_baselines_stop_at_their_length_and_the_budget_counts_epochs(tmp_path: Path) -> None:
    url, _ = _study(
        tmp_path,
        n_trials=10,
        epochs=6,
        budget={"epochs": 20, "baseline_epochs": 2},
        pruner={"type": "None"},
    )
    stats = _work(url, tmp_path)
    trials = _trials(url)
    baseline, *sampled = trials
    assert baseline.state == TrialState.PRUNED and baseline.last_step == 2
    assert trial_record.read_stopped(baseline) == "stopped at its length, 2 epochs"
    # 18 epochs left pay for three 6-epoch trials, and nothing is left for a fourth
    assert [(t.state, t.last_step) for t in sampled] == [(TrialState.COMPLETE, 6)] * 3
    assert stats.stopped_because == "budget"


def test_a_trial_past_the_time_limit_ends_at_its_next_evaluation(tmp_path: Path) -> None:
    url, _ = _study(tmp_path, n_trials=3, epochs=6, pruner={"type": "None"})
    timeout = 0.5

    def fit_past_the_deadline(config: Any, report: Any = None, data: Any = None) -> Any:
        called = time.monotonic()  # after the worker started: its deadline is before this + 0.5

        def report_late(step: int, metrics: Any) -> None:
            time.sleep(max(0.0, called + timeout + 0.05 - time.monotonic()))
            report(step, metrics)

        return fake_trainer.fit(config, report_late, data)

    stats = _work(url, tmp_path, train_fn=fit_past_the_deadline, timeout=timeout)
    first, *rest = _trials(url)
    assert (first.state, first.last_step) == (TrialState.PRUNED, 1)
    assert trial_record.read_stopped(first) == "stopped: time limit, after 1 epoch"
    assert stats.stopped_because == "timeout"
    assert all(t.state == TrialState.WAITING for t in rest)  # nothing started after it
