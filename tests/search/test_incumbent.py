"""The incumbent changes only when a challenger wins on the same fresh seeds, inside the budget."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import optuna
from optuna.distributions import BaseDistribution, FloatDistribution
from optuna.trial import FrozenTrial, TrialState

from search.bookkeeping import trial_record
from search.bookkeeping.budget import race_room
from search.bookkeeping.trial_record import RaceRun
from search.commands.best import best_trial, export_best, format_best
from search.commands.status import study_status
from search.confirm.incumbent import (
    FIRST_RACE_SEED,
    RACE_SEED_STRIDE,
    SEEDS_PER_RACE,
    first_race_seed,
    incumbent_of,
    next_race,
    race_runs,
)
from search.confirm.standing import study_standing
from search.running.launch import next_step
from search.running.worker import WorkerOptions, run_worker
from search.study.study_file import parse_study
from search.trainers.builtin import TuneTrainer
from tests.search import fake_trainer
from tests.search.test_worker import _trials

EPOCHS = 4
SPACE: dict[str, BaseDistribution] = {"x": FloatDistribution(0.0, 1.0)}


def _run(x: float, value: float, *, start: bool = False) -> FrozenTrial:
    """A setting's first run, on the recipe's seed."""
    attrs = trial_record.start_attrs() if start else {}
    return _trial(x, value, attrs)


def _race(
    x: float, value: float, of: int, seed: int, race: tuple[int, int] = (1, 0)
) -> FrozenTrial:
    """A race run of the setting first run as trial `of`, in the race `race` (challenger,
    incumbent)."""
    return _trial(x, value, trial_record.race_attrs(RaceRun(of, seed, *race)))


def _races(
    x: float,
    values: tuple[float, float],
    defaults: tuple[float, float],
    of: int = 1,
    seeds: tuple[int, int] | None = None,
) -> list[FrozenTrial]:
    """A race's four runs: setting `x` (first run as trial `of`) against the defaults (trial 0,
    x = 0.5) on `seeds` (the first race's by default)."""
    seeds = seeds or FIRST
    return [
        *(_race(x, v, of, s, race=(of, 0)) for v, s in zip(values, seeds, strict=True)),
        *(_race(0.5, v, 0, s, race=(of, 0)) for v, s in zip(defaults, seeds, strict=True)),
    ]


def _trial(x: float, value: float, attrs: dict[str, Any]) -> FrozenTrial:
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


FIRST = (FIRST_RACE_SEED, FIRST_RACE_SEED + 1)  # the first race's seeds


def test_the_defaults_are_the_incumbent_until_a_challenger_wins_a_race() -> None:
    trials = _numbered([_run(0.5, 0.50, start=True), _run(0.7, 0.60)])
    standing = incumbent_of(trials, 0, EPOCHS)
    assert standing is not None and standing.is_defaults and not standing.raced
    assert [c.number for c in standing.challengers] == [1]  # beat it on one seed: not yet best
    runs = race_runs(trials, standing.challengers[0], standing.setting)
    assert sorted((r.of, r.seed) for r in runs) == [(n, seed) for n in (0, 1) for seed in FIRST]
    assert len(FIRST) == SEEDS_PER_RACE
    won = [
        *trials,
        *_races(0.7, (0.55, 0.56), (0.50, 0.52)),
    ]
    standing = incumbent_of(_numbered(won), 0, EPOCHS)
    assert standing is not None and standing.setting.number == 1 and standing.raced
    assert standing.over_defaults == FIRST
    gain = standing.gain_over_defaults()  # on the race's seeds only
    assert gain is not None and gain.n == 2 and abs(gain.mean - 0.045) < 1e-9


def test_a_challenger_that_won_by_its_seed_does_not_replace_the_defaults() -> None:
    lucky = [
        _run(0.5, 0.50, start=True),
        _run(0.7, 0.60),  # best single run of the study
        *_races(0.7, (0.45, 0.46), (0.50, 0.52)),
    ]
    standing = incumbent_of(_numbered(lucky), 0, EPOCHS)
    assert standing is not None and standing.is_defaults and standing.raced
    assert standing.challengers == ()  # raced and lost: no longer a challenger
    assert [s.number for s in standing.beaten] == [1]


def test_the_run_that_made_a_challenger_does_not_count_in_its_race() -> None:
    """Its run on the recipe's seed was chosen for beating the incumbent's: counted, it would
    carry a challenger that is level on the fresh seeds (mean 0.62 against 0.51 over all three)."""
    lucky = [
        _run(0.5, 0.50, start=True),
        _run(0.7, 0.90),
        *_races(0.7, (0.48, 0.49), (0.50, 0.51)),
    ]
    standing = incumbent_of(_numbered(lucky), 0, EPOCHS)
    assert standing is not None and standing.is_defaults and standing.raced


def test_every_race_runs_on_seeds_of_its_own() -> None:
    """The defaults' unlucky runs in one race do not carry over to the next challenger: the
    defaults run again on the next race's fresh seeds."""
    held = [
        _run(0.5, 0.50, start=True),
        _run(0.7, 0.60),
        *_races(0.7, (0.45, 0.46), (0.50, 0.52)),
        _run(0.6, 0.55),  # the next challenger
    ]
    trials = _numbered(held)
    standing = incumbent_of(trials, 0, EPOCHS)
    assert standing is not None and [c.number for c in standing.challengers] == [6]
    runs = race_runs(trials, standing.challengers[0], standing.setting)
    later = (FIRST[1] + 1, FIRST[1] + 2)
    assert sorted((r.of, r.seed) for r in runs) == [(n, s) for n in (0, 6) for s in later]
    assert {(r.challenger, r.incumbent) for r in runs} == {(6, 0)}


def test_a_race_whose_incumbent_was_replaced_meanwhile_decides_nothing() -> None:
    """Two challengers raced the defaults at once (two workers); the first to be decided won, so
    the second's win over the defaults says nothing of it against the new incumbent."""
    later = (FIRST[1] + 1, FIRST[1] + 2)
    both = [
        _run(0.5, 0.50, start=True),
        _run(0.7, 0.60),
        _run(0.6, 0.65),
        *_races(0.7, (0.58, 0.59), (0.50, 0.51)),
        *_races(0.6, (0.62, 0.63), (0.49, 0.50), of=2, seeds=later),
    ]
    trials = _numbered(both)
    standing = incumbent_of(trials, 0, EPOCHS)
    assert standing is not None and standing.setting.number == 1
    assert [c.number for c in standing.challengers] == [2]  # of the new incumbent, again
    runs = race_runs(trials, standing.challengers[0], standing.setting)
    assert {r.seed for r in runs} == {later[1] + 1, later[1] + 2}


def test_one_race_at_a_time_the_best_challenger_first() -> None:
    """A challenger found while a race runs waits for it, then races whoever won."""
    study = optuna.create_study(direction="maximize")
    for t in (_run(0.5, 0.50, start=True), _run(0.7, 0.60), _run(0.6, 0.65)):
        study.add_trial(t)
    standing = incumbent_of(study.get_trials(), 0, EPOCHS)
    assert standing is not None and [c.number for c in standing.challengers] == [2, 1]
    found = next_race(study.get_trials(), standing)
    assert found is not None and found[0].number == 2  # the best run first
    for run in found[1]:
        study.enqueue_trial(
            {"x": 0.6 if run.of == 2 else 0.5}, user_attrs=trial_record.race_attrs(run)
        )
    assert next_race(study.get_trials(), standing) is None  # trial 1 waits
    won = [  # trial 2 wins its race
        _run(0.5, 0.50, start=True),
        _run(0.7, 0.60),
        _run(0.6, 0.65),
        *_races(0.6, (0.66, 0.66), (0.50, 0.50), of=2),
    ]
    trials = _numbered([*won, _run(0.8, 0.70)])  # found while the race ran
    standing = incumbent_of(trials, 0, EPOCHS)
    assert standing is not None and standing.setting.number == 2
    assert [c.number for c in standing.challengers] == [7]  # trial 1 (0.60) is below 2's 0.65
    found = next_race(trials, standing)
    assert found is not None and {(r.challenger, r.incumbent) for r in found[1]} == {(7, 2)}
    assert {r.seed for r in found[1]} == {FIRST[1] + 1, FIRST[1] + 2}


def test_a_race_reruns_only_what_failed_on_its_own_seeds() -> None:
    study = optuna.create_study(direction="maximize")
    for t in (_run(0.5, 0.50, start=True), _run(0.7, 0.60)):
        study.add_trial(t)
    standing = incumbent_of(study.get_trials(), 0, EPOCHS)
    assert standing is not None
    failed, *waiting = race_runs(study.get_trials(), standing.challengers[0], standing.setting)
    for run in waiting:
        study.enqueue_trial({"x": 0.5}, user_attrs=trial_record.race_attrs(run))
    study.add_trial(
        optuna.trial.create_trial(state=TrialState.FAIL, user_attrs=trial_record.race_attrs(failed))
    )
    again = race_runs(study.get_trials(), standing.challengers[0], standing.setting)
    assert again == [failed]  # the waiting ones are not enqueued twice, nor on new seeds


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
    # a fixed index: the sampler's seed is offset by it (by the pid when unset)
    options = WorkerOptions(
        runs_dir=tmp_path / "runs", worker_index=0, poll_interval=0.1, log=lines.append
    )
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
        run = trial_record.read_race(t)
        assert run is not None
        assert t.state == TrialState.COMPLETE and t.last_step == EPOCHS  # never pruned
        assert t.params == trials[run.of].params  # the same setting, rerun
        config = trial_record.read_config(t)
        assert config is not None and config["seed"] == run.seed >= FIRST_RACE_SEED
    first = first_race_seed(spec)  # the smoke study's sampler seed is 3
    assert first == FIRST_RACE_SEED + 3 * RACE_SEED_STRIDE
    assert any(f"racing them on seeds {first}, {first + 1}" in line for line in lines), lines
    standing = incumbent_of(trials, 0, EPOCHS)
    assert standing is not None and standing.raced
    assert not standing.is_defaults  # the defaults are far from the fake optimum
    gain = standing.gain_over_defaults()
    # paired over the race's own seeds only, not the run that made it a challenger
    assert standing.over_defaults and 0 not in standing.over_defaults
    assert gain is not None and gain.n == SEEDS_PER_RACE and gain.mean > 0
    # the fake trainer's value on the race seeds is its setting's, give or take its luck
    for seed, value in standing.setting.runs.items():
        config = spec.train_config(standing.setting.params, seed=seed)
        assert abs(value - fake_trainer.final_map(config)) < 1e-9
    # `tune best` (and its export) and `tune status` name the incumbent and its gain over seeds
    study = optuna.load_study(study_name="smoke", storage=url)
    best = best_trial(study)
    assert best.number == standing.setting.number
    shown = format_best(study, best)
    assert "over 2 fresh seeds" in shown and "beat the trainer's defaults" in shown, shown
    exported = export_best(study, best, tmp_path / "hyp.yaml")
    assert "the incumbent over 2 fresh seeds" in exported.text.splitlines()[0], exported.text
    said = study_status(study).standing
    who = f"trial {standing.setting.number}"
    assert f"over 2 fresh seeds, {who} beat the trainer's defaults" in said
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
    shown = format_best(study, best_trial(study))
    assert "best trial 0 (the trainer's defaults)" in shown and "not raced" in shown, shown
    hint = next_step("smoke", study_standing(study, study.get_trials(), None))
    assert f"tune confirm --study smoke --top 1 --trial {standing.challengers[0].number}" in hint
    said = study_status(study).standing  # and names what a user would confirm: the setting
    challenger = standing.challengers[0]
    assert f"trial {challenger.number} (" in said and "not raced on fresh seeds" in said
    assert all(f"{k}=" in said for k in challenger.params), said
    said = study_status(study).standing
    assert "the start point, the trainer's defaults" in said
    assert "not raced on fresh seeds" in said and "stay the incumbent" in said
