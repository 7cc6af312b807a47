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
from dataclasses import asdict
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


def _results(path: Path, hand_tuned: float, **runs: list[list[TrialRow]]) -> Path:
    """A results JSON as `bench.search_efficiency` writes it (settings abridged)."""
    rows = {"hand-tuned": [[TrialRow(0, "COMPLETE", hand_tuned, 100, 100, 1.0, "first model")]]}
    payload = {
        "settings": {"epochs": 1},
        "data": {"path": "shapes"},
        "budget_iterations": 300,
        "machine": {"host": path.stem},
        "wall_seconds": 10.0,
        "load_average_samples": [1.0],
        "runs": {
            method: [[asdict(r) for r in seed] for seed in seeds]
            for method, seeds in {**rows, **runs}.items()
        },
    }
    path.write_text(json.dumps(payload))
    return path


def test_search_efficiency_merges_runs_made_apart_only_when_they_compare(tmp_path: Path) -> None:
    from bench.search_efficiency import merge_results

    def study(*values: float) -> list[TrialRow]:
        return [TrialRow(i, "COMPLETE", v, 100, 100 * (i + 1), 1.0) for i, v in enumerate(values)]

    a = _results(tmp_path / "a.json", 0.2, random=[study(0.1, 0.3, 0.4)])
    b = _results(tmp_path / "b.json", 0.2, **{"tpe+hyperband": [study(0.25, 0.1, 0.1)]})
    merged = merge_results([a, b], tmp_path / "out")
    assert list(merged["runs"]) == ["hand-tuned", "random", "tpe+hyperband"]
    # random needs 200 iterations to pass the hand-tuned 0.2, TPE with Hyperband 100
    assert (merged["goal"]["tpe_hyperband_budget"], merged["goal"]["random_budget"]) == (100, 200)
    assert merged["goal"]["ratio"] == 0.5 and merged["machine"] == [{"host": "a"}, {"host": "b"}]
    on_disk = json.loads((tmp_path / "out" / "search_efficiency.json").read_text())
    assert on_disk["goal"]["ratio"] == 0.5
    assert (tmp_path / "out" / "search_efficiency.html").exists()

    # hand-tuned runs that differ come from another machine (or code): no comparison
    other = _results(tmp_path / "c.json", 0.19, tpe=[study(0.3)])
    with pytest.raises(SystemExit, match=r"c\.json: its hand-tuned runs \(0\.19\) differ"):
        merge_results([a, other], tmp_path / "out")
    with pytest.raises(SystemExit, match=r"method 'random' is in two of the parts"):
        merge_results([a, a], tmp_path / "out")


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
            *("--epochs", "1", "--budget-trials", "1", "--seeds", "1", "--baselines", "1"),
            *("--methods", "random", "--out", str(tmp_path)),
        ]
    )
    result = json.loads((tmp_path / "search_efficiency.json").read_text())
    assert result["budget_iterations"] == 2  # 32 images / batch 16, one epoch, one trial
    [hand] = result["runs"]["hand-tuned"]
    assert [r["label"] for r in hand] == ["first model"] and hand[0]["iterations"] == 2
    [random_rows] = result["runs"]["random"]
    assert random_rows[-1]["spent"] >= 2 and random_rows[0]["label"] is None
    assert {s["method"] for s in result["summary"]} == {"hand-tuned", "random"}
    assert (tmp_path / "search_efficiency.html").read_text().count("plotly") > 0


@pytest.mark.slow
def test_search_efficiency_runs_studies_in_parallel_and_stops_at_its_time_limit(
    tmp_path: Path,
) -> None:
    """`--jobs 2`: every study in its own process; past `--time-limit` no trial starts."""
    from bench import search_efficiency

    _tiny_shapes()
    search_efficiency.main(
        [
            *("--imgsz", "64", "--batch", "16", "--train-images", "32", "--val-images", "16"),
            *("--epochs", "1", "--budget-trials", "100000", "--seeds", "2", "--baselines", "1"),
            *("--methods", "random", "--jobs", "2", "--time-limit", "25", "--out", str(tmp_path)),
        ]
    )
    result = json.loads((tmp_path / "search_efficiency.json").read_text())
    assert len(result["runs"]["random"]) == 2  # both seeds, each its own study
    spent = [rows[-1]["spent"] for rows in result["runs"]["random"]]
    assert all(0 < s < result["budget_iterations"] for s in spent)  # cut short, not finished
    [summary] = [s for s in result["summary"] if s["method"] == "random"]
    assert summary["spent_min"] == min(spent) and summary["compared_at"] == min(spent)
