"""A big study's report draws a capped set of trials (`search/report/selection.py`) and says how
many it left out; every trial is still counted. Studies of a few hundred tiny trials in memory,
the cap lowered through `max_drawn`; the lean read a report and `tune status` use, on SQLite."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import optuna
import pytest
from optuna.distributions import FloatDistribution
from optuna.study import StudyDirection
from optuna.trial import FrozenTrial, TrialState

from search.bookkeeping import trial_record
from search.report import gather_study, write_report
from search.report.gather import gather
from search.report.selection import even_sample, select, view_sample

N_TRIALS = 300
CAP = 20
BASELINES = {0: "first model", 1: "judged clearly better"}
START = 2  # the trial started from the trainer's defaults
DIST = {"lcls": FloatDistribution(0.01, 2.0, log=True)}


def _point(step: int, value: float) -> dict[str, Any]:
    """One evaluation's curve point, as `Evaluation.to_point()` stores it (one training line)."""
    it = step * 10
    train = {"epoch": step - 1, "iter": it - 5, "lr": 1e-3, "loss": 1.0, "lbox": 0.3}
    train |= {"lobj": 0.4, "lcls": 0.3, "latency": 0.03}
    evaluation = {"epoch": step, "iter": it, "mAP50": 1.5 * value, "mAP50_95": value}
    return {"train": [train], "eval": evaluation | {"val_lbox": 0.3, "val_lcls": 0.2}}


def _trial(number: int) -> FrozenTrial:
    """Trial `number`: every third complete (value rising with the number, so the last complete
    one is the best), the others pruned after one or two evaluations."""
    complete = number % 3 == 0
    value = number / 1000
    steps = 3 if complete else 1 + number % 2
    user: dict[str, Any] = {trial_record.CONFIG: {"lcls": 0.1, "epochs": 3}}
    user.update(trial_record.curve_attrs([_point(s, value * s / 3) for s in range(1, steps + 1)]))
    user[trial_record.PLACEMENT] = {"host": "h", "device": "cpu", "worker": "h:1"}
    if number in BASELINES:
        user |= trial_record.baseline_attrs(BASELINES[number])
    if number == START:
        user |= trial_record.start_attrs()
    return optuna.trial.create_trial(
        state=TrialState.COMPLETE if complete else TrialState.PRUNED,
        value=value if complete else None,
        params={"lcls": 0.01 + number / N_TRIALS},
        distributions=DIST,
        intermediate_values={s: value * s / 3 for s in range(1, steps + 1)},
        user_attrs=user,
    )


def _study(storage: str | None = None, n: int = N_TRIALS) -> optuna.Study:
    study = optuna.create_study(study_name="big", storage=storage, direction="maximize")
    study.add_trials([_trial(i) for i in range(n)])
    return study


def test_a_big_study_draws_the_capped_set_and_counts_the_rest() -> None:
    trials = _study().get_trials(deepcopy=False)
    data = gather("big", trials, StudyDirection.MAXIMIZE, top_k=3, max_drawn=CAP)
    drawn = {r.number for r in data.rows}
    assert len(drawn) == CAP and data.left_out == N_TRIALS - CAP
    assert sum(data.counts.values()) == N_TRIALS  # every trial counted, drawn or not
    assert data.counts == {"COMPLETE": 100, "PRUNED": 200}
    for panel in data.panels:  # no panel draws a trial outside the set
        assert {line.trial for line in panel.lines} <= drawn
    assert {line.trial for line in data.panels[0].lines} == drawn  # all were evaluated
    # always drawn: the best (#297) and the next top, the baselines, the start trial
    assert {297, 294, 291} | set(BASELINES) | {START} <= drawn
    shown = {line.trial for line in data.panels[0].lines if line.shown}
    assert shown == {297, 294, 291} | set(BASELINES)
    # then the next best complete trials, up to half the room left (14 // 2)
    assert {288 - 3 * i for i in range(7)} <= drawn
    # then an even sample of the rest, from the first trial to the last
    assert 3 in drawn and 299 in drawn
    assert data.headline.startswith("Best trial #297 reaches mAP50-95 0.2970")
    # a study within the cap draws every trial and leaves none out
    small = gather("big", trials, StudyDirection.MAXIMIZE, top_k=3, max_drawn=N_TRIALS)
    assert len(small.rows) == N_TRIALS and small.left_out == 0


