"""The incumbent: the setting a study stands behind, chosen over seeds, not by one lucky run.

A study's best single trial is biased upward: of many noisy runs, the best is partly luck
(DESIGN.md, "the second trap"). So the study keeps an incumbent as SMAC's intensifier does
(Hutter et al., "Sequential Model-Based Optimization", 2011; SMAC3's `Intensifier`): a
challenger replaces it only after both ran on the same fresh seeds and the challenger's mean over
their common seeds is higher.

- The incumbent starts as the trainer's defaults (the start trial, `[sampler]
  start_from_defaults`); without a start trial, the first full-length sampled setting.
- Every setting's first run trains with the recipe's seed. A sampled trial that ends COMPLETE
  above the incumbent's run on that seed is a **challenger**: the study enqueues **race runs**
  of it and of the incumbent on `RACE_SEEDS` (those the incumbent has not run yet), full length,
  never pruned (`trial_record` ``race``). They are trials of the study: they spend its budget,
  at most `RACE_SHARE` of it (`search/control/study_manager.py` `ManagedStudy.race`), and a
  challenger the budget cannot race stays one, named as such.
- Once a challenger and the incumbent both have runs on every race seed, the one with the higher
  mean over their common seeds is the incumbent.

`tune confirm` stays the independent check after a study: its seeds (1, 2, ...) are never race
seeds, and it retrains at its own length.
"""

from __future__ import annotations

import statistics
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import optuna
from optuna.study import StudyDirection
from optuna.trial import FrozenTrial, TrialState

from search.bookkeeping import trial_record
from search.bookkeeping.optuna_compat import enqueued_params
from search.confirm.stats import Gain, gain
from search.study.study_file import StudyFileError, StudySpec

RACE_SEEDS: tuple[int, ...] = (101, 102)  # with the recipe's seed: three runs per raced setting
RACE_SHARE = 0.5  # race runs spend at most this share of the study's budget


@dataclass
class Setting:
    """One setting of the space and its COMPLETE full-length runs, by seed."""

    trial: FrozenTrial  # its first run: the sampled (or start) trial that introduced it
    runs: dict[int, float] = field(default_factory=dict)
    defaults: bool = False  # the trainer's defaults (the start trial's setting)

    @property
    def number(self) -> int:
        return self.trial.number

    @property
    def params(self) -> dict[str, Any]:
        return dict(self.trial.params)

    def mean(self, seeds: Sequence[int] | None = None) -> float:
        chosen = self.runs if seeds is None else {s: self.runs[s] for s in seeds}
        return statistics.fmean(chosen.values())


@dataclass(frozen=True)
class Incumbent:
    """Who the study stands behind, and against what."""

    setting: Setting
    defaults: Setting | None
    raced: bool  # it won a race (or, for the defaults, none beat them in one)
    challengers: tuple[Setting, ...]  # beat it on one seed, not raced (yet)
    beaten: tuple[Setting, ...] = ()  # raced against an incumbent and lost

    @property
    def is_defaults(self) -> bool:
        return self.setting.defaults

    def gain_over_defaults(self) -> Gain | None:
        """Paired gain over the defaults on their common seeds (None: fewer than two)."""
        if self.defaults is None or self.is_defaults:
            return None
        return gain(self.setting.runs, self.defaults.runs)

    def common_seeds(self) -> list[int]:
        if self.defaults is None:
            return sorted(self.setting.runs)
        return sorted(set(self.setting.runs) & set(self.defaults.runs))


def study_seed(values: dict[str, Any]) -> int:
    """The seed a setting's first run trains with: the recipe's `seed` (0 when it has none)."""
    seed = values.get("seed")
    return seed if isinstance(seed, int) and not isinstance(seed, bool) else 0


def settings_of(trials: Sequence[FrozenTrial], seed: int, epochs: int) -> list[Setting]:
    """The study's settings with their COMPLETE full-length runs (baselines and confirm runs
    left out), in the order they were first run."""
    found: dict[tuple[Any, ...], Setting] = {}
    for t in sorted(trials, key=lambda t: t.number):
        if t.state != TrialState.COMPLETE or t.value is None or (t.last_step or 0) < epochs:
            continue
        if trial_record.read_baseline(t) is not None or trial_record.read_confirm(t) is not None:
            continue
        key = _key(t.params)
        race = trial_record.read_race(t)
        setting = found.get(key)
        if setting is None:
            setting = found[key] = Setting(t, defaults=False)
        setting.runs.setdefault(race[1] if race else seed, t.value)
        if trial_record.read_start(t) is not None:
            setting.defaults = True
    return list(found.values())


