"""What the best trial is and is worth against the trainer's defaults
(search/confirm/standing.py): the words status, launch and the report share."""

from __future__ import annotations

from typing import Any

from optuna.distributions import FloatDistribution
from optuna.trial import FrozenTrial, TrialState, create_trial

from search.bookkeeping import trial_record
from search.confirm.standing import gain_words, standing_of


def _trial(
    number: int, curve: dict[int, float], complete: bool = True, **attrs: Any
) -> FrozenTrial:
    last = max(curve)
    frozen = create_trial(
        state=TrialState.COMPLETE if complete else TrialState.PRUNED,
        value=curve[last] if complete else None,
        params={"lr": 0.001 * (number + 1)},
        distributions={"lr": FloatDistribution(1e-4, 0.1, log=True)},
        intermediate_values=curve,
        user_attrs=attrs,
    )
    frozen.number = number
    return frozen


DEFAULTS = {trial_record.START: trial_record.START_FROM_DEFAULTS}


def test_the_defaults_as_best_are_named_with_the_searchs_own_best_draw() -> None:
    defaults = _trial(1, {6: 0.008, 33: 0.3823}, **DEFAULTS)
    draws = [_trial(2, {6: 0.001, 33: 0.3034}), _trial(3, {6: 0.0}, complete=False)]
    st = standing_of([defaults, *draws], defaults)
    assert st.role == "defaults"
    assert st.describe() == (
        "the start point, the trainer's defaults; no setting the search drew beat it (its best, "
        "trial 2: 0.3034)"
    )
    assert st.short() == "the trainer's defaults, not beaten"


def test_a_find_of_the_search_is_stated_against_the_defaults_at_equal_length() -> None:
    defaults = _trial(1, {6: 0.01, 33: 0.38}, **DEFAULTS)
    find = _trial(2, {6: 0.02, 18: 0.25, 33: 0.40})
    st = standing_of([defaults, find], find)
    assert st.describe() == (
        "a setting the search found: +0.0200 (+5%) over the trainer's defaults (trial 1, 0.3800), "
        "one run each"
    )
    # the defaults stopped early: compared where both were evaluated, and said so
    stopped = _trial(1, {6: 0.06, 18: 0.20}, complete=False, **DEFAULTS)
    st = standing_of([stopped, find], find)
    assert st.versus is not None and st.versus.step == 18
    assert "over the trainer's defaults (trial 1, 0.2000) at 18 epochs" in st.describe()


def test_no_gain_between_two_detectors_that_have_not_learned() -> None:
    defaults = _trial(1, {6: 0.002}, complete=False, **DEFAULTS)
    find = _trial(2, {6: 0.008, 33: 0.30})
    text = standing_of([defaults, find], find).describe()
    assert text == (
        "a setting the search found; at 6 epochs neither it nor the trainer's defaults (trial 1) "
        "has learned (both below 0.05 mAP50-95), so no gain over the defaults can be stated"
    )
    assert "%" not in text


def test_a_gain_over_a_detector_that_has_not_learned_has_no_percentage() -> None:
    assert gain_words(0.0080, 0.0021) == "+0.0059"
    assert gain_words(0.42, 0.36) == "+0.0600 (+17%)"
    assert gain_words(0.30, 0.35, maximize=False) == "+0.0500 (+14%)"


def test_a_baseline_or_a_study_without_the_defaults() -> None:
    baseline = _trial(0, {6: 0.4}, **{trial_record.BASELINE: "with Adam"})
    find = _trial(2, {6: 0.3})
    assert standing_of([baseline, find], baseline).describe() == (
        "the hand-tuned baseline 'with Adam': the search has not beaten hand tuning"
    )
    assert standing_of([find], find).describe() == (
        "a setting the search found (the study has no run of the trainer's defaults to compare "
        "with)"
    )
    assert standing_of([], None).describe() == "no trial is complete yet"
