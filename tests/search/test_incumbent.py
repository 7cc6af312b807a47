"""The incumbent changes only when a challenger wins on the same fresh seeds, inside the budget."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import optuna
from optuna.distributions import BaseDistribution, FloatDistribution
from optuna.trial import FrozenTrial, TrialState

from search.bookkeeping import trial_record
from search.bookkeeping.budget import race_room
from search.commands.best import best_trial
from search.commands.status import study_status
from search.confirm.incumbent import RACE_SEEDS, incumbent_of, race_runs
from search.running.worker import WorkerOptions, run_worker
from search.study.study_file import parse_study
from search.trainers.builtin import TuneTrainer
from tests.search import fake_trainer
from tests.search.test_worker import _trials

EPOCHS = 4
SPACE: dict[str, BaseDistribution] = {"x": FloatDistribution(0.0, 1.0)}


def _run(x: float, value: float, *, seed: int | None = None, start: bool = False) -> FrozenTrial:
    attrs: dict[str, Any] = {}
    if seed is not None:
        attrs.update(trial_record.race_attrs(0, seed))
    if start:
        attrs.update(trial_record.start_attrs())
    return optuna.trial.create_trial(
        params={"x": x},
        distributions=SPACE,
        value=value,
        intermediate_values={EPOCHS: value},
        user_attrs=attrs,
    )


def _numbered(trials: list[FrozenTrial]) -> list[FrozenTrial]:
    study = optuna.create_study(direction="maximize")
    for t in trials:
        study.add_trial(t)
    return study.get_trials()


def test_the_defaults_are_the_incumbent_until_a_challenger_wins_a_race() -> None:
    trials = _numbered([_run(0.5, 0.50, start=True), _run(0.7, 0.60)])
    standing = incumbent_of(trials, 0, EPOCHS)
    assert standing is not None and standing.is_defaults and not standing.raced
    assert [c.number for c in standing.challengers] == [1]  # beat it on one seed: not yet best
    runs = race_runs(trials, standing.challengers[0], standing.setting)
    assert sorted((s.number, seed) for s, seed in runs) == [
        (n, seed) for n in (0, 1) for seed in RACE_SEEDS
    ]
    won = [
        *trials,
        _run(0.7, 0.55, seed=RACE_SEEDS[0]),
        _run(0.7, 0.56, seed=RACE_SEEDS[1]),
        _run(0.5, 0.50, seed=RACE_SEEDS[0]),
        _run(0.5, 0.52, seed=RACE_SEEDS[1]),
    ]
    standing = incumbent_of(_numbered(won), 0, EPOCHS)
    assert standing is not None and standing.setting.number == 1 and standing.raced
    gain = standing.gain_over_defaults()
    assert gain is not None and gain.n == 3 and gain.mean > 0
    assert standing.common_seeds() == [0, *RACE_SEEDS]


def test_a_challenger_that_won_by_its_seed_does_not_replace_the_defaults() -> None:
    lucky = [
        _run(0.5, 0.50, start=True),
        _run(0.7, 0.60),  # best single run of the study
        _run(0.7, 0.45, seed=RACE_SEEDS[0]),
        _run(0.7, 0.46, seed=RACE_SEEDS[1]),
        _run(0.5, 0.50, seed=RACE_SEEDS[0]),
        _run(0.5, 0.52, seed=RACE_SEEDS[1]),
    ]
    standing = incumbent_of(_numbered(lucky), 0, EPOCHS)
    assert standing is not None and standing.is_defaults and standing.raced
    assert standing.challengers == ()  # raced and lost: no longer a challenger


def test_runs_already_waiting_are_not_enqueued_twice() -> None:
    study = optuna.create_study(direction="maximize")
    for t in (_run(0.5, 0.50, start=True), _run(0.7, 0.60)):
        study.add_trial(t)
    study.enqueue_trial({"x": 0.5}, user_attrs=trial_record.race_attrs(0, RACE_SEEDS[0]))
    trials = study.get_trials()
    standing = incumbent_of(trials, 0, EPOCHS)
    assert standing is not None
    runs = race_runs(trials, standing.challengers[0], standing.setting)
    assert (0, RACE_SEEDS[0]) not in [(s.number, seed) for s, seed in runs]
    assert len(runs) == 3


def test_races_take_at_most_their_share_of_the_budget(tmp_path: Path) -> None:
    spec = _smoke(tmp_path, n_trials=6)[1]
    trials = _numbered([_run(0.5, 0.50, start=True), _run(0.7, 0.60)])
    assert race_room(spec, trials, 3, share=0.5) is None
    why = race_room(spec, trials, 4, share=0.5)
    assert why is not None and "above their share of 50%" in why
    assert "left" in (race_room(spec, trials, 5, share=1.0) or "")  # 2 finished + 5 > 6


def _smoke(tmp_path: Path, n_trials: int, **sampler: Any) -> tuple[str, Any]:
    from search.bookkeeping.storage import open_storage
    from search.control.study_setup import prepare_study
    from search.study.study_file import Overrides, load_study_file

    url = f"sqlite:///{tmp_path / 'tune.db'}"
    raw = dict(load_study_file("smoke", Overrides(n_trials=n_trials, epochs=EPOCHS)).raw)
    raw.pop("baselines")
    raw["sampler"] = {"type": "Random", "seed": 3, "start_from_defaults": True, **sampler}
    raw["pruner"] = {"type": "None"}
    spec = parse_study(raw)
    prepare_study(spec, open_storage(url, create_schema=True))
    return url, spec


def _work(url: str, tmp_path: Path, lines: list[str]) -> None:
    options = WorkerOptions(runs_dir=tmp_path / "runs", poll_interval=0.1, log=lines.append)
    run_worker("smoke", url, options, trainer=TuneTrainer(fake_trainer.fit, fake_trainer.load_data))


def test_a_worker_races_a_challenger_on_fresh_seeds_inside_the_budget(tmp_path: Path) -> None:
    """A real worker loop, the fake trainer (its value depends on the setting, and a little on
    the seed): the first draw that beats the trainer's defaults is rerun with them on the race
    seeds, full length, and the incumbent is the one that won over all three."""
    url, spec = _smoke(tmp_path, n_trials=12)
    lines: list[str] = []
    _work(url, tmp_path, lines)
    trials = _trials(url)
    assert len([t for t in trials if t.state.is_finished()]) == 12  # the budget holds
    races = [t for t in trials if trial_record.read_race(t) is not None]
    assert 0 < len(races) <= 6  # at most half the budget
    for t in races:
        number, seed = trial_record.read_race(t) or (0, 0)
        assert t.state == TrialState.COMPLETE and t.last_step == EPOCHS  # never pruned
        assert t.params == trials[number].params  # the same setting, rerun
        config = trial_record.read_config(t)
        assert config is not None and config["seed"] == seed and seed in RACE_SEEDS
    assert any("racing them on seeds 101, 102" in line for line in lines), lines
    standing = incumbent_of(trials, 0, EPOCHS)
    assert standing is not None and standing.raced
    assert not standing.is_defaults  # the defaults are far from the fake optimum
    gain = standing.gain_over_defaults()
    assert gain is not None and gain.n == 3 and gain.low > 0
    # the fake trainer's value on the race seeds is its setting's, give or take its luck
    for seed, value in standing.setting.runs.items():
        config = spec.train_config(standing.setting.params, seed=seed)
        assert abs(value - fake_trainer.final_map(config)) < 1e-9
    # `tune best` (and its export) and `tune status` name the incumbent and its gain over seeds
    study = optuna.load_study(study_name="smoke", storage=url)
    assert best_trial(study).number == standing.setting.number
    said = study_status(study).standing
    assert f"over 3 seeds, trial {standing.setting.number} beat the trainer's defaults" in said
    assert "95% interval" in said and "paired by seed" in said


def test_a_budget_too_small_for_a_race_says_so_and_keeps_the_defaults(tmp_path: Path) -> None:
    url, _ = _smoke(tmp_path, n_trials=4)
    lines: list[str] = []
    _work(url, tmp_path, lines)
    trials = _trials(url)
    assert not [t for t in trials if trial_record.read_race(t) is not None]
    assert any("beat the incumbent (trial 0) on one seed; not raced: " in line for line in lines)
    standing = incumbent_of(trials, 0, EPOCHS)
    assert standing is not None and standing.is_defaults and standing.challengers
    # one lucky run is not the best: `tune best` stays with the defaults, and says why
    study = optuna.load_study(study_name="smoke", storage=url)
    assert study.best_trial.number != 0  # Optuna's best single run is a challenger
    assert best_trial(study).number == 0
    said = study_status(study).standing
    assert "the start point, the trainer's defaults" in said
    assert "not raced on fresh seeds" in said and "stay the incumbent" in said
