"""The report's gathering, on a study built with the Optuna API and
`search.bookkeeping.trial_record` the way the worker stores trials: complete, pruned (short curves),
failed, running and baseline trials, in a real PostgreSQL database."""

from __future__ import annotations

import math
import re
from datetime import datetime, timedelta

import optuna
import pytest
from optuna.distributions import CategoricalDistribution, FloatDistribution
from optuna.trial import TrialState

from search.bookkeeping import trial_record
from search.report import gather_study
from search.report import key_params as key_params_module
from search.report.gather import gather, log_excerpt
from search.report.key_params import KeyParams, key_params
from search.report.panels import components_of, grid_of, order_components, panel_specs
from search.trainers import make_trainer
from search.trainers.base import Evaluation
from search.trainers.builtin import evaluation_of
from trainer.params import Param, ParamRegistry
from trainer.records import EvalLine, EvalReport, FitResult, TrainLine

ITERS_PER_EPOCH = 50
LOG_EVERY = 10
BUDGET_MS = 5.0  # the latency budget of the constrained test study
DISTRIBUTIONS = {
    "lcls": FloatDistribution(0.01, 2.0, log=True),
    "lobj": FloatDistribution(0.1, 2.0, log=True),
    "lbox": FloatDistribution(0.01, 2.0, log=True),
    "optimizer": CategoricalDistribution(["SGD", "Adam", "AdamW"]),
    "lr": FloatDistribution(1e-4, 1e-2, log=True),
}
# (baseline label or None, params, final mAP50-95, epochs reached, final state, inference ms)
# fmt: off
PLAN: list[tuple[str | None, dict, float, int, TrialState, float]] = [
    ("first model", {"lcls": 0.5, "lobj": 1.0, "lbox": 0.05, "optimizer": "SGD", "lr": 1e-3},
     0.30, 6, TrialState.COMPLETE, 4.0),
    ("judged clearly better",
     {"lcls": 0.05, "lobj": 1.0, "lbox": 0.5, "optimizer": "SGD", "lr": 1e-3},
     0.36, 6, TrialState.COMPLETE, 4.0),
    ("abandoned early", {"lcls": 0.25, "lobj": 1.0, "lbox": 0.25, "optimizer": "SGD", "lr": 1e-3},
     0.20, 2, TrialState.PRUNED, 4.0),
    (None, {"lcls": 0.03, "lobj": 0.8, "lbox": 0.7, "optimizer": "Adam", "lr": 2e-3},
     0.42, 6, TrialState.COMPLETE, 4.5),
    # the best raw score among the rest, but over the latency budget
    (None, {"lcls": 0.1, "lobj": 0.5, "lbox": 0.4, "optimizer": "AdamW", "lr": 3e-3},
     0.39, 6, TrialState.COMPLETE, 6.0),
    (None, {"lcls": 1.5, "lobj": 0.2, "lbox": 0.02, "optimizer": "SGD", "lr": 5e-3},
     0.10, 1, TrialState.PRUNED, 4.0),
    (None, {"lcls": 0.2, "lobj": 1.2, "lbox": 0.1, "optimizer": "SGD", "lr": 8e-3},
     0.05, 3, TrialState.FAIL, 4.0),
    (None, {"lcls": 0.07, "lobj": 0.9, "lbox": 0.3, "optimizer": "SGD", "lr": 1e-3},
     0.33, 6, TrialState.COMPLETE, 3.0),
    (None, {"lcls": 0.04, "lobj": 1.1, "lbox": 0.6, "optimizer": "Adam", "lr": 1e-3},
     0.25, 2, TrialState.RUNNING, 4.0),
]
# fmt: on
# tune's detector: the seven panels of the notes, in the layout the report has always had
TUNE_PANELS = ("eval", "box", "cls", "obj", "total", "lr", "latency")
LOG_LINE = re.compile(r"^epoch \d+ / iter \d+ lr \d\.\d{5} , loss \d+\.\d{5} latency \d\.\d{5}$")


