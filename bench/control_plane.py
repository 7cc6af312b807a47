"""Control-plane overhead: what the study service costs per trial, with training taken away.

    uv run python -m bench.control_plane            # 1, 8, 32 workers x 100, 1,000, 10,000 trials
    uv run python -m bench.control_plane --quick    # 1 and 4 workers x 100 trials

Two more benchmarks use its pieces: `bench/study_load.py` (reading a big study) and
`bench/trial_starts.py` (trial starts a second by worker count).

Each cell of the grid gets a fresh PostgreSQL database (created and dropped here, like the tests'
`pg_url`), a study made by `search.control.study_setup.prepare_study` from
`studies/loss-weights.toml` (no baselines, the sampler chosen by `--sampler`, Hyperband as in the
study file), N finished trials bulk-inserted through Optuna's own table models (with the params,
intermediate values and user attrs a real trial carries), then W worker processes that run the
REAL worker loop (`search.running.worker.run_worker`) with a trivial training function: it
reports one evaluation per
epoch and returns at once, so everything left is control plane.

How each call is timed (inside the worker processes, with `time.perf_counter`):

- study load: a worker reads the whole study into Optuna's per-process trial cache once, before
  its first trial and outside the study lock (`WorkerStats.study_load_seconds`); later reads
  fetch only what changed;
- ask: `optuna.Study.ask` wrapped (what a worker calls to create and number a trial, sampler
  included). A worker's first ask is shown apart (it runs once the worker's trial cache
  is filled; a slow one means the study was read under the lock);
- report: the trivial trainer times its own `report(step, metrics)` callback, which is tune's
  (`record_eval`: curve user attr + `trial.report`, then `trial.should_prune`);
- tell: `optuna.Study.tell` wrapped (what a worker calls to tell a trial's end);
- budget check and lock wait: tune's `ManagedStudy.budget_use` and `StudyLock.acquire`, wrapped;
- numbering: SQLAlchemy cursor events time Optuna's `count(trials.trial_id) ... trial_id < ?`
  statement, which `ask` runs while holding the study row lock. The same query is also timed
  alone (no other load) after each cell, to show its growth with the study.

Connections in use: `pg_stat_activity` rows for the benchmark database, sampled every 0.25 s.

"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import multiprocessing as mp
import os
import random
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import optuna
import sqlalchemy as sa
from optuna.trial import TrialState

from bench import ConnectionSampler, load_average, machine, median, percentile, table, write_results
from search.bookkeeping.optuna_compat import RDB_MODELS
from trainer.config import TrainConfig
from trainer.records import EvalLine, EvalReport, FitResult, TrainLine

ADMIN_URL = os.environ.get(
    "TUNE_BENCH_PG",
    os.environ.get("TUNE_TEST_PG", "postgresql+psycopg2://postgres@127.0.0.1:5432/postgres"),
)
STUDY = "loss-weights"
CALLS = ("ask", "report", "tell", "numbering", "budget_check", "lock_wait", "lock_held")
_TIMINGS: dict[str, list[float]] = {name: [] for name in CALLS}
_HOLD = [0.0]  # seconds each trivial epoch waits (set in a worker process by `--starts` cells)


# --- the trivial trainer (runs inside the worker processes) -------------------------------------


def trivial_fit(
    config: TrainConfig,
    report: Callable[[int, EvalReport], None] | None = None,
    data: Any = None,
) -> FitResult:
    """A `fit` that trains nothing: one report per epoch, a score made from the loss weights.
    In `--starts` cells each epoch first waits `_HOLD[0]` seconds (a trial that holds its slot)."""
    score = 0.5 / (1.0 + abs(math.log(config.lcls / 0.1)) + abs(math.log(config.lbox / 0.5)))
    for epoch in range(1, config.epochs + 1):
        time.sleep(_HOLD[0])
        value = score * epoch / config.epochs
        metrics = _eval_report(epoch, value, config.lr)
        if report is not None:
            started = time.perf_counter()
            try:
                report(epoch, metrics)
            finally:
                _TIMINGS["report"].append(time.perf_counter() - started)
    return FitResult(
        mAP50=score * 1.5,
        mAP50_95=score,
        inference_ms=1.0,
        train_latency=0.0,
        epochs_completed=config.epochs,
        iterations=config.epochs * 37,
        images_per_second=0.0,
        seconds_training=0.0,
        seconds_evaluating=0.0,
        device="cpu",
        run_dir=config.out,
    )


def _eval_report(epoch: int, value: float, lr: float) -> EvalReport:
    # the same shape as a real 64-128 px epoch: two logged training lines and one evaluation
    it = epoch * 37
    lines = [TrainLine(epoch - 1, it - 37 + k, lr, 1.0, 0.3, 0.4, 0.3, 0.1) for k in (1, 20)]
    evaluation = EvalLine(epoch, it, value * 1.5, value, 0.3, 0.4, 0.3, 1.0)
    return EvalReport(eval=evaluation, train=lines, seconds_training=0.0, seconds_evaluating=0.0)


def _timed(name: str, fn: Callable[..., Any]) -> Callable[..., Any]:
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        started = time.perf_counter()
        try:
            return fn(*args, **kwargs)
        finally:
            _TIMINGS[name].append(time.perf_counter() - started)

    return wrapper


def _time_exclusive_holds(lock_class: Any) -> None:
    """`lock_held`: how long each exclusive study lock is held, acquire to first release (the
    serialised part of a start; a shared claim serialises nothing)."""
    acquire, release = lock_class.acquire, lock_class.release

    def timed_acquire(lock: Any) -> Any:
        result = acquire(lock)
        lock.bench_held_since = time.perf_counter()
        return result

    def timed_release(lock: Any) -> None:
        since = lock.__dict__.pop("bench_held_since", None)
        if since is not None and not lock._shared:
            _TIMINGS["lock_held"].append(time.perf_counter() - since)
        release(lock)

    lock_class.acquire, lock_class.release = timed_acquire, timed_release


def _instrument() -> None:
    """Wrap the calls we time; only ever done inside a benchmark worker process."""
    from search.bookkeeping.study_lock import StudyLock
    from search.control.study_manager import ManagedStudy

    optuna.Study.ask = _timed("ask", optuna.Study.ask)  # type: ignore[method-assign]
    optuna.Study.tell = _timed("tell", optuna.Study.tell)  # type: ignore[method-assign]
    budget_use = _timed("budget_check", ManagedStudy.budget_use)
    ManagedStudy.budget_use = budget_use  # type: ignore[method-assign]
    StudyLock.acquire = _timed("lock_wait", StudyLock.acquire)  # type: ignore[method-assign]
    _time_exclusive_holds(StudyLock)

    def before(conn: Any, cursor: Any, statement: str, *args: Any) -> None:
        if "count(trials.trial_id)" in statement and "trials.trial_id <" in statement:
            conn.info["numbering_started"] = time.perf_counter()

    def after(conn: Any, cursor: Any, statement: str, *args: Any) -> None:
        started = conn.info.pop("numbering_started", None)
        if started is not None:
            _TIMINGS["numbering"].append(time.perf_counter() - started)

    sa.event.listen(sa.engine.Engine, "before_cursor_execute", before)
    sa.event.listen(sa.engine.Engine, "after_cursor_execute", after)


def _worker_process(
    url: str, index: int, out: str, ready: Any, go: Any, fast_starts: bool, hold: float
) -> None:
    """One benchmark worker: instrument, wait for the others, run the real worker loop."""
    from search.bookkeeping.storage import StorageSettings
    from search.running.worker import WorkerOptions, run_worker
    from search.trainers.builtin import TuneTrainer

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    _instrument()
    _HOLD[0] = hold
    ready.put(index)
    go.wait(600)
    errors: list[str] = []
    options = WorkerOptions(
        worker_index=index,
        threads=1,
        runs_dir=Path(tempfile.mkdtemp(prefix="tune-bench-")),
        settings=StorageSettings(pool_size=2, max_overflow=2),
        poll_interval=0.2,
        timeout=900,
        fast_starts=fast_starts,
        handle_signals=False,
        log=lambda line: errors.append(line) if "failed" in line or "error" in line else None,
    )
    stats = run_worker(STUDY, url, options, trainer=TuneTrainer(trivial_fit))
    result = {
        "timings": _TIMINGS,
        "wall_seconds": stats.wall_seconds,
        "study_load_seconds": stats.study_load_seconds,
        "trials": stats.trials.complete + stats.trials.pruned,
        "started_racing": stats.trials.started_racing,
        "failed": stats.trials.failed,
        "stopped_because": stats.stopped_because,
        "log": errors[:5],
    }
    Path(out).write_text(json.dumps(result))


# --- the grid (runs in the benchmark's own process) ---------------------------------------------


@contextlib.contextmanager
def throwaway_database(admin_url: str = ADMIN_URL) -> Iterator[tuple[str, str]]:
    """A fresh PostgreSQL database `(url, name)`, dropped afterwards (as tests/conftest.py)."""
    admin = sa.create_engine(admin_url, isolation_level="AUTOCOMMIT")
    name = f"tune_bench_{uuid.uuid4().hex[:12]}"
    with admin.connect() as conn:
        conn.execute(sa.text(f'CREATE DATABASE "{name}"'))
    try:
        yield admin_url.rsplit("/", 1)[0] + f"/{name}", name
    finally:
        with admin.connect() as conn:
            conn.execute(sa.text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


def bench_study_table(sampler: str, epochs: int) -> dict[str, Any]:
    """studies/loss-weights.toml as a table, without baselines or a start trial, with `sampler`
    and `epochs`."""
    from search.study.study_file import Overrides, apply_overrides, read_study_table

    # through the overrides, as `--epochs` does: a first rung beyond `epochs` moves to its end
    raw = apply_overrides(read_study_table(STUDY)[0], Overrides(epochs=epochs))
    raw.pop("baselines", None)
    # every measured trial sampled: no start trial with the trainer's defaults either
    raw["sampler"] = {**raw.get("sampler", {}), "type": sampler, "start_from_defaults": False}
    raw["trial"] = {**raw["trial"], "device": "cpu"}
    raw["budget"] = {"n_trials": 1}
    return raw


RECORDS = ("compact", "none")  # tune's layout, Optuna's rows only


def populate(
    storage: optuna.storages.RDBStorage,
    study: optuna.Study,
    n: int,
    seed: int,
    records: str = "compact",
) -> None:
    """Insert `n` finished trials (1 in 3 COMPLETE, the others PRUNED) in a few bulk statements.

    Each carries what a tune trial carries: ten params, one intermediate value per epoch reached,
    a value, and tune's user attrs laid out as `records` says: "compact"
    (`search.bookkeeping.trial_record`: the curve in segments, placement in one attribute, the
    config and, if complete, the summary) or "none" (Optuna's own rows only, the yardstick for the
    study load).
    """
    from search.bookkeeping import trial_record
    from search.study.study_file import parse_study

    spec = parse_study(trial_record.read_study_spec(study) or {}, "bench")
    probe = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=seed))
    rng = random.Random(seed)
    study_id = storage.get_study_id_from_name(study.study_name)
    epochs = spec.trial.epochs
    start = datetime(2024, 1, 1)
    trials, params, values, steps, attrs = [], [], [], [], []
    # after the trials the study already has (launch may have enqueued a start trial): two trials
    # with one number collide in Optuna's trial cache, and the budget miscounts by one
    first = len(study.get_trials(deepcopy=False))
    for number in range(first, first + n):
        trial = probe.ask()
        drawn = spec.space.sample(trial)
        probe.tell(trial, 0.0)
        complete = number % 3 == 0
        reached = epochs if complete else rng.randint(1, max(1, epochs - 1))
        score = rng.uniform(0.0, 0.4)
        trials.append(
            {
                "number": number,
                "study_id": study_id,
                "state": TrialState.COMPLETE if complete else TrialState.PRUNED,
                "datetime_start": start + timedelta(minutes=number),
                "datetime_complete": start + timedelta(minutes=number, seconds=50),
            }
        )
        config = spec.train_config(drawn, out=f"runs/trial-{number:04d}").to_dict()
        points = [
            _eval_report(step, score * step / epochs, config["lr"]).to_dict()
            for step in range(1, reached + 1)
        ]
        placement = {"host": "bench", "device": "cpu", "worker": "bench:0"}
        user: dict[str, Any] = {}
        if records == "compact":
            user = {"config": config, trial_record.PLACEMENT: placement}
            user.update(trial_record.curve_attrs(points))
        if complete and records != "none":
            user["summary"] = trivial_fit(TrainConfig(**{**config, "epochs": 1})).to_dict()
        params.append([(k, trial.distributions[k], v) for k, v in drawn.items()])
        values.append(score if complete else None)
        steps.append([(s, score * s / epochs) for s in range(1, reached + 1)])
        attrs.append(user)
    _bulk_insert(storage, trials, params, values, steps, attrs)


def _bulk_insert(
    storage: optuna.storages.RDBStorage,
    trials: list[dict[str, Any]],
    params: list[list[tuple[str, Any, Any]]],
    values: list[float | None],
    steps: list[list[tuple[int, float]]],
    attrs: list[dict[str, Any]],
) -> None:
    trial_table = RDB_MODELS.TrialModel.__table__
    finite = RDB_MODELS.TrialValueModel.TrialValueType.FINITE
    finite_step = RDB_MODELS.TrialIntermediateValueModel.TrialIntermediateValueType.FINITE
    with storage.engine.begin() as conn:
        ids = list(
            conn.execute(
                sa.insert(trial_table).returning(
                    trial_table.c.trial_id, sort_by_parameter_order=True
                ),
                trials,
            ).scalars()
        )
        param_rows, value_rows, step_rows, attr_rows = [], [], [], []
        for trial_id, drawn, value, reached, user in zip(
            ids, params, values, steps, attrs, strict=True
        ):
            for name, dist, raw in drawn:
                param_rows.append(
                    {
                        "trial_id": trial_id,
                        "param_name": name,
                        "param_value": dist.to_internal_repr(raw),
                        "distribution_json": optuna.distributions.distribution_to_json(dist),
                    }
                )
            if value is not None:
                value_rows.append(
                    {"trial_id": trial_id, "objective": 0, "value": value, "value_type": finite}
                )
            for step, v in reached:
                step_rows.append(
                    {
                        "trial_id": trial_id,
                        "step": step,
                        "intermediate_value": v,
                        "intermediate_value_type": finite_step,
                    }
                )
            for key, v in user.items():
                attr_rows.append({"trial_id": trial_id, "key": key, "value_json": json.dumps(v)})
        conn.execute(sa.insert(RDB_MODELS.TrialParamModel.__table__), param_rows)
        if value_rows:
            conn.execute(sa.insert(RDB_MODELS.TrialValueModel.__table__), value_rows)
        conn.execute(sa.insert(RDB_MODELS.TrialIntermediateValueModel.__table__), step_rows)
        if attr_rows:
            conn.execute(sa.insert(RDB_MODELS.TrialUserAttributeModel.__table__), attr_rows)


def numbering_query_alone(storage: optuna.storages.RDBStorage, repeats: int = 30) -> list[float]:
    """Seconds of Optuna's numbering query (as in `count_past_trials`) for the newest trial."""
    trial = RDB_MODELS.TrialModel
    seconds = []
    with storage.engine.connect() as conn:
        study_id, last = conn.execute(
            sa.select(trial.study_id, sa.func.max(trial.trial_id)).group_by(trial.study_id)
        ).one()
        query = sa.select(sa.func.count(trial.trial_id)).where(
            trial.study_id == study_id, trial.trial_id < last
        )
        for _ in range(repeats):
            started = time.perf_counter()
            conn.execute(query).scalar_one()
            seconds.append(time.perf_counter() - started)
    return seconds


