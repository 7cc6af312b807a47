"""The command line's own behaviour: parser mistakes as one `error:` line, the dashboard's
artifact folder, the objective's name on a launched study. In-process (Typer's CliRunner) but
for one real subprocess; the wrong-input catalogue runs the rest as subprocesses
(`test_bad_input.py`)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import optuna
import pytest
from typer.testing import CliRunner

from search.bookkeeping.storage import open_storage
from search.cli import app
from search.commands.dashboard import artifact_folder
from search.control.study_setup import prepare_study
from search.study.study_file import load_study_file

BIN = Path(sys.executable).parent
TUNE = [str(BIN / "tune")] if (BIN / "tune").exists() else [sys.executable, "-m", "search.cli"]


def _one_error_line(stderr: str) -> str:
    lines = [line for line in stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), stderr
    return lines[0]


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["launch", "--study", "smoke", "--workers", "-1"], "Invalid value for '--workers'"),
        (["launch", "--study", "smoke", "--n-trials", "0"], "Invalid value for '--n-trials'"),
        (["launch", "--workers", "1"], "Missing option '--study'"),
        (["dashboard", "--port", "70000"], "Invalid value for '--port'"),
        (["launch", "--study", "smoke", "--no-such-option"], "No such option: --no-such-option"),
        (["lunch"], "No such command 'lunch'"),
    ],
)
def test_parser_mistakes_are_one_error_line(args: list[str], message: str, tmp_path: Path) -> None:
    result = CliRunner().invoke(app, [*args, "--storage", f"sqlite:///{tmp_path / 'x.db'}"])
    assert result.exit_code == 2, result.output
    line = _one_error_line(result.stderr)
    assert message in line and "--help`)" in line, line
    assert "╭" not in result.output  # no box
    assert not (tmp_path / "x.db").exists()


def test_help_is_still_help() -> None:
    result = CliRunner().invoke(app, ["status", "--help"])
    assert result.exit_code == 0 and "--study" in result.output
    bare = CliRunner().invoke(app, [])
    assert bare.exit_code == 2 and "launch" in bare.output and "error:" not in bare.output


def test_the_installed_command_prints_one_line_for_an_out_of_range_value(tmp_path: Path) -> None:
    done = subprocess.run(
        [*TUNE, "launch", "--study", "smoke", "--workers", "-1"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 2, done.stderr
    assert "Invalid value for '--workers'" in _one_error_line(done.stderr)
    assert list(tmp_path.iterdir()) == []


def test_the_dashboard_serves_the_workers_artifact_folder(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    shared = tmp_path / "shared" / "artifacts"
    # $TUNE_ARTIFACTS, as workers use it; created when the dashboard starts first
    assert artifact_folder(None, {"TUNE_ARTIFACTS": str(shared)}) == shared and shared.is_dir()
    # without it, tune-artifacts/ here when it exists (the workers' default), else none
    assert artifact_folder(None, {}) is None
    (tmp_path / "tune-artifacts").mkdir()
    assert artifact_folder(None, {}) == Path("tune-artifacts")
    # --artifacts wins, and must exist
    assert artifact_folder(shared, {"TUNE_ARTIFACTS": "elsewhere"}) == shared
    with pytest.raises(ValueError, match="artifacts must be an existing folder"):
        artifact_folder(tmp_path / "missing", {})


def test_a_launched_study_names_its_objective(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'tune.db'}"
    spec = load_study_file("smoke")
    storage = open_storage(url, create_schema=True)
    prepare_study(spec, storage)
    prepare_study(spec, storage)  # again: loads the study, the name stays
    study = optuna.load_study(study_name=spec.name, storage=url)
    assert study.metric_names == [spec.objective.metric] == ["mAP50_95"]
