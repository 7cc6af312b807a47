"""Acceptance: the `tune` commands as real subprocesses against a real PostgreSQL database.

Workers train with the fast fake trainer (`--trainer-module tests.search.fake_trainer`, a hidden
option for tests and soak runs). The password in the URL is ignored by the trust-auth test server
but must never be printed.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import optuna
import pytest
from optuna.trial import TrialState

from search.bookkeeping import trial_record
from search.bookkeeping.storage import open_storage
from search.cli import app
from search.confirm.incumbent import study_best
from search.control.study_setup import prepare_study
from search.study.study_file import Overrides, load_study_file
from trainer.config import TrainConfig
from trainer.hyp import read_hyp

pytestmark = [pytest.mark.postgres, pytest.mark.slow]

ROOT = Path(__file__).parents[2]
BIN = Path(sys.executable).parent
TUNE = [str(BIN / "tune")] if (BIN / "tune").exists() else [sys.executable, "-m", "search.cli"]
FAKE = ["--trainer-module", "tests.search.fake_trainer"]
SECRET = "s3cr3t-pw"


def _with_password(pg_url: str) -> str:
    return pg_url.replace("postgres@", f"postgres:{SECRET}@")


def _env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("TUNE_STORAGE", "FAKE_FAIL_TRIALS")}
    return {**env, "FAKE_STEP_SECONDS": "0.05", **extra}


def _start(args: list[str], env: dict[str, str] | None = None) -> subprocess.Popen[str]:
    return subprocess.Popen(
        args,
        cwd=ROOT,
        env=env or _env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def _finish(proc: subprocess.Popen[str], timeout: float = 120) -> tuple[int, str, str]:
    out, err = proc.communicate(timeout=timeout)
    return proc.returncode, out, err


def _trials(url: str, name: str = "smoke") -> list[optuna.trial.FrozenTrial]:
    return optuna.load_study(study_name=name, storage=url).get_trials()


def test_two_workers_share_one_study_and_the_tools_read_it(pg_url: str, tmp_path: Path) -> None:
    url = _with_password(pg_url)
    runs = ["--runs-dir", str(tmp_path / "runs")]
    # what `tune launch --workers 0` does (its subprocess is exercised by the next test)
    prepare_study(
        load_study_file("smoke", Overrides(n_trials=10, epochs=6)),  # rungs 1, 2, 4 < 6
        open_storage(url, create_schema=True),
    )
    env = _env(FAKE_STEP_SECONDS="0.15", FAKE_FAIL_TRIALS="3")
    worker = [*TUNE, "worker", "--study", "smoke", "--storage", url, *FAKE, *runs]
    procs = [_start(worker, env) for _ in range(2)]
    results = [_finish(p) for p in procs]
    for code, out, err in results:
        assert code == 0, err
        assert "stopped (budget)" in out
        assert SECRET not in out + err

    trials = _trials(pg_url)
    states = Counter(t.state for t in trials)
    assert states[TrialState.COMPLETE] + states[TrialState.PRUNED] == 10  # exactly: no overshoot
    assert states[TrialState.RUNNING] == 0 and states[TrialState.WAITING] == 0
    assert states[TrialState.PRUNED] >= 1  # Hyperband had data to compare
    numbers = [t.number for t in trials]
    assert numbers == list(range(len(trials)))  # no duplicates, no gaps
    assert len({trial_record.read_placement(t)["worker"] for t in trials}) == 2  # both worked

    baseline = trials[0]
    spec = load_study_file("smoke")
    assert trial_record.read_baseline(baseline) == "first model"
    assert baseline.params == spec.baselines[0].as_dict()
    assert baseline.state == TrialState.COMPLETE  # never pruned

    failed = trials[3]
    assert failed.state == TrialState.FAIL
    assert trial_record.read_error(failed) == "RuntimeError: fake failure in trial 3"

    hyp = tmp_path / "best.yaml"
    tools = {
        "trials": _start(
            [str(BIN / "optuna"), "trials", "--study-name", "smoke", "--storage", pg_url]
        ),
        "best-trial": _start(
            [str(BIN / "optuna"), "best-trial", "--study-name", "smoke", "--storage", pg_url]
        ),
        "status": _start([*TUNE, "status", "--study", "smoke", "--storage", url]),
        "best": _start([*TUNE, "best", "--study", "smoke", "--storage", url, "--export", str(hyp)]),
    }
    outputs = {name: _finish(p) for name, p in tools.items()}
    for name, (code, out, err) in outputs.items():
        assert code == 0, f"{name}: {err}"
        assert SECRET not in out + err
    study = optuna.load_study(study_name="smoke", storage=pg_url)
    assert "COMPLETE" in outputs["trials"][1] and "PRUNED" in outputs["trials"][1]
    assert str(study.best_trial.value)[:6] in outputs["best-trial"][1]  # Optuna's own best run
    # tune's best is the incumbent, chosen over seeds (search/confirm/incumbent.py); Optuna's
    # best single run when no race decided
    best, _ = study_best(study)
    assert best is not None
    status = outputs["status"][1]
    assert "study smoke: 10 done" in status and "budget 10/10 trials" in status
    assert "1 failed" in status
    assert f"best: trial {best.number}" in status
    assert "first model" in status and "fake failure in trial 3" in status
    assert f"best trial {best.number}" in outputs["best"][1]
    overrides = read_hyp(hyp)
    config = TrainConfig(**overrides)
    assert config.lcls == pytest.approx(best.params["lcls"])
    assert config.optimizer == best.params["optimizer"]


def test_launch_runs_workers_shows_progress_and_summary(pg_url: str, tmp_path: Path) -> None:
    url = _with_password(pg_url)
    proc = _start(
        [*TUNE, "launch", "--study", "smoke", "--storage", url, "--workers", "2", "--n-trials", "6",
         "--epochs", "3", "--progress-interval", "1", "--runs-dir", str(tmp_path / "runs"), *FAKE]
    )  # fmt: skip
    code, out, err = _finish(proc)
    assert code == 0, err
    assert "started 2 worker(s) on CPU" in out
    assert "budget " in out and "running" in out  # progress lines
    assert "finished in" in out and "6/6 trials" in out and "best mAP50-95" in out
    logs = sorted((tmp_path / "runs" / "smoke").glob("worker-*.log"))
    assert len(logs) == 2
    text = out + err + "".join(p.read_text() for p in logs)
    assert SECRET not in text and "***" in out
    states = Counter(t.state for t in _trials(pg_url))
    assert states[TrialState.COMPLETE] + states[TrialState.PRUNED] == 6
    assert states[TrialState.RUNNING] == 0


def test_ctrl_c_stops_launch_and_leaves_nothing_running(pg_url: str, tmp_path: Path) -> None:
    proc = _start(
        [*TUNE, "launch", "--study", "smoke", "--storage", pg_url, "--workers", "2",
         "--n-trials", "20", "--progress-interval", "1", "--runs-dir", str(tmp_path / "runs"),
         *FAKE],
        _env(FAKE_STEP_SECONDS="2"),
    )  # fmt: skip
    deadline = time.monotonic() + 60
    running: list[optuna.trial.FrozenTrial] = []
    while time.monotonic() < deadline and not running and proc.poll() is None:
        time.sleep(0.5)
        try:
            running = [t for t in _trials(pg_url) if t.state == TrialState.RUNNING]
        except Exception:  # launch has not created the study (or its tables) yet
            running = []
    if not running:  # seen once in CI: say what launch and its workers were doing
        proc.kill()
        code, out, err = _finish(proc, timeout=30)
        logs = sorted((tmp_path / "runs" / "smoke").glob("worker-*.log"))
        shown = "".join(f"\n--- {p.name}\n{p.read_text()}" for p in logs)
        pytest.fail(
            f"no trial started within 60 s (launch exit {code})\n--- stdout\n{out}\n"
            f"--- stderr\n{err}{shown}"
        )
    proc.send_signal(signal.SIGINT)
    code, out, err = _finish(proc, timeout=90)
    assert code == 130, err
    assert "stopping" in out and "interrupted in" in out
    trials = _trials(pg_url)
    assert not [t for t in trials if t.state == TrialState.RUNNING]
    interrupted = [t for t in trials if t.state == TrialState.FAIL]
    assert interrupted and all(trial_record.read_error(t) == "interrupted" for t in interrupted)


def test_wrong_inputs_end_in_one_clear_line(tmp_path: Path) -> None:
    cases = {
        "unknown study": (
            [*TUNE, "launch", "--study", "nope", "--storage", f"sqlite:///{tmp_path}/a.db"],
            "no study named 'nope'",
        ),
        "unreachable storage": (
            [
                *TUNE,
                "status",
                "--study",
                "x",
                "--storage",
                f"postgresql://u:{SECRET}@127.0.0.1:9/x",
            ],
            "cannot open the storage postgresql://u:***@127.0.0.1:9/x",
        ),
    }
    procs = {name: _start(args) for name, (args, _) in cases.items()}
    for name, proc in procs.items():
        code, out, err = _finish(proc)
        assert code == 2, f"{name}: {out} {err}"
        lines = [line for line in err.splitlines() if line.strip()]
        assert len(lines) == 1 and lines[0].startswith("error: "), f"{name}: {err}"
        assert cases[name][1] in lines[0], f"{name}: {lines[0]}"
        assert SECRET not in out + err
    assert not (tmp_path / "a.db").exists()  # nothing half-written


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--workers", "1", "--gpus", "0"], "give --workers or --gpus, not both"),
        (["--gpus", "a,b"], "--gpus must be GPU indices like 0,1, but got gpus='a,b'"),
        (["--gpus", "0,0"], "--gpus must be distinct GPU indices"),
        (["--epochs", "0"], "Invalid value for '--epochs'"),
        (["--data", "missing.yaml"], "trial.data: no such data set file"),
    ],
)
def test_launch_option_mistakes_are_refused_before_anything_starts(
    args: list[str], message: str, tmp_path: Path
) -> None:
    from typer.testing import CliRunner

    db = tmp_path / "x.db"
    result = CliRunner().invoke(
        app, ["launch", "--study", "smoke", "--storage", f"sqlite:///{db}", *args]
    )
    assert result.exit_code == 2
    assert message in result.output
    assert not db.exists()


def test_a_cuda_machine_gets_one_worker_per_gpu_and_a_warning_when_workers_would_share(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """Trials sharing a GPU without MPS ran >10x slower on an H200 (docs/benchmarks.md)."""
    import torch

    from search.running.local_workers import mps_running, plan_workers, visible_gpus

    monkeypatch.setenv("CUDA_MPS_PIPE_DIRECTORY", str(tmp_path / "mps"))
    assert visible_gpus("cpu") == []
    if not torch.cuda.is_available():
        assert visible_gpus("auto") == []  # a CPU machine: CPU workers as before
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 3)
    assert visible_gpus("auto") == visible_gpus("cuda") == [0, 1, 2]
    assert visible_gpus("cuda:2") == [2] and visible_gpus("cpu") == []

    assert plan_workers(None, None, [0, 1, 2]) == (3, [0, 1, 2], None)
    assert plan_workers(None, [1], [0, 1, 2]) == (1, [1], None)
    assert plan_workers(None, None, []) == (max(2, (os.cpu_count() or 2) // 2), None, None)
    n, gpus, warning = plan_workers(4, None, [0])
    assert (n, gpus) == (4, None)
    assert warning and "4 workers will share 1 GPU(s) without MPS" in warning
    assert "--gpus" in warning and "nvidia-cuda-mps-control -d" in warning

    (tmp_path / "mps").mkdir()
    os.mkfifo(tmp_path / "mps" / "control")
    assert mps_running()
    assert plan_workers(4, None, [0]) == (4, None, None)  # MPS is up: sharing is fine
