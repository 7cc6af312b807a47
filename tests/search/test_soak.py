"""Soak: many `tune worker` processes, hundreds of trials of no work, one PostgreSQL study.

The objective (`tests/search/trivial_trainer.py`) reports two evaluations and returns at once, so
the run is nothing but the search's control plane: the study lock, `ask`, the user-attr writes,
`report`/`should_prune`, `tell`, the heartbeat thread. Checked at the end, from the storage:

- trial numbers 0..N-1, each once; COMPLETE + PRUNED == N exactly (no overshoot), no FAIL, nothing
  RUNNING or WAITING; the baseline ran exactly once;
- every worker exited 0 after "stopped (budget)", no deadlock and no traceback in any log;
- PostgreSQL connections to the study's database, sampled every 50 ms from pg_stat_activity,
  never exceeded workers x (pool_size + max_overflow) + a small constant.

The figures it observed are printed (`pytest -s`) and recorded in docs/reliability.md.
"""

from __future__ import annotations

import os
import resource
import statistics
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import optuna
import pytest
from optuna.trial import TrialState

from bench import ConnectionSampler
from search.bookkeeping import trial_record
from search.bookkeeping.storage import StorageSettings, open_storage
from search.control.study_setup import prepare_study
from search.study.study_file import Overrides, load_study_file
from tests.conftest import PG_ADMIN_URL

pytestmark = [pytest.mark.postgres, pytest.mark.slow]

BIN = Path(sys.executable).parent
TUNE = [str(BIN / "tune")] if (BIN / "tune").exists() else [sys.executable, "-m", "search.cli"]
WORKERS = int(os.environ.get("TUNE_SOAK_WORKERS", "8"))
N_TRIALS = int(os.environ.get("TUNE_SOAK_TRIALS", "200"))
# besides the workers' pools: a worker's short-lived schema check before its pool opens, and
# psql-style admin sessions of the test harness (the sampler connects to another database)
SLACK = 2


def _children_cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def test_soak_many_workers_hundreds_of_trials(pg_url: str, tmp_path: Path) -> None:
    settings = StorageSettings()  # what `tune worker` uses
    bound = WORKERS * (settings.pool_size + settings.max_overflow) + SLACK
    # what `tune launch --workers 0` does: schema, study, stored settings, the baseline
    spec = load_study_file("smoke", Overrides(n_trials=N_TRIALS, epochs=2))
    storage = open_storage(pg_url, create_schema=True)
    prepare_study(spec, storage)
    storage.engine.dispose()  # the test's own pool must not count against the workers

    env = {k: v for k, v in os.environ.items() if not k.startswith(("TUNE_", "TRIVIAL_"))}
    env["OMP_NUM_THREADS"] = "1"
    env["TUNE_ARTIFACTS"] = str(tmp_path / "artifacts")
    logs = [tmp_path / f"worker-{i}.log" for i in range(WORKERS)]
    cpu_before = _children_cpu_seconds()
    started = time.monotonic()
    with ConnectionSampler(PG_ADMIN_URL, pg_url.rsplit("/", 1)[1], interval=0.05) as sampler:
        procs = []
        for i, log in enumerate(logs):
            cmd = [
                *(*TUNE, "worker", "--study", "smoke", "--storage", pg_url),
                *("--worker-index", str(i)),
                *("--trainer-module", "tests.search.trivial_trainer"),
                *("--local-workers", str(WORKERS), "--runs-dir", str(tmp_path / "runs")),
            ]
            with log.open("wb") as out:
                procs.append(
                    subprocess.Popen(
                        cmd, cwd=tmp_path, env=env, stdout=out, stderr=subprocess.STDOUT
                    )
                )
        try:
            codes = [p.wait(timeout=600) for p in procs]
        finally:
            for p in procs:
                if p.poll() is None:
                    p.kill()
                    p.wait()
    wall = time.monotonic() - started
    cpu = _children_cpu_seconds() - cpu_before

    texts = [log.read_text() for log in logs]
    for i, (code, text) in enumerate(zip(codes, texts, strict=True)):
        assert code == 0, f"worker {i} exited {code}:\n{text[-3000:]}"
        assert "stopped (budget)" in text, f"worker {i}:\n{text[-3000:]}"
        assert "Traceback" not in text, f"worker {i}:\n{text[-3000:]}"
        assert "deadlock" not in text.lower(), f"worker {i}:\n{text[-3000:]}"

    trials = optuna.load_study(study_name="smoke", storage=pg_url).get_trials(deepcopy=False)
    states = Counter(t.state for t in trials)
    assert sorted(t.number for t in trials) == list(range(N_TRIALS)), "numbers: duplicates or gaps"
    assert states[TrialState.COMPLETE] + states[TrialState.PRUNED] == N_TRIALS
    assert states[TrialState.FAIL] == 0, [trial_record.read_error(t) for t in trials]
    assert states[TrialState.RUNNING] == 0 and states[TrialState.WAITING] == 0
    assert [trial_record.read_baseline(t) for t in trials].count("first model") == 1
    workers_seen = Counter(trial_record.read_placement(t).get("worker") for t in trials)
    assert len(workers_seen) == WORKERS, f"not every worker ran trials: {workers_seen}"
    assert sampler.samples, "pg_stat_activity was never sampled"
    assert sampler.peak <= bound, f"peak {sampler.peak} connections > bound {bound}"

    durations = sorted(
        (t.datetime_complete - t.datetime_start).total_seconds()
        for t in trials
        if t.datetime_start is not None and t.datetime_complete is not None
    )
    first = min(t.datetime_start for t in trials if t.datetime_start is not None)
    last = max(t.datetime_complete for t in trials if t.datetime_complete is not None)
    busy = (last - first).total_seconds()
    print(
        f"\nsoak: {WORKERS} workers, {N_TRIALS} trials ({states[TrialState.COMPLETE]} complete, "
        f"{states[TrialState.PRUNED]} pruned), wall {wall:.1f} s (first trial start to last "
        f"trial end {busy:.1f} s, {N_TRIALS / busy:.1f} trials/s); connections peak "
        f"{sampler.peak} (bound {bound}, {len(sampler.samples)} samples); per trial: "
        f"{WORKERS * busy / N_TRIALS * 1000:.0f} ms of a worker's time, "
        f"{cpu / N_TRIALS * 1000:.0f} ms of worker CPU (all {cpu:.1f} CPU-s incl. start-up), "
        f"start-to-end median {statistics.median(durations) * 1000:.0f} ms, "
        f"p95 {durations[int(0.95 * (len(durations) - 1))] * 1000:.0f} ms; "
        f"trials per worker {sorted(workers_seen.values())}"
    )
