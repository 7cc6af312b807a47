"""tune's Hyperband (`search/pruning.py`): a rung waits for n_min_trials, baselines join it."""

from __future__ import annotations

import optuna
import pytest
from optuna.trial import TrialState

from search import trial_record
from search.pruning import TuneHyperbandPruner
from search.study_file import load_study_file

STEP = 2  # min_resource 2, max_resource 4, reduction factor 3: one bracket, one rung at epoch 2


def _study(n_min_trials: int) -> optuna.Study:
    pruner = TuneHyperbandPruner(
        min_resource=STEP, max_resource=4, reduction_factor=3, n_min_trials=n_min_trials
    )
    return optuna.create_study(direction="maximize", pruner=pruner)


def _stopped_at_the_rung(study: optuna.Study, value: float) -> bool:
    """Run one trial to the rung with `value`; finish it (pruned or complete); was it pruned?"""
    trial = study.ask()
    trial.report(value, STEP)
    pruned = trial.should_prune()
    if pruned:
        study.tell(trial, state=TrialState.PRUNED)
    else:
        study.tell(trial, value)
    return pruned


@pytest.mark.parametrize("n_min_trials", [1, 6])
def test_no_trial_is_stopped_at_a_step_until_n_min_trials_were_evaluated_there(
    n_min_trials: int,
) -> None:
    # every trial worse than all before it: Hyperband alone stops each one after the first
    study = _study(n_min_trials)
    values = [0.5, 0.4, 0.3, 0.2, 0.1, 0.05, 0.01]
    stopped = [_stopped_at_the_rung(study, v) for v in values]
    first_stopped = n_min_trials - 1 if n_min_trials > 1 else 1
    assert stopped == [False] * first_stopped + [True] * (len(values) - first_stopped)


def test_spared_trials_still_count_at_the_rung() -> None:
    # four spared trials; the sixth is the second best of six, so Hyperband keeps it (top 2 of 6)
    study = _study(6)
    assert not any(_stopped_at_the_rung(study, v) for v in (0.5, 0.1, 0.2, 0.3, 0.05))
    assert not _stopped_at_the_rung(study, 0.45)
    assert _stopped_at_the_rung(study, 0.25)  # third of seven: top 2 kept


def test_a_baseline_is_never_stopped_but_its_value_joins_the_rung() -> None:
    study = _study(1)
    assert not _stopped_at_the_rung(study, 0.5)
    for i, value in enumerate((0.004, 0.003, 0.002, 0.001)):  # each the worst so far
        study.enqueue_trial({}, user_attrs={trial_record.BASELINE: f"hand-tuned {i}"})
        assert not _stopped_at_the_rung(study, value)
    assert all("completed_rung_0" in t.system_attrs for t in study.get_trials())
    # second best of six values, kept (top 2 of 6); had the baselines not joined the rung it
    # would be second of two, and below six values Hyperband keeps only the best
    assert not _stopped_at_the_rung(study, 0.4)
    assert _stopped_at_the_rung(study, 0.3)  # third of seven


def test_the_loss_weights_pruner_is_a_hyperband_pruner_for_optunas_samplers() -> None:
    # TPE fits its model on the trial's own Hyperband bracket only if it sees a HyperbandPruner
    pruner = load_study_file("loss-weights").make_pruner()
    assert isinstance(pruner, optuna.pruners.HyperbandPruner)
    assert isinstance(pruner, TuneHyperbandPruner) and pruner.n_min_trials == 6
