"""The report page: self-contained, the seven panels, the sortable table, Optuna's views or notes in
their place, and the `tune report` command on a real SQLite storage."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import optuna
import plotly.graph_objects as go
import pytest
from plotly.offline import get_plotlyjs

from search.bookkeeping import trial_record
from search.report import gather_study, write_report
from search.report.draw import legend_name, panels_figure
from search.report.gather import gather
from search.report.html import trials_table
from tests.search.test_report_gather import (
    DISTRIBUTIONS,
    PLAN,
    ULTRA_SPEC,
    build_study,
    build_ultralytics_trials,
    ultralytics_registry,  # noqa: F401 (a fixture)
)

TUNE = str(Path(sys.executable).parent / "tune")
SEVEN_TITLES = (
    "Evaluation: mAP50-95 (solid), mAP50 (dotted)",
    "Box loss (unweighted)",
    "Cls loss (unweighted)",
    "Obj loss (unweighted)",
    "Total loss (weighted: NOT comparable across different loss weights)",
    "Learning rate",
    "Training latency per iteration",
)


@pytest.fixture(scope="module")
def page(tmp_path_factory: pytest.TempPathFactory) -> str:
    path = tmp_path_factory.mktemp("report") / "sub" / "report.html"
    assert write_report(build_study(None), path, top_k=2) == path
    return path.read_text(encoding="utf-8")


def test_page_is_self_contained(page: str) -> None:
    assert get_plotlyjs() in page  # plotly.js inlined, not fetched
    rest = page.replace(get_plotlyjs(), "")  # (the bundle itself names a CDN for geo maps)
    assert not re.search(r"<script[^>]+src=", rest)
    assert "cdn.plot.ly" not in rest and "<link" not in rest and "http" not in rest


def test_page_has_the_verdict_and_seven_panels(page: str) -> None:
    assert "Best trial #3 reaches mAP50-95 0.4200: a setting the search found" in page
    assert "+0.0600 (+17%) over the best hand-tuned baseline" in page
    assert "optimizer SGD → Adam" in page
    assert 'id="panels"' in page
    for title in SEVEN_TITLES:
        assert title in page, title


def test_table_lists_every_trial_with_baselines_marked(page: str) -> None:
    table = page[page.index("<table class='sortable' id='trials'>") : page.index("</table>")]
    rows = re.findall(r"<tr class='(\w+) ?(\w*)'>", table)
    assert len(rows) == len(PLAN)
    assert sorted(role for _, role in rows if role) == ["baseline", "baseline", "baseline", "best"]
    assert rows[0] == ("COMPLETE", "best")  # sorted by mAP50-95, best first
    head = re.findall(r"<th[^>]*>([^<]+)</th>", table)
    for column in ("state", "lcls", "optimizer", "mAP50-95", "mAP50", "val_lobj", "inference ms"):
        assert column in head
    assert head[-4:] == ["train s/iter", "duration", "host", "note"]
    assert "baseline: judged clearly better" in table
    assert "over latency budget" in table and "NonFiniteLossError" in table
    # every cell carries a sort key: numbers sort numerically, missing values are empty
    assert "data-v='0.42'" in table and "data-v=''" in table
    assert "table.sortable" in page  # the sorting script


def test_log_lines_and_views(page: str) -> None:
    assert "epoch 0 / iter 1 lr 0.00003 , loss 1.02231 latency 0.03100" in page
    assert 'id="latency-plot"' in page
    for key in ("history", "importances", "parallel", "slice", "contour", "intermediate"):
        assert f"view-{key}" in page
    assert "view-timeline" in page and "be drawn yet" not in page


def test_hidden_trials_are_one_legend_click_away() -> None:
    data = gather_study(build_study(None), top_k=1)
    fig = panels_figure(data)
    visible = {t.legendgroup: t.visible for t in fig.data if t.showlegend}
    assert len(visible) == len(PLAN)  # one legend entry per trial
    shown = {"trial0", "trial1", "trial2", "trial3"}
    assert {g for g, v in visible.items() if v is True} == shown
    assert {g for g, v in visible.items() if v == "legendonly"} == {
        f"trial{n}" for n in range(len(PLAN))
    } - shown
    # the end markers of pruned (#2, #5) and failed (#6) trials, one per panel they appear in
    markers = {t.legendgroup for t in fig.data if t.mode == "markers"}
    assert markers == {"trial2", "trial5", "trial6"}
    best = next(t for t in fig.data if t.legendgroup == "trial3" and t.showlegend)
    assert best.line.width == 4.0 and best.name.startswith("#3 best · lcls 0.03 lobj 0.8")


def test_a_tune_study_is_drawn_as_it_always_was() -> None:
    fig = panels_figure(gather_study(build_study(None), top_k=1))
    titles = [a.text for a in fig.layout.annotations]
    assert titles == list(SEVEN_TITLES)  # in the cells' order: box, cls / obj, total / lr, latency
    assert fig.layout.height == 1250 and fig.layout.legend.maxheight == pytest.approx(0.23)
    assert fig.layout.yaxis4.title.text == "lobj" and fig.layout.yaxis6.type == "log"


@pytest.mark.usefixtures("ultralytics_registry")
def test_an_ultralytics_study_draws_box_cls_dfl() -> None:
    data = gather(
        "yolo", build_ultralytics_trials(), optuna.study.StudyDirection.MAXIMIZE, spec=ULTRA_SPEC
    )
    fig = panels_figure(data)
    titles = [a.text for a in fig.layout.annotations]
    assert "DFL loss (unweighted)" in titles and not any("Obj" in t for t in titles)
    assert len(titles) == 7 and fig.layout.height == 1250
    head = re.findall(r"<th[^>]*>([^<]+)</th>", trials_table(data.rows, data.components))
    assert [h for h in head if h.startswith("val_")] == ["val_lbox", "val_lcls", "val_ldfl"]
    assert (
        legend_name(data.rows[1], data.key_params)
        == "#1 best · box 12 cls 0.3 dfl 1.2 AdamW lr0 0.01"
    )


def test_empty_study_says_so(tmp_path: Path) -> None:
    page = write_report(optuna.create_study(study_name="nothing"), tmp_path / "r.html").read_text()
    assert "This study is empty" in page and "The study has no trials yet" in page
    assert 'id="panels"' not in page


def test_views_that_cannot_be_drawn_become_notes(tmp_path: Path) -> None:
    study = optuna.create_study(direction="maximize")
    trial = study.ask(DISTRIBUTIONS)
    trial.set_user_attr(trial_record.BASELINE, "<b>odd</b> label")
    study.tell(trial, 0.3)
    page = write_report(study, tmp_path / "r.html").read_text()
    notes = dict(
        re.findall(r"id='view-(\w+)'><b>[^<]+</b>: Can&#x27;t be drawn yet: ([^<]+)<", page)
    )
    assert notes == {
        "importances": "needs 2 complete trials, the study has 1.",
        "parallel": "needs 2 complete trials, the study has 1.",
        "contour": "needs two loss weights that vary across complete trials.",
        "intermediate": "no trial has reported an evaluation.",
    }
    assert "baseline: &lt;b&gt;odd&lt;/b&gt; label" in page and "<b>odd</b>" not in page


def test_report_command(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'tune.db'}"
    build_study(url, name="loss-weights")
    out = tmp_path / "out" / "report.html"
    cmd = [TUNE, "report", "--study", "loss-weights", "--storage", url, "-o", str(out)]
    done = subprocess.run([*cmd, "--top", "1"], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == f"wrote {out}" and out.stat().st_size > 3_000_000
    missing = subprocess.run(
        [TUNE, "report", "--study", "nope", "--storage", url, "-o", str(tmp_path / "x.html")],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert missing.returncode == 2 and "no study named 'nope'" in missing.stderr
    assert "loss-weights" in missing.stderr and not (tmp_path / "x.html").exists()


def test_the_panels_traces_are_valid_plotly() -> None:
    # `panels_figure` takes its traces without Plotly's validation (for speed): validated here
    fig = panels_figure(gather_study(build_study(None), top_k=1))
    assert len(go.Figure(fig.to_dict()).data) == len(fig.data)  # raises on a bad property


def test_a_report_shows_baselines_that_lie_outside_a_space_around_the_defaults(
    tmp_path: Path,
) -> None:
    """The hand-tuned baselines lie outside the loss-weights space (it is centred on the
    trainer's defaults): the report, Optuna's views included, still shows them beside the draws."""
    from search.study.study_file import load_study_file

    spec = load_study_file("loss-weights", check_data=False)
    study = optuna.create_study(direction="maximize")
    for baseline in spec.baselines[:2]:
        study.enqueue_trial(baseline.as_dict(), user_attrs=trial_record.baseline_attrs("b"))
    for value in (0.1, 0.2, 0.3, 0.4):
        trial = study.ask()
        spec.space.sample(trial)
        trial.report(value, 3)
        study.tell(trial, value)
    lcls = spec.space.get("lcls")
    assert lcls is not None and not lcls.contains(study.trials[0].params["lcls"])
    page = write_report(study, tmp_path / "report.html").read_text()
    assert "Parallel coordinates" in page and "Parameter importances" in page
    assert study.trials[0].distributions["lcls"].high < 0.5  # the stored ranges are untouched