@contextlib.contextmanager
def proxy_in_front(url: str, folder: str) -> Iterator[str]:
    """A `tune proxy` subprocess serving `url` on a free port; its `grpc://` URL. A fresh token
    is in this process's environment meanwhile, for the proxy and the workers it starts."""
    import secrets
    import socket
    import subprocess
    import sys

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    log = Path(folder) / "proxy.log"
    tune = Path(sys.executable).parent / "tune"
    command = [str(tune)] if tune.exists() else [sys.executable, "-m", "search.cli"]
    previous_token = os.environ.get("TUNE_PROXY_TOKEN")
    os.environ["TUNE_PROXY_TOKEN"] = secrets.token_hex(16)
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [*command, "proxy", "--storage", url, "--port", str(port)],
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    try:
        deadline = time.monotonic() + 120
        while "tune proxy for" not in log.read_text():
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"tune proxy did not start: {log.read_text()[-500:]}")
            time.sleep(0.2)
        yield f"grpc://127.0.0.1:{port}"
    finally:
        proc.terminate()
        proc.wait(30)
        if previous_token is None:
            os.environ.pop("TUNE_PROXY_TOKEN", None)
        else:
            os.environ["TUNE_PROXY_TOKEN"] = previous_token


def run_cell(
    workers: int,
    existing: int,
    trials_per_worker: int,
    sampler: str,
    epochs: int,
    proxy: bool = False,
    fast_starts: bool = True,
    hold: float = 0.0,
) -> dict[str, Any]:
    """One grid cell: fresh database, `existing` trials, `workers` processes; the measurements.
    With `proxy`, the workers reach the database through a `tune proxy`; `fast_starts=False`
    takes the exclusive study lock for every start (the comparison for shared starts); `hold`:
    seconds each trivial epoch waits."""
    from search.bookkeeping import trial_record
    from search.bookkeeping.storage import open_storage
    from search.control.study_manager import ManagedStudy
    from search.control.study_setup import prepare_study
    from search.study.study_file import parse_study

    with throwaway_database() as (url, database):
        storage = open_storage(url, create_schema=True)
        raw = bench_study_table(sampler, epochs)
        study = prepare_study(parse_study(raw, "bench", check_data=False), storage)
        started = time.perf_counter()
        populate(storage, study, existing, seed=existing + workers)
        populate_seconds = time.perf_counter() - started
        managed = ManagedStudy(study, storage)
        study_id = managed.id
        before = managed.counts().finished
        budget = before + workers * trials_per_worker
        raw["budget"] = {"n_trials": budget}
        trial_record.record_study_spec(study, raw)

        spawn = mp.get_context("spawn")
        ready, go = spawn.Queue(), spawn.Event()
        with tempfile.TemporaryDirectory() as tmp, contextlib.ExitStack() as stack:
            worker_url = stack.enter_context(proxy_in_front(url, tmp)) if proxy else url
            outs = [str(Path(tmp) / f"worker-{i}.json") for i in range(workers)]
            procs = [
                spawn.Process(
                    target=_worker_process,
                    args=(worker_url, i, outs[i], ready, go, fast_starts, hold),
                )
                for i in range(workers)
            ]
            for p in procs:
                p.start()
            for _ in procs:
                ready.get(timeout=600)
            load = load_average()
            with ConnectionSampler(ADMIN_URL, database) as connections:
                wall_started = time.perf_counter()
                go.set()
                for p in procs:
                    p.join(1200)
                wall = time.perf_counter() - wall_started
            results = [json.loads(Path(o).read_text()) for o in outs if Path(o).is_file()]
        counts = managed.counts()
        starts = sorted(
            t.datetime_start.timestamp()
            for t in storage.get_all_trials(study_id, deepcopy=False)
            if t.number >= existing and t.datetime_start is not None
        )
        alone = numbering_query_alone(storage)
        storage.engine.dispose()

    # A worker's first ask is shown apart, not mixed into p95 (it used to read the whole study;
    # the worker now does that before its first trial, timed as the study load).
    timings: dict[str, list[float]] = {name: [] for name in CALLS}
    first_asks = [r["timings"]["ask"][0] for r in results if r["timings"]["ask"]]
    for result in results:
        for name in CALLS:
            timings[name] += (
                result["timings"][name][1:] if name == "ask" else result["timings"][name]
            )
    done = sum(r["trials"] for r in results)
    cell: dict[str, Any] = {
        "workers": workers,
        "proxy": proxy,
        "existing_trials": existing,
        "database": database,
        "trials_measured": done,
        "trials_failed": counts.fail,
        "workers_finished": len(results),
        "exit_codes": [p.exitcode for p in procs],
        "populate_seconds": populate_seconds,
        "wall_seconds": wall,
        "trials_per_second": done / wall if wall > 0 else math.nan,
        "fast_starts": fast_starts,
        "hold_seconds": hold,
        "budget_trials": budget,
        "finished_trials": counts.finished,
        "trials_created": len(starts),
        # trial starts a second, from the first measured trial's start to the last one's
        "starts_per_second": (len(starts) - 1) / (starts[-1] - starts[0])
        if len(starts) > 1 and starts[-1] > starts[0]
        else math.nan,
        "started_racing": sum(r["started_racing"] for r in results),
        "connections_max": max(connections.samples, default=0),
        "connections_median": median(connections.samples),
        "numbering_alone_ms": 1000 * median(alone),
        "load_average": load,
        "worker_logs": [line for r in results for line in r["log"]][:5],
    }
    # ... which the worker now does before its first trial, outside the study lock
    loads = [r["study_load_seconds"] for r in results]
    cell["study_load_median_ms"] = 1000 * median(loads)
    cell["study_load_max_ms"] = 1000 * max(loads, default=math.nan)
    cell["ask_first_median_ms"] = 1000 * median(first_asks)
    cell["ask_first_max_ms"] = 1000 * max(first_asks, default=math.nan)
    cell["raw_seconds"] = [r["timings"] for r in results]
    for name in CALLS:
        cell[f"{name}_n"] = len(timings[name])
        cell[f"{name}_median_ms"] = 1000 * median(timings[name])
        cell[f"{name}_p95_ms"] = 1000 * percentile(timings[name], 95)
    return cell


