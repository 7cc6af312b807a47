"""`tune confirm`'s bookkeeping: the confirm study of a study, its plan and its enqueued runs.

A study's best trial is the best of many noisy runs, so part of its lead is luck (DESIGN.md, "the
second trap"). `tune confirm --study NAME` retrains the study's top K sampled trials, its best
hand-tuned baseline, its start trial (the trainer's defaults: what a user gets without tune) and
any trial named with `--trial`, each with the same N fresh seeds at one length (default: the
study's full length), and states the gains over the baseline and over the defaults with their
spread (`search/confirm/results.py`, `search/confirm/stats.py`).

How (design decisions):

- **Runs are trials of a companion study** in the same storage, `NAME:confirm` (a study file's name
  cannot contain ':', so it never collides with one). Each run is enqueued with the fixed
  parameters of the trial it retrains and a `confirm` mark ``{"of": trial number, "seed": S}``
  (`trial_record.confirm_attrs`). Ordinary workers run them (`tune confirm` starts local ones
  through `tune launch`'s machinery; `tune worker --study NAME:confirm` on any other machine), so
  heartbeats, reaping, retries that resume from the last checkpoint and the storage-down retries
  come for free, and the results are readable from the storage alone.
- **Its stored spec is the parent's** with `trial.epochs` set to the confirm length, no pruner,
  no baselines (the baseline is one of the enqueued runs, trained to the full confirm length like
  every other: the parent's baselines may have stopped at `[budget] baseline_epochs`, a confirm
  compares equal lengths), and a budget of exactly the planned runs. The spec keeps the parent's
  name; only the run folders follow the Optuna study's name (`search/running/trial_run.py`).
- **Workers only run enqueued runs** in a confirm study (`decide_enqueued`): it never samples. A
  run that fails (an exception, not a lost worker) stays failed; the next `tune confirm`
  enqueues it again.
- **Seeds** are `FIRST_SEED, FIRST_SEED + 1, ...`: the same for every confirmed setting (so runs
  pair by seed) and never the seed the parent's trials trained with (`TrainConfig.seed`, 0).
- **Re-running `tune confirm` resumes**: the plan is stored with the confirm study (`tune:confirm`)
  and a run already complete, running or waiting is not enqueued again. Asking for more seeds or
  more trials adds runs (the plans merge); a different length is refused (runs of two lengths
  are not comparable).
"""

from __future__ import annotations

import copy
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import optuna
from optuna.storages import RDBStorage
from optuna.trial import FrozenTrial, TrialState

from search.bookkeeping import trial_record
from search.bookkeeping.budget import Decision
from search.bookkeeping.optuna_compat import study_id
from search.bookkeeping.study_lock import StudyLock
from search.confirm.ranking import rank_complete
from search.study.study_file import StudyFileError, StudySpec, parse_study

SUFFIX = ":confirm"
FIRST_SEED = 1  # the parent's trials train with TrainConfig's default seed, 0
# states in which a confirm run counts as done or under way (not enqueued again)
_PRESENT = (TrialState.COMPLETE, TrialState.RUNNING, TrialState.WAITING)


class ConfirmError(ValueError):
    """`tune confirm` cannot go on with these arguments: one clear line."""


def confirm_name(study: str) -> str:
    """The name of `study`'s confirm study."""
    return f"{study}{SUFFIX}"


