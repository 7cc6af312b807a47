"""Optuna's own views of a study (optuna.visualization), each replaced by a short note when it
cannot be drawn yet: too few trials, a single complete trial for importances, no two loss weights
varied for the contour... A view that fails must never cost the reader the rest of the report.

The views draw the trials they are given, in a study of their own in memory: the report gives
them a bounded sample of a big study (`selection.view_sample`), and the intermediate values, a
line per trial like the panels, only the trials the panels draw.
"""

from __future__ import annotations

import copy
import warnings
from collections.abc import Callable, Container, Sequence
from dataclasses import dataclass

import optuna
import plotly.graph_objects as go
from optuna.distributions import FloatDistribution, IntDistribution
from optuna.storages import InMemoryStorage
from optuna.study import StudyDirection
from optuna.trial import FrozenTrial, TrialState

from search.bookkeeping.optuna_compat import without_matplotlib_views

with without_matplotlib_views():  # about 1 s of imports tune does not draw with
    import optuna.visualization as ov


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


class _SharedTrials(InMemoryStorage):
    """Optuna's in-memory storage handing out its trials without copying them.

    The views read `study.trials`, a deep copy of every trial, more than once: the importances'
    hover text once per parameter (10 parameters x 2,000 trials: 13 s of copying). They only
    read, and the study is theirs alone.
    """

    def get_all_trials(
        self,
        study_id: int,
        deepcopy: bool = True,
        states: Container[TrialState] | None = None,
    ) -> list[FrozenTrial]:
        return super().get_all_trials(study_id, deepcopy=False, states=states)


def widened(trials: Sequence[FrozenTrial]) -> list[FrozenTrial]:
    """`trials` with every number parameter's range widened, the same for all, to hold every
    trial's value: a hand-tuned baseline may lie outside a space centred on the trainer's
    defaults (search/study/space.py), which Optuna's `add_trial` refuses and its views would not
    place. Copies; the stored trials keep their own ranges."""
    ranges: dict[str, tuple[float, float]] = {}
    for t in trials:
        for name, dist in t.distributions.items():
            if isinstance(dist, FloatDistribution | IntDistribution) and name in t.params:
                value = t.params[name]
                low, high = ranges.get(name, (dist.low, dist.high))
                ranges[name] = (min(low, dist.low, value), max(high, dist.high, value))
    out = []
    for t in trials:
        dists = dict(t.distributions)
        changed = False
        for name, dist in dists.items():
            if name in ranges and isinstance(dist, FloatDistribution | IntDistribution):
                low, high = ranges[name]
                if (low, high) != (dist.low, dist.high):
                    dists[name] = _spanning(dist, low, high)
                    changed = True
        if changed:
            t = copy.copy(t)
            t.distributions = dists
        out.append(t)
    return out


def _spanning(
    dist: FloatDistribution | IntDistribution, low: float, high: float
) -> FloatDistribution | IntDistribution:
    if isinstance(dist, IntDistribution):
        return IntDistribution(int(low), int(high), log=dist.log, step=dist.step)
    return FloatDistribution(low, high, log=dist.log)  # a value off its grid: no step


def _study_of(trials: Sequence[FrozenTrial], direction: StudyDirection) -> optuna.Study:
    """A study in memory holding `trials` (their ranges `widened`): what Optuna's views read."""
    verbosity = optuna.logging.get_verbosity()
    optuna.logging.set_verbosity(optuna.logging.WARNING)  # no "new study created" line
    try:
        study = optuna.create_study(storage=_SharedTrials(), direction=direction)
    finally:
        optuna.logging.set_verbosity(verbosity)
    study.add_trials(widened(trials))
    return study


def optuna_views(
    trials: Sequence[FrozenTrial],
    direction: StudyDirection,
    contour_params: list[str] | None,
    lines: Sequence[FrozenTrial] | None = None,
) -> list[View]:
    """Optimization history, importances, parallel coordinates, slice, contour of two loss
    weights, intermediate values (the pruner's view) and the timeline (idle workers show as gaps)
    of `trials`; the intermediate values of `lines` (default: `trials`) only.
    """
    lines = trials if lines is None else lines
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "add_trials is experimental" says nothing to a reader
        study = _study_of(trials, direction)
        lined = study if lines is trials else _study_of(lines, direction)
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
            lambda: ov.plot_intermediate_values(lined),
            None
            if any(t.intermediate_values for t in lines)
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
