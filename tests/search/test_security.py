"""Security: credentials never shown or stored, the dashboard on loopback, study files are data.

The storage URL carries a password (`postgresql+psycopg2://postgres:S3cretPW@...`; the test
server's trust authentication accepts any). Every command that takes a storage runs with it as a
real subprocess, on success and failure paths, and the password must appear in no output, no
log file, no report, no process command line and no row of the study's database.
"""

from __future__ import annotations

import ast
import logging
import os
import socket
import subprocess
import sys
import time
import tomllib
import urllib.request
from pathlib import Path

import optuna
import psutil
import pytest
import sqlalchemy as sa
from optuna.trial import TrialState

from search.bookkeeping import trial_record
from search.bookkeeping.storage import open_storage
from search.running.log_masking import MaskingFilter, mask_library_logs
from search.study.study_file import StudyFileError, load_study_file, parse_study

ROOT = Path(__file__).parents[2]
BIN = Path(sys.executable).parent
TUNE = [str(BIN / "tune")] if (BIN / "tune").exists() else [sys.executable, "-m", "search.cli"]
TRIVIAL = ["--trainer-module", "tests.search.trivial_trainer"]
SECRET = "S3cretPW"
PAYLOAD = "__import__('os').system('touch PWNED')"


def _with_password(url: str) -> str:
    return url.replace("postgres@", f"postgres:{SECRET}@", 1)


def _env(**extra: str) -> dict[str, str]:
    drop = ("TUNE_STORAGE", "TUNE_TRAINER_MODULE", "TRIVIAL_FAIL")
    kept = {k: v for k, v in os.environ.items() if k not in drop}
    return {**kept, "OMP_NUM_THREADS": "1", **extra}


def _run(args: list[str], cwd: Path, env: dict[str, str] | None = None) -> tuple[int, str]:
    proc = subprocess.run(
        [*TUNE, *args], cwd=cwd, env=env or _env(), capture_output=True, text=True, timeout=300
    )
    return proc.returncode, proc.stdout + proc.stderr


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _database_text(url: str) -> str:
    """Every row of every table of the study's database, as text."""
    engine = sa.create_engine(url, poolclass=sa.NullPool)
    try:
        with engine.connect() as conn:
            tables = sa.inspect(conn).get_table_names()
            rows = [
                str(row) for t in tables for row in conn.execute(sa.text(f'SELECT * FROM "{t}"'))
            ]
    finally:
        engine.dispose()
    return "\n".join(rows)


def _files_text(folder: Path) -> str:
    return "\n".join(p.read_text(errors="replace") for p in folder.rglob("*") if p.is_file())


