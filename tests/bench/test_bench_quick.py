"""Smoke tests of the benchmarks: each one's smallest setting, end to end, so the scripts can't rot.

They check what each benchmark measured, not its speed: the control-plane bench timed asks,
reports and tells of real trials on a real PostgreSQL database and dropped it afterwards; the
throughput bench ran real trials through the worker loop; the search-efficiency bench ran the
hand-tuned settings and a search and accounted for the iterations they spent.
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path

import pytest
import sqlalchemy as sa

from bench import percentile, table
from bench.search_efficiency import TrialRow, best_at, budget_to_reach


def _postgres_or_skip(admin_url: str) -> None:
    engine = sa.create_engine(admin_url)
    try:
        with engine.connect():
            pass
    except sa.exc.OperationalError as exc:
        if os.environ.get("TUNE_REQUIRE_POSTGRES") == "1":
            pytest.fail(f"PostgreSQL is not reachable at {admin_url}: {exc.orig}")
        pytest.skip(f"PostgreSQL is not reachable at {admin_url}: {exc.orig}")
    finally:
        engine.dispose()


def _tiny_shapes() -> Path:
    from trainer.shapes import shapes_yaml

    return shapes_yaml(n_train=32, n_val=16)


def test_percentile_and_table() -> None:
    assert percentile([1.0, 2.0, 3.0, 4.0, 5.0], 50) == 3.0
    assert percentile([0.0, 10.0], 95) == pytest.approx(9.5)
    assert math.isnan(percentile([], 50))
    text = table(["a", "b"], [[1, 0.123456], [2, math.nan]])
    assert text.splitlines()[2] == "| 1 | 0.1235 |" and text.splitlines()[3] == "| 2 | - |"


def test_budget_accounting() -> None:
    rows = [
        TrialRow(0, "COMPLETE", 0.10, 100, 100, 1.0),
        TrialRow(1, "PRUNED", None, 20, 120, 0.2),
        TrialRow(2, "COMPLETE", 0.30, 100, 220, 1.0),
    ]
    assert budget_to_reach(rows, 0.2) == 220
    assert budget_to_reach(rows, 0.05) == 100
    assert budget_to_reach(rows, 0.5) is None
    assert best_at(rows, 219) == 0.10  # trial 2 ended beyond this budget
    assert best_at(rows, 220) == 0.30
    assert math.isnan(best_at(rows, 50))


def test_search_efficiency_summary_targets_random_search_and_tests_the_methods() -> None:
    from bench.search_efficiency import summarise

    def study(*values: float | None) -> list[TrialRow]:
        """Trials of 100 iterations; None: a pruned trial of 30."""
        rows, spent = [], 0
        for i, v in enumerate(values):
            spent += 100 if v is not None else 30
            rows.append(TrialRow(i, "COMPLETE" if v is not None else "PRUNED", v, 100, spent, 1.0))
        return rows

    runs = {
        "random": [study(0.1, 0.3, 0.2), study(0.4, 0.1, 0.1), study(0.2, 0.1, 0.1)],
        # two of its studies were cut short (a time limit) at 130 iterations
        "tpe+pruner": [study(0.5, None), study(None, 0.35), study(0.25, 0.2, 0.1)],
    }
    summary = summarise(runs, 300)
    assert summary["compared_at"] == 130  # where all studies got
    by = {m["method"]: m for m in summary["methods"]}
    # at 130 iterations random's seeds have only their first trial: median best 0.2, the target
    assert by["random"]["best_at_budget"] == [0.1, 0.4, 0.2] and summary["target"] == 0.2
    assert by["tpe+pruner"]["best_at_budget"] == [0.5, 0.35, 0.25]
    assert by["random"]["budget_to_target"] == [200, 100, 100]
    assert by["tpe+pruner"]["budget_to_target"] == [100, 130, 100]
    assert by["tpe+pruner"]["budget_to_target_median"] == 100
    assert by["tpe+pruner"]["pruned_median"] == 1 and by["random"]["reached_target"] == "3/3"
    [test] = summary["tests"]
    assert (test["first"], test["second"], test["method"]) == ("random", "tpe+pruner", "exact")
    assert test["u"] == 2.0  # 0.4 beats 0.35 and 0.25
    goal = summary["goal"]
    assert goal["budget_fraction"] == pytest.approx(100 / 130) and goal["budget_met"] is False
    assert goal["u"] == 7.0 and goal["p_higher"] == pytest.approx(0.2)  # 4 of the 20 splits
    assert goal["higher_met"] is False

    # a seed whose study of one method never started before the time limit is left out, not
    # compared at 0 iterations
    runs["random"].append([])
    runs["tpe+pruner"].append(study(0.9))
    late = summarise(runs, 300)
    assert late["seeds_left_out"] == 1 and late["compared_at"] == 130
    assert late["methods"] == summary["methods"]
    with pytest.raises(SystemExit, match="no seed has a trial of every method"):
        summarise({"random": [[]], "tpe+pruner": [study(0.5)]}, 300)


@pytest.mark.postgres
def test_study_load_and_trial_starts_smallest(tmp_path: Path) -> None:
    """The two benchmarks built on the control plane's pieces run end to end at their smallest."""
    from bench import control_plane, study_load, trial_starts

    _postgres_or_skip(control_plane.ADMIN_URL)
    out = ["--out", str(tmp_path)]
    study_load.main(
        ["--existing", "12", "--records", "compact", "--repeats", "1", "--skip-report", *out]
    )
    [load] = json.loads((tmp_path / "control_plane-load.json").read_text())["cells"]
    assert load["existing_trials"] == 12 and load["tune_load_min_s"] > 0
    assert load["status_median_s"] > 0  # the real `tune status` on the filled study
    trial_starts.main(["--workers", "1", "--existing", "5", "--samples", "3", "--hold", "0", *out])
    cells = json.loads((tmp_path / "control_plane-starts.json").read_text())["cells"]
    assert sorted(c["fast_starts"] for c in cells) == [False, True]  # side by side
    assert all(c["trials_created"] >= 3 and c["exit_codes"] == [0] for c in cells)