@dataclass(frozen=True)
class ConfirmPlan:
    """What a confirm study retrains: the parent's `trials` (best first, then `--trial` ones),
    its best `baseline` and its start trial, the trainer's `defaults` (what a user gets without
    tune), each with every seed of `seeds`, for `epochs` epochs."""

    parent: str
    epochs: int
    seeds: tuple[int, ...]
    trials: tuple[int, ...]
    baseline: int | None
    defaults: int | None = None

    @property
    def targets(self) -> tuple[int, ...]:
        """Every parent trial retrained: the trials, then the baseline, then the defaults."""
        extra = tuple(
            n
            for n in dict.fromkeys((self.baseline, self.defaults))
            if n is not None and n not in self.trials
        )
        return self.trials + extra

    @property
    def runs(self) -> list[tuple[int, int]]:
        """(parent trial, seed) of every planned run, seed-major: with few workers, every setting
        gets its first seed before any gets its second, so a partial result still pairs."""
        return [(number, seed) for seed in self.seeds for number in self.targets]

    def to_dict(self) -> dict[str, Any]:
        return {
            "parent": self.parent,
            "epochs": self.epochs,
            "seeds": list(self.seeds),
            "trials": list(self.trials),
            "baseline": self.baseline,
            "defaults": self.defaults,
        }

    @classmethod
    def from_dict(cls, raw: dict[str, Any]) -> ConfirmPlan:
        return cls(
            parent=str(raw["parent"]),
            epochs=int(raw["epochs"]),
            seeds=tuple(int(s) for s in raw["seeds"]),
            trials=tuple(int(n) for n in raw["trials"]),
            baseline=None if raw.get("baseline") is None else int(raw["baseline"]),
            defaults=None if raw.get("defaults") is None else int(raw["defaults"]),
        )

    def merged(self, newer: ConfirmPlan) -> ConfirmPlan:
        """This (stored) plan with `newer`'s trials and seeds added: runs are never taken away."""
        if newer.epochs != self.epochs:
            raise ConfirmError(
                f"study {self.parent!r} was confirmed at {self.epochs} epochs; runs of two lengths "
                f"are not comparable: give --epochs {self.epochs}, but got epochs={newer.epochs}"
            )
        trials = self.trials + tuple(n for n in newer.trials if n not in self.trials)
        seeds = self.seeds if len(self.seeds) >= len(newer.seeds) else newer.seeds
        baseline = self.baseline if self.baseline is not None else newer.baseline
        defaults = self.defaults if self.defaults is not None else newer.defaults
        return ConfirmPlan(self.parent, self.epochs, seeds, trials, baseline, defaults)


def stored_spec(study: optuna.Study) -> StudySpec:
    """The validated spec stored with a tune study (the parent of a confirmation)."""
    spec = trial_record.read_stored_spec(study)
    if spec is None:
        raise ConfirmError(
            f"study {study.study_name!r} was not created by `tune launch` (no stored study file)"
        )
    return spec


def plan_confirm(
    parent: optuna.Study,
    *,
    top: int = 3,
    seeds: int = 3,
    epochs: int | None = None,
    trials: Sequence[int] = (),
) -> ConfirmPlan:
    """Validate `tune confirm`'s arguments against the parent study and say what to retrain.

    The top `top` complete sampled trials (feasible ones first, as the report ranks them), the
    trials named in `trials`, and the baseline with the best mAP at the baselines' length.
    Raises `ConfirmError` naming the argument and the value.
    """
    if top < 1:
        raise ConfirmError(f"--top must be >= 1 (the best trials to confirm), but got top={top}")
    if seeds < 2:
        raise ConfirmError(
            f"--seeds must be >= 2: one run per setting has no spread to state, but got {seeds=}"
        )
    if epochs is not None and epochs < 1:
        raise ConfirmError(f"--epochs must be >= 1, but got {epochs=}")
    spec = stored_spec(parent)
    all_trials = parent.get_trials(deepcopy=False)
    by_number = {t.number: t for t in all_trials}
    for number in trials:
        if number not in by_number:
            span = f"trials 0..{len(all_trials) - 1}" if all_trials else "no trials"
            raise ConfirmError(
                f"--trial: study {parent.study_name!r} has no trial {number} ({span}), "
                f"but got trial={number}"
            )
        if not _has_params(by_number[number], spec):
            raise ConfirmError(
                f"--trial: trial {number} of study {parent.study_name!r} has no parameters to "
                f"retrain (it is {by_number[number].state.name.lower()} and never started), "
                f"but got trial={number}"
            )
    ranked = [
        t.number
        for t in rank_complete(all_trials, parent.direction)
        if trial_record.read_baseline(t) is None
    ]
    if not ranked and not trials:
        complete = sum(t.state == TrialState.COMPLETE for t in all_trials)
        raise ConfirmError(
            f"study {parent.study_name!r} has no complete sampled trial to confirm "
            f"({complete} complete of {len(all_trials)} trials, baselines not counted); "
            "run the study first, or name one with --trial"
        )
    chosen = ranked[:top] + [n for n in trials if n not in ranked[:top]]
    baseline = best_baseline(all_trials)
    if baseline is not None and baseline in chosen:
        baseline = None  # named with --trial: confirmed once, as a trial
    start = next(
        (t.number for t in all_trials if trial_record.read_start(t) and _has_params(t, spec)),
        None,
    )
    return ConfirmPlan(
        parent=parent.study_name,
        epochs=epochs if epochs is not None else spec.trial.epochs,
        seeds=tuple(range(FIRST_SEED, FIRST_SEED + seeds)),
        trials=tuple(chosen),
        baseline=baseline,
        defaults=start,
    )


