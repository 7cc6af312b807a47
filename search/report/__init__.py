"""The study report: one self-contained HTML file comparing trials like the hand-tuning notes.

`gather` collects what each figure shows (pure, tested), `draw` and `views` draw it with Plotly,
`html` assembles the page. A big study is read in outline (`trial_record.read_lean_trials`: no
curves, configs, parameters or intermediate values), Optuna's views' sample lean and only the
trials the report draws (`selection.select`) whole.
"""

from __future__ import annotations

from pathlib import Path

import optuna
from optuna.trial import FrozenTrial

from search.bookkeeping import trial_record
from search.confirm.incumbent import study_best
from search.confirm.results import read_confirmation_of
from search.report.draw import latency_figure, panels_figure
from search.report.gather import ReportData, gather
from search.report.html import render_page
from search.report.selection import MAX_DRAWN, select, view_sample
from search.report.views import optuna_views

__all__ = ["ReportData", "gather", "gather_study", "write_report"]


def _gather(
    study: optuna.Study, top_k: int, max_drawn: int
) -> tuple[ReportData, list[FrozenTrial]]:
    """The report data, and the trials Optuna's views get (lean: no curves)."""
    # every trial in outline (no parameters, intermediate values, curves or details): enough to
    # count, rank and select; then the view sample lean and the drawn trials whole
    outline = trial_record.read_lean_trials(study, params=False, steps=False, details=False)
    confirmation = read_confirmation_of(study, outline)
    confirmed = {r.number for r in confirmation.rows} if confirmation is not None else set()
    chosen = select(outline, study.direction, top_k, confirmed, max_drawn)
    sample = trial_record.reread(study, view_sample(outline, chosen.drawn))
    whole = trial_record.reread(study, [t for t in outline if t.number in chosen.drawn], True)
    by_number = {t.number: t for t in outline} | {t.number: t for t in sample + whole}
    data = gather(
        study.study_name,
        list(by_number.values()),
        study.direction,
        top_k,
        confirmation=confirmation,
        spec=trial_record.read_study_spec(study),
        max_drawn=max_drawn,
        incumbent=study_best(study, trial_record.read_lean_trials(study, details=False))[1],
    )
    return data, sample


def gather_study(study: optuna.Study, top_k: int = 5, max_drawn: int = MAX_DRAWN) -> ReportData:
    """Gather the report data of `study` (a single-objective study), its confirmation and its
    stored table (whose trainer names the loss weights); at most `max_drawn` trials drawn."""
    return _gather(study, top_k, max_drawn)[0]


def write_report(
    study: optuna.Study, path: Path, top_k: int = 5, max_drawn: int = MAX_DRAWN
) -> Path:
    """Write the report of `study` to `path` (folders created) and return the path.

    Shows the hand-tuned baselines and the `top_k` best complete trials; the other drawn trials
    (all of a study of at most `max_drawn`) are one legend click away. Works on empty studies
    and on running, failed and pruned trials.
    """
    data, sample = _gather(study, top_k, max_drawn)
    if data.empty:
        page = render_page(data, None, None, [])
    else:
        drawn = {r.number for r in data.rows}
        views = optuna_views(
            sample,
            study.direction,
            data.contour_params,
            # the intermediate values draw a line per trial: those the panels draw
            lines=None if len(drawn) == len(sample) else [t for t in sample if t.number in drawn],
        )
        page = render_page(
            data, panels_figure(data), latency_figure(data), views, view_trials=len(sample)
        )
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(page, encoding="utf-8")
    return path