def _report(params: dict, final: float, epoch: int, epochs: int) -> EvalReport:
    """One evaluation's curve points; losses fall faster for better trials."""
    quality = final / 0.42
    train = []
    for i in range(epoch * ITERS_PER_EPOCH + 1, (epoch + 1) * ITERS_PER_EPOCH + 1, LOG_EVERY):
        decay = math.exp(-quality * i / 120)
        lbox, lobj, lcls = 0.08 + 0.1 * decay, 0.5 + 0.6 * decay, 0.2 + 0.5 * decay
        train.append(
            TrainLine(
                epoch=epoch,
                iter=i,
                lr=params["lr"] * min(1.0, i / 60),
                loss=params["lbox"] * lbox + params["lobj"] * lobj + params["lcls"] * lcls,
                lbox=lbox,
                lobj=lobj,
                lcls=lcls,
                latency=0.03 + 0.001 * (i % 3),
            )
        )
    m = final * (epoch + 1) / epochs
    return EvalReport(
        eval=EvalLine(
            epoch=epoch + 1,  # epochs completed, as `trainer.fit` reports it
            iter=(epoch + 1) * ITERS_PER_EPOCH,
            mAP50=min(1.0, m * 1.6),
            mAP50_95=m,
            val_lbox=0.1 - 0.05 * quality,
            val_lobj=0.6 - 0.1 * quality,
            val_lcls=0.4 - 0.2 * quality,
            val_loss=1.0,
        ),
        train=train,
        seconds_training=2.0,
        seconds_evaluating=0.5,
    )


def build_study(
    storage: str | None, name: str = "loss-weights", constrained: bool = True
) -> optuna.Study:
    """A study shaped like a real one: the `PLAN` stored through
    `search.bookkeeping.trial_record`."""
    study = optuna.create_study(study_name=name, storage=storage, direction="maximize")
    for label, params, final, reached, state, inference_ms in PLAN:
        study.enqueue_trial(params)
        trial = study.ask(DISTRIBUTIONS)
        if label is not None:
            trial.set_user_attr(trial_record.BASELINE, label)
        trial_record.record_placement(trial, "cpu", "testhost:1")
        trial_record.record_config(trial, {**params, "epochs": 6})
        for epoch in range(reached):
            trial_record.record_eval(
                trial, epoch + 1, evaluation_of(epoch + 1, _report(params, final, epoch, 6))
            )
        if state == TrialState.COMPLETE:
            summary = FitResult(
                mAP50=min(1.0, final * 1.6),
                mAP50_95=final,
                inference_ms=inference_ms,
                train_latency=0.031,
                epochs_completed=reached,
                iterations=reached * ITERS_PER_EPOCH,
                images_per_second=100.0,
                seconds_training=12.0,
                seconds_evaluating=3.0,
                device="cpu",
                run_dir="runs/x",
            )
            trial_record.record_summary(trial, summary.to_dict())
            if constrained:
                trial.set_constraint("inference_ms", inference_ms - BUDGET_MS)
            study.tell(trial, final)
        elif state == TrialState.PRUNED:
            study.tell(trial, state=TrialState.PRUNED)
        elif state == TrialState.FAIL:
            trial.set_user_attr(trial_record.ERROR, "NonFiniteLossError: loss is nan at iter 140")
            study.tell(trial, state=TrialState.FAIL)
    return study


@pytest.fixture
def study(pg_url: str) -> optuna.Study:
    return build_study(pg_url)


@pytest.mark.postgres
def test_rows_cover_every_state(study: optuna.Study) -> None:
    data = gather_study(study, top_k=2)
    assert [r.number for r in data.rows] == list(range(len(PLAN)))
    assert data.counts == {"COMPLETE": 5, "PRUNED": 2, "FAIL": 1, "RUNNING": 1}
    rows = {r.number: r for r in data.rows}
    assert rows[0].baseline == "first model" and rows[0].role == "baseline"
    assert rows[3].role == "best" and rows[3].label == "#3 best"
    assert rows[3].mAP50_95 == pytest.approx(0.42) and rows[3].inference_ms == 4.5
    assert rows[4].feasible is False and rows[3].feasible is True
    assert rows[6].error is not None and "nan" in rows[6].error and rows[6].value is None
    # unfinished trials show their last evaluation and a running duration
    assert rows[8].state == "RUNNING" and rows[8].mAP50_95 == pytest.approx(0.25 * 2 / 6)
    assert rows[8].duration_s is not None and rows[8].host is not None
    assert rows[5].last_iter == ITERS_PER_EPOCH and rows[3].last_iter == 6 * ITERS_PER_EPOCH
    assert rows[3].params["optimizer"] == "Adam"
    assert rows[3].train_latency == 0.031 and rows[6].train_latency == pytest.approx(0.031)


