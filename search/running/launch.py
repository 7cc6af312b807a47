"""`tune launch`: set a study up (`search/control/study_setup.py`), run local workers on it
(`search/running/local_workers.py`) and say what it gave; `tune confirm` (`confirm` below) runs a
study's confirm study the same way (search/confirm/plan.py).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import optuna
from optuna.storages import RDBStorage
from optuna.trial import TrialState

from search.bookkeeping import trial_record
from search.bookkeeping.budget import BudgetUse, describe_plan
from search.bookkeeping.storage import (
    StateCounts,
    load_study,
    mask_url,
    open_storage,
    resolve_url,
)
from search.commands.dashboard import dashboard_command
from search.confirm.plan import plan_confirm, prepare_confirm
from search.confirm.results import (
    Confirmation,
    confirmed_sentence,
    format_confirmation,
    read_confirmation,
)
from search.confirm.standing import Standing, study_standing
from search.control.study_manager import ManagedStudy
from search.control.study_setup import check_data_set, prepare_study
from search.running.command_trust import command_digest
from search.running.local_workers import code_of, plan_workers, run_local_workers, visible_gpus
from search.running.worker import DEFAULT_RUNS_DIR
from search.study.study_file import Overrides, StudySpec, load_study_file


@dataclass(kw_only=True)
class WorkersOutcome:
    """How a command's local workers ended, and what the study stands at."""

    exit_codes: list[int] = field(default_factory=list)
    interrupted: bool = False
    standing: str = ""  # what the best trial is and is worth (`search/confirm/standing.py`)
    stopped: dict[str, int] = field(default_factory=dict)  # `trial_record.stopped_counts`

    @property
    def ok(self) -> bool:
        return not self.interrupted and all(code == 0 for code in self.exit_codes)


@dataclass
class LaunchResult(WorkersOutcome):
    counts: StateCounts
    best_value: float | None
    best_number: int | None
    wall_seconds: float
    use: BudgetUse = field(default_factory=BudgetUse)
    next_step: str = ""  # the command to run next (`next_step`), "" when there is none


def launch(
    study: str,
    storage: str | None = None,
    *,
    workers: int | None = None,
    gpus: list[int] | None = None,
    overrides: Overrides | None = None,
    runs_dir: Path = DEFAULT_RUNS_DIR,
    progress_interval: float = 5.0,
    trainer_module: str | None = None,
    out: Callable[[str], None] = print,
) -> LaunchResult:
    """Run `study` (a name in studies/ or a file) with local workers until its budget is spent.

    `workers=0` only creates the study and enqueues the baselines (for a compose service that
    prepares a shared database). Returns the final counts and best trial.
    """
    started = time.monotonic()
    overrides = overrides or Overrides()
    spec = load_study_file(study, overrides)
    check_data_set(spec)
    url = resolve_url(storage)
    rdb = open_storage(url, create_schema=True)
    optuna_study = prepare_study(spec, rdb)
    n_workers, gpus, warning = plan_workers(workers, gpus, visible_gpus(spec.trial.device))
    if warning:
        out(warning)
    shown = mask_url(url)
    out(f"study {spec.name!r} in {shown}: {describe_plan(spec)}")
    out(f"watch it: {dashboard_command(url)}   (or: tune status --study {spec.name})")
    if spec.trial.trainer == "command":
        digest = command_digest(dict(spec.trial.options))
        out(
            f"workers on other hosts: tune worker --study {spec.name} --allow-command {digest}  "
            "(the digest of this study file's command: a worker runs no other)"
        )
    if n_workers == 0:
        return _result(optuna_study, spec, rdb, started)
    log_dir = runs_dir / spec.name
    run = run_local_workers(
        optuna_study,
        spec,
        url,
        n_workers,
        gpus,
        log_dir,
        timeout=overrides.timeout,
        trainer_module=trainer_module,
        progress_interval=progress_interval,
        out=out,
        started=started,
    )
    result = _result(optuna_study, spec, rdb, started, run.exit_codes, run.interrupted)
    out(_summary_line(result, spec))
    if result.next_step:
        out(result.next_step)
    run.say_failures(out)
    return result


def next_step(name: str, standing: Standing) -> str:
    """What to run next when the study ended with a challenger it could not race: `tune confirm`
    retrains it beside the trainer's defaults on fresh seeds. "" otherwise."""
    inc = standing.incumbent
    if inc is None or not inc.challengers:
        return ""
    best = inc.challengers[0].number
    return (
        f"next: tune confirm --study {name} --top 1 --trial {best}   (retrains trial {best}, the "
        "challenger the budget could not race, beside the trainer's defaults on fresh seeds)"
    )


