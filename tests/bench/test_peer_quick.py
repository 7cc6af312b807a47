"""The side-by-side bench in its quick mode: tune's half always runs; the Ultralytics half only
where ultralytics is importable (it never is a dependency of tune)."""

from __future__ import annotations

import json
from pathlib import Path

from bench.peer import figure_data, main, summarise, value_at


def test_value_at_reads_the_curve_by_wall_time() -> None:
    curve = [
        {"epoch": 1, "seconds": 10.0, "mAP50_95": 0.1, "mAP50": 0.2},
        {"epoch": 2, "seconds": 20.0, "mAP50_95": 0.3, "mAP50": 0.5},
        {"epoch": 3, "seconds": 25.0, "mAP50_95": 0.2, "mAP50": 0.4},  # a re-validation after
    ]
    assert value_at(curve, 5) == 0.0
    assert value_at(curve, 10) == 0.1 and value_at(curve, 19.9) == 0.1
    assert value_at(curve[:2], 600) == 0.3 and value_at(curve, 600) == 0.2
    rows = summarise({"tune": {"curve": curve, "train_images_per_s": 100.0}}, epochs=2)
    assert rows[0][0] == "tune" and rows[0][1:4] == [0.3, 0.3, 0.3]  # the run's epochs only
    assert rows[0][4:7] == [0.3, 0.5, 20.0]


def test_quick_run_writes_both_curves_and_the_figure(tmp_path: Path) -> None:
    main(["--quick", "--threads", "1", "--sets", "shapes,small", "--results", str(tmp_path),
          "--work", str(tmp_path / "work")])  # fmt: skip
    results = json.loads((tmp_path / "peer-cpu.json").read_text())
    assert set(results["sets"]) == {"shapes", "small"}
    for entry in results["sets"].values():
        tune = entry["runs"]["tune"]
        assert tune["returncode"] == 0, tune["stderr_tail"]
        assert [p["epoch"] for p in tune["curve"]] == [1, 2]
        assert all(p["seconds"] > 0 and 0 <= p["mAP50_95"] <= 1 for p in tune["curve"])
        assert tune["train_images_per_s"] > 0 and tune["config"]["epochs"] == 2
        assert len(tune["load_before"]) == 3
    traces = figure_data(results)
    assert {(t["set"], t["axis"]) for t in traces} >= {("shapes", "seconds"), ("small", "epoch")}
    assert "plotly" in (tmp_path / "peer-cpu.html").read_text()
    (tmp_path / "peer-cpu.html").unlink()
    main(["--report", str(tmp_path / "peer-cpu.json")])  # tables again, the figure redrawn
    assert (tmp_path / "peer-cpu.html").is_file()