@pytest.mark.postgres
def test_baselines_and_top_k_shown_the_rest_one_click_away(study: optuna.Study) -> None:
    data = gather_study(study, top_k=2)
    assert [p.key for p in data.panels] == list(TUNE_PANELS)
    # feasible first: #3 (0.42) and #7 (0.33); #4 scores 0.39 but is over the latency budget
    shown = {line.trial for p in data.panels for line in p.lines if line.shown}
    assert shown == {0, 1, 2, 3, 7}
    hidden = {line.trial for p in data.panels for line in p.lines if not line.shown}
    assert hidden == {4, 5, 6, 8}
    box = next(p for p in data.panels if p.key == "box")
    assert {line.trial for line in box.lines} == set(range(len(PLAN)))


@pytest.mark.postgres
def test_pruned_and_failed_lines_are_cut_short(study: optuna.Study) -> None:
    data = gather_study(study)
    evaluation = next(p for p in data.panels if p.key == "eval")
    by_trial = {(ln.trial, ln.variant): ln for ln in evaluation.lines}
    assert by_trial[(5, "")].cut_short and by_trial[(5, "")].x == [ITERS_PER_EPOCH]
    assert by_trial[(2, "")].cut_short and by_trial[(6, "")].cut_short
    assert not by_trial[(3, "")].cut_short and not by_trial[(8, "")].cut_short
    assert by_trial[(3, "")].x[-1] == 6 * ITERS_PER_EPOCH
    assert by_trial[(3, "mAP50")].y[-1] > by_trial[(3, "")].y[-1]


@pytest.mark.postgres
def test_curves_are_the_unweighted_components(study: optuna.Study) -> None:
    data = gather_study(study)
    panels = {p.key: p for p in data.panels}
    assert "NOT comparable" in panels["total"].title
    first = trial_record.read_train_lines(study.trials[0])[0]
    box0 = next(ln for ln in panels["box"].lines if ln.trial == 0)
    total0 = next(ln for ln in panels["total"].lines if ln.trial == 0)
    assert box0.y[0] == first["lbox"] and total0.y[0] == first["loss"]
    assert box0.x[0] == first["iter"] == 1
    assert panels["lr"].log_y


@pytest.mark.postgres
def test_headline_states_the_gain_and_why(study: optuna.Study) -> None:
    data = gather_study(study)
    assert data.headline == (
        "Best trial #3 reaches mAP50-95 0.4200: a setting the search found (the study has no run "
        "of the trainer's defaults to compare with). Against hand tuning: +0.0600 (+17%) over "
        "the best hand-tuned baseline 'judged clearly better' (#1, 0.3600)."
    )
    assert data.reasons[0].startswith("Changed from that baseline: lcls 0.05 → 0.03")
    assert "optimizer SGD → Adam" in data.reasons[0] and "lobj 1 → 0.8" in data.reasons[0]
    assert data.reasons[1].startswith(
        "Unweighted validation losses at 6 epochs, baseline → best: box"
    )