@pytest.mark.postgres
def test_control_plane_smallest(tmp_path: Path) -> None:
    from bench import control_plane

    _postgres_or_skip(control_plane.ADMIN_URL)
    control_plane.main(
        [
            "--workers",
            "1",
            "--existing",
            "5",
            "--samples",
            "2",
            "--epochs",
            "2",
            "--out",
            str(tmp_path),
        ]
    )
    result = json.loads((tmp_path / "control_plane.json").read_text())
    [cell] = result["cells"]
    assert cell["trials_measured"] == 2 and cell["trials_failed"] == 0
    assert cell["exit_codes"] == [0]
    assert cell["ask_n"] == 1 and cell["ask_first_median_ms"] > 0  # first ask shown apart
    assert cell["tell_n"] == 2
    assert 2 <= cell["report_n"] <= 4  # one per epoch, fewer when Hyperband prunes
    assert cell["numbering_n"] >= 2 and cell["ask_median_ms"] > 0
    assert cell["connections_max"] >= 1
    admin = sa.create_engine(control_plane.ADMIN_URL)
    try:
        with admin.connect() as conn:
            left = conn.execute(
                sa.text("SELECT count(*) FROM pg_database WHERE datname = :n"),
                {"n": cell["database"]},
            ).scalar_one()
    finally:
        admin.dispose()
    assert left == 0, "the throw-away database is dropped"


@pytest.mark.slow
def test_throughput_smallest(tmp_path: Path) -> None:
    from bench import throughput

    data = str(_tiny_shapes())
    throughput.main(
        [
            *("--trials", "1", "--epochs", "1", "--imgsz", "64", "--threads", "1"),
            *("--data", data, "--skip-gpu", "--out", str(tmp_path)),
        ]
    )
    result = json.loads((tmp_path / "throughput.json").read_text())
    [cpu] = result["cpu"]
    assert cpu["trials_complete"] == 1 and cpu["trials_failed"] == 0
    assert cpu["images_per_second_median"] > 0
    assert 0 < cpu["duty_cycle"] < cpu["duty_cycle_after_loading"] <= 1
    assert result["gpu"]["run"] is False


