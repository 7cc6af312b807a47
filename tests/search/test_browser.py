"""The report and the dashboard in a real browser (headless Chromium): rendered, no JavaScript
errors, screenshots saved. Also the dashboard's small helpers.

Chromium is Debian's `chromium` package (`apt-get install -y chromium`). Without it these tests
skip, unless TUNE_REQUIRE_BROWSER=1 (CI), where a missing browser is a failure. Screenshots go to
a temporary folder, or to $TUNE_SCREENSHOTS when set.
"""

from __future__ import annotations

import os
import re
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import optuna
import pytest
from PIL import Image

from search.commands.dashboard import dashboard_command, dashboard_url, is_loopback
from search.report import write_report
from tests.search.test_report_gather import PLAN, build_study
from tests.search.test_report_html import SEVEN_TITLES

TUNE = str(Path(sys.executable).parent / "tune")
_FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--enable-logging=stderr",
    "--v=0",
]
# Chromium prints page console messages as `...:INFO:CONSOLE:12] "message", source: URL (12)`
# (older builds: `CONSOLE(12)]`); uncaught exceptions start with "Uncaught".
_CONSOLE = re.compile(r'CONSOLE[:(]\d*\)?\] "(?P<message>.*)", source: ')
_ERROR = re.compile(r"Uncaught|\b\w*Error\b|Failed to load resource")


@pytest.fixture(scope="module")
def chromium() -> str:
    found = shutil.which("chromium") or shutil.which("chromium-browser")
    if found is None:
        message = "Chromium is not installed (apt-get install -y chromium)"
        if os.environ.get("TUNE_REQUIRE_BROWSER") == "1":
            pytest.fail(message + " but TUNE_REQUIRE_BROWSER=1")
        pytest.skip(message)
    return found


@pytest.fixture
def shots(tmp_path: Path) -> Path:
    folder = Path(os.environ.get("TUNE_SCREENSHOTS") or tmp_path / "shots")
    folder.mkdir(parents=True, exist_ok=True)
    return folder


def browse(
    chromium: str, url: str, tmp: Path, action: list[str], budget_ms: int = 8000
) -> tuple[str, list[str]]:
    """Open `url` headless with `action` (--dump-dom or --screenshot=...); return stdout and the
    console messages that are JavaScript errors."""
    profile = tmp / f"profile-{time.monotonic_ns()}"
    done = subprocess.run(
        [
            chromium,
            *_FLAGS,
            f"--user-data-dir={profile}",
            "--window-size=1440,2400",
            f"--virtual-time-budget={budget_ms}",
            *action,
            url,
        ],
        capture_output=True,
        text=True,
        timeout=180,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    messages = [m.group("message") for m in _CONSOLE.finditer(done.stderr)]
    return done.stdout, [m for m in messages if _ERROR.search(m)]


def _check_screenshot(path: Path) -> None:
    with Image.open(path) as image:
        assert image.size == (1440, 2400)
        colors = image.convert("RGB").resize((360, 600)).getcolors(maxcolors=100_000)
    assert colors is not None and len(colors) > 50, "the screenshot is (nearly) blank"


def test_error_detection_catches_a_broken_page(chromium: str, tmp_path: Path) -> None:
    page = tmp_path / "broken.html"
    page.write_text("<html><body><p>x</p><script>null.field;</script></body></html>")
    _, errors = browse(chromium, page.as_uri(), tmp_path, ["--dump-dom"], budget_ms=1000)
    assert len(errors) == 1 and errors[0].startswith("Uncaught TypeError")


def test_report_renders_without_errors(chromium: str, tmp_path: Path, shots: Path) -> None:
    report = write_report(build_study(None), tmp_path / "report.html", top_k=3)
    dom, errors = browse(chromium, report.as_uri(), tmp_path, ["--dump-dom"])
    assert errors == []
    # Plotly drew the panels (subplot titles are SVG text) and the views
    for title in SEVEN_TITLES:
        assert f">{title}</text>" in dom, title
    assert dom.count('class="main-svg"') >= 2 * 9
    assert "#3 best · lcls 0.03" in dom  # the legend
    table = dom[dom.index('id="trials"') : dom.index("</table>")]
    assert table.count("<tr class=") == len(PLAN)
    shot = shots / "report.png"
    browse(chromium, report.as_uri(), tmp_path, [f"--screenshot={shot}"])
    _check_screenshot(shot)


def test_empty_report_renders(chromium: str, tmp_path: Path) -> None:
    report = write_report(optuna.create_study(study_name="empty"), tmp_path / "empty.html")
    dom, errors = browse(chromium, report.as_uri(), tmp_path, ["--dump-dom"], budget_ms=2000)
    assert errors == [] and "This study is empty" in dom


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture
def dashboard(pg_url: str, tmp_path: Path) -> Iterator[tuple[str, subprocess.Popen[str], int]]:
    """`tune dashboard` on a PostgreSQL study, as a subprocess; yields (url, process, study id)."""
    study = build_study(pg_url, name="loss-weights-r4")
    port = _free_port()
    # a password in the URL (trust auth ignores it) must never be printed
    url = pg_url.replace("postgres@", "postgres:s3cret@")
    log = (tmp_path / "dashboard.log").open("w+")
    proc = subprocess.Popen(
        [TUNE, "dashboard", "--storage", url, "--port", str(port)],
        stdout=log,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        deadline = time.monotonic() + 90
        while True:
            assert proc.poll() is None, Path(log.name).read_text()
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                assert time.monotonic() < deadline, "the dashboard did not start in 90 s"
                time.sleep(0.5)
        yield Path(log.name).read_text(), proc, study._study_id
    finally:
        proc.terminate()
        proc.wait(timeout=30)
        log.close()


@pytest.mark.postgres
@pytest.mark.slow
def test_dashboard_shows_the_study(
    chromium: str,
    dashboard: tuple[str, subprocess.Popen[str], int],
    tmp_path: Path,
    shots: Path,
) -> None:
    printed, _, study_id = dashboard
    assert "s3cret" not in printed and "postgres:***@" in printed
    address = re.search(r"at (http://127\.0\.0\.1:\d+/)", printed)
    assert address is not None, printed
    home = address.group(1)
    dom, errors = browse(chromium, home, tmp_path, ["--dump-dom"], budget_ms=15000)
    assert errors == [] and "loss-weights-r4" in dom
    page = f"{home}dashboard/studies/{study_id}"
    dom, errors = browse(chromium, page, tmp_path, ["--dump-dom"], budget_ms=15000)
    assert errors == [] and "loss-weights-r4" in dom and "History" in dom
    shot = shots / "dashboard.png"
    browse(chromium, page, tmp_path, [f"--screenshot={shot}"], budget_ms=15000)
    _check_screenshot(shot)


def test_dashboard_helpers() -> None:
    assert is_loopback("127.0.0.1") and is_loopback("localhost") and is_loopback("::1")
    assert not is_loopback("0.0.0.0") and not is_loopback("example.org")
    assert dashboard_url("0.0.0.0", 9000) == "http://127.0.0.1:9000/"
    assert dashboard_url("::1", 8080) == "http://[::1]:8080/"
    assert dashboard_command() == "tune dashboard"
    command = dashboard_command("postgresql+psycopg2://u:pw@db:5432/tune")
    assert command == "tune dashboard --storage 'postgresql+psycopg2://u:***@db:5432/tune'"


def test_dashboard_refuses_a_missing_storage(tmp_path: Path) -> None:
    done = subprocess.run(
        [TUNE, "dashboard", "--storage", f"sqlite:///{tmp_path / 'none.db'}", "--port", "9"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 2 and "no study database" in done.stderr
