"""Fail points: armed by `$TUNE_FAILPOINTS`, they kill the process; unarmed, they do nothing."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from search.control.failpoints import POINTS, parse

_PROGRAM = (
    "from search.control.failpoints import failpoint; failpoint('trial-created'); print('alive')"
)


def _run(spec: str | None) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k != "TUNE_FAILPOINTS"}
    if spec is not None:
        env["TUNE_FAILPOINTS"] = spec
    return subprocess.run(
        [sys.executable, "-c", _PROGRAM], env=env, capture_output=True, text=True, timeout=60
    )


def test_an_armed_fail_point_kills_the_process_and_an_unarmed_one_does_nothing() -> None:
    assert _run("trial-created=1").returncode == -signal.SIGKILL
    assert _run("trial-created").returncode == -signal.SIGKILL  # no probability: always
    for spec in (None, "trial-created=0", "eval-recorded=1"):
        done = _run(spec)
        assert (done.returncode, done.stdout.strip()) == (0, "alive"), spec


def test_parse_reads_probabilities_and_names_what_is_wrong() -> None:
    assert parse("claim-taken=0.25, trial-created=1") == {"claim-taken": 0.25, "trial-created": 1}
    assert parse("") == {}
    with pytest.raises(ValueError, match=r"unknown fail point 'nope' \(known: claim-taken"):
        parse("nope=0.5")
    with pytest.raises(ValueError, match=r"probability in \[0, 1\], but got 'eval-recorded=2'"):
        parse("eval-recorded=2")
    with pytest.raises(ValueError, match=r"but got 'claim-taken=often'"):
        parse("claim-taken=often")


def test_every_named_fail_point_stands_in_the_code() -> None:
    source = "".join(p.read_text() for p in (Path(__file__).parents[2] / "search").rglob("*.py"))
    for name in POINTS:
        assert f'failpoint("{name}")' in source, name