def main(argv: list[str] | None = None) -> dict[str, Any]:
    """Run the grid, print the tables, write bench/results/control_plane[-quick].json."""
    parser = argparse.ArgumentParser(prog="python -m bench.control_plane", description=__doc__)
    parser.add_argument("--quick", action="store_true", help="1 and 4 workers, 100 trials")
    parser.add_argument("--workers", help="comma-separated worker counts (default 1,8,32)")
    parser.add_argument("--existing", help="comma-separated trials already in the study")
    parser.add_argument(
        "--samples", type=int, default=24, help="trials measured per cell, at least"
    )
    parser.add_argument("--sampler", choices=("Random", "TPE"), default="TPE")
    parser.add_argument("--epochs", type=int, default=6, help="reports per trial (epochs)")
    parser.add_argument("--out", type=Path, default=None, help="results folder")
    parser.add_argument("--name", default="", help="suffix of the results file name")
    parser.add_argument(
        "--proxy", action="store_true", help="the grid's workers go through a `tune proxy`"
    )
    args = parser.parse_args(argv)
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    default_workers, default_existing = (
        ("1,4", "100") if args.quick else ("1,8,32", "100,1000,10000")
    )
    worker_counts = [int(w) for w in (args.workers or default_workers).split(",")]
    sizes = [int(n) for n in (args.existing or default_existing).split(",")]

    cells = []
    for existing in sizes:
        for workers in worker_counts:
            per_worker = max(2, math.ceil(args.samples / workers))
            print(f"-- {workers} worker(s), {existing} trials in the study ...", flush=True)
            cell = run_cell(workers, existing, per_worker, args.sampler, args.epochs, args.proxy)
            print(
                f"   {cell['trials_measured']} trials in {cell['wall_seconds']:.1f} s, "
                f"ask median {cell['ask_median_ms']:.1f} ms, load {cell['load_average'][0]:.2f}",
                flush=True,
            )
            cells.append(cell)

    print(_tables(cells))
    payload = {
        "bench": "control_plane",
        "mode": "quick" if args.quick else "full",
        "machine": machine(),
        "settings": {"sampler": args.sampler, "epochs": args.epochs, "samples": args.samples},
        "cells": cells,
    }
    name = "control_plane" + ("-quick" if args.quick else "")
    name += "" if args.sampler == "TPE" else f"-{args.sampler.lower()}"
    name += "-proxy" if args.proxy else ""
    name += f"-{args.name}" if args.name else ""
    print(f"results: {write_results(name, payload, args.out)}")
    return payload