def test_the_gain_is_stated_at_the_baselines_length_when_they_stop_early() -> None:
    study = optuna.create_study(direction="maximize")
    for label, params, final, reached in (
        ("first model", PLAN[0][1], 0.30, 2),
        ("judged clearly better", PLAN[1][1], 0.36, 2),
        (None, PLAN[3][1], 0.42, 6),
    ):
        study.enqueue_trial(params)
        trial = study.ask(DISTRIBUTIONS)
        if label is not None:
            trial.set_user_attr(trial_record.BASELINE, label)
        for epoch in range(reached):
            report = _report(params, final, epoch, 6)
            trial_record.record_eval(trial, epoch + 1, evaluation_of(epoch + 1, report))
            trial.report(report.eval.mAP50_95, epoch + 1)
        if label is None:
            study.tell(trial, final)
        else:
            trial_record.record_stopped(trial, "stopped at its length, 2 epochs")
            study.tell(trial, state=TrialState.PRUNED)
    data = gather_study(study)
    # at 2 epochs the best trial had 0.42 * 2 / 6 = 0.14, the better baseline 0.36 * 2 / 6 = 0.12
    assert data.headline == (
        "Best trial #2 reaches mAP50-95 0.4200 after 6 epochs: a setting the search found (the "
        "study has no run of the trainer's defaults to compare with). At 2 epochs, what the "
        "baselines train, it had 0.1400: +0.0200 (+17%) over the best hand-tuned baseline "
        "'judged clearly better' (#1, 0.1200)."
    )
    assert "Unweighted validation losses at 2 epochs" in data.reasons[1]
    labels = {r.number: r.label for r in data.rows}
    assert labels[1] == "#1 baseline: judged clearly better stopped at its length, 2 epochs"


def _readme_like_study(start_final: float, draw_final: float) -> optuna.Study:
    """The README's study in small: a baseline stopped at 2 of 6 epochs, the start trial (the
    trainer's defaults) and one sampled trial at full length."""
    study = optuna.create_study(direction="maximize")
    for kind, params, final, reached in (
        ("baseline", PLAN[0][1], 0.006, 2),  # 0.002 at 2 epochs: it has not learned
        ("start", PLAN[1][1], start_final, 6),
        (None, PLAN[3][1], draw_final, 6),
    ):
        study.enqueue_trial(params)
        trial = study.ask(DISTRIBUTIONS)
        if kind == "baseline":
            trial.set_user_attr(trial_record.BASELINE, "first model")
        if kind == "start":
            trial.set_user_attr(trial_record.START, trial_record.START_FROM_DEFAULTS)
        for epoch in range(reached):
            report = _report(params, final, epoch, 6)
            trial_record.record_eval(trial, epoch + 1, evaluation_of(epoch + 1, report))
            trial.report(report.eval.mAP50_95, epoch + 1)
        if kind == "baseline":
            trial_record.record_stopped(trial, "stopped at its length, 2 epochs")
            study.tell(trial, state=TrialState.PRUNED)
        else:
            study.tell(trial, final)
    return study


def test_the_headline_says_when_the_best_is_the_trainers_defaults() -> None:
    # the start trial wins; at the baselines' 2 epochs it had 0.38 * 2 / 6 = 0.1267
    data = gather_study(_readme_like_study(start_final=0.38, draw_final=0.30))
    assert data.headline == (
        "Best trial #1 reaches mAP50-95 0.3800 after 6 epochs: the start point, the trainer's "
        "defaults; no setting the search drew beat it (its best, trial 2: 0.3000). At 2 epochs, "
        "what the baselines train, it had 0.1267: +0.1247 over the best hand-tuned baseline "
        "'first model' (#0, 0.0020)."  # no percentage of a baseline that has not learned
    )


def test_no_gain_is_stated_between_two_detectors_that_have_not_learned() -> None:
    # at 2 epochs: the baseline 0.002, the best trial 0.09 * 2 / 6 = 0.03: both below 0.05
    data = gather_study(_readme_like_study(start_final=0.06, draw_final=0.09))
    assert data.headline == (
        "Best trial #2 reaches mAP50-95 0.0900 after 6 epochs: a setting the search found: "
        "+0.0300 (+50%) over the trainer's defaults (trial 1, 0.0600), one run each. At 2 "
        "epochs, what the baselines train, the baselines have not learned: the best hand-tuned "
        "baseline 'first model' (#0, 0.0020) and this trial (0.0300) are both below 0.05 "
        "mAP50-95, so no gain over hand tuning can be stated at that length."
    )
    assert "%" not in data.headline.split(". At 2 epochs")[1]


@pytest.mark.postgres
def test_log_lines_in_the_notes_format(study: optuna.Study) -> None:
    data = gather_study(study, top_k=1)
    assert [e.trial for e in data.logs] == [3, 0, 1, 2]  # best first, then the baselines
    for excerpt in data.logs:
        assert 1 <= len(excerpt.lines) <= 5
        assert all(LOG_LINE.match(line) for line in excerpt.lines), excerpt.lines
    assert data.logs[0].lines[0].startswith("epoch 0 / iter 1 lr ")
    assert data.logs[0].lines[-1].startswith("epoch 5 / iter 291 ")


