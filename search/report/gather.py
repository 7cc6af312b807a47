"""What each part of the report shows, gathered from a study's trials: pure functions, no drawing.

The report compares trials the way the hand-tuning notes did: panels over iterations (the
evaluation, one unweighted loss per component the trials recorded, the weighted total, the
learning rate and the training latency: `panels.py` describes them), a few log lines per run,
and a table. Everything here is read from the Optuna storage through
`search.bookkeeping.trial_record`, so a report drawn on machine A needs nothing written on machine
B; so is the study's confirmation (`tune confirm`, its confirm study in the same storage), whose
figure becomes the headline when there is one (the words: `verdict.py`). A big study draws a capped
set of its trials (`selection.py`) and counts them all. `draw` and `html` turn the result into a
page.
"""

from __future__ import annotations

import dataclasses
import math
import statistics
import warnings
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import optuna
from optuna.study import StudyDirection
from optuna.trial import FrozenTrial, TrialState

from search.bookkeeping import trial_record
from search.confirm.incumbent import Incumbent
from search.confirm.ranking import feasible, finite
from search.confirm.results import Confirmation
from search.confirm.standing import standing_of
from search.report.key_params import KeyParams, contour_params, key_params
from search.report.panels import PanelSpec, components_of, panel_specs
from search.report.rows import BASELINE, BEST, OTHER, TOP, TrialRow
from search.report.selection import MAX_DRAWN, Selection, select
from search.report.verdict import confirmed_headline, headline, reasons
from search.trainers.base import val_key
from trainer.records import TrainLine

# The roles a trial plays in the figures; `draw` styles lines by role.
_TRAIN_FIELDS = tuple(f.name for f in dataclasses.fields(TrainLine))


@dataclass(frozen=True)
class Line:
    """One trial's line in one panel; `variant` tells two lines of the same trial apart."""

    trial: int
    name: str
    role: str
    state: str
    x: list[int]
    y: list[float]
    shown: bool  # drawn by default; otherwise one legend click away
    cut_short: bool  # pruned or failed: the line ends early and gets an end marker
    variant: str = ""


@dataclass(frozen=True)
class Panel:
    """One panel as drawn: its description and one line per trial (and field)."""

    spec: PanelSpec
    lines: list[Line]

    @property
    def key(self) -> str:
        return self.spec.key

    @property
    def title(self) -> str:
        return self.spec.title

    @property
    def y_title(self) -> str:
        return self.spec.y_title

    @property
    def log_y(self) -> bool:
        return self.spec.log_y


@dataclass(frozen=True)
class LogExcerpt:
    """A few training log lines of one shown trial, in the notes' format."""

    trial: int
    label: str
    params: dict[str, Any]
    lines: list[str]


@dataclass(frozen=True)
class LatencyPoint:
    """A trial on the mAP-versus-inference-latency plot of a constrained study."""

    trial: int
    label: str
    inference_ms: float
    mAP50_95: float
    feasible: bool


@dataclass(frozen=True)
class ReportData:
    """Everything the report page shows, ready to draw."""

    study_name: str
    direction: str  # "maximize" or "minimize"
    counts: dict[str, int]
    headline: str
    reasons: list[str]  # why the best trial won: what changed, which losses dropped
    rows: list[TrialRow]
    components: tuple[str, ...]  # the loss components the trials recorded, in panel order
    key_params: KeyParams  # the loss weights and the legend's parameters
    panels: list[Panel]
    logs: list[LogExcerpt]
    latency: list[LatencyPoint] | None  # None when no trial carries a constraint
    contour_params: list[str] | None
    generated: datetime
    confirmation: Confirmation | None = None  # `tune confirm`'s runs, when it ran
    single_run: str | None = None  # the single-run headline, when the confirmed one replaces it
    left_out: int = 0  # trials not drawn nor listed (`selection.MAX_DRAWN`), counted all the same
    max_drawn: int = MAX_DRAWN

    @property
    def empty(self) -> bool:
        return not self.rows


# --- trials ------------------------------------------------------------------------------------


def _params(trial: FrozenTrial, named: Sequence[str]) -> dict[str, Any]:
    """The trial's sampled parameters; a baseline without them falls back to the `named` ones
    of its config (the loss weights, the optimizer, the learning rate)."""
    if trial.params:
        return dict(trial.params)
    config = trial.user_attrs.get(trial_record.CONFIG)
    if isinstance(config, dict):
        return {k: config[k] for k in named if k in config}
    return {}


def _duration(trial: FrozenTrial, now: datetime) -> float | None:
    if trial.datetime_start is None:
        return None
    end = trial.datetime_complete or now
    return max(0.0, (end - trial.datetime_start).total_seconds())


def _role(trial: FrozenTrial, best: int | None, top: set[int]) -> str:
    if trial.number == best:
        return BEST
    if trial_record.read_baseline(trial) is not None:
        return BASELINE
    return TOP if trial.number in top else OTHER


