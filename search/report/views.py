"""Optuna's own views of a study (optuna.visualization), each replaced by a short note when it
cannot be drawn yet: too few trials, a single complete trial for importances, no two loss weights
varied for the contour... A view that fails must never cost the reader the rest of the report.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from dataclasses import dataclass

import optuna
import optuna.visualization as ov
import plotly.graph_objects as go
from optuna.trial import TrialState


@dataclass(frozen=True)
class View:
    """One optuna.visualization figure, or the note said in its place."""

    key: str
    title: str
    figure: go.Figure | None
    note: str | None = None


def _one_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    return text if len(text) <= 200 else text[:197] + "..."


def _view(key: str, title: str, draw: Callable[[], go.Figure], missing: str | None = None) -> View:
    """Draw one view; `missing` (what the study lacks for it) gives the note without drawing."""
    if missing is not None:
        return View(key, title, None, f"Can't be drawn yet: {missing}.")
    try:
        with warnings.catch_warnings():
            # experimental-feature and "not enough trials" warnings would only clutter the log
            warnings.simplefilter("ignore")
            fig = draw()
    except Exception as exc:  # any failure of one view becomes its note
        return View(key, title, None, f"Can't be drawn yet: {_one_line(exc)}")
    if not fig.data:
        return View(key, title, None, "Can't be drawn yet: nothing to show.")
    # optuna sizes some views (the slice) by parameter count; let the page's column decide
    fig.layout.width = None
    fig.update_layout(height=420, margin={"l": 60, "r": 20, "t": 50, "b": 50}, title=title)
    return View(key, title, fig)


def optuna_views(study: optuna.Study, contour_params: list[str] | None) -> list[View]:
    """Optimization history, importances, parallel coordinates, slice, contour of two loss
    weights, intermediate values (the pruner's view) and the timeline (idle workers show as gaps).
    """
    trials = study.get_trials(deepcopy=False)
    complete = sum(t.state == TrialState.COMPLETE for t in trials)
    no_complete = "no trial has completed" if complete == 0 else None
    # importances of a single trial would be a made-up bar chart
    too_few = f"needs 2 complete trials, the study has {complete}" if complete < 2 else None
    views = [
        _view(
            "history",
            "Optimization history",
            lambda: ov.plot_optimization_history(study),
            no_complete,
        ),
        _view(
            "importances",
            "Parameter importances",
            lambda: ov.plot_param_importances(study),
            too_few,
        ),
        _view(
            "parallel",
            "Parallel coordinates",
            lambda: ov.plot_parallel_coordinate(study),
            too_few,
        ),
        _view("slice", "Slice", lambda: ov.plot_slice(study), no_complete),
    ]
    if contour_params is None:
        views.append(
            View(
                "contour",
                "Contour of two loss weights",
                None,
                "Can't be drawn yet: needs two loss weights that vary across complete trials.",
            )
        )
    else:
        a, b = contour_params
        views.append(
            _view(
                "contour",
                f"Contour: {a} x {b}",
                lambda: ov.plot_contour(study, params=[a, b]),
            )
        )
    views += [
        _view(
            "intermediate",
            "Intermediate values (mAP50-95 per evaluation, what the pruner compares)",
            lambda: ov.plot_intermediate_values(study),
            None
            if any(t.intermediate_values for t in trials)
            else "no trial has reported an evaluation",
        ),
        _view(
            "timeline",
            "Timeline (gaps are idle workers)",
            lambda: ov.plot_timeline(study),
            None if trials else "no trials",
        ),
    ]
    return views