def incumbent_of(
    trials: Sequence[FrozenTrial],
    seed: int,
    epochs: int,
    direction: StudyDirection = StudyDirection.MAXIMIZE,
) -> Incumbent | None:
    """The incumbent of a study's trials (module docstring); None before any full-length run."""
    settings = settings_of(trials, seed, epochs)
    if not settings:
        return None
    sign = -1.0 if direction == StudyDirection.MINIMIZE else 1.0
    defaults = next((s for s in settings if s.defaults), None)
    current = defaults or settings[0]
    raced = False
    for challenger in settings:
        if challenger is current or not _raced(challenger, current):
            continue
        common = sorted(set(challenger.runs) & set(current.runs))
        if sign * challenger.mean(common) > sign * current.mean(common):
            current, raced = challenger, True
    beaten = tuple(
        s
        for s in settings
        if s is not current and any(_raced(s, other) for other in settings if other is not s)
    )
    if current.defaults and beaten:
        raced = True  # the defaults held against a raced challenger
    pending = tuple(
        s
        for s in settings
        if s is not current
        and not _raced(s, current)
        and seed in s.runs
        and seed in current.runs
        and sign * s.runs[seed] > sign * current.runs[seed]
    )
    return Incumbent(current, defaults, raced, pending, beaten)


def incumbent_of_study(
    spec: StudySpec, trials: Sequence[FrozenTrial], direction: StudyDirection
) -> Incumbent | None:
    """The incumbent of a study of `spec`; None with a latency budget, where the best is a
    feasible one (Optuna's constraint) that a comparison of the metric alone cannot choose."""
    if spec.objective.latency_budget_ms is not None:
        return None
    return incumbent_of(trials, study_seed(spec.values({})), spec.trial.epochs, direction)


def study_best(
    study: optuna.Study,
    trials: Sequence[FrozenTrial] | None = None,
    spec: StudySpec | None = None,
) -> tuple[FrozenTrial | None, Incumbent | None]:
    """The trial a study stands behind, with its incumbent: the incumbent's first run when the
    study started from the trainer's defaults or raced a challenger (one lucky run is not the
    best), else Optuna's best trial (feasible ones only, when a latency budget is set). `spec`:
    the study's, when the caller has it (else read from the storage)."""
    if trials is None:
        trials = study.get_trials(deepcopy=False)
    if spec is None:
        try:
            spec = trial_record.read_stored_spec(study)
        except StudyFileError:  # a table tune cannot read (another version's): Optuna's best
            spec = None
    standing = None if spec is None else incumbent_of_study(spec, trials, study.direction)
    if standing is not None and (standing.is_defaults or standing.raced):
        return standing.setting.trial, standing
    try:
        return study.best_trial, standing
    except ValueError:
        return None, standing


def race_runs(
    trials: Sequence[FrozenTrial], challenger: Setting, incumbent: Setting
) -> list[tuple[Setting, int]]:
    """The runs (setting, seed) a race of `challenger` against `incumbent` still needs: each on
    every race seed it has no COMPLETE run, and no race run waiting or running, on."""
    queued = {
        (_key(enqueued_params(t)), race[1])
        for t in trials
        if t.state in (TrialState.WAITING, TrialState.RUNNING)
        and (race := trial_record.read_race(t)) is not None
    }
    return [
        (setting, s)
        for s in RACE_SEEDS
        for setting in (challenger, incumbent)
        if s not in setting.runs and (_key(setting.params), s) not in queued
    ]


def _raced(a: Setting, b: Setting) -> bool:
    return all(s in a.runs and s in b.runs for s in RACE_SEEDS)


def _key(params: dict[str, Any]) -> tuple[Any, ...]:
    return tuple(sorted((k, repr(v)) for k, v in params.items()))
