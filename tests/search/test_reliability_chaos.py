"""Chaos: workers SIGKILLed at random instants and at fail points, on PostgreSQL.

`tests/search/chaos.py` runs the `smoke` study with three real `tune worker` processes (fake
trainer, heartbeat 1 s, grace 3 s) while it kills a random worker every 0.5 to 3 s, six times,
and starts a new one after each death; the workers also kill themselves at fail points (holding
the study lock, right after creating a trial, between an evaluation and its checkpoint) until
four have died that way. The study must end with exactly its budget finished, nothing RUNNING or
WAITING, every reaped trial retried with its parameters, within the time limit. The database
outage version is in `test_reliability_db_restart.py`; the longer soak is
`chaos_soak.py`.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from tests.search.chaos import ChaosPlan, check_study, run_chaos
from tests.search.reliability_support import GRACE, HEARTBEAT

pytestmark = [pytest.mark.postgres, pytest.mark.slow]


def test_a_study_survives_workers_killed_at_random_instants(pg_url: str, tmp_path: Path) -> None:
    # a different schedule each run (printed, so a failure can be replayed with TUNE_CHAOS_SEED)
    seed = int(os.environ.get("TUNE_CHAOS_SEED", int.from_bytes(os.urandom(2))))
    plan = ChaosPlan(seed=seed, time_limit=240)
    run = run_chaos(pg_url, tmp_path, plan)
    print(f"\nchaos (seed {seed}): {run.summary()}")
    check_study(run, plan.n_trials)
    assert len(run.deaths) >= 3, run.summary()  # the chaos really happened
    assert run.lost(), run.summary()  # and some kill hit a running trial
    # A reaped trial is FAIL within grace + interval of its worker's death when another worker
    # is alive; when every worker died at once, only a replacement's reaper can reap it, after
    # that worker's start (a few seconds here, more under load).
    assert run.longest_running_after_death() < GRACE + HEARTBEAT + 10, run.summary()
