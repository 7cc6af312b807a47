"""`tune confirm` in-process (SQLite, the fast fake trainer): the confirm study's runs, their seeds
and length, resuming without duplicates, failed runs enqueued again, the result read from the
storage alone (status, report), and the CLI's clear errors."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import optuna
import pytest
from optuna.trial import TrialState
from typer.testing import CliRunner

from search.bookkeeping import trial_record
from search.bookkeeping.storage import load_study, open_storage
from search.cli import app
from search.commands.status import format_status, study_status
from search.confirm.plan import FIRST_SEED, ConfirmError, confirm_name
from search.confirm.results import format_confirmation, read_confirmation
from search.confirm.stats import gain
from search.control.study_setup import prepare_study
from search.report import write_report
from search.running.launch import confirm
from search.running.local_workers import progress_line
from search.running.worker import WorkerOptions, run_worker
from search.study.study_file import Overrides, load_study_file, parse_study
from search.trainers.builtin import TuneTrainer
from tests.search import fake_trainer

EPOCHS = 3


def _study(tmp_path: Path, n_trials: int = 4) -> str:
    """The smoke study, its baselines stopping at 1 epoch of 3, run to its budget."""
    url = f"sqlite:///{tmp_path / 'tune.db'}"
    spec = load_study_file("smoke", Overrides(n_trials=n_trials, epochs=EPOCHS))
    raw = dict(spec.raw)
    raw["budget"] = {**raw["budget"], "baseline_epochs": 1}
    prepare_study(parse_study(raw), open_storage(url, create_schema=True))
    _work(url, tmp_path, "smoke")
    return url


def _work(url: str, tmp_path: Path, study: str) -> Any:
    options = WorkerOptions(
        runs_dir=tmp_path / "runs",
        threads=1,
        # a fixed index: the sampler's seed is offset by it (by the pid when unset), so the
        # study's sampled trials, and the sign of their confirmed gain, are the same every run
        worker_index=0,
        poll_interval=0.05,
        handle_signals=False,
        log=lambda _: None,
    )
    return run_worker(study, url, options, trainer=TuneTrainer(fake_trainer.fit))


def _runs(url: str) -> list[optuna.trial.FrozenTrial]:
    return optuna.load_study(study_name=confirm_name("smoke"), storage=url).get_trials()


def _quiet(_: str) -> None:
    pass


def test_confirm_runs_fresh_seeds_at_full_length_and_resumes_without_duplicates(
    tmp_path: Path,
) -> None:
    url = _study(tmp_path)
    first = confirm("smoke", url, top=2, seeds=3, workers=0, out=_quiet)
    assert first.enqueued == 9  # (2 trials + the baseline) x 3 seeds
    stats = _work(url, tmp_path, confirm_name("smoke"))
    assert stats.stopped_because == "budget" and stats.trials.complete == 9
    # the progress line a confirm with local workers prints names retrains, not finds
    confirm_study = optuna.load_study(study_name=confirm_name("smoke"), storage=url)
    line = progress_line(confirm_study, load_study_file("smoke", Overrides(epochs=EPOCHS)))
    assert "9 complete" in line and "best confirm run mAP50-95 " in line, line
    assert "retrained on seed" in line and "found by the search" not in line, line
    runs = _runs(url)
    assert len(runs) == 9 and {t.state for t in runs} == {TrialState.COMPLETE}
    parent = {t.number: t for t in optuna.load_study(study_name="smoke", storage=url).get_trials()}
    marks = set()
    for run in runs:
        mark = trial_record.read_confirm(run)
        assert mark is not None
        marks.add(mark)
        config = trial_record.read_config(run)
        assert config is not None
        assert config["seed"] == mark[1] and config["epochs"] == EPOCHS  # the baseline too
        assert run.params == parent[mark[0]].params
        assert f"smoke:confirm/trial-{run.number:04d}" in config["out"]  # not the parent's folders
    assert {seed for _, seed in marks} == {FIRST_SEED, FIRST_SEED + 1, FIRST_SEED + 2}
    baseline = next(n for n, t in parent.items() if trial_record.read_baseline(t))
    assert parent[baseline].last_step == 1  # it stopped at baseline_epochs in the study itself

    # the same command again: nothing to do, nothing enqueued twice
    again = confirm("smoke", url, top=2, seeds=3, workers=0, out=_quiet)
    assert again.enqueued == 0 and len(_runs(url)) == 9
    # more seeds add runs; another length is refused
    more = confirm("smoke", url, top=2, seeds=4, workers=0, out=_quiet)
    assert more.enqueued == 3
    with pytest.raises(ConfirmError, match="--epochs 3"):
        confirm("smoke", url, top=2, seeds=3, epochs=2, workers=0, out=_quiet)
    _work(url, tmp_path, confirm_name("smoke"))

    # another machine: a fresh storage object on the same database, no run folders at all
    other = open_storage(url)
    c = read_confirmation(other, "smoke")
    assert c is not None and c.done == c.planned == 12 and c.failed == 0
    assert c.baseline is not None and c.baseline.number == baseline
    best = c.rows[0]
    assert best.gain is not None and best.gain.method == "paired t" and best.gain.n == 4
    values = {seed: v["mAP50_95"] for seed, v in best.runs.items()}
    base = {seed: v["mAP50_95"] for seed, v in c.baseline.runs.items()}
    assert best.gain == gain(values, base)  # the statistics of exactly the stored runs
    assert best.spreads["mAP50"].n == 4 and best.spreads["mAP50_95"].std > 0
    status = format_status(study_status(load_study(other, "smoke")))
    assert "confirmation of smoke: 4 seeds" in status and "gain +" in status
    page = write_report(load_study(other, "smoke"), tmp_path / "elsewhere" / "report.html")
    html = page.read_text()
    assert "id='confirmed-table'" in html and "Single runs:" in html
    assert ("Confirmed over 4 paired seeds" in html) or ("did not hold up" in html)


def test_a_failed_run_is_not_replaced_by_a_sampled_one_and_is_enqueued_again(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    url = _study(tmp_path, n_trials=2)
    confirm("smoke", url, top=1, seeds=2, workers=0, out=_quiet)  # 4 runs
    monkeypatch.setenv("FAKE_FAIL_TRIALS", "1")  # the confirm study's trial 1
    stats = _work(url, tmp_path, confirm_name("smoke"))
    assert stats.stopped_because == "budget" and stats.trials.failed == 1
    runs = _runs(url)
    assert len(runs) == 4  # the free budget slot was not filled with a sampled trial
    assert all(trial_record.read_confirm(t) is not None for t in runs)
    c = read_confirmation(open_storage(url), "smoke")
    assert c is not None and c.done == 3 and c.failed == 1
    assert "1 failed (run `tune confirm` again to retry them)" in format_confirmation(c)

    monkeypatch.delenv("FAKE_FAIL_TRIALS")
    assert confirm("smoke", url, top=1, seeds=2, workers=0, out=_quiet).enqueued == 1
    _work(url, tmp_path, confirm_name("smoke"))
    c = read_confirmation(open_storage(url), "smoke")
    assert c is not None and c.done == c.planned == 4 and c.failed == 0


def _one_error_line(stderr: str) -> str:
    lines = [line for line in stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), stderr
    return lines[0]


def test_bad_arguments_are_one_clear_error_line(tmp_path: Path) -> None:
    url = _study(tmp_path, n_trials=2)
    empty = f"sqlite:///{tmp_path / 'empty.db'}"
    prepare_study(load_study_file("smoke"), open_storage(empty, create_schema=True))
    for args, storage, message in (
        (["--top", "0"], url, "--top must be >= 1"),
        (["--seeds", "1"], url, "--seeds must be >= 2: one run per setting has no spread"),
        (["--trial", "999"], url, "has no trial 999 (trials 0..1)"),
        (["--epochs", "0"], url, "--epochs must be >= 1"),
        ([], empty, "has no complete sampled trial to confirm"),
    ):
        result = CliRunner().invoke(
            app, ["confirm", "--study", "smoke", "--storage", storage, "--workers", "0", *args]
        )
        assert result.exit_code == 2, result.output
        assert message in _one_error_line(result.stderr)
    missing = CliRunner().invoke(app, ["confirm", "--study", "nope", "--storage", url])
    assert missing.exit_code == 2 and "no study named 'nope'" in _one_error_line(missing.stderr)
    assert confirm_name("smoke") not in optuna.get_all_study_names(url)  # nothing was created