@pytest.mark.slow
def test_search_efficiency_smallest(tmp_path: Path) -> None:
    from bench import search_efficiency

    _tiny_shapes()
    search_efficiency.main(
        [
            *("--imgsz", "64", "--batch", "16", "--train-images", "32", "--val-images", "16"),
            *("--epochs", "1", "--budget-trials", "1", "--seeds", "1"),
            *("--datasets", "shapes,shapes-large", "--methods", "random,tpe+pruner"),
            *("--out", str(tmp_path)),
        ]
    )
    result = json.loads((tmp_path / "search_efficiency.json").read_text())
    # 32 images / batch 16, one epoch, one trial
    assert result["budget_iterations"] == {"shapes": 2, "shapes-large": 2}
    for dataset in ("shapes", "shapes-large"):
        [random_rows] = result["runs"][dataset]["random"]
        assert random_rows[-1]["spent"] >= 2 and random_rows[0]["state"] == "COMPLETE"
        methods = [m["method"] for m in result["summary"][dataset]["methods"]]
        assert methods == ["random", "tpe+pruner"]
    assert "shapes-large" in result["data"]["shapes-large"]["path"]
    assert (tmp_path / "search_efficiency.html").read_text().count("plotly") > 0


@pytest.mark.slow
def test_search_efficiency_runs_studies_in_parallel_and_stops_at_its_time_limit(
    tmp_path: Path,
) -> None:
    """`--jobs 2`: every study in its own process; past `--time-limit` no trial starts but each
    study's first (on a loaded machine the processes may start after it)."""
    from bench import search_efficiency

    _tiny_shapes()
    search_efficiency.main(
        [
            *("--imgsz", "64", "--batch", "16", "--train-images", "32", "--val-images", "16"),
            *("--epochs", "1", "--budget-trials", "100000", "--seeds", "2"),
            *("--datasets", "shapes", "--methods", "random", "--jobs", "2", "--time-limit", "25"),
            *("--out", str(tmp_path)),
        ]
    )
    result = json.loads((tmp_path / "search_efficiency.json").read_text())
    seeds = result["runs"]["shapes"]["random"]
    assert len(seeds) == 2  # both seeds, each its own study
    spent = [rows[-1]["spent"] for rows in seeds]
    assert all(0 < s < result["budget_iterations"]["shapes"] for s in spent)  # cut short
    assert result["summary"]["shapes"]["compared_at"] == min(spent)


def test_search_vs_defaults_pairs_each_incumbent_with_the_defaults_on_the_same_seeds() -> None:
    """The summary of `bench/search_vs_defaults.py` from raw results: an incumbent that is the
    defaults gains 0, a win counts only on the fresh seeds, the budget compares with random's."""
    from bench.search_vs_defaults import summarise

    def rows(*values: float | None, spent: int = 10) -> list[dict[str, object]]:
        return [
            {
                "number": i,
                "state": "COMPLETE" if v is not None else "PRUNED",
                "value": v,
                "iterations": spent,
                "spent": spent * (i + 1),
                "seconds": 1.0,
                "params": {"x": i},
            }
            for i, v in enumerate(values)
        ]

    raw = {
        "settings": {"methods": ["Evolution", "Random"], "studies": 2},
        "data": {
            "shapes": {
                "budget": 40,
                "defaults": {"x": 0},  # every study's trial 0, its start trial
                "studies": {
                    # study 0: a draw beat the defaults in its run and on the fresh seeds
                    "Evolution 0": rows(0.10, 0.12, None),
                    # study 1: a lucky draw, worse than the defaults on the fresh seeds
                    "Evolution 1": rows(0.10, 0.11),
                    "Random 0": rows(0.10, 0.05, 0.08, 0.12),
                    "Random 1": rows(0.10, 0.09),  # the defaults stay its incumbent
                },
                "fresh": {
                    "defaults": {"1": 0.10, "2": 0.11},
                    "Evolution 0": {"1": 0.12, "2": 0.13},
                    "Evolution 1": {"1": 0.09, "2": 0.10},
                    "Random 0": {"1": 0.11, "2": 0.11},
                },
            }
        },
    }
    summary = summarise(raw)["shapes"]
    evolution, random = summary["methods"]["Evolution"], summary["methods"]["Random"]
    assert [s["gain_mean"] for s in evolution["studies"]] == pytest.approx([0.02, -0.01])
    assert evolution["wins"] == 1 and random["wins"] == 1
    assert random["studies"][1]["incumbent_is_defaults"] and random["studies"][1]["gain_mean"] == 0
    assert evolution["gain_share"] == pytest.approx(0.005 / 0.105)
    # target: Evolution's median single-run best, 0.115; Evolution reaches it at 20 iterations
    # in study 0 and never in study 1; random at 40 in study 0, never in study 1
    assert summary["target"] == pytest.approx(0.115)
    assert evolution["budget_to_target"] == [20, None]
    assert random["budget_to_target"] == [40, None]
    assert math.isnan(summary["budget_ratio"])  # neither median reaches it: no ratio