def _label(trial: FrozenTrial, role: str) -> str:
    baseline = trial_record.read_baseline(trial)
    parts = [f"#{trial.number}"]
    if role == BEST:
        parts.append("best")
    if baseline is not None:
        parts.append(f"baseline: {baseline}")
    start = trial_record.read_start(trial)
    if start is not None:
        parts.append(f"start: {start}")
    stopped = trial_record.read_stopped(trial)
    if stopped is not None:
        parts.append(stopped)
    elif trial.state != TrialState.COMPLETE:
        parts.append(trial.state.name.lower())
    return " ".join(parts)


def _retry_of(trial: FrozenTrial) -> int | None:
    with warnings.catch_warnings():
        # Optuna marks its retry-history reader experimental; the warning says nothing to a reader
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        return trial_record.read_retry_of(trial)


def trial_row(
    trial: FrozenTrial,
    role: str,
    now: datetime,
    components: Sequence[str],
    named: Sequence[str],
) -> TrialRow:
    """The table row of one trial; numbers missing from an unfinished trial are None.
    `components` are the loss components whose last validation loss it keeps, `named` the
    parameters a baseline without sampled ones shows from its config."""
    summary = trial_record.read_summary(trial) or {}
    evals = trial_record.read_eval_lines(trial)
    train = trial_record.read_train_lines(trial)
    last_eval = evals[-1] if evals else {}
    mAP50_95 = finite(summary.get("mAP50_95"))
    if mAP50_95 is None:
        mAP50_95 = finite(last_eval.get("mAP50_95"))
    mAP50 = finite(summary.get("mAP50"))
    if mAP50 is None:
        mAP50 = finite(last_eval.get("mAP50"))
    train_latency = finite(summary.get("train_latency"))
    if train_latency is None and train:
        train_latency = statistics.median(float(t["latency"]) for t in train)
    iters = [int(t["iter"]) for t in train] + [int(e["iter"]) for e in evals]
    host = trial_record.read_placement(trial)["host"]
    return TrialRow(
        number=trial.number,
        state=trial.state.name,
        label=_label(trial, role),
        role=role,
        baseline=trial_record.read_baseline(trial),
        params=_params(trial, named),
        value=finite(trial.value) if trial.state == TrialState.COMPLETE else None,
        mAP50_95=mAP50_95,
        mAP50=mAP50,
        val_losses={
            c: float(last_eval[val_key(c)])
            for c in components
            if finite(last_eval.get(val_key(c))) is not None
        },
        inference_ms=finite(summary.get("inference_ms")),
        train_latency=train_latency,
        duration_s=_duration(trial, now),
        host=host if isinstance(host, str) else None,
        error=trial_record.read_error(trial),
        feasible=feasible(trial),
        last_iter=max(iters) if iters else None,
        retry_of=_retry_of(trial),
        evals={int(e["epoch"]): e for e in evals},
        stopped=trial_record.read_stopped(trial),
    )


# --- panels ------------------------------------------------------------------------------------


def _lines_for(
    trial: FrozenTrial,
    row: TrialRow,
    shown: bool,
    points: list[dict[str, Any]],
    field: str,
    variant: str = "",
) -> Line | None:
    xy = [(int(p["iter"]), finite(p.get(field))) for p in points]
    xy = [(x, y) for x, y in xy if y is not None]
    if not xy:
        return None
    cut_short = trial.state in (TrialState.PRUNED, TrialState.FAIL)
    return Line(
        trial=row.number,
        name=row.label,
        role=row.role,
        state=row.state,
        x=[x for x, _ in xy],
        y=[y for _, y in xy],  # type: ignore[misc]
        shown=shown,
        cut_short=cut_short,
        variant=variant,
    )


def gather_panels(
    trials: Sequence[FrozenTrial],
    rows: dict[int, TrialRow],
    shown: set[int],
    specs: Sequence[PanelSpec],
) -> list[Panel]:
    """One panel per description in `specs`, each with a line per trial and field."""
    records = {
        "train": {t.number: trial_record.read_train_lines(t) for t in trials},
        "eval": {t.number: trial_record.read_eval_lines(t) for t in trials},
    }
    panels = []
    for spec in specs:
        points = records[spec.source]
        lines = [
            line
            for t in trials
            for field, variant in spec.fields
            if (
                line := _lines_for(
                    t, rows[t.number], t.number in shown, points[t.number], field, variant
                )
            )
        ]
        panels.append(Panel(spec, lines))
    return panels


def study_components(trials: Sequence[FrozenTrial]) -> tuple[str, ...]:
    """The loss components the trials recorded (in any of their lines), in panel order."""
    return components_of(
        (line for t in trials for line in trial_record.read_train_lines(t)),
        (line for t in trials for line in trial_record.read_eval_lines(t)),
    )


# --- words -------------------------------------------------------------------------------------


