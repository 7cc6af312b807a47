"""The evolutionary sampler: children of the best settings so far, from the storage, seeded."""

from __future__ import annotations

import math
import statistics
from pathlib import Path
from typing import Any

import optuna
import pytest

from search.study.evolution import EvolutionSampler
from search.study.samplers import SAMPLER_TYPES, SamplerSpec, build_sampler
from search.study.space import ChoiceParam, FloatParam
from search.study.study_file import StudySpec, load_study_file

optuna.logging.set_verbosity(optuna.logging.WARNING)


@pytest.fixture(scope="module")
def spec() -> StudySpec:
    return load_study_file("loss-weights", check_data=False)


def _toy(spec: StudySpec, target: dict[str, float]) -> Any:
    """A smooth objective with its best at `target` (log distance on each log range)."""

    def objective(trial: optuna.Trial) -> float:
        params = spec.space.sample(trial)
        loss = 0.0
        for p in spec.space.params:
            if isinstance(p, FloatParam):
                scale = (math.log(p.high) - math.log(p.low)) if p.log else p.high - p.low
                x, t = params[p.name], target[p.name]
                d = (math.log(x) - math.log(t)) if p.log else x - t
                loss += (d / scale) ** 2
            elif isinstance(p, ChoiceParam):
                loss += 0.0 if params[p.name] == target[p.name] else 0.3
        return -loss

    return objective


def _target(spec: StudySpec) -> dict[str, Any]:
    """A better setting near the defaults: each number a quarter of its range away."""
    defaults = spec.default_params()
    assert defaults is not None
    target: dict[str, Any] = dict(defaults)
    for p in spec.space.params:
        if isinstance(p, FloatParam):
            x = defaults[p.name]
            if p.log:
                target[p.name] = min(p.high, x * (p.high / p.low) ** 0.25)
            else:
                target[p.name] = max(p.low, x - 0.25 * (p.high - p.low))
    return target


def test_the_first_draw_is_a_small_mutation_of_the_defaults(spec: StudySpec) -> None:
    defaults = spec.default_params()
    assert defaults is not None
    study = optuna.create_study(direction="maximize", sampler=EvolutionSampler(defaults, seed=3))
    for _ in range(8):
        trial = study.ask()
        params = spec.space.sample(trial)
        assert all(p.contains(params[p.name]) for p in spec.space.params)
        changed = [k for k in params if params[k] != defaults[k]]
        assert changed  # at least one gene mutates
        assert len(changed) < len(params)  # about half of them do, not all
        study.tell(trial, state=optuna.trial.TrialState.PRUNED)  # no parent yet: x0 stays


def test_the_same_seed_gives_the_same_study(spec: StudySpec) -> None:
    objective = _toy(spec, _target(spec))
    runs = []
    for _ in range(2):
        study = optuna.create_study(
            direction="maximize", sampler=EvolutionSampler(spec.default_params(), seed=11)
        )
        study.optimize(objective, n_trials=15)
        runs.append([t.params for t in study.trials])
    assert runs[0] == runs[1]
    other = optuna.create_study(
        direction="maximize", sampler=EvolutionSampler(spec.default_params(), seed=12)
    )
    other.optimize(objective, n_trials=3)
    assert [t.params for t in other.trials] != runs[0][:3]


def test_it_finds_a_better_setting_near_the_defaults_sooner_than_random(
    spec: StudySpec,
) -> None:
    """A few dozen trials, as a detector study affords: the evolution's best beats random
    search's on every seed, where both start from the defaults."""
    target = _target(spec)
    objective = _toy(spec, target)
    defaults = spec.default_params()
    assert defaults is not None
    best: dict[str, list[float]] = {"Evolution": [], "Random": []}
    for seed in range(5):
        for kind in best:
            sampler = build_sampler(SamplerSpec(kind, seed), defaults)
            study = optuna.create_study(direction="maximize", sampler=sampler)
            study.enqueue_trial(defaults)
            study.optimize(objective, n_trials=20)
            best[kind].append(study.best_value)
    start = objective(optuna.trial.FixedTrial(defaults))
    assert all(b > start for b in best["Evolution"])  # every seed improved on the defaults
    assert all(e > r for e, r in zip(best["Evolution"], best["Random"], strict=True)), best
    assert statistics.median(best["Evolution"]) > statistics.median(best["Random"])