class Dashboard:
    """`tune dashboard` as a subprocess, until it listens (or exits)."""

    def __init__(self, args: list[str], cwd: Path) -> None:
        self.proc = subprocess.Popen(
            [*TUNE, "dashboard", *args],
            cwd=cwd,
            env=_env(),
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )

    def listening(self, port: int, timeout: float = 90) -> list[str]:
        """The addresses the dashboard's process listens on at `port` (empty if it exited)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and self.proc.poll() is None:
            found = [
                c.laddr.ip
                for c in psutil.Process(self.proc.pid).net_connections(kind="inet")
                if c.status == psutil.CONN_LISTEN and c.laddr.port == port
            ]
            if found:
                return found
            time.sleep(0.3)
        return []

    def stop(self) -> tuple[int, str]:
        if self.proc.poll() is None:
            self.proc.terminate()
        try:
            out, _ = self.proc.communicate(timeout=30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            out, _ = self.proc.communicate()
        return self.proc.returncode, out


@pytest.mark.postgres
@pytest.mark.slow
def test_the_password_is_never_shown_or_stored(pg_url: str, tmp_path: Path) -> None:
    url = _with_password(pg_url)
    runs = tmp_path / "runs"
    outputs: dict[str, str] = {}

    # launch: workers get the URL through the environment, never on their command line
    env = _env(TRIVIAL_FAIL="1:url")  # trial 1 raises an error quoting the URL, password and all
    launch = subprocess.Popen(
        [
            *TUNE,
            "launch",
            "--study",
            "smoke",
            "--storage",
            url,
            "--workers",
            "2",
            "--n-trials",
            "4",
            "--progress-interval",
            "1",
            "--runs-dir",
            str(runs),
            *TRIVIAL,
        ],
        cwd=tmp_path,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    command_lines: list[str] = []
    while launch.poll() is None:
        try:
            parent = psutil.Process(launch.pid)
            own = parent.cmdline()
            # A child caught between fork and exec still shows its parent's command line, the
            # one the user typed (seen once in CI): not a leak, so not counted.
            command_lines += [
                " ".join(line)
                for line in (c.cmdline() for c in parent.children(recursive=True))
                if line != own
            ]
        except psutil.Error:
            pass  # a worker exited between listing and reading
        time.sleep(0.2)
    outputs["launch"] = launch.communicate()[0]
    assert launch.returncode == 0, outputs["launch"]
    assert any("worker" in line for line in command_lines), "never saw a worker process"
    assert not [line for line in command_lines if SECRET in line]
    assert "postgres:***@" in outputs["launch"]

    report = tmp_path / "report.html"
    for name, args in {
        "worker": ["worker", "--study", "smoke", "--storage", url, *TRIVIAL],
        "status": ["status", "--study", "smoke", "--storage", url],
        "best": ["best", "--study", "smoke", "--storage", url],
        "report": ["report", "--study", "smoke", "--storage", url, "-o", str(report)],
    }.items():
        code, outputs[name] = _run(
            [*args, "--runs-dir", str(runs)] if name == "worker" else args, tmp_path
        )
        assert code == 0, f"{name}: {outputs[name]}"
    # from the environment instead of the command line
    code, outputs["status from $TUNE_STORAGE"] = _run(
        ["status", "--study", "smoke"], tmp_path, _env(TUNE_STORAGE=url)
    )
    assert code == 0 and "budget 4/4 trials" in outputs["status from $TUNE_STORAGE"]

    port = _free_port()
    dashboard = Dashboard(["--storage", url, "--port", str(port)], tmp_path)
    try:
        assert dashboard.listening(port) == ["127.0.0.1"]
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/api/studies", timeout=30) as page:
            outputs["dashboard api"] = page.read().decode()
        assert "smoke" in outputs["dashboard api"]
    finally:
        outputs["dashboard"] = dashboard.stop()[1]
    assert "postgres:***@" in outputs["dashboard"]

    # the failing trial's reason is stored masked, and the trials are all there
    trials = optuna.load_study(study_name="smoke", storage=pg_url).get_trials()
    assert trial_record.read_error(trials[1]) == (
        f"RuntimeError: lost {pg_url.replace('postgres@', 'postgres:***@')} in trial 1"
    )
    assert sum(t.state in (TrialState.COMPLETE, TrialState.PRUNED) for t in trials) == 4

    for name, text in outputs.items():
        assert SECRET not in text, f"{name} printed the password:\n{text}"
    assert SECRET not in _files_text(runs), "a worker log holds the password"
    assert SECRET not in report.read_text(), "the report holds the password"
    assert SECRET not in _database_text(pg_url), "the storage holds the password"


@pytest.mark.postgres
@pytest.mark.slow
@pytest.mark.parametrize("where", ["wrong database", "unreachable port"])
def test_failures_mask_the_password(where: str, pg_url: str, tmp_path: Path) -> None:
    if where == "wrong database":
        url = _with_password(pg_url.rsplit("/", 1)[0] + "/tune_no_such_database")
    else:
        url = f"postgresql+psycopg2://postgres:{SECRET}@127.0.0.1:9/tune"
    masked = url.replace(SECRET, "***")
    commands = {
        "launch": ["launch", "--study", "smoke", "--storage", url, "--workers", "0"],
        "worker": ["worker", "--study", "smoke", "--storage", url],
        "status": ["status", "--study", "smoke", "--storage", url],
        "best": ["best", "--study", "smoke", "--storage", url],
        "report": ["report", "--study", "smoke", "--storage", url],
        "dashboard": ["dashboard", "--storage", url, "--port", str(_free_port())],
    }
    procs = {
        name: subprocess.Popen(
            [*TUNE, *args],
            cwd=tmp_path,
            # a worker retries an unreachable server (it may be starting): not for long here
            env={**_env(), "TUNE_STORAGE_DOWN_LIMIT": "2"},
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        for name, args in commands.items()
    }
    for name, proc in procs.items():
        out = proc.communicate(timeout=300)[0]
        assert proc.returncode != 0, f"{name}: {out}"
        assert SECRET not in out, f"{name} printed the password:\n{out}"
        if name == "worker" and where != "wrong database":
            assert f"error: the storage {masked} has been unreachable" in out, out
            assert f"the storage {masked} is unreachable, retrying in" in out, out
        else:
            assert f"error: cannot open the storage {masked}" in out, f"{name}: {out}"
        assert "Traceback" not in out, f"{name}: {out}"
    assert list(tmp_path.iterdir()) == []  # no report, no run folder, no database file


def test_the_dashboard_binds_to_loopback_unless_told_otherwise(tmp_path: Path) -> None:
    code, help_text = _run(["dashboard", "--help"], tmp_path)
    assert code == 0 and "127.0.0.1" in help_text
    db = tmp_path / "tune.db"
    storage = open_storage(f"sqlite:///{db}", create_schema=True)
    storage.engine.dispose()
    port = _free_port()
    dashboard = Dashboard(["--storage", f"sqlite:///{db}", "--port", str(port)], tmp_path)
    try:
        assert dashboard.listening(port) == ["127.0.0.1"]
    finally:
        _, out = dashboard.stop()
    assert "warning" not in out
    port = _free_port()
    dashboard = Dashboard(
        ["--storage", f"sqlite:///{db}", "--port", str(port), "--host", "0.0.0.0"], tmp_path
    )
    try:
        assert dashboard.listening(port) == ["0.0.0.0"]
    finally:
        _, out = dashboard.stop()
    assert "warning: binding to 0.0.0.0: the dashboard has no login" in out


def test_optuna_log_records_are_masked() -> None:
    """Optuna logs a failed trial's exception, traceback and all, on its own handler."""
    mask_library_logs()
    mask_library_logs()  # idempotent
    handlers = optuna.logging.get_logger("optuna").handlers
    assert handlers
    assert all(sum(isinstance(f, MaskingFilter) for f in h.filters) == 1 for h in handlers)
    try:
        raise RuntimeError(f"lost postgresql://u:{SECRET}@h/db")
    except RuntimeError as exc:
        record = logging.LogRecord(
            "optuna.study._optimize",
            logging.WARNING,
            __file__,
            1,
            "failed: %r",
            (exc,),
            sys.exc_info(),
        )
    assert all(h.filter(record) for h in handlers)
    text = handlers[0].format(record)
    assert "Traceback" in text and "postgresql://u:***@h/db" in text
    assert SECRET not in text


