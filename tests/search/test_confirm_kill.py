"""A confirm run survives a SIGKILLed worker like a trial: a real `tune worker --study
smoke:confirm` process is killed mid-run; the run is reaped, retried with its parameters and seed,
resumed from its last checkpoint by another worker, and the confirmation completes (PostgreSQL)."""

from __future__ import annotations

import signal
from pathlib import Path

import optuna
import pytest
from optuna.trial import FrozenTrial, TrialState

from search.bookkeeping import trial_record
from search.bookkeeping.storage import StorageSettings, open_storage
from search.confirm.plan import confirm_name
from search.confirm.results import read_confirmation
from search.running.launch import confirm
from tests.search.reliability_support import (
    Worker,
    fast_env,
    make_study,
    start_worker,
    wait_for,
    work_here,
)

pytestmark = [pytest.mark.postgres, pytest.mark.slow]
NAME = confirm_name("smoke")


def _runs(url: str) -> list[FrozenTrial]:
    storage = open_storage(url, settings=StorageSettings())
    return optuna.load_study(study_name=NAME, storage=storage).get_trials()


def test_a_killed_confirm_run_is_retried_and_resumes_from_its_checkpoint(
    pg_url: str, tmp_path: Path, workers: list[Worker], monkeypatch: pytest.MonkeyPatch
) -> None:
    make_study(pg_url, n_trials=2, epochs=4)
    env = fast_env(tmp_path, FAKE_STEP_SECONDS="0.25")
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    assert work_here(pg_url, tmp_path, env, []).stopped_because == "budget"  # the study itself
    assert confirm("smoke", pg_url, top=1, seeds=2, workers=0, out=lambda _: None).enqueued == 4

    victim = start_worker(pg_url, tmp_path, env, "victim", study=NAME)
    workers.append(victim)

    def checkpointed() -> FrozenTrial | None:
        for t in _runs(pg_url):
            mark = trial_record.read_checkpoint(t)
            if t.state == TrialState.RUNNING and mark is not None and mark[1] >= 2:
                return t
        return None

    doomed = wait_for("a confirm run with two evaluations", checkpointed, 90, every=0.1)
    victim.signal(signal.SIGKILL)
    victim.wait()

    log: list[str] = []
    stats = work_here(pg_url, tmp_path, env, log, study=NAME, timeout=90)
    assert stats.stopped_because == "budget", log
    runs = {t.number: t for t in _runs(pg_url)}
    dead = runs[doomed.number]
    assert dead.state == TrialState.FAIL
    retry = next(t for t in runs.values() if trial_record.read_retry_of(t) == dead.number)
    assert retry.state == TrialState.COMPLETE
    assert trial_record.read_confirm(retry) == trial_record.read_confirm(dead)  # same seed
    assert retry.params == dead.params
    resumed = trial_record.read_resumed_step(retry)
    assert resumed is not None and resumed >= 2
    config = trial_record.read_config(retry)
    assert config is not None and config["seed"] == trial_record.read_confirm(dead)[1]  # type: ignore[index]
    complete = [t for t in runs.values() if t.state == TrialState.COMPLETE]
    assert len(complete) == 4
    assert len({trial_record.read_confirm(t) for t in complete}) == 4
    c = read_confirmation(open_storage(pg_url), "smoke")
    assert c is not None and c.done == c.planned == 4 and c.failed == 0