@dataclass
class ConfirmResult(WorkersOutcome):
    confirmation: Confirmation | None
    enqueued: int  # runs enqueued by this call (0: all were done or under way already)


def confirm(
    study: str,
    storage: str | None = None,
    *,
    top: int = 3,
    seeds: int = 3,
    epochs: int | None = None,
    trials: tuple[int, ...] = (),
    workers: int | None = None,
    gpus: list[int] | None = None,
    runs_dir: Path = DEFAULT_RUNS_DIR,
    progress_interval: float = 5.0,
    trainer_module: str | None = None,
    out: Callable[[str], None] = print,
) -> ConfirmResult:
    """Retrain study `study`'s top trials and best baseline with `seeds` fresh seeds (its confirm
    study, search/confirm/plan.py) with local workers until every run is done; print the result.

    Crash-safe and resumable like a study: run it again (or `tune worker --study NAME:confirm`
    anywhere) and it goes on where it stopped. `workers=0` only enqueues the runs.
    """
    started = time.monotonic()
    url = resolve_url(storage)
    rdb = open_storage(url)
    parent = load_study(rdb, study)
    plan = plan_confirm(parent, top=top, seeds=seeds, epochs=epochs, trials=trials)
    prepared = prepare_confirm(rdb, parent, plan)
    check_data_set(prepared.spec)
    name = prepared.study.study_name
    plan = prepared.plan
    baseline = f" and baseline trial {plan.baseline}" if plan.baseline is not None else ""
    out(
        f"confirming trials {', '.join(map(str, plan.trials))}{baseline} of study {study!r} in "
        f"{mask_url(url)}: {len(plan.seeds)} seeds ({', '.join(map(str, plan.seeds))}) of "
        f"{plan.epochs} epochs each, {len(plan.runs)} runs ({prepared.enqueued} enqueued now)"
    )
    out(f"other machines may run them too: tune worker --study '{name}'")
    n_workers, gpus, warning = plan_workers(workers, gpus, visible_gpus(prepared.spec.trial.device))
    if warning:
        out(warning)
    result = ConfirmResult(None, prepared.enqueued)
    pending = prepared.study.get_trials(
        deepcopy=False, states=(TrialState.WAITING, TrialState.RUNNING)
    )
    if n_workers and pending:
        run = run_local_workers(
            prepared.study,
            prepared.spec,
            url,
            n_workers,
            gpus,
            runs_dir / name,
            timeout=None,
            trainer_module=trainer_module,
            progress_interval=progress_interval,
            out=out,
            started=started,
        )
        result.exit_codes, result.interrupted = (
            [code_of(c) for c in run.exit_codes],
            run.interrupted,
        )
        run.say_failures(out)
    result.confirmation = read_confirmation(rdb, study)
    if result.confirmation is not None:
        out(format_confirmation(result.confirmation))
        out(confirmed_sentence(result.confirmation))
    return result


def _result(
    study: optuna.Study,
    spec: StudySpec,
    rdb: RDBStorage,
    started: float,
    exit_codes: list[int | Any] | None = None,
    interrupted: bool = False,
) -> LaunchResult:
    managed = ManagedStudy(study, rdb)
    counts = managed.counts()
    trials = study.get_trials(deepcopy=False)
    standing = study_standing(study, trials, spec)
    best = standing.best
    codes = [code_of(c) for c in (exit_codes or [])]
    use = managed.budget_use(spec)
    wall = time.monotonic() - started
    return LaunchResult(
        counts,
        best.value if best is not None else None,
        best.number if best is not None else None,
        wall,
        use,
        exit_codes=codes,
        interrupted=interrupted,
        standing=standing.describe(),
        stopped=trial_record.stopped_counts(trials),
        next_step=next_step(spec.name, standing),
    )


def _summary_line(result: LaunchResult, spec: StudySpec) -> str:
    c = result.counts
    best = (
        f"best mAP50-95 {result.best_value:.4f} (trial {result.best_number}): {result.standing}"
        if result.best_value is not None
        else "no trial complete"
    )
    how = "interrupted" if result.interrupted else "finished"
    pruned = trial_record.pruned_words(c.pruned, result.stopped)
    return (
        f"{how} in {result.wall_seconds:.0f} s: {result.use.describe(spec.budget)} "
        f"({c.complete} complete, {pruned}), {c.fail} failed, {c.running} running | {best}"
    )
