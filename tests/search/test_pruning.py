"""tune's pruner rules (`search/study/pruning.py`) around every Optuna pruner a study may name."""

from __future__ import annotations

import optuna
import pytest
from optuna.trial import TrialState

from search.bookkeeping import trial_record
from search.study.pruning import (
    PRUNER_TYPES,
    PrunerSpec,
    SparingPruner,
    build_pruner,
    evaluation_steps,
    rungs,
    stop_points,
)
from search.study.study_file import load_study_file

EPOCHS = 20
STOPPING = tuple(t for t in PRUNER_TYPES if t != "None")


def _study(kind: str, n_min_trials: int = 1, min_resource: int = 2) -> optuna.Study:
    spec = PrunerSpec(
        kind, min_resource=min_resource, reduction_factor=3, n_min_trials=n_min_trials
    )
    # a fixed name: Hyperband puts a trial in a bracket by a hash of the study name and the trial
    # number, and a random name let 1 run in 2 put the hopeless trial in a bracket of its own
    return optuna.create_study(
        study_name="pruning",
        direction="maximize",
        pruner=build_pruner(spec, EPOCHS, trial_record.runs_fixed_length),
    )


def _run(study: optuna.Study, values: list[float], baseline: str | None = None) -> int | None:
    """One trial reporting `values[i]` at step i + 1 until pruned; the step it was stopped at."""
    if baseline is not None:
        study.enqueue_trial({}, user_attrs=trial_record.baseline_attrs(baseline))
    trial = study.ask()
    for step, value in enumerate(values, start=1):
        trial.report(value, step)
        if step < EPOCHS and trial.should_prune():
            study.tell(trial, state=TrialState.PRUNED)
            return step
    study.tell(trial, values[-1])
    return None


def _curve(final: float) -> list[float]:
    return [final * step / EPOCHS for step in range(1, EPOCHS + 1)]


@pytest.mark.parametrize("kind", STOPPING)
def test_every_pruner_stops_a_hopeless_trial_but_never_a_baseline(kind: str) -> None:
    study = _study(kind)
    for final in (0.5, 0.45, 0.4, 0.42):
        _run(study, _curve(final))
    assert _run(study, _curve(0.01)) is not None  # the wrapped pruner does stop trials
    assert _run(study, _curve(0.001), baseline="hand-tuned") is None  # ... but no baseline
    baseline = study.trials[-1]
    assert baseline.state == TrialState.COMPLETE and baseline.last_step == EPOCHS


@pytest.mark.parametrize("kind", STOPPING)
def test_no_trial_is_stopped_at_a_step_until_n_min_trials_were_evaluated_there(kind: str) -> None:
    study = _study(kind, n_min_trials=4)
    # each trial worse than every one before it: without the rule the second would be stopped
    stopped = [_run(study, _curve(final)) for final in (0.5, 0.4, 0.3, 0.2, 0.1, 0.05)]
    assert stopped[:3] == [None, None, None]
    # from the fourth on the wrapped pruner decides (Hyperband: in the trial's own bracket)
    assert stopped[3] is not None and any(s is not None for s in stopped[4:])


def test_baselines_join_the_rungs_so_the_first_sampled_trial_is_measured_against_them() -> None:
    study = _study("SuccessiveHalving", n_min_trials=4)
    for i, final in enumerate((0.004, 0.003, 0.002, 0.001)):
        assert _run(study, _curve(final), baseline=f"hand-tuned {i}") is None
    assert all("completed_rung_0" in t.system_attrs for t in study.trials)
    assert _run(study, _curve(0.5)) is None  # best of five: kept
    assert _run(study, _curve(0.0001)) == 2  # worst of six at the first rung: stopped there


def test_successive_halving_stops_trials_only_at_its_rungs() -> None:
    spec = PrunerSpec("SuccessiveHalving", min_resource=2, reduction_factor=3)
    assert rungs(spec, EPOCHS) == (2, 6, 18)
    study = _study("SuccessiveHalving", min_resource=2)
    _run(study, _curve(0.5))
    # a trial that is the worst at each rung it reaches, then recovers: stopped at the first
    assert _run(study, _curve(0.01)) == 2
    # one that leads at the first rung and falls behind by the second: stopped at the second
    rising = [0.9 if step <= 2 else 0.001 for step in range(1, EPOCHS + 1)]
    assert _run(study, rising) == 6


@pytest.mark.parametrize(
    ("kind", "eval_interval", "expected"),
    [
        ("SuccessiveHalving", 1, (2, 6, 18, 20)),
        ("Hyperband", 1, (2, 6, 18, 20)),
        ("SuccessiveHalving", 4, (4, 8, 20)),  # the first evaluation at or after each rung
        ("Median", 5, (5, 10, 15, 20)),
        ("None", 1, (20,)),
    ],
)
def test_stop_points_are_the_evaluations_at_the_rungs_and_the_end(
    kind: str, eval_interval: int, expected: tuple[int, ...]
) -> None:
    spec = PrunerSpec(kind, min_resource=2, reduction_factor=3)
    assert stop_points(spec, EPOCHS, eval_interval) == expected
    assert evaluation_steps(10, 4) == (4, 8, 10)


def test_a_baseline_stops_only_at_its_length() -> None:
    spec = PrunerSpec("SuccessiveHalving", min_resource=2, reduction_factor=3)
    assert stop_points(spec, EPOCHS, 1, length=7) == (7,)
    assert stop_points(spec, EPOCHS, 4, length=7) == (8,)  # its first evaluation from epoch 7 on


def test_the_loss_weights_study_prunes_with_successive_halving_after_warmup() -> None:
    spec = load_study_file("loss-weights")
    pruner = spec.make_pruner(trial_record.runs_fixed_length)
    assert isinstance(pruner, SparingPruner) and pruner.n_min_trials == 4
    assert isinstance(pruner.wrapped, optuna.pruners.SuccessiveHalvingPruner)
    points = stop_points(spec.pruner, spec.trial.epochs, spec.trial.eval_interval)
    assert points == (6, 18, 33)
    # after warmup: the first rung lies beyond the recipe's warmup of 3 epochs
    assert points[0] > spec.train_config({}).warmup_epochs
