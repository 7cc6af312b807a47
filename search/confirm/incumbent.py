"""The incumbent: the setting a study stands behind, chosen over seeds, not by one lucky run.

A study's best single trial is biased upward: of many noisy runs, the best is partly luck
(DESIGN.md, "the second trap"). So the study keeps an incumbent as SMAC's intensifier does
(Hutter et al., "Sequential Model-Based Optimization", 2011; SMAC3's `Intensifier`): a
challenger replaces it only after both ran on the same fresh seeds and the challenger's mean over
those seeds is higher.

- The incumbent starts as the trainer's defaults (the start trial, `[sampler]
  start_from_defaults`); without a start trial, the first full-length sampled setting.
- Every setting's first run trains with the recipe's seed. A sampled trial that ends COMPLETE
  above the incumbent's run on that seed is a **challenger**: the study enqueues a **race**, runs
  of it and of the incumbent on `SEEDS_PER_RACE` seeds no run of the study has used (from
  `first_race_seed` on: 101 for sampler seed 0, 1101 for seed 1, ...), full length, never
  pruned (`trial_record` ``race``). They are trials of the study: they spend its budget, at most
  `RACE_SHARE` of it (`search/control/study_manager.py` `ManagedStudy.race`), and a challenger
  the budget cannot race stays one, named as such.
- A race is decided on its own seeds only, once both settings have a run on each:
  - not on the recipe's seed, where the challenger was chosen for beating the incumbent (that
    run is biased upward by the choice);
  - not on an earlier race's seeds, so that one unlucky pair of the incumbent's runs does not let
    every later challenger win.
  The challenger with the higher mean replaces the incumbent. One race runs at a time
  (`next_race`), the best waiting challenger's next; a race whose incumbent was replaced while it
  ran would decide nothing (its challenger is a challenger of the new incumbent again).
- The incumbent's gain over the defaults is paired over the seeds of the race in which it beat
  them; an incumbent that beat a later incumbent has no fresh seeds in common with the defaults.

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
from search.confirm.stats import Gain, gain
from search.study.study_file import StudyFileError, StudySpec

FIRST_RACE_SEED = 101  # race seeds count up from here: apart from confirm's 1, 2, ...
# a study of sampler seed s races from FIRST_RACE_SEED + s * RACE_SEED_STRIDE: studies that differ
# only in their sampler seed do not share the defaults' race runs (the same setting on the same
# seed trains the same), so that they are independent repeats of the search
RACE_SEED_STRIDE = 1000
SEEDS_PER_RACE = 2  # runs of each setting per race: 4 runs a race
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
    challengers: tuple[Setting, ...]  # beat it on one seed, not raced (yet); the best first
    beaten: tuple[Setting, ...] = ()  # raced against an incumbent and lost
    over_defaults: tuple[int, ...] = ()  # the seeds of the race in which it beat the defaults

    @property
    def is_defaults(self) -> bool:
        return self.setting.defaults

    def gain_over_defaults(self) -> Gain | None:
        """Paired gain over the defaults on the fresh seeds of the race it beat them in (None:
        it did not race them directly)."""
        if self.defaults is None or self.is_defaults or not self.over_defaults:
            return None
        pick = self.over_defaults
        return gain(
            {s: self.setting.runs[s] for s in pick}, {s: self.defaults.runs[s] for s in pick}
        )


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


@dataclass(frozen=True)
class Race:
    """A race of `challenger` against `incumbent` (trial numbers of their settings) on `seeds`."""

    challenger: int
    incumbent: int
    seeds: tuple[int, ...]

    def decided(self, challenger: Setting, incumbent: Setting) -> bool:
        """Whether both settings have a run on every seed of the race."""
        return all(s in challenger.runs and s in incumbent.runs for s in self.seeds)


def races_of(trials: Sequence[FrozenTrial]) -> list[Race]:
    """The races a study enqueued (in any state), in the order it enqueued them."""
    seeds: dict[tuple[int, int], set[int]] = {}
    for t in sorted(trials, key=lambda t: t.number):
        if (run := trial_record.read_race(t)) is not None:
            seeds.setdefault((run.challenger, run.incumbent), set()).add(run.seed)
    return [Race(c, i, tuple(sorted(s))) for (c, i), s in seeds.items()]


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
    by_number = {s.number: s for s in settings}
    defaults = next((s for s in settings if s.defaults), None)
    current = defaults or settings[0]
    raced = False
    over_defaults: tuple[int, ...] = ()
    beaten: list[Setting] = []
    for race in races_of(trials):
        challenger, held = by_number.get(race.challenger), by_number.get(race.incumbent)
        if challenger is None or held is not current:
            continue  # its incumbent was replaced while it ran: it decides nothing
        if not race.decided(challenger, held):
            continue  # still running: its challenger stays one
        raced = True
        if sign * challenger.mean(race.seeds) > sign * held.mean(race.seeds):
            current = challenger
            over_defaults = race.seeds if held.defaults else ()
        else:
            beaten.append(challenger)
    lost = {s.number for s in beaten}
    pending = tuple(
        sorted(
            (
                s
                for s in settings
                if s is not current
                and s.number not in lost
                and seed in s.runs
                and seed in current.runs
                and sign * s.runs[seed] > sign * current.runs[seed]
            ),
            key=lambda s: -sign * s.runs[seed],  # the best run first
        )
    )
    return Incumbent(current, defaults, raced, pending, tuple(beaten), over_defaults)


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


def next_race(
    trials: Sequence[FrozenTrial], standing: Incumbent, first_seed: int = FIRST_RACE_SEED
) -> tuple[Setting, list[trial_record.RaceRun]] | None:
    """The race a study should enqueue now, the challenger and its runs; None while a race is
    waiting or running, so that each race is decided against the incumbent it was run against
    (with several workers, two races at once would leave the later one's challenger unraced
    against the winner of the first), or when no challenger waits."""
    if any(
        t.state in (TrialState.WAITING, TrialState.RUNNING) and trial_record.read_race(t)
        for t in trials
    ):
        return None
    for challenger in standing.challengers:
        runs = race_runs(trials, challenger, standing.setting, first_seed)
        if runs:
            return challenger, runs
    return None


def first_race_seed(spec: StudySpec) -> int:
    """The seed a study's first race runs on (module docstring; `RACE_SEED_STRIDE`)."""
    return FIRST_RACE_SEED + RACE_SEED_STRIDE * abs(spec.sampler.seed or 0)


