"""What `tune confirm`'s runs showed (search/confirm/results.py): the winner against the best
hand-tuned baseline and against the trainer's defaults, on the same seeds."""

from __future__ import annotations

from typing import Any

from optuna.trial import FrozenTrial, TrialState, create_trial

from search.bookkeeping import trial_record
from search.confirm.plan import ConfirmPlan
from search.confirm.results import confirmation_of, confirmed_sentence, format_confirmation


def _trial(number: int, value: float | None, **attrs: Any) -> FrozenTrial:
    frozen = create_trial(
        state=TrialState.COMPLETE if value is not None else TrialState.PRUNED,
        value=value,
        intermediate_values={6: value or 0.0},
        user_attrs=attrs,
    )
    frozen.number = number
    return frozen


PARENTS = [
    _trial(0, None, **{trial_record.BASELINE: "with Adam"}),
    _trial(1, 0.38, **{trial_record.START: trial_record.START_FROM_DEFAULTS}),
    _trial(2, 0.40),
]
# seed -> value: the winner beats the baseline everywhere, the defaults on the same seeds
VALUES = {2: (0.41, 0.40, 0.42), 0: (0.05, 0.06, 0.04), 1: (0.36, 0.37, 0.35)}


def _runs(values: dict[int, tuple[float, ...]]) -> list[FrozenTrial]:
    runs = []
    for of, by_seed in values.items():
        for seed, value in enumerate(by_seed, start=1):
            runs.append(_trial(len(runs), value, **trial_record.confirm_attrs(of, seed)))
    return runs


def test_the_winner_is_confirmed_against_the_baseline_and_the_defaults() -> None:
    plan = ConfirmPlan("s", 6, (1, 2, 3), trials=(2,), baseline=0, defaults=1)
    assert plan.targets == (2, 0, 1)
    assert ConfirmPlan.from_dict(plan.to_dict()) == plan
    c = confirmation_of(plan, PARENTS, _runs(VALUES))
    winner = c.rows[0]
    assert winner.gain is not None and winner.gain.mean > 0.3
    d = winner.gain_over_defaults
    assert d is not None and d.n == 3 and abs(d.mean - 0.05) < 1e-9 and d.low > 0
    assert (
        c.defaults is not None and c.defaults.number == 1 and c.defaults.gain_over_defaults is None
    )
    sentence = confirmed_sentence(c, best=2)
    assert "+0.0500 over the trainer's defaults (#1" in sentence
    assert sentence.endswith("better than the defaults.")
    table = format_confirmation(c)
    assert "the trainer's defaults (#1): 3/3 runs" in table and "over the defaults +0.0500" in table


def test_when_the_defaults_are_the_winner_the_sentence_says_so() -> None:
    plan = ConfirmPlan("s", 6, (1, 2, 3), trials=(1,), baseline=0, defaults=1)
    assert plan.targets == (1, 0)
    c = confirmation_of(plan, PARENTS, _runs({1: VALUES[1], 0: VALUES[0]}))
    assert "it is the trainer's defaults: the search found nothing better" in confirmed_sentence(
        c, best=1
    )
