"""Wrong inputs to the real `tune` command: each ends in one clear message and writes nothing.

Every case runs `.venv/bin/tune` as a subprocess in a fresh, empty working folder (the default
place of `tune.db`, `runs/` and `report.html`) and checks:

- a non-zero exit status (2 for a refused input, 1 for a worker that cannot go on);
- stderr holds one `error: ...` line naming what is wrong (an option outside its range too:
  `search/cli.py` turns the parser's own box into that line) and no traceback;
- the working folder is still empty: no database file, no run folder, no report; inputs given
  by path (a database, a data set) are left as they were.

A trial that raises, whose loss becomes NaN or that runs out of CUDA memory (simulated on CPU)
is a different kind of wrong input: the trial FAILs with its reason stored and the worker goes
on (`test_failing_trials_are_recorded_and_the_worker_goes_on`).

Cases already covered elsewhere are not repeated here; docs/reliability.md lists them all.
The cases run two at a time (each is a Python start-up of a second or more on a busy machine).
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import optuna
import pytest
from optuna.trial import TrialState

from search.bookkeeping import trial_record
from search.bookkeeping.storage import open_storage
from search.control.study_setup import prepare_study
from search.study.study_file import Overrides, load_study_file

pytestmark = pytest.mark.slow

ROOT = Path(__file__).parents[2]
STUDIES = ROOT / "studies"
BIN = Path(sys.executable).parent
TUNE = [str(BIN / "tune")] if (BIN / "tune").exists() else [sys.executable, "-m", "search.cli"]
UNREACHABLE_PG = "postgresql+psycopg2://postgres@127.0.0.1:9/tune"  # nothing listens on port 9
WRONG_DB_PG = "postgresql+psycopg2://postgres@127.0.0.1:5432/tune_no_such_database"


@dataclass(frozen=True)
class Case:
    """One wrong input: the command (given the prepared inputs folder) and what it must say."""

    id: str
    args: Callable[[Path], list[str]]
    message: str  # a regex the one error line must match
    code: int = 2


def _study_file(change: Callable[[str], str]) -> Callable[[Path], list[str]]:
    """`tune launch` of a changed copy of studies/smoke.toml (written by the fixture)."""
    name = f"{change.__name__.strip('_')}.toml"
    _EDITS[name] = change
    fixed = ["--storage", "sqlite:///tune.db", "--workers", "0", "--runs-dir", "runs"]
    return lambda inputs: ["launch", "--study", str(inputs / name), *fixed]


_EDITS: dict[str, Callable[[str], str]] = {}


def _malformed_toml(text: str) -> str:
    return text.replace("[budget]", "[budget")


def _low_above_high(text: str) -> str:
    return text.replace("lr = { low = 0.0001, high = 0.02", "lr = { low = 0.05, high = 0.02")


def _unknown_key(text: str) -> str:
    return text.replace("epochs = 2", "epochs = 2\nwarmup = 3")


def _baseline_not_a_setting(text: str) -> str:
    # a baseline may lie outside [space] (a hand-tuned setting far from the defaults), never
    # outside what the trainer accepts
    return text.replace("lbox = 0.05\n", "lbox = -5.0\n")


def _unknown_optimizer(text: str) -> str:
    return text.replace('choices = ["SGD", "Adam", "AdamW"]', 'choices = ["SGD", "Lion"]')


def _empty_categorical(text: str) -> str:
    return text.replace('choices = ["SGD", "Adam", "AdamW"]', "choices = []").replace(
        'optimizer = "SGD"\n', ""
    )


def _launch(storage: str, *extra: str) -> Callable[[Path], list[str]]:
    return lambda inputs: [
        *("launch", "--study", "smoke", "--storage", storage.format(inputs=inputs)),
        *("--workers", "0", "--runs-dir", "runs", *(e.format(inputs=inputs) for e in extra)),
    ]


def _on_study_db(*args: str) -> Callable[[Path], list[str]]:
    """A command on the prepared SQLite storage, which holds the study `smoke` (no trial run)."""
    return lambda inputs: [*args, "--storage", f"sqlite:///{inputs / 'study.db'}"]


def _train(*args: str) -> Callable[[Path], list[str]]:
    return lambda inputs: [
        *("train", "--epochs", "1", "--imgsz", "32", "--out", "runs/train"),
        *(a.format(inputs=inputs) for a in args),
    ]


CASES = [
    # study files (the parser's checks are unit-tested in test_study_file.py; here: the CLI)
    Case("toml-malformed", _study_file(_malformed_toml), r"malformed_toml\.toml: not valid TOML"),
    Case("space-low-above-high", _study_file(_low_above_high), r"space\.lr: low must be <= high"),
    Case("unknown-key", _study_file(_unknown_key), r"unknown key 'warmup' in \[trial\]"),
    Case(
        "baseline-not-a-setting",
        _study_file(_baseline_not_a_setting),
        r"baselines\[0\] \(first model\): lbox must be in \[0, inf\), but got lbox=-5\.0",
    ),
    Case(
        "unknown-optimizer",
        _study_file(_unknown_optimizer),
        r"space\.optimizer\.choices: unknown optimizer 'Lion'",
    ),
    Case(
        "empty-categorical",
        _study_file(_empty_categorical),
        r"space\.optimizer\.choices must be a non-empty list",
    ),
    # storage URLs
    Case(
        "storage-unreachable",
        _launch(UNREACHABLE_PG),
        r"cannot open the storage postgresql\+psycopg2://postgres@127\.0\.0\.1:9/tune: .*refused",
    ),
    Case(
        "storage-wrong-database",
        _launch(WRONG_DB_PG),
        r'cannot open the storage .*: .*database "tune_no_such_database" does not exist',
    ),
    Case("storage-wrong-scheme", _launch("ftp://host/tune.db"), r"cannot open the storage ftp:"),
    Case("storage-not-a-url", _launch("tune.db"), r"not a database URL: tune\.db \(e\.g\."),
    Case(
        "storage-folder-missing",
        _launch("sqlite:///{inputs}/no-such-folder/tune.db"),
        r"cannot open the storage sqlite:///.*/no-such-folder/tune\.db: unable to open",
    ),
    Case(
        "storage-not-a-database",
        lambda inputs: ["status", "--study", "smoke", "--storage", f"sqlite:///{inputs}/text.db"],
        r"cannot open the storage sqlite:///.*/text\.db: file is not a database",
    ),
    Case(
        "storage-file-missing",
        lambda inputs: ["status", "--study", "smoke", "--storage", "sqlite:///tune.db"],
        r"no study database at sqlite:///tune\.db \(create it with `tune launch`\)",
    ),
    # study names
    Case(
        "status-unknown-study",
        _on_study_db("status", "--study", "nope"),
        r"no study named 'nope' in sqlite:///.* \(studies there: smoke;",
    ),
    Case("best-unknown-study", _on_study_db("best", "--study", "nope"), r"no study named 'nope'"),
    Case(
        "worker-unknown-study",
        _on_study_db("worker", "--study", "nope"),
        r"no study named 'nope'",
        code=1,
    ),
    Case(
        "report-unknown-study",
        _on_study_db("report", "--study", "nope", "-o", "report.html"),
        r"no study named 'nope'",
    ),
    Case(
        "best-before-any-trial",
        _on_study_db("best", "--study", "smoke"),
        r"study 'smoke' has no complete trial yet",
    ),
    # data sets (the reader's checks are unit-tested in tests/trainer/test_data.py)
    Case(
        "train-data-folder-missing",
        _train("--data", "{inputs}/missing/data.yaml"),
        r"data\.yaml: train image folder or list not found: .*images/nowhere",
    ),
    Case(
        "train-data-bad-label",
        _train("--data", "{inputs}/broken/data.yaml"),
        r"labels/train/1\.txt:1: expected 5 numbers 'class cx cy w h', but got '0 0\.5 0\.5 0\.2'",
    ),
    Case(
        "launch-data-folder-missing",
        _launch("sqlite:///tune.db", "--data", "{inputs}/missing/data.yaml"),
        r"train image folder or list not found",
    ),
    Case(
        "launch-data-bad-label",
        _launch("sqlite:///tune.db", "--data", "{inputs}/broken/data.yaml"),
        r"labels/train/1\.txt:1: expected 5 numbers",
    ),
    # out-of-range command-line values
    Case("train-epochs-negative", _train("--epochs", "-1"), r"Invalid value for '--epochs'"),
    Case(
        "launch-workers-negative",
        _launch("sqlite:///tune.db", "--workers", "-1"),
        r"Invalid value for '--workers'",
    ),
    Case(
        "launch-n-trials-zero",
        _launch("sqlite:///tune.db", "--n-trials", "0"),
        r"Invalid value for '--n-trials'",
    ),
    Case(
        "launch-timeout-zero",
        _launch("sqlite:///tune.db", "--timeout", "0"),
        r"Invalid value for '--timeout'",
    ),
    Case(
        "train-imgsz-not-multiple-of-32",
        _train("--imgsz", "100"),
        r"imgsz must be a multiple of 32, but got imgsz=100",
    ),
    Case(
        "train-milestones-not-numbers",
        _train("--milestones", "0.5,x"),
        r"milestones must be comma-separated numbers, but got milestones='0\.5,x'",
    ),
    Case(
        "train-milestones-decreasing",
        _train("--milestones", "0.9,0.5"),
        r"milestones must be in increasing order, but got milestones=\[0\.9, 0\.5\]",
    ),
    Case("train-lr-zero", _train("--lr", "0"), r"lr must be in \(0, inf\), but got lr=0\.0"),
    Case(
        "train-optimizer-unknown",
        _train("--optimizer", "Lion"),
        r"optimizer must be one of {SGD, Adam, AdamW}, but got optimizer=.Lion.",
    ),
]


@dataclass(frozen=True)
class Outcome:
    code: int
    stdout: str
    stderr: str
    left_behind: list[str]  # what the command wrote into its (empty) working folder
    seconds: float


def _prepare_inputs(inputs: Path) -> None:
    smoke = (STUDIES / "smoke.toml").read_text()
    for name, change in _EDITS.items():
        changed = change(smoke)
        assert changed != smoke, f"{name}: the edit changed nothing"
        (inputs / name).write_text(changed)
    # a storage with the study `smoke` created (baseline enqueued, no trial run)
    spec = load_study_file("smoke")
    storage = open_storage(f"sqlite:///{inputs / 'study.db'}", create_schema=True)
    prepare_study(spec, storage)
    storage.engine.dispose()
    (inputs / "text.db").write_text("not a database\n")
    # a data set with a malformed label line, and one whose train folder is missing
    from PIL import Image

    broken = inputs / "broken"
    for split in ("train", "val"):
        for i in range(2):
            image = broken / "images" / split / f"{i}.png"
            image.parent.mkdir(parents=True, exist_ok=True)
            Image.new("RGB", (32, 32), (200, 30, 30)).save(image)
            label = broken / "labels" / split / f"{i}.txt"
            label.parent.mkdir(parents=True, exist_ok=True)
            label.write_text("0 0.5 0.5 0.2 0.2\n")
    (broken / "labels" / "train" / "1.txt").write_text("0 0.5 0.5 0.2\n")
    (broken / "data.yaml").write_text("train: images/train\nval: images/val\nnames: [a]\n")
    missing = inputs / "missing"
    missing.mkdir()
    (missing / "data.yaml").write_text(
        f"path: {broken}\ntrain: images/nowhere\nval: images/val\nnames: [a]\n"
    )


def _snapshot(folder: Path) -> dict[str, float]:
    return {str(p.relative_to(folder)): p.stat().st_mtime for p in sorted(folder.rglob("*"))}


def _env() -> dict[str, str]:
    drop = ("TUNE_STORAGE", "TUNE_TRAINER_MODULE")
    return {**{k: v for k, v in os.environ.items() if k not in drop}, "OMP_NUM_THREADS": "1"}


def _run(case: Case, inputs: Path, workdir: Path) -> Outcome:
    workdir.mkdir(parents=True)
    started = time.monotonic()
    proc = subprocess.run(
        [*TUNE, *case.args(inputs)],
        cwd=workdir,
        env=_env(),
        capture_output=True,
        text=True,
        timeout=300,
    )
    left = [str(p.relative_to(workdir)) for p in workdir.rglob("*")]
    return Outcome(proc.returncode, proc.stdout, proc.stderr, left, time.monotonic() - started)


@pytest.fixture(scope="module")
def outcomes(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Outcome]:
    """Every case, run two at a time; the inputs folder must come out unchanged."""
    inputs = tmp_path_factory.mktemp("inputs")
    _prepare_inputs(inputs)
    before = _snapshot(inputs)
    work = tmp_path_factory.mktemp("work")
    with ThreadPoolExecutor(max_workers=2) as pool:
        futures = {c.id: pool.submit(_run, c, inputs, work / c.id) for c in CASES}
        results = {name: f.result() for name, f in futures.items()}
    assert _snapshot(inputs) == before, "a command changed its inputs"
    print({name: round(o.seconds, 1) for name, o in results.items()})
    return results


def test_the_catalogue_is_big_enough() -> None:
    assert len(CASES) >= 20 and len({c.id for c in CASES}) == len(CASES)


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_wrong_input_is_one_clear_message(case: Case, outcomes: dict[str, Outcome]) -> None:
    got = outcomes[case.id]
    shown = f"exit {got.code}\nstdout:\n{got.stdout}\nstderr:\n{got.stderr}"
    assert got.code == case.code, shown
    assert "Traceback" not in got.stderr + got.stdout, shown
    assert got.left_behind == [], f"left behind {got.left_behind}\n{shown}"
    lines = [line for line in got.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), shown
    assert re.search(case.message, lines[0]), shown


def test_failing_trials_are_recorded_and_the_worker_goes_on(tmp_path: Path) -> None:
    """A trial that raises, one whose loss is NaN, one out of CUDA memory: FAIL, reason, go on."""
    url = f"sqlite:///{tmp_path / 'tune.db'}"
    storage = open_storage(url, create_schema=True)
    prepare_study(load_study_file("smoke", Overrides(n_trials=4, epochs=2)), storage)
    storage.engine.dispose()
    env = {**_env(), "TRIVIAL_FAIL": "1:raise,2:nan,3:oom"}
    proc = subprocess.run(
        [
            *TUNE,
            "worker",
            "--study",
            "smoke",
            "--storage",
            url,
            "--trainer-module",
            "tests.search.trivial_trainer",
            "--runs-dir",
            str(tmp_path / "runs"),
        ],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    shown = f"stdout:\n{proc.stdout}\nstderr:\n{proc.stderr}"
    assert proc.returncode == 0, shown
    assert "stopped (budget)" in proc.stdout and "3 failed" in proc.stdout, shown
    trials = optuna.load_study(study_name="smoke", storage=url).get_trials()
    reasons = {t.number: trial_record.read_error(t) for t in trials if t.state == TrialState.FAIL}
    assert reasons == {
        1: "RuntimeError: trivial failure in trial 1",
        2: "non-finite loss: loss is nan at iter 1 (trial 2)",
        3: "out of memory: CUDA out of memory. Tried to allocate 2.00 GiB (GPU 0; 7.79 GiB total "
        "capacity)",
    }, shown
    finished = [t for t in trials if t.state in (TrialState.COMPLETE, TrialState.PRUNED)]
    assert len(finished) == 4 and len(trials) == 7, shown  # the worker went on after each
    for number in (1, 2, 3):
        assert f"trial {number} failed" in proc.stdout, shown


def test_launch_quotes_the_error_of_a_worker_that_gave_up(tmp_path: Path) -> None:
    """Every trial raising stops the worker with one line; launch's summary quotes that line."""
    env = {**_env(), "TRIVIAL_FAIL": ",".join(f"{n}:raise" for n in range(8))}
    proc = subprocess.run(
        [*TUNE, "launch", "--study", "smoke", "--storage", f"sqlite:///{tmp_path / 'tune.db'}",
         "--workers", "1", "--n-trials", "4", "--runs-dir", str(tmp_path / "runs"),
         "--trainer-module", "tests.search.trivial_trainer"],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    shown = f"stdout:\n{proc.stdout}\nstderr:\n{proc.stderr}"
    assert proc.returncode == 1, shown
    assert re.search(
        r"worker 0 exited with status 1: error: 5 trials failed in a row, stopping this worker "
        r"\(last error: RuntimeError: trivial failure in trial 4\); see .*worker-0\.log",
        proc.stdout,
    ), shown
