"""The worker loop with the real trainer (slow): a short study on the built-in shapes data set."""

from __future__ import annotations

from pathlib import Path

import optuna
import pytest
from optuna.trial import TrialState

from search.bookkeeping import trial_record
from search.bookkeeping.storage import open_storage
from search.control.study_setup import prepare_study
from search.running.worker import WorkerOptions, run_worker
from search.study.study_file import Overrides, load_study_file

pytestmark = pytest.mark.slow


def test_real_trainer_runs_baseline_and_sampled_trial(tmp_path: Path) -> None:
    try:
        import trainer.data
        import trainer.fit  # noqa: F401
    except ImportError as exc:  # the trainer is written in parallel; the lead makes this run
        pytest.skip(f"trainer.fit cannot be imported yet: {exc}")
    url = f"sqlite:///{tmp_path / 'tune.db'}"
    spec = load_study_file("smoke", Overrides(n_trials=2, epochs=1))
    prepare_study(spec, open_storage(url, create_schema=True))

    stats = run_worker(
        "smoke", url, WorkerOptions(runs_dir=tmp_path / "runs", threads=1, log=print)
    )

    assert stats.stopped_because == "budget"
    trials = optuna.load_study(study_name="smoke", storage=url).get_trials()
    assert [t.state for t in trials] == [TrialState.COMPLETE, TrialState.COMPLETE], [
        trial_record.read_error(t) for t in trials
    ]
    baseline = trials[0]
    assert trial_record.read_baseline(baseline) == "first model"
    assert 0.0 <= (baseline.value or 0.0) <= 1.0
    curve = trial_record.read_curve(baseline)
    assert len(curve) == 1 and curve[0]["train"], "evaluation and training lines are stored"
    summary = trial_record.read_summary(baseline)
    assert summary is not None and summary["inference_ms"] > 0
    assert (tmp_path / "runs" / "smoke" / "trial-0000" / "summary.json").is_file()
    assert stats.duty_cycle > 0


def test_real_trainer_trains_a_pack_and_refills_it(tmp_path: Path) -> None:
    """`[trial] pack = 2` with tune's own trainer: two trials fused into one model, the third
    started into the first free slot."""
    from search.study.study_file import parse_study

    url = f"sqlite:///{tmp_path / 'tune.db'}"
    raw = load_study_file("smoke", Overrides(n_trials=3, epochs=1)).raw
    spec = parse_study({**raw, "trial": {**raw["trial"], "pack": 2}})
    prepare_study(spec, open_storage(url, create_schema=True))
    log: list[str] = []
    stats = run_worker(
        "smoke", url, WorkerOptions(runs_dir=tmp_path / "runs", threads=1, log=log.append)
    )

    assert stats.stopped_because == "budget", log
    trials = optuna.load_study(study_name="smoke", storage=url).get_trials()
    assert [t.state for t in trials] == [TrialState.COMPLETE] * 3, [
        trial_record.read_error(t) for t in trials
    ]
    assert [line for line in log if "training a pack" in line] == ["training a pack of 2 trials"]
    first_end = min(t.datetime_complete for t in trials[:2] if t.datetime_complete)
    assert trials[2].datetime_start is not None and trials[2].datetime_start >= first_end
    for t in trials:
        assert len(trial_record.read_curve(t)) == 1
        summary = trial_record.read_summary(t)
        assert summary is not None and 0.0 <= summary["mAP50_95"] <= 1.0
        assert (tmp_path / "runs" / "smoke" / f"trial-{t.number:04d}" / "last.pt").is_file()