@pytest.mark.postgres
def test_latency_points_tell_feasible_apart(study: optuna.Study) -> None:
    data = gather_study(study)
    assert data.latency is not None
    points = {p.trial: p for p in data.latency}
    assert set(points) == {0, 1, 3, 4, 7}
    assert not points[4].feasible and points[3].feasible and points[3].inference_ms == 4.5
    assert data.contour_params == ["lcls", "lbox"]


def test_unconstrained_study_has_no_latency_plot() -> None:
    data = gather_study(build_study(None, constrained=False))
    assert data.latency is None
    # without the constraint the over-budget trial #4 ranks second
    assert {r.number for r in data.rows if r.role == "top"} == {4, 7}


def test_empty_study_says_so() -> None:
    data = gather_study(optuna.create_study(study_name="empty"))
    assert data.empty and data.rows == [] and data.logs == []
    assert data.headline == "The study has no trials yet: nothing to compare."
    assert all(p.lines == [] for p in data.panels)


def test_no_complete_trial_yet() -> None:
    study = optuna.create_study(direction="maximize")
    trial = study.ask(DISTRIBUTIONS)
    trial_record.record_eval(trial, 1, evaluation_of(1, _report(trial.params, 0.2, 0, 6)))
    data = gather_study(study)
    assert data.headline.startswith("No trial has completed yet (1 so far)")
    assert data.reasons == [] and data.rows[0].state == "RUNNING"


def test_best_trial_is_a_baseline() -> None:
    study = optuna.create_study(direction="maximize")
    study.enqueue_trial(PLAN[0][1])
    trial = study.ask(DISTRIBUTIONS)
    trial.set_user_attr(trial_record.BASELINE, "first model")
    study.tell(trial, 0.3)
    study.tell(study.ask(DISTRIBUTIONS), 0.2)
    data = gather_study(study)
    assert "has not beaten hand tuning yet" in data.headline and data.reasons == []


def test_running_duration_uses_now() -> None:
    from search.report.gather import gather

    study = optuna.create_study()
    study.ask()
    trial = study.trials[0]
    assert trial.datetime_start is not None
    data = gather("s", [trial], study.direction, now=trial.datetime_start + timedelta(seconds=90))
    assert data.rows[0].duration_s == 90.0
    assert isinstance(data.generated, datetime)
    with pytest.raises(ValueError, match="top_k=-1"):
        gather("s", [trial], study.direction, top_k=-1)


def test_log_excerpt_spreads_over_the_run() -> None:
    lines = [TrainLine(0, i, 0.001, 1.0, 0.1, 0.2, 0.3, 0.03).to_dict() for i in range(1, 101)]
    excerpt = log_excerpt(lines)
    assert [int(x.split()[4]) for x in excerpt] == [1, 26, 51, 75, 100]
    assert excerpt[0] == "epoch 0 / iter 1 lr 0.00100 , loss 1.00000 latency 0.03000"
    assert log_excerpt(lines[:2]) == [TrainLine(**lines[i]).log_line() for i in (0, 1)]
    assert log_excerpt([]) == []


# --- another trainer's components (Ultralytics: box, cls, dfl; no objectness) -----------------