def race_runs(
    trials: Sequence[FrozenTrial],
    challenger: Setting,
    incumbent: Setting,
    first_seed: int = FIRST_RACE_SEED,
) -> list[trial_record.RaceRun]:
    """The runs a race of `challenger` against `incumbent` still needs: on the race's seeds (fresh
    ones, for a race not yet enqueued), each setting on every seed it has no COMPLETE run, and no
    race run waiting or running, on."""
    race = next(
        (
            r
            for r in races_of(trials)
            if (r.challenger, r.incumbent) == (challenger.number, incumbent.number)
        ),
        None,
    )
    if race is not None:
        seeds = race.seeds
    else:
        used = [run.seed for t in trials if (run := trial_record.read_race(t)) is not None]
        first = max(used, default=first_seed - 1) + 1
        seeds = tuple(range(first, first + SEEDS_PER_RACE))
    queued = {
        (run.of, run.seed)
        for t in trials
        if t.state in (TrialState.WAITING, TrialState.RUNNING)
        and (run := trial_record.read_race(t)) is not None
    }
    return [
        trial_record.RaceRun(setting.number, s, challenger.number, incumbent.number)
        for s in seeds
        for setting in (challenger, incumbent)
        if s not in setting.runs and (setting.number, s) not in queued
    ]


def _key(params: dict[str, Any]) -> tuple[Any, ...]:
    return tuple(sorted((k, repr(v)) for k, v in params.items()))