def test_the_page_says_how_many_trials_it_left_out_and_why(tmp_path: Path) -> None:
    page = write_report(_study(), tmp_path / "r.html", top_k=3, max_drawn=CAP).read_text()
    assert f"{CAP} of the {N_TRIALS} trials are drawn and listed" in page
    assert f"The other {N_TRIALS - CAP} are not" in page and "tune dashboard" in page
    table = page[page.index("<table class='sortable' id='trials'>") :]
    assert table[: table.index("</table>")].count("<tr class=") == CAP
    assert f"{N_TRIALS} trials: 100 complete, 200 pruned" in page
    assert "view-sample" not in page  # Optuna's views got every trial: a few hundred


def test_the_trials_a_reader_compares_are_drawn_beyond_the_cap() -> None:
    trials = _study().get_trials(deepcopy=False)
    chosen = select(trials, StudyDirection.MAXIMIZE, top_k=5, confirmed={4, 5}, max_drawn=3)
    # best five, two baselines, the start trial, two confirmed: ten over a cap of three
    assert chosen.drawn == {297, 294, 291, 288, 285, 0, 1, START, 4, 5}
    assert chosen.left_out == N_TRIALS - 10
    with pytest.raises(ValueError, match="max_drawn=-1"):
        select(trials, StudyDirection.MAXIMIZE, 5, max_drawn=-1)


def test_even_sample_and_the_views_sample() -> None:
    assert even_sample(list(range(10)), 4) == [0, 3, 6, 9]
    assert even_sample([5, 6], 5) == [5, 6] and even_sample([5, 6], 0) == []
    trials = _study().get_trials(deepcopy=False)
    sample = view_sample(trials, {297, 1}, max_trials=12)
    numbers = [t.number for t in sample]
    assert len(numbers) == 12 and {297, 1, 0, 299} <= set(numbers)
    assert numbers == sorted(numbers)
    assert view_sample(trials, {1}, max_trials=N_TRIALS) == trials


def test_a_report_reads_whole_only_the_trials_it_draws(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'big.db'}"
    study = _study(url, n=3 * CAP)  # SQLite commits each added trial: fewer here
    lean = trial_record.read_lean_trials(study)
    assert [t.number for t in lean] == list(range(3 * CAP))
    assert all(trial_record.read_curve(t) == [] for t in lean)  # curves and configs stay behind
    assert all(trial_record.read_config(t) is None for t in lean)
    assert trial_record.read_baseline(lean[0]) == "first model"  # the small attrs come along
    assert trial_record.read_placement(lean[5])["host"] == "h"
    outline = trial_record.read_lean_trials(study, params=False, steps=False, details=False)
    assert outline[0].params == {} and outline[0].intermediate_values == {}
    assert trial_record.read_placement(outline[5])["host"] is None  # details stay behind too
    assert trial_record.read_baseline(outline[0]) == "first model"
    full = study.get_trials(deepcopy=False)
    whole = trial_record.reread(study, [outline[7], lean[0]], bulky=True)
    assert whole == [full[0], full[7]]  # by number, every field as Optuna loads them
    assert trial_record.reread(study, [outline[7]]) == [lean[7]]
    assert trial_record.read_curve(lean[0]) == []  # the lean trials are left as they were
    # the report from the storage matches the report from the trials as Optuna loads them
    read = gather_study(study, top_k=3, max_drawn=CAP)
    loaded = gather("big", full, StudyDirection.MAXIMIZE, top_k=3, max_drawn=CAP)
    assert read.left_out == 2 * CAP and len(read.rows) == CAP
    assert read.rows == loaded.rows and read.panels == loaded.panels
