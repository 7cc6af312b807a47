"""The study report: one self-contained HTML file comparing trials like the hand-tuning notes.

`gather` collects what each figure shows (pure, tested), `draw` and `views` draw it with Plotly,
`html` assembles the page.
"""

from __future__ import annotations

from pathlib import Path

import optuna

from search import trial_record
from search.confirm_results import read_confirmation_of
from search.report.draw import latency_figure, panels_figure
from search.report.gather import ReportData, gather
from search.report.html import render_page
from search.report.views import optuna_views

__all__ = ["ReportData", "gather", "gather_study", "write_report"]


def gather_study(study: optuna.Study, top_k: int = 5) -> ReportData:
    """Gather the report data of `study` (a single-objective study), its confirmation and its
    stored table (whose trainer names the loss weights)."""
    return gather(
        study.study_name,
        study.get_trials(deepcopy=False),
        study.direction,
        top_k,
        confirmation=read_confirmation_of(study),
        spec=trial_record.read_study_spec(study),
    )


def write_report(study: optuna.Study, path: Path, top_k: int = 5) -> Path:
    """Write the report of `study` to `path` (folders created) and return the path.

    Shows the hand-tuned baselines and the `top_k` best complete trials; every other trial is one
    legend click away. Works on empty studies and on running, failed and pruned trials.
    """
    data = gather_study(study, top_k)
    if data.empty:
        page = render_page(data, None, None, [])
    else:
        page = render_page(
            data,
            panels_figure(data),
            latency_figure(data),
            optuna_views(study, data.contour_params),
        )
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(page, encoding="utf-8")
    return path
