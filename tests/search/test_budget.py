"""The study's compute budget (`search/bookkeeping/budget.py`): what is spent, what is promised, who
may start.

The accounting on hand-made trials, then the real thing: two `tune worker` processes on
PostgreSQL racing for an epoch budget that must not be overshot.
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import optuna
import pytest
from optuna.distributions import BaseDistribution, FloatDistribution
from optuna.trial import FrozenTrial, TrialState, create_trial

from search.bookkeeping import trial_record
from search.bookkeeping.budget import BudgetUse, decide, extended_hold, trial_epochs, use_of
from search.bookkeeping.storage import open_storage
from search.control.study_setup import prepare_study
from search.study.study_file import StudySpec, load_study_file, parse_study
from tests.search.reliability_support import Proxy, fast_env, free_port, start_worker, trials

_DIST: dict[str, BaseDistribution] = {"lr": FloatDistribution(0.0001, 0.02, log=True)}


def _spec(**tables: dict[str, Any]) -> StudySpec:
    """The smoke study (fake-trainer sized) with some tables changed."""
    raw = copy.deepcopy(load_study_file("smoke").raw)
    for table, values in tables.items():
        raw[table] = {**raw.get(table, {}), **values}
        raw[table] = {k: v for k, v in raw[table].items() if v is not None}
    return parse_study(raw)


def _trial(
    state: TrialState,
    steps: int,
    number: int = 0,
    system_attrs: dict[str, Any] | None = None,
    **user_attrs: Any,
) -> FrozenTrial:
    frozen = create_trial(
        state=state,
        value=0.1 if state == TrialState.COMPLETE else None,
        params={"lr": 0.001},
        distributions=_DIST,
        intermediate_values={s: 0.01 * s for s in range(1, steps + 1)},
        user_attrs=user_attrs,
        system_attrs=system_attrs,
    )
    frozen.number = number
    return frozen


# 12-epoch trials, successive halving with rungs at 2 and 6, baselines of 4 epochs
SPEC = _spec(
    budget={"epochs": 30, "n_trials": None, "baseline_epochs": 4},
    trial={"epochs": 12},
    pruner={"type": "SuccessiveHalving", "min_resource": 2, "reduction_factor": 3},
)


def test_spent_epochs_count_every_trial_once() -> None:
    resumed = {"trial": 2, "step": 3}
    retry = {"failed_trial": 2, "retry_history": [2]}  # Optuna's marks on a retry
    spent = [
        _trial(TrialState.COMPLETE, 12),
        _trial(TrialState.PRUNED, 2),
        _trial(TrialState.FAIL, 5),  # a failed trial's epochs were trained: they count
        # its retry re-records steps 1-3 from the checkpoint: only 4..8 were trained by it
        _trial(TrialState.COMPLETE, 8, system_attrs=retry, retry_of=2, resumed_from=resumed),
    ]
    assert [trial_epochs(t) for t in spent] == [12, 2, 5, 5]
    use = use_of(SPEC, spent)
    assert (use.epochs_spent, use.finished, use.running, use.epochs_promised) == (24, 3, 0, 0)


def test_running_trials_hold_their_first_rung_then_what_they_were_given() -> None:
    running = [
        _trial(TrialState.RUNNING, 0),  # to the first rung: 2
        _trial(TrialState.RUNNING, 1),  # to the first rung: 1 more
        _trial(TrialState.RUNNING, 3, budget_hold=12),  # kept at the first rung: 9 more
        _trial(TrialState.RUNNING, 3, budget_hold=6),  # kept, but paid to its next rung: 3
        _trial(TrialState.RUNNING, 1, baseline="hand-tuned"),  # a baseline, to its length 4
    ]
    use = use_of(SPEC, running)
    assert (use.epochs_spent, use.epochs_promised, use.running) == (8, 2 + 1 + 9 + 3 + 3, 5)


def _at(step: int, **user_attrs: Any) -> FrozenTrial:
    return _trial(TrialState.RUNNING, step, **user_attrs)


def test_a_kept_trial_is_paid_to_its_end_else_its_furthest_stop_point_else_it_stops() -> None:
    # 30 epochs; rungs at 2 and 6, trials of 12: a trial kept at 2 wants 10 more
    kept = _at(2)
    assert extended_hold(SPEC, BudgetUse(epochs_spent=2), kept, 2) == 12
    # 18 spent: 10 free, enough for the end
    assert extended_hold(SPEC, BudgetUse(epochs_spent=20), kept, 2) == 12
    # 21 spent: 9 free, not for the end (10) but for the next rung (4)
    assert extended_hold(SPEC, BudgetUse(epochs_spent=21), kept, 2) == 6
    # others hold what is left: 3 free, not even the next rung
    assert extended_hold(SPEC, BudgetUse(epochs_spent=21, epochs_promised=6), kept, 2) is None
    # kept at 6 with 6 to go, paid only to 6 before: 5 free is not enough
    assert extended_hold(SPEC, BudgetUse(epochs_spent=25), _at(6, budget_hold=6), 6) is None
    assert extended_hold(SPEC, BudgetUse(epochs_spent=24), _at(6, budget_hold=6), 6) == 12
    # a baseline's stop points end at its length
    assert extended_hold(SPEC, BudgetUse(epochs_spent=2), _at(2, baseline="b"), 2) == 4


def test_a_trial_starts_only_when_its_first_rung_is_paid_for() -> None:
    # 30 epochs; the next trial needs 2 (the first rung)
    assert decide(SPEC, BudgetUse(epochs_spent=26, epochs_promised=2))[0] == "start"
    assert decide(SPEC, BudgetUse(epochs_spent=27, epochs_promised=2, running=1))[0] == "wait"
    decision, why = decide(SPEC, BudgetUse(epochs_spent=29))
    assert decision == "spent" and "29 epochs spent" in why
    # a retry of a reaped trial continues a trial the budget admitted: it always starts
    assert decide(SPEC, BudgetUse(epochs_spent=30, retries_waiting=1))[0] == "start"
    # the next trial a baseline: it needs its length, 4
    assert decide(SPEC, BudgetUse(epochs_spent=27, baseline_next=True))[0] == "spent"
    assert decide(SPEC, BudgetUse(epochs_spent=26, baseline_next=True))[0] == "start"


def test_with_a_trial_count_too_the_first_budget_spent_ends_the_study() -> None:
    spec = _spec(
        budget={"epochs": 30, "n_trials": 3}, trial={"epochs": 12}, pruner={"type": "None"}
    )
    assert decide(spec, BudgetUse(finished=3, epochs_spent=10))[0] == "spent"
    assert decide(spec, BudgetUse(finished=2, running=1, epochs_spent=10))[0] == "wait"
    assert decide(spec, BudgetUse(finished=1, epochs_spent=20))[0] == "spent"  # 10 < 12 free
    assert decide(spec, BudgetUse(finished=1, epochs_spent=18))[0] == "start"
    assert BudgetUse(finished=1, epochs_spent=18).describe(spec.budget) == (
        "1/3 trials, 18/30 epochs"
    )


def test_the_launch_plan_names_the_budget_and_the_stop_points() -> None:
    from search.bookkeeping.budget import describe_plan

    assert describe_plan(SPEC) == (
        "budget 30 epochs, trials of 12 epochs, SuccessiveHalving may stop them at epochs 2, 6, "
        "1 baseline of 4 epochs"
    )
    # a study of another trainer says which
    ultralytics = load_study_file("ultralytics")
    assert "trials of 30 epochs (ultralytics trainer)" in describe_plan(ultralytics)


def test_two_workers_on_postgresql_never_overshoot_an_epoch_budget(
    pg_url: str, tmp_path: Path
) -> None:
    # no pruner: every trial trains its full 4 epochs, so 4 are promised the moment it starts;
    # 18 epochs pay for 4 trials (16), and the 2 left cannot pay for a fifth
    spec = _spec(
        budget={"epochs": 18, "n_trials": None}, trial={"epochs": 4}, pruner={"type": "None"}
    )
    prepare_study(spec, open_storage(pg_url, create_schema=True))
    env = fast_env(tmp_path, FAKE_STEP_SECONDS="0.5")
    racing = [start_worker(pg_url, tmp_path, env, f"w{i}") for i in range(2)]
    for worker in racing:
        assert worker.wait(120) == 0, worker.text()
        assert "the budget is spent: 16 epochs spent, 0 promised of 18" in worker.text()
    done = trials(pg_url)
    assert [t.state for t in done] == [TrialState.COMPLETE] * 4
    assert sum(t.last_step or 0 for t in done) == 16  # counted from the storage: no overshoot
    workers = {trial_record.read_placement(t)["worker"] for t in done}
    assert len(workers) == 2  # both took part
    study = optuna.load_study(study_name="smoke", storage=pg_url)
    assert use_of(spec, study.get_trials()).epochs_spent == 16


@pytest.mark.parametrize("through", ["postgresql", "proxy"])
def test_kept_trials_on_two_workers_never_overshoot_an_epoch_budget(
    through: str, pg_url: str, tmp_path: Path
) -> None:
    # Successive halving has its rungs at 2 and 6 but stops nobody (n_min_trials: it waits
    # for more evaluations at a rung than the study makes), so every trial is kept at its
    # rungs and wants its full 12 epochs, whichever order the workers report in. Each start is
    # paid for (2 epochs), the rest only while it lasts: a budget of 30 pays for two whole
    # trials (24), and what starts next finds too little for its end.
    raw = copy.deepcopy(load_study_file("smoke").raw)
    raw.pop("baselines")
    raw["budget"] = {"epochs": 30}
    raw["trial"] = {**raw["trial"], "epochs": 12}
    raw["pruner"] = {
        "type": "SuccessiveHalving",
        "min_resource": 2,
        "reduction_factor": 3,
        "n_min_trials": 100,
    }
    spec = parse_study(raw)
    storage = open_storage(pg_url, create_schema=True)
    prepare_study(spec, storage)
    study = optuna.load_study(study_name="smoke", storage=pg_url)
    fixed = {"lcls": 0.1, "lobj": 1.0, "lbox": 0.5, "optimizer": "SGD"}
    for lr in (0.0003, 0.0005, 0.0008, 0.0012, 0.0016, 0.002, 0.0025, 0.003):
        study.enqueue_trial({**fixed, "lr": lr, "milestone1": 1.0, "milestone2_rest": 1.0})
    env = fast_env(tmp_path, FAKE_STEP_SECONDS="0.1", FAKE_CHECKPOINT="0")
    url, proxy = pg_url, None
    if through == "proxy":
        port = free_port()
        proxy = Proxy(pg_url, port, env, tmp_path / "proxy.log").start()
        url = f"grpc://127.0.0.1:{port}"
    try:
        racing = [start_worker(url, tmp_path, env, f"w{i}") for i in range(2)]
        for worker in racing:
            assert worker.wait(180) == 0, worker.text()
    finally:
        if proxy is not None:
            proxy.stop()
    done = trials(pg_url)
    spent = sum(t.last_step or 0 for t in done)
    assert spent <= 30, [(t.number, t.state.name, t.last_step) for t in done]
    budget_stops = [t for t in done if trial_record.read_stopped(t)]
    assert budget_stops, [(t.number, t.state.name, t.last_step) for t in done]
    for t in budget_stops:
        assert t.state == TrialState.PRUNED
        assert trial_record.read_stopped(t) == f"stopped: budget spent, after {t.last_step} epochs"
        assert t.last_step is not None and t.last_step > 1
    # the pruner stopped none of them: each is a trial it kept, or one the budget ended
    stopped = {t.number for t in budget_stops}
    table = [(t.number, t.state.name, t.last_step, trial_record.read_stopped(t)) for t in done]
    ended = [t for t in done if t.state != TrialState.WAITING]  # enqueued, never started
    assert all(t.state == TrialState.COMPLETE or t.number in stopped for t in ended), table
    assert use_of(spec, study.get_trials()).epochs_spent == spent
    # status tells the budget's stops apart from the pruner's
    from search.commands.status import format_status, study_status

    head = format_status(study_status(study)).splitlines()[0]
    complete = sum(t.state == TrialState.COMPLETE for t in done)
    assert f"({complete} complete, 0 pruned, {len(budget_stops)} stopped: budget spent)" in head
