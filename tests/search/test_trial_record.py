"""Trial records (`search/bookkeeping/trial_record.py`): the compact curve layout, and studies
written in the layout before it (one attribute per evaluation) still read. In-memory storage, no
trainer."""

from __future__ import annotations

import json
from typing import Any

import optuna
import pytest

from search.bookkeeping import trial_record
from search.trainers.builtin import evaluation_of
from trainer.records import EvalLine, EvalReport, TrainLine


def _report(step: int, lines: int = 2) -> EvalReport:
    train = [
        TrainLine(step - 1, step * 100 + k, 0.01, 1.0 / step, 0.3, 0.4, 0.3, 0.05)
        for k in range(lines)
    ]
    evaluation = EvalLine(step, step * 100 + lines, 0.1 * step, 0.05 * step, 0.3, 0.4, 0.3, 1.0)
    return EvalReport(eval=evaluation, train=train, seconds_training=1.0, seconds_evaluating=0.1)


def _steps(trial: Any) -> list[int]:
    return [p["eval"]["epoch"] for p in trial_record.read_curve(trial)]


def _curve_keys(trial: Any) -> list[str]:
    return sorted(k for k in trial.user_attrs if k.startswith(trial_record.CURVE_SEGMENT))


def test_a_trial_keeps_its_curve_and_placement_in_a_few_attributes() -> None:
    study = optuna.create_study(direction="maximize")
    trial = study.ask()
    trial_record.record_placement(trial, "cpu", "host:1")
    for step in range(1, 7):
        trial_record.record_eval(trial, step, evaluation_of(step, _report(step)))
    study.tell(trial, 0.3)
    frozen = study.trials[0]
    assert sorted(frozen.user_attrs) == ["curve/000", "placement"]
    assert _steps(frozen) == [1, 2, 3, 4, 5, 6]
    assert trial_record.read_eval_lines(frozen)[-1]["mAP50_95"] == pytest.approx(0.3)
    assert len(trial_record.read_train_lines(frozen)) == 12
    assert frozen.intermediate_values == {s: pytest.approx(0.05 * s) for s in range(1, 7)}
    assert trial_record.read_placement(frozen)["worker"] == "host:1"


def test_a_long_curve_is_split_into_bounded_segments(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(trial_record, "SEGMENT_CHARS", 3_000)
    study = optuna.create_study(direction="maximize")
    trial = study.ask()
    for step in range(1, 41):
        trial_record.record_eval(trial, step, evaluation_of(step, _report(step, lines=3)))
    frozen = study.trials[0]
    keys = _curve_keys(frozen)
    assert 4 <= len(keys) < 40 and keys[0] == "curve/000"
    point = max(len(json.dumps(p)) for p in trial_record.read_curve(frozen))
    assert all(len(json.dumps(frozen.user_attrs[k])) < 3_000 + point for k in keys)
    assert _steps(frozen) == list(range(1, 41))
    # packing the same points at once gives the same segments
    assert trial_record.curve_attrs(trial_record.read_curve(frozen)).keys() == set(keys)


def test_a_retry_that_restarts_replaces_the_copied_curve(monkeypatch: pytest.MonkeyPatch) -> None:
    """Optuna copies user attrs to a heartbeat retry; one that starts afresh (no checkpoint)
    records step 1 again, and the predecessor's later points must not linger."""
    monkeypatch.setattr(trial_record, "SEGMENT_CHARS", 1_500)
    points = [_report(s).to_dict() for s in range(1, 9)]
    copied = trial_record.curve_attrs(points)
    assert len(copied) >= 2
    study = optuna.create_study(direction="maximize")
    study.enqueue_trial({}, user_attrs=copied)
    trial = study.ask()
    trial_record.record_eval(trial, 1, evaluation_of(1, _report(1, lines=1)))
    assert _steps(study.trials[0]) == [1]
    assert trial_record.read_curve(study.trials[0])[0]["train"][0]["iter"] == 100
    # and one that resumes from step 3 keeps exactly the steps up to it, then goes on
    study.enqueue_trial({}, user_attrs=copied)
    retry = study.ask()
    trial_record.restore_curve(retry, points[:3])
    trial_record.record_eval(retry, 4, evaluation_of(4, _report(4)))
    frozen = study.trials[1]
    assert _steps(frozen) == [1, 2, 3, 4]
    assert frozen.intermediate_values.keys() == {1, 2, 3, 4}