ULTRA_DISTRIBUTIONS = {
    "box": FloatDistribution(1.0, 20.0, log=True),
    "cls": FloatDistribution(0.1, 4.0, log=True),
    "dfl": FloatDistribution(0.5, 3.0, log=True),
    "optimizer": CategoricalDistribution(["SGD", "AdamW"]),
    "lr0": FloatDistribution(1e-4, 1e-1, log=True),
}
# (baseline label or None, params, final mAP50-95); every trial completes 3 epochs
ULTRA_PLAN: list[tuple[str | None, dict, float]] = [
    ("defaults", {"box": 7.5, "cls": 0.5, "dfl": 1.5, "optimizer": "SGD", "lr0": 0.01}, 0.30),
    (None, {"box": 12.0, "cls": 0.3, "dfl": 1.2, "optimizer": "AdamW", "lr0": 0.01}, 0.36),
    (None, {"box": 2.0, "cls": 2.5, "dfl": 2.0, "optimizer": "SGD", "lr0": 0.01}, 0.20),
]
# what the Ultralytics adapter declares (its module may not be importable where a report is drawn)
ULTRA_PARAMS = ParamRegistry(
    "ultralytics",
    (
        Param("box", "float", 7.5, low=0, hyp="box", group="loss weight"),
        Param("cls", "float", 0.5, low=0, hyp="cls", group="loss weight"),
        Param("dfl", "float", 1.5, low=0, hyp="dfl", group="loss weight"),
        Param("optimizer", "choice", "auto", choices=("SGD", "AdamW", "auto"), hyp="optimizer"),
        Param("lr0", "float", 0.01, low=0, low_open=True, hyp="lr0", group="optimisation"),
    ),
)
ULTRA_SPEC = {"trial": {"trainer": "ultralytics", "ultralytics": {"model": "yolov8n.yaml"}}}


def _ultra_evaluation(final: float, epoch: int) -> Evaluation:
    """One epoch of an Ultralytics-like trainer: training lines with lbox, lcls, ldfl."""
    train = [
        {
            "epoch": epoch,
            "iter": i,
            "lr": 0.01,
            "loss": 3.0 - final - 0.001 * i,
            "latency": 0.05,
            "lbox": 1.5 - final,
            "lcls": 2.0 - final,
            "ldfl": 1.2 - final,
        }
        for i in range(epoch * ITERS_PER_EPOCH + 1, (epoch + 1) * ITERS_PER_EPOCH + 1, LOG_EVERY)
    ]
    m = final * (epoch + 1) / 3
    return Evaluation(
        step=epoch + 1,
        metrics={"mAP50": min(1.0, m * 1.5), "mAP50_95": m},
        losses={"box": 1.4 - final, "cls": 1.9 - final, "dfl": 1.1 - final},
        train=train,
        iter=(epoch + 1) * ITERS_PER_EPOCH,
    )


def build_ultralytics_trials() -> list[optuna.trial.FrozenTrial]:
    """The `ULTRA_PLAN` as an Ultralytics study's trials, stored the way the worker stores them."""
    study = optuna.create_study(direction="maximize")
    for label, params, final in ULTRA_PLAN:
        study.enqueue_trial(params)
        trial = study.ask(ULTRA_DISTRIBUTIONS)
        if label is not None:
            trial.set_user_attr(trial_record.BASELINE, label)
        for epoch in range(3):
            trial_record.record_eval(trial, epoch + 1, _ultra_evaluation(final, epoch))
        study.tell(trial, final)
    return study.get_trials(deepcopy=False)


@pytest.fixture
def ultralytics_registry(monkeypatch: pytest.MonkeyPatch) -> None:
    """`make_trainer("ultralytics")` gives the adapter's registry, installed or not."""

    def make(name: str, options: dict) -> object:
        if name == "ultralytics":
            return type("Adapter", (), {"params": ULTRA_PARAMS})()
        return make_trainer(name, options)

    monkeypatch.setattr(key_params_module, "make_trainer", make)


@pytest.mark.usefixtures("ultralytics_registry")
def test_an_ultralytics_study_shows_its_own_components() -> None:
    trials = build_ultralytics_trials()
    data = gather("yolo", trials, optuna.study.StudyDirection.MAXIMIZE, spec=ULTRA_SPEC)
    assert data.components == ("box", "cls", "dfl")
    assert [p.key for p in data.panels] == ["eval", "box", "cls", "dfl", "total", "lr", "latency"]
    panels = {p.key: p for p in data.panels}
    assert "obj" not in panels
    assert panels["dfl"].title == "DFL loss (unweighted)" and panels["dfl"].y_title == "ldfl"
    assert "NOT comparable" in panels["total"].title
    assert {ln.trial for ln in panels["dfl"].lines} == {0, 1, 2}
    assert panels["dfl"].lines[0].y[0] == pytest.approx(1.2 - 0.30)
    rows = {r.number: r for r in data.rows}
    assert rows[1].val_losses == pytest.approx({"box": 1.04, "cls": 1.54, "dfl": 0.74})
    assert data.reasons[1] == (
        "Unweighted validation losses at 3 epochs, baseline → best: "
        "box 1.1 → 1.04, cls 1.6 → 1.54, dfl 0.8 → 0.74."
    )
    # the loss weights are the adapter's: the contour is of two of them, never of lr0
    assert data.key_params == KeyParams(
        ("box", "cls", "dfl"), ("box", "cls", "dfl", "optimizer", "lr0")
    )
    assert data.contour_params == ["cls", "box"]  # widest first: 8.3x, 6x; dfl only 1.7x
    assert all(len(e.lines) >= 1 for e in data.logs)  # notes-format lines without an lobj