# --- the study file is data ---------------------------------------------------------------------


def _smoke() -> dict[str, object]:
    return tomllib.loads((ROOT / "studies" / "smoke.toml").read_text())


@pytest.mark.parametrize(
    ("table", "key", "message"),
    [
        (None, "name", r"name must be letters, digits"),
        ("trial", "data", r"trial\.data: no such data set file"),
        ("trial", "model", r"model must be one of"),
        ("sampler", "type", r"sampler\.type must be one of"),
        ("space", "lr", r"space\.lr"),
        (None, "trainer_module", r"unknown key 'trainer_module' in the top level"),
    ],
)
def test_code_in_a_study_file_is_rejected_as_a_value(
    table: str | None, key: str, message: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    raw = _smoke()
    target = raw if table is None else raw[table]
    assert isinstance(target, dict)
    target[key] = PAYLOAD
    with pytest.raises(StudyFileError, match=message):
        parse_study(raw, "evil.toml")
    assert not (tmp_path / "PWNED").exists()


def test_code_in_a_free_text_field_stays_a_string(tmp_path: Path) -> None:
    evil = tmp_path / "evil.toml"
    text = (ROOT / "studies" / "smoke.toml").read_text()
    evil.write_text(text.replace('label = "first model"', f'label = "{PAYLOAD}"'))
    db = f"sqlite:///{tmp_path / 'tune.db'}"
    code, out = _run(["launch", "--study", str(evil), "--storage", db, "--workers", "0"], tmp_path)
    assert code == 0, out
    code, status = _run(["status", "--study", "smoke", "--storage", db], tmp_path)
    assert code == 0 and PAYLOAD in status, status  # shown as the label it is
    study = optuna.load_study(study_name="smoke", storage=db)
    assert trial_record.read_baseline(study.get_trials()[0]) == PAYLOAD
    assert load_study_file(str(evil)).baselines[0].label == PAYLOAD
    assert not (tmp_path / "PWNED").exists() and not (ROOT / "PWNED").exists()


def test_no_code_path_evaluates_text() -> None:
    """No eval/exec/compile, no unsafe YAML or pickle loading of text anywhere in the packages."""
    unsafe_attrs = {("yaml", "load"), ("yaml", "unsafe_load"), ("pickle", "loads")}
    found = []
    for path in sorted((ROOT / "search").rglob("*.py")) + sorted((ROOT / "trainer").rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if not isinstance(node, ast.Call):
                continue
            func = node.func
            if isinstance(func, ast.Name) and func.id in ("eval", "exec", "compile", "__import__"):
                found.append(f"{path.name}:{node.lineno}: {func.id}()")
            if (
                isinstance(func, ast.Attribute)
                and isinstance(func.value, ast.Name)
                and (func.value.id, func.attr) in unsafe_attrs
            ):
                found.append(f"{path.name}:{node.lineno}: {func.value.id}.{func.attr}()")
    assert found == []
