"""Reading a big study: the study load, `tune status` and `tune report` by trial-record layout.

    uv run python -m bench.study_load --existing 10000 --repeats 2 --skip-report --name 10k
    uv run python -m bench.study_load --existing 10000 --records compact --name 10k-report

What reading a study costs by the layout of tune's trial
records (`RECORDS`): for each layout a fresh database with N trials, then `--repeats` pairs of
fresh processes that each open the study and load its trials (`study.get_trials()`, a cold
cache, as a joining worker), one through tune's storage (`open_storage`, which reads trials with
plain SQL) and one through Optuna's own `RDBStorage` (its ORM); the fastest of each is kept. Then
as many runs of the real `tune status` and `tune report` commands (subprocesses: Python start-up
and imports included); `--records compact` measures tune's layout alone (no ratio to Optuna's
own load then), the quick way to time `tune status` and `tune report` on a big study.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import tempfile
import time
from pathlib import Path
from typing import Any

import optuna
import sqlalchemy as sa

from bench import load_average, machine, median, table, write_results
from bench.control_plane import (
    RECORDS,
    STUDY,
    bench_study_table,
    populate,
    throwaway_database,
)
from search.bookkeeping.optuna_compat import RDB_MODELS


def _load_process(url: str, out: str, loader: str) -> None:
    """In a fresh process (a cold cache, as a worker joining): open the study, load its trials,
    through tune's storage (`open_storage`: trials read with plain SQL) or Optuna's own."""
    from search.bookkeeping.storage import load_study, open_storage

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    started = time.perf_counter()
    if loader == "tune":
        study = load_study(open_storage(url), STUDY)
    else:
        study = optuna.load_study(study_name=STUDY, storage=url)  # Optuna's RDB storage, ORM
    opened = time.perf_counter()
    trials = study.get_trials(deepcopy=False)
    loaded = time.perf_counter()
    result = {"open_seconds": opened - started, "load_seconds": loaded - opened, "n": len(trials)}
    Path(out).write_text(json.dumps(result))


def _rows_per_table(storage: optuna.storages.RDBStorage) -> dict[str, int]:
    tables = {
        "trials": RDB_MODELS.TrialModel,
        "params": RDB_MODELS.TrialParamModel,
        "values": RDB_MODELS.TrialValueModel,
        "intermediate_values": RDB_MODELS.TrialIntermediateValueModel,
        "user_attrs": RDB_MODELS.TrialUserAttributeModel,
        "system_attrs": RDB_MODELS.TrialSystemAttributeModel,
    }
    with storage.engine.connect() as conn:
        return {
            name: int(conn.execute(sa.select(sa.func.count()).select_from(model)).scalar_one())
            for name, model in tables.items()
        }


def _timed_command(args: list[str], cwd: str) -> float:
    import subprocess
    import sys

    tune = Path(sys.executable).parent / "tune"
    command = [str(tune)] if tune.exists() else [sys.executable, "-m", "search.cli"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    started = time.perf_counter()
    subprocess.run([*command, *args], cwd=cwd, env=env, check=True, capture_output=True)
    return time.perf_counter() - started


def run_load(
    existing: int, records: str, repeats: int, epochs: int, report: bool = True
) -> dict[str, Any]:
    """Study load, `tune status` and `tune report` on `existing` trials laid out as `records`."""
    from search.bookkeeping.storage import open_storage
    from search.control.study_setup import prepare_study
    from search.study.study_file import parse_study

    with throwaway_database() as (url, database), tempfile.TemporaryDirectory() as tmp:
        storage = open_storage(url, create_schema=True)
        raw = bench_study_table("TPE", epochs)
        study = prepare_study(parse_study(raw, "bench", check_data=False), storage)
        populate(storage, study, existing, seed=existing, records=records)
        rows = _rows_per_table(storage)
        storage.engine.dispose()
        spawn = mp.get_context("spawn")
        loads: dict[str, list[dict[str, float]]] = {"tune": [], "optuna": []}
        for i in range(repeats):
            for loader, results in loads.items():
                out = str(Path(tmp) / f"load-{loader}-{i}.json")
                proc = spawn.Process(target=_load_process, args=(url, out, loader))
                proc.start()
                proc.join(1200)
                results.append(json.loads(Path(out).read_text()))
        cell: dict[str, Any] = {
            "records": records,
            "existing_trials": existing,
            "database": database,
            "rows": rows,
            "rows_per_trial": sum(rows.values()) / existing,
            "user_attr_rows_per_trial": rows["user_attrs"] / existing,
        }
        for loader, results in loads.items():
            seconds = [r["load_seconds"] for r in results]
            cell[f"{loader}_load_seconds"] = seconds
            cell[f"{loader}_load_min_s"] = min(seconds)
            cell[f"{loader}_load_ms_per_trial"] = 1000 * min(seconds) / existing
        if records != "none":  # a study without tune's attrs is no tune study to report on
            storage_args = ["--study", STUDY, "--storage", url]
            status = [_timed_command(["status", *storage_args], tmp) for _ in range(repeats)]
            cell.update(status_seconds=status, status_median_s=median(status))
        if records != "none" and report:
            reports = [
                _timed_command(["report", *storage_args, "-o", "report.html"], tmp)
                for _ in range(repeats)
            ]
            cell.update(
                report_seconds=reports,
                report_median_s=median(reports),
                report_mb=(Path(tmp) / "report.html").stat().st_size / 1e6,
            )
        cell["load_average"] = load_average()
    return cell


def main(argv: list[str] | None = None) -> dict[str, Any]:
    """The study-load cells, their table, bench/results/control_plane-load[-NAME].json."""
    parser = argparse.ArgumentParser(prog="python -m bench.study_load", description=__doc__)
    parser.add_argument("--existing", help="comma-separated trials in the study (default 10000)")
    parser.add_argument("--records", help=f"comma-separated layouts (default all: {RECORDS})")
    parser.add_argument("--repeats", type=int, default=3, help="runs of each timing")
    parser.add_argument("--skip-report", action="store_true", help="no `tune report`")
    parser.add_argument("--epochs", type=int, default=6, help="evaluations per trial")
    parser.add_argument("--out", type=Path, default=None, help="results folder")
    parser.add_argument("--name", default="", help="suffix of the results file name")
    args = parser.parse_args(argv)
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    sizes = [int(n) for n in (args.existing or "10000").split(",")]
    layouts = args.records.split(",") if args.records else list(RECORDS)
    unknown = set(layouts) - set(RECORDS)
    if unknown:
        raise SystemExit(f"--records: unknown layouts {sorted(unknown)} (known: {RECORDS})")
    cells = []
    for existing in sizes:
        for records in layouts:
            print(f"-- {existing} trials, {records} records ...", flush=True)
            cells.append(
                run_load(existing, records, args.repeats, args.epochs, not args.skip_report)
            )
    # the yardstick: Optuna's own load (its ORM) of the same trials without tune's attributes
    yardstick = {
        c["existing_trials"]: c["optuna_load_min_s"] for c in cells if c["records"] == "none"
    }
    ratio = {  # without the yardstick's cell (`--records compact`), no ratio
        id(c): f"{c['tune_load_min_s'] / yardstick[c['existing_trials']]:.2f}x"
        if c["existing_trials"] in yardstick
        else "-"
        for c in cells
    }
    print(
        table(
            [
                "records",
                "trials",
                "rows per trial (user attrs)",
                "tune's load ms per trial",
                "Optuna's own load ms per trial",
                "tune's load vs Optuna's own without tune's attrs",
                "tune status s",
                "tune report s",
                "report MB",
            ],
            [
                [
                    c["records"],
                    c["existing_trials"],
                    f"{c['rows_per_trial']:.1f} ({c['user_attr_rows_per_trial']:.1f})",
                    c["tune_load_ms_per_trial"],
                    c["optuna_load_ms_per_trial"],
                    ratio[id(c)],
                    c.get("status_median_s", "-"),
                    c.get("report_median_s", "-"),
                    c.get("report_mb", "-"),
                ]
                for c in cells
            ],
        )
    )
    payload = {
        "bench": "control_plane-load",
        "machine": machine(),
        "settings": {"epochs": args.epochs, "repeats": args.repeats},
        "cells": cells,
    }
    name = "control_plane-load" + (f"-{args.name}" if args.name else "")
    print(f"results: {write_results(name, payload, args.out)}")
    return payload


if __name__ == "__main__":
    main()