def best_baseline(trials: Sequence[FrozenTrial]) -> int | None:
    """The baseline trial with the best mAP at the baselines' length (the longest step any
    baseline reached, as the report compares them), or None when none was evaluated."""
    evaluated = [
        t for t in trials if trial_record.read_baseline(t) is not None and t.intermediate_values
    ]
    if not evaluated:
        return None
    step = max(max(t.intermediate_values) for t in evaluated)
    scored = [
        (t.intermediate_values[step], -t.number) for t in evaluated if step in t.intermediate_values
    ]
    return -max(scored)[1]  # the one that reached `step` is among them


def _has_params(trial: FrozenTrial, spec: StudySpec) -> bool:
    return all(name in trial.params for name in spec.space.names)


def confirm_spec_table(parent_raw: dict[str, Any], plan: ConfirmPlan) -> dict[str, Any]:
    """The study table stored with the confirm study: the parent's, at the confirm length, no
    pruner, no baselines (the baseline is an enqueued run), a budget of exactly the runs."""
    raw = copy.deepcopy(parent_raw)
    raw["trial"] = {**raw.get("trial", {}), "epochs": plan.epochs}
    raw["budget"] = {"n_trials": len(plan.runs)}
    raw["pruner"] = {"type": "None"}
    raw["baselines"] = []
    raw["sampler"] = {**raw.get("sampler", {}), "start_from_defaults": False}
    return raw


@dataclass(frozen=True)
class Prepared:
    """The confirm study, its (merged) plan and spec, and how many runs were enqueued now."""

    study: optuna.Study
    plan: ConfirmPlan
    spec: StudySpec
    enqueued: int


def prepare_confirm(storage: RDBStorage, parent: optuna.Study, plan: ConfirmPlan) -> Prepared:
    """Create or load the confirm study, merge `plan` with the stored one, store spec and plan,
    and enqueue every planned run not already complete, running or waiting.

    Under the confirm study's lock, like `launch.prepare_study`: two `tune confirm` at once (or a
    worker's retry of a reaped run) do not enqueue a run twice.
    """
    name = confirm_name(parent.study_name)
    study = optuna.create_study(
        storage=storage, study_name=name, direction="maximize", load_if_exists=True
    )
    parent_raw = trial_record.read_study_spec(parent) or {}
    metric = stored_spec(parent).objective.metric
    if study.metric_names != [metric]:
        with warnings.catch_warnings():  # "experimental" since Optuna 3.2
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            study.set_metric_names([metric])
    with StudyLock(storage, study_id(study)):
        stored = trial_record.read_confirm_plan(study)
        if stored is not None:
            plan = ConfirmPlan.from_dict(stored).merged(plan)
        raw = confirm_spec_table(parent_raw, plan)
        try:
            spec = parse_study(raw, f"study {name!r}", check_data=False)
        except StudyFileError as exc:
            raise ConfirmError(str(exc)) from None
        trial_record.record_study_spec(study, raw)
        trial_record.record_confirm_plan(study, plan.to_dict())
        present = {
            trial_record.read_confirm(t) for t in study.get_trials(deepcopy=False, states=_PRESENT)
        }
        params = {t.number: dict(t.params) for t in parent.get_trials(deepcopy=False)}
        enqueued = 0
        for number, seed in plan.runs:
            if (number, seed) not in present:
                attrs = trial_record.confirm_attrs(number, seed)
                study.enqueue_trial(params[number], user_attrs=attrs)
                enqueued += 1
    return Prepared(study, plan, spec, enqueued)


def decide_enqueued(study: optuna.Study) -> tuple[Decision, str]:
    """For a worker of a confirm study, which never samples: start while a run waits, wait while
    runs are running (one may lose its worker and be retried), else stop."""
    pending = study.get_trials(deepcopy=False, states=(TrialState.WAITING, TrialState.RUNNING))
    if any(t.state == TrialState.WAITING for t in pending):
        return "start", "a confirm run is waiting"
    if pending:
        return "wait", "the last confirm runs are running (a lost one is retried)"
    return "spent", "every enqueued confirm run has finished"