def test_workers_on_one_storage_breed_from_each_others_trials(
    spec: StudySpec, tmp_path: Path
) -> None:
    """Two workers, each with its own sampler (the study's seed, offset by its index), on one
    SQLite file: the second one's children come from the parent the first one finished."""
    storage = f"sqlite:///{tmp_path / 'study.db'}"
    defaults = spec.default_params()
    assert defaults is not None
    first = optuna.create_study(
        study_name="s", storage=storage, direction="maximize", sampler=spec.make_sampler(0)
    )
    good = {**defaults, "lr": defaults["lr"] * 2.5}  # a setting far from the defaults' lr
    first.enqueue_trial(good)
    trial = first.ask()
    spec.space.sample(trial)
    first.tell(trial, 1.0)
    second = optuna.load_study(study_name="s", storage=storage, sampler=spec.make_sampler(1))
    lrs = []
    for _ in range(6):
        trial = second.ask()
        lrs.append(spec.space.sample(trial)["lr"])
        second.tell(trial, state=optuna.trial.TrialState.PRUNED)  # the one parent stays
    lr = spec.space.get("lr")
    assert isinstance(lr, FloatParam)
    # around the parent's lr (2.5x the default), not the defaults' (1x) the sampler started from
    mid = math.sqrt(defaults["lr"] * good["lr"])
    assert statistics.median(lrs) > mid, lrs


def test_a_setting_run_on_several_seeds_counts_once_with_its_mean() -> None:
    space: dict[str, optuna.distributions.BaseDistribution] = {
        "x": optuna.distributions.FloatDistribution(0.0, 1.0)
    }
    sampler = EvolutionSampler(seed=0, parents=1, crossover=0.0)
    study = optuna.create_study(direction="maximize", sampler=sampler)
    for x, value in ((0.2, 0.9), (0.2, 0.1), (0.8, 0.6)):  # 0.2: one lucky run, mean 0.5
        study.add_trial(
            optuna.trial.create_trial(params={"x": x}, distributions=space, value=value)
        )
    draws = []
    for _ in range(10):
        trial = study.ask()
        draws.append(trial.suggest_float("x", 0.0, 1.0))
        study.tell(trial, state=optuna.trial.TrialState.FAIL)  # not a parent
    assert statistics.median(draws) > 0.5  # bred from 0.8 (mean 0.6), not 0.2 (best run 0.9)


def test_a_choice_mutates_at_its_own_lower_rate() -> None:
    """Switching the optimizer changes what its learning rate means: the optimizer mutates at
    `choice_mutation` (0.1 by default), the numbers at `mutation`, and a child always changes
    at least one number, never only by a switch."""
    x0 = {"lr": 0.01, "optimizer": "AdamW"}

    def optimizers(choice_mutation: float) -> list[str]:
        sampler = EvolutionSampler(
            x0, seed=0, choice_mutation=choice_mutation, choices={"optimizer"}
        )
        study = optuna.create_study(direction="maximize", sampler=sampler)
        drawn: list[str] = []
        seen = {x0["lr"]}
        for _ in range(60):
            trial = study.ask()
            lr = trial.suggest_float("lr", 1e-4, 1.0, log=True)
            optimizer = trial.suggest_categorical("optimizer", ["SGD", "Adam", "AdamW"])
            assert lr not in seen, "each child changes a number of its parent's"
            seen.add(lr)
            drawn.append(optimizer)
            study.tell(trial, -abs(math.log(lr / 0.01)))  # every optimizer equally good
        return drawn

    assert set(optimizers(0.0)) == {"AdamW"}
    rare = sum(o != "AdamW" for o in optimizers(0.1))
    often = sum(o != "AdamW" for o in optimizers(0.5))
    assert 0 < rare < often, (rare, often)


def test_the_study_file_sets_the_choices_mutation_rate(spec: StudySpec) -> None:
    """`[sampler] choice_mutation`: the loss-weights study keeps the optimizer of its parents
    (the defaults' AdamW), and the rate is checked where it is written."""
    from search.study.study_file import StudyFileError, parse_study

    assert spec.sampler.choice_mutation == 0
    study = optuna.create_study(direction="maximize", sampler=spec.make_sampler(0))
    for _ in range(12):
        trial = study.ask()
        params = spec.space.sample(trial)
        assert params["optimizer"] == "AdamW"
        study.tell(trial, -abs(math.log(params["lr"] / 0.01)))
    for table, message in (
        ({"type": "Evolution", "choice_mutation": 1.5}, r"choice_mutation must be in \[0, 1\]"),
    ):
        with pytest.raises(StudyFileError, match=message):
            parse_study({**spec.raw, "sampler": table})


@pytest.mark.parametrize("kind", SAMPLER_TYPES)
def test_every_sampler_runs_the_study_with_its_baselines_outside_the_space(
    spec: StudySpec, kind: str
) -> None:
    """The hand-tuned baselines lie outside the space around the defaults: each sampler takes
    them as trials and still draws inside the space."""
    sampler = build_sampler(
        SamplerSpec(kind, 0, n_startup_trials=2),
        spec.default_params(),
        choices=[p.name for p in spec.space.params if isinstance(p, ChoiceParam)],
    )
    study = optuna.create_study(direction="maximize", sampler=sampler)
    for baseline in spec.baselines[:2]:
        study.enqueue_trial(baseline.as_dict())
    study.optimize(_toy(spec, _target(spec)), n_trials=6)
    assert all(t.state == optuna.trial.TrialState.COMPLETE for t in study.trials)
    for t in study.trials[2:]:
        assert all(p.contains(t.params[p.name]) for p in spec.space.params), t.params
