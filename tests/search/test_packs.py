"""A worker that runs a pack: `[trial] pack = K` trains K trials at once, refills a
slot a trial leaves at the pack's next epoch boundary within the study-wide budget, tells every
trial its own end, beats for all of them, and a SIGKILLed packed worker has all its trials
reaped, retried and resumed.

The fake trainer's `fit_pack` (tests/search/fake_trainer.py) keeps `trainer.packed.fit_pack`'s
contract without torch; tests/search/test_real_trainer.py runs the real one through a worker.
"""

from __future__ import annotations

import copy
import signal
from pathlib import Path
from typing import Any

import optuna
import pytest
from optuna.trial import TrialState

from search.bookkeeping import trial_record
from search.bookkeeping.storage import StorageSettings, open_storage
from search.control.study_setup import prepare_study
from search.running.rounds import pack_size
from search.running.worker import WorkerOptions, run_worker
from search.study.study_file import StudyFileError, StudySpec, load_study_file, parse_study
from search.trainers.builtin import TuneTrainer
from tests.search.reliability_support import (
    fast_env,
    finished,
    running_of,
    start_worker,
    states,
    trials,
    wait_for,
)
from trainer.pack_probe import pack_size_for

FAKE = "tests.search.fake_trainer"


def _spec(n_trials: int, pack: int | str, epochs: int = 4, **trial: Any) -> StudySpec:
    raw = copy.deepcopy(load_study_file("smoke").raw)
    raw["budget"] = {"n_trials": n_trials}
    raw["trial"] = {**raw["trial"], "epochs": epochs, "pack": pack, **trial}
    raw["pruner"] = {"type": "None"}
    return parse_study(raw)


def _work(url: str, tmp_path: Path, log: list[str], **kwargs: Any) -> Any:
    options = WorkerOptions(
        runs_dir=tmp_path / "runs",
        artifacts=tmp_path / "artifacts",
        poll_interval=0.1,
        log=log.append,
        handle_signals=False,
        **kwargs,
    )
    return run_worker("smoke", url, options, trainer=TuneTrainer(module=FAKE))


def test_pack_settings_are_checked_with_the_study() -> None:
    assert _spec(4, 3).trial.pack == 3 and _spec(4, "auto").trial.pack == "auto"
    assert load_study_file("smoke").trial.pack == 1  # the default
    for bad in (0, -2, "many", 2.5, True):
        with pytest.raises(StudyFileError, match=r'trial\.pack must be a number >= 1 or "auto"'):
            _spec(4, bad)
    raw = copy.deepcopy(load_study_file("smoke").raw)
    raw["space"]["batch"] = {"low": 8, "high": 32}
    raw["trial"] = {k: v for k, v in raw["trial"].items() if k != "batch"} | {"pack": 2}
    with pytest.raises(StudyFileError, match=r"the trials of a pack share batch, which \[space\]"):
        parse_study(raw)
    ultra = copy.deepcopy(load_study_file("ultralytics").raw)
    ultra["trial"]["pack"] = 4
    with pytest.raises(StudyFileError, match="trainer 'ultralytics' trains one trial at a time"):
        parse_study(ultra)


def test_auto_is_one_on_a_cpu_and_fits_the_free_memory_on_a_gpu() -> None:
    def probe() -> int:
        raise AssertionError("no probe on a CPU")

    assert pack_size("auto", "cpu", probe) == 1 and pack_size(5, "cuda:0", probe) == 5
    assert pack_size("auto", "cuda:0", lambda: 12) == 12
    gib = 2**30
    # 3 GiB for one trial, 4 for two: 1 GiB a trial over a 2 GiB base; 80% of 40 GiB free
    assert pack_size_for(40 * gib, 3 * gib, 4 * gib, limit=64, headroom=0.8) == 30
    assert pack_size_for(40 * gib, 3 * gib, 4 * gib, limit=16, headroom=0.8) == 16
    assert pack_size_for(2 * gib, 3 * gib, 4 * gib, limit=64, headroom=0.8) == 1


def test_a_pack_refills_its_slots_and_tells_every_trial_its_end(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("FAKE_STEP_SECONDS", "0.01")
    monkeypatch.setenv("FAKE_FAIL_TRIALS", "2")  # one trial fails: the others go on
    url = f"sqlite:///{tmp_path / 'tune.db'}"
    spec = _spec(7, 3)
    prepare_study(spec, open_storage(url, create_schema=True))
    log: list[str] = []
    stats = _work(url, tmp_path, log)
    assert stats.stopped_because == "budget", log
    done = optuna.load_study(study_name="smoke", storage=url).get_trials()
    by_state = {s: [t.number for t in done if t.state == s] for s in TrialState}
    assert by_state[TrialState.FAIL] == [2]
    assert len(by_state[TrialState.COMPLETE]) == 7  # the budget: 7 finished, the failure aside
    # one pack: the failed trial's slot (and later ones) refilled at epoch boundaries
    assert [line for line in log if "training a pack" in line] == ["training a pack of 3 trials"]
    assert stats.trials.complete == 7 and stats.trials.failed == 1
    for t in done:
        if t.state == TrialState.COMPLETE:
            assert [p["eval"]["epoch"] for p in trial_record.read_curve(t)] == [1, 2, 3, 4]
            assert trial_record.read_config(t)["out"].endswith(f"trial-{t.number:04d}")
    assert trial_record.read_error(done[2]) == "RuntimeError: fake failure in trial 2"


@pytest.mark.postgres
@pytest.mark.slow
def test_a_killed_packed_worker_has_all_its_trials_reaped_retried_and_resumed(
    pg_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    prepare_study(_spec(3, 3, epochs=8), open_storage(pg_url, create_schema=True))
    env = fast_env(tmp_path, FAKE_STEP_SECONDS="0.4")
    victim = start_worker(pg_url, tmp_path, env, "victim")
    try:

        def three_with_checkpoints() -> list[Any] | None:
            mine = [t for t in trials(pg_url) if t.state == TrialState.RUNNING]
            marks = [trial_record.read_checkpoint(t) for t in mine]
            return mine if len(mine) == 3 and all(m and m[1] >= 2 for m in marks) else None

        packed = wait_for("a pack of three with checkpoints", three_with_checkpoints, 90, 0.1)
        assert running_of(pg_url, victim) is not None
        victim.signal(signal.SIGKILL)
        victim.wait()
    finally:
        victim.stop()
    assert "training a pack of 3 trials" in victim.text()

    for key, value in env.items():
        monkeypatch.setenv(key, value)
    log: list[str] = []
    stats = _work(pg_url, tmp_path, log, settings=StorageSettings.from_env(env))
    assert stats.stopped_because == "budget", log
    all_trials = trials(pg_url)
    assert finished(all_trials) == 3, states(all_trials)
    for dead in packed:
        failed = next(t for t in all_trials if t.number == dead.number)
        assert failed.state == TrialState.FAIL  # reaped: it lost its worker
        retry = next(t for t in all_trials if trial_record.read_retry_of(t) == dead.number)
        assert retry.state == TrialState.COMPLETE and retry.params == dead.params
        resumed = trial_record.read_resumed_step(retry)
        assert resumed is not None and resumed >= 2  # from its own checkpoint
        assert [p["eval"]["epoch"] for p in trial_record.read_curve(retry)] == list(range(1, 9))
    # the retries trained as a pack again
    assert "training a pack of 3 trials" in "\n".join(log)
    print(f"{len(packed)} packed trials reaped, retried and resumed")