def test_search_vs_defaults_retrains_the_incumbent_the_study_names_not_its_best_run() -> None:
    """With races, a study's incumbent is the trial it stands behind (`study_best`): a draw that
    won one run and lost its race is not retrained, and a race run's seed does not count as the
    search reaching a level."""
    from bench.search_vs_defaults import summarise

    def row(number: int, value: float, *, race: bool = False, incumbent: bool = False) -> dict:
        return {
            "number": number,
            "state": "COMPLETE",
            "value": value,
            "iterations": 10,
            "spent": 10 * (number + 1),
            "seconds": 1.0,
            "params": {"x": 1 if number in (1, 3, 4) else 0},  # trials 3, 4 race trial 1
            "race": race,
            "incumbent": incumbent,
        }

    studies = [
        row(0, 0.10, incumbent=True),  # the defaults
        row(1, 0.14),  # one lucky run
        row(2, 0.09, race=True),  # the defaults on the race seeds ...
        row(3, 0.16, race=True),  # ... and the challenger: it won one seed of two ...
        row(4, 0.05, race=True),  # ... and lost the other by more: the defaults stay
    ]
    raw = {
        "settings": {"methods": ["Evolution"], "studies": 1},
        "data": {
            "shapes": {
                "budget": 50,
                "defaults": {"x": 0},
                "studies": {"Evolution 0": studies},
                "fresh": {"defaults": {"1": 0.10, "2": 0.11}},
            }
        },
    }
    evolution = summarise(raw)["shapes"]["methods"]["Evolution"]
    assert evolution["studies"][0]["incumbent_is_defaults"]
    assert evolution["studies"][0]["race_runs"] == 3 and evolution["wins"] == 0
    # target 0.10 (the incumbent's run): reached by the start trial, not by a race run
    assert evolution["budget_to_target"] == [10]


def test_search_vs_defaults_keeps_the_first_rungs_share_of_a_longer_trial() -> None:
    """`--epochs 30` on the cpu preset (12-epoch trials, a rung at 4) puts the rung at 10, not 4
    of 30, where the pruner would rank settings before they learn."""
    from bench.search_vs_defaults import PRESETS, scaled_rung

    cpu = PRESETS["cpu"]
    assert (cpu.epochs, cpu.min_resource) == (12, 4)
    assert scaled_rung(cpu, 30) == 10 and scaled_rung(cpu, 12) == 4
    assert scaled_rung(cpu, 3) == cpu.eval_interval  # never before the first evaluation
    assert scaled_rung(PRESETS["study"], 66) % PRESETS["study"].eval_interval == 0


@pytest.mark.slow
def test_a_benchmark_study_never_trains_past_its_epoch_budget(tmp_path: Path) -> None:
    """A study of 2-epoch trials with 5 epochs of budget: its third trial stops at its first
    evaluation ("stopped: budget spent"), as a worker's would, instead of training on to 6."""
    from bench.search_efficiency import _run_in_process
    from bench.search_vs_defaults import PRESETS, _study_settings, data_path, study_table

    settings = PRESETS["quick"]
    path = data_path("shapes", settings)
    raw = study_table(settings, path, "Random", 0)
    raw["budget"] = {"epochs": 5}
    per_epoch = settings.train_images // settings.batch
    rows = _run_in_process(
        _study_settings(settings), path, "Random", 0, 6 * per_epoch, tmp_path, None, raw, True
    )
    assert [r.iterations for r in rows] == [2 * per_epoch, 2 * per_epoch, per_epoch]
    assert rows[-1].spent == 5 * per_epoch and rows[-1].state == "PRUNED"