def test_a_tune_study_keeps_its_seven_panels_in_their_places() -> None:
    data = gather_study(build_study(None))
    assert data.components == ("box", "cls", "obj")  # val_loss, lr, loss, latency are not
    assert [p.key for p in data.panels] == list(TUNE_PANELS)
    assert [p.title for p in data.panels][1:4] == [
        "Box loss (unweighted)",
        "Cls loss (unweighted)",
        "Obj loss (unweighted)",
    ]
    # the 4 x 2 grid the report has always had: the legend beside the evaluation
    grid = grid_of([p.spec for p in data.panels])
    assert (grid.rows, grid.cols) == (4, 2)
    assert grid.cells == {
        "eval": (1, 1),
        "box": (2, 1),
        "cls": (2, 2),
        "obj": (3, 1),
        "total": (3, 2),
        "lr": (4, 1),
        "latency": (4, 2),
    }
    assert grid.specs() == [[{}, None], [{}, {}], [{}, {}], [{}, {}]]
    assert data.key_params.loss_weights == ("lbox", "lobj", "lcls")
    assert set(data.rows[3].val_losses) == {"box", "cls", "obj"}


def test_components_are_ordered_and_titled_whatever_a_trainer_names() -> None:
    train = [{"epoch": 0, "iter": 1, "lr": 0.1, "loss": 1.0, "latency": 0.1, "lseg": 1.0}]
    evals = [{"epoch": 1, "iter": 1, "mAP50": 0.1, "val_loss": 2.0, "val_laux": 1.0}]
    evals.append({"epoch": 2, "iter": 2, "val_lbox": 1.0, "val_ldfl": 0.5})
    assert components_of(train, evals) == ("box", "dfl", "aux", "seg")
    assert order_components(["zeta", "obj", "box", "alpha", "cls"]) == (
        "box",
        "cls",
        "obj",
        "alpha",
        "zeta",
    )
    specs = panel_specs(("box", "seg"))
    assert [s.title for s in specs][1:3] == ["Box loss (unweighted)", "seg loss (unweighted)"]
    # the evaluation's row, then two panels a row: an odd one out leaves the last cell empty
    grid = grid_of(specs)
    assert grid.rows == 4 and grid.cells["latency"] == (4, 1)
    assert grid.specs()[-1] == [{}, None]
    assert grid_of(panel_specs(("aux",))).specs() == [[{}, None], [{}, {}], [{}, {}]]


def test_loss_weights_fall_back_when_the_trainer_is_unknown_here() -> None:
    tune_trials = build_study(None).trials
    ultra_trials = build_ultralytics_trials()
    tune = key_params({"trial": {"trainer": "tune"}}, ultra_trials)
    assert tune.loss_weights == ("lbox", "lobj", "lcls") and tune.legend[-2:] == ("optimizer", "lr")
    # no stored table, or a trainer that cannot be built here: tune's names when the trials
    # have them, else every number the trials drew
    unknown = {"trial": {"trainer": "nonesuch"}}
    assert key_params(None, tune_trials).loss_weights == ("lbox", "lobj", "lcls")
    assert key_params(unknown, tune_trials) == tune
    drawn = key_params(unknown, ultra_trials)
    assert drawn.loss_weights == ("box", "cls", "dfl", "lr0") == drawn.legend
    assert key_params(None, []) == KeyParams((), ())