def _tables(cells: list[dict[str, Any]]) -> str:
    latency = table(
        [
            "workers",
            "trials in study",
            "study load ms (median / max over workers)",
            "first ask ms (median over workers)",
            "later asks median / p95 ms",
            "report median / p95 ms",
            "tell median / p95 ms",
            "trials/s",
            "connections max",
            "load avg",
        ],
        [
            [
                c["workers"],
                c["existing_trials"],
                f"{c['study_load_median_ms']:.0f} / {c['study_load_max_ms']:.0f}",
                c["ask_first_median_ms"],
                f"{c['ask_median_ms']:.1f} / {c['ask_p95_ms']:.1f}",
                f"{c['report_median_ms']:.1f} / {c['report_p95_ms']:.1f}",
                f"{c['tell_median_ms']:.1f} / {c['tell_p95_ms']:.1f}",
                c["trials_per_second"],
                c["connections_max"],
                c["load_average"][0],
            ]
            for c in cells
        ],
    )
    tune_side = table(
        [
            "workers",
            "trials in study",
            "numbering in ask median / p95 ms",
            "numbering query alone ms",
            "budget check median ms",
            "lock wait median / p95 ms",
            "failed",
        ],
        [
            [
                c["workers"],
                c["existing_trials"],
                f"{c['numbering_median_ms']:.2f} / {c['numbering_p95_ms']:.2f}",
                c["numbering_alone_ms"],
                c["budget_check_median_ms"],
                f"{c['lock_wait_median_ms']:.1f} / {c['lock_wait_p95_ms']:.1f}",
                c["trials_failed"],
            ]
            for c in cells
        ],
    )
    return latency + "\n\n" + tune_side


if __name__ == "__main__":
    main()