def log_excerpt(train_lines: Sequence[dict[str, Any]], points: int = 5) -> list[str]:
    """Up to `points` training lines spread over the run (first and last included), formatted
    by `TrainLine.log_line` so the report and the trainer print the same text."""
    if not train_lines:
        return []
    n = len(train_lines)
    picks = sorted({round(i * (n - 1) / max(1, points - 1)) for i in range(points)})
    # the notes' line names no component: another trainer's lines (no `lobj`) print the same way
    return [
        TrainLine(**{f: train_lines[i].get(f, math.nan) for f in _TRAIN_FIELDS}).log_line()
        for i in picks
    ]


# --- the whole report --------------------------------------------------------------------------


def gather(
    study_name: str,
    trials: Sequence[FrozenTrial],
    direction: StudyDirection,
    top_k: int = 5,
    now: datetime | None = None,
    confirmation: Confirmation | None = None,
    spec: dict[str, Any] | None = None,
    max_drawn: int = MAX_DRAWN,
    incumbent: Incumbent | None = None,
) -> ReportData:
    """Gather everything the report shows from `trials` (any states, possibly none).

    Drawn: at most `max_drawn` trials (`selection.select`: the best, the top, the baselines,
    the start and confirmed trials always; then the next best and an even sample of the rest);
    every trial is counted. Shown by default: the hand-tuned baselines and the search's `top_k`
    best complete trials (baselines not counted); the other drawn trials are one legend click
    away. With a constraint, feasible trials rank first. `now` dates running trials. With a
    `confirmation`, its figure is the headline and the single-run one follows it. `spec` is the
    study table launch stored (`trial_record.read_study_spec`): its trainer says which
    parameters are loss weights; the loss panels follow the components the trials recorded.

    Only the drawn trials' curves and configs are read: the others may come lean or in outline
    (`trial_record.read_lean_trials`: without parameters and intermediate values).
    """
    if top_k < 0:
        raise ValueError(f"top_k must be >= 0, but got {top_k=}")
    now = now or datetime.now()
    direction_name = "maximize" if direction == StudyDirection.MAXIMIZE else "minimize"
    trials = sorted(trials, key=lambda t: t.number)
    confirmed = {r.number for r in confirmation.rows} if confirmation is not None else set()
    chosen = select(trials, direction, top_k, confirmed, max_drawn)
    drawn = [t for t in trials if t.number in chosen.drawn]
    ranked = [n for n in chosen.ranked if n in chosen.drawn]  # the best ones are all drawn
    top = set(chosen.top)
    components = study_components(drawn)
    named = key_params(spec, trials)
    row_list = [
        trial_row(t, _role(t, chosen.best, top), now, components, named.legend) for t in drawn
    ]
    rows = {r.number: r for r in row_list}
    logs = [
        LogExcerpt(t.number, rows[t.number].label, rows[t.number].params, excerpt)
        for t in drawn
        if t.number in chosen.shown and (excerpt := log_excerpt(trial_record.read_train_lines(t)))
    ]
    # best first, then the baselines, then the rest of the top: the order a reader compares in
    logs.sort(key=lambda e: (rows[e.trial].role != BEST, rows[e.trial].role != BASELINE, e.trial))
    best_trial = next((t for t in drawn if ranked and t.number == ranked[0]), None)
    standing = standing_of(drawn, best_trial, direction, incumbent)
    single_run = headline(row_list, ranked, direction_name, standing)
    confirmed_line = None
    if confirmation is not None:
        confirmed_line = confirmed_headline(confirmation, row_list, ranked)
    return ReportData(
        study_name=study_name,
        direction=direction_name,
        counts=dict(Counter(t.state.name for t in trials)),
        headline=confirmed_line or single_run,
        reasons=reasons(row_list, ranked, components),
        rows=row_list,
        components=components,
        key_params=named,
        panels=gather_panels(drawn, rows, set(chosen.shown), panel_specs(components)),
        logs=logs,
        latency=latency_points(trials, rows, chosen),
        contour_params=contour_params(trials, named.loss_weights),
        generated=now,
        confirmation=confirmation,
        single_run=single_run if confirmed_line else None,
        left_out=chosen.left_out,
        max_drawn=chosen.max_drawn,
    )


def latency_points(
    trials: Sequence[FrozenTrial], rows: dict[int, TrialRow], chosen: Selection
) -> list[LatencyPoint] | None:
    """Every trial with an inference latency and a mAP50-95 (a point each: cheap, drawn or not);
    None when no trial carries a constraint. A trial not drawn is read from its summary (a big
    study's report reads summaries for the sample Optuna's views get, not for every trial)."""
    if not any(feasible(t) is not None for t in trials):
        return None
    points = []
    for t in trials:
        if t.number in rows:
            r = rows[t.number]
            ms, mAP, ok, label = r.inference_ms, r.mAP50_95, r.feasible, r.label
        else:
            summary = trial_record.read_summary(t) or {}
            ms, mAP, ok = (
                finite(summary.get("inference_ms")),
                finite(summary.get("mAP50_95")),
                feasible(t),
            )
            label = _label(t, _role(t, chosen.best, set(chosen.top)))
        if ms is not None and mAP is not None and ok is not None:
            points.append(LatencyPoint(t.number, label, ms, mAP, ok))
    return points
