"""Trial starts a second by worker count: every start under the exclusive study lock, against
starts that hold it shared (`search/control/start_gate.py`), each count twice side by side, with
the control-plane benchmark's workers (`bench/control_plane.py`) and a trivial trainer whose
trials hold their slot `--hold` seconds.

    uv run python -m bench.trial_starts --workers 1,8,32 --samples 64 --name grid
    uv run python -m bench.trial_starts --proxy --workers 32,64 --samples 128 --name grid
"""

from __future__ import annotations

import argparse
import math
from pathlib import Path
from typing import Any

import optuna

from bench import machine, table, write_results
from bench.control_plane import run_cell


def main(argv: list[str] | None = None) -> dict[str, Any]:
    """The cells, their table, bench/results/control_plane-starts[-proxy][-NAME].json."""
    parser = argparse.ArgumentParser(prog="python -m bench.trial_starts", description=__doc__)
    parser.add_argument("--workers", help="comma-separated worker counts (default 1,8,32)")
    parser.add_argument("--existing", help="trials already in the study (default 100)")
    parser.add_argument("--samples", type=int, default=24, help="trials started per cell, about")
    parser.add_argument("--sampler", choices=("Random", "TPE"), default="TPE")
    parser.add_argument("--hold", type=float, default=1.0, help="seconds a trial holds its slot")
    parser.add_argument("--proxy", action="store_true", help="the workers go through `tune proxy`")
    parser.add_argument("--out", type=Path, default=None, help="results folder")
    parser.add_argument("--name", default="", help="suffix of the results file name")
    args = parser.parse_args(argv)
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    worker_counts = [int(w) for w in (args.workers or "1,8,32").split(",")]
    existing = int(args.existing or 100)
    cells: list[dict[str, Any]] = []
    for workers in worker_counts:
        per_worker = max(3, math.ceil(args.samples / workers))
        # alternate which mode runs first, so that a drift in the machine's load favours neither
        modes = (False, True) if len(cells) % 4 == 0 else (True, False)
        for fast in modes:
            label = "shared" if fast else "exclusive"
            print(f"-- {workers} worker(s), starts {label} ...", flush=True)
            cell = run_cell(
                workers, existing, per_worker, args.sampler, 1, args.proxy, fast, args.hold
            )
            print(
                f"   {cell['trials_created']} trials ({cell['budget_trials'] - existing} "
                f"budgeted), {cell['starts_per_second']:.2f} starts/s, "
                f"load {cell['load_average'][0]:.2f}",
                flush=True,
            )
            cells.append(cell)
    print(_starts_table(cells))
    payload = {
        "bench": "control_plane",
        "mode": "starts",
        "machine": machine(),
        "settings": {
            "sampler": args.sampler,
            "hold_seconds": args.hold,
            "samples": args.samples,
            "existing": existing,
            "proxy": args.proxy,
        },
        "cells": cells,
    }
    name = "control_plane-starts" + ("-proxy" if args.proxy else "")
    name += f"-{args.name}" if args.name else ""
    print(f"results: {write_results(name, payload, args.out)}")
    return payload


def _starts_table(cells: list[dict[str, Any]]) -> str:
    rows = []
    for workers in dict.fromkeys(c["workers"] for c in cells):
        pair = {c["fast_starts"]: c for c in cells if c["workers"] == workers}
        locked, shared = pair.get(False), pair.get(True)
        if locked is None or shared is None:
            continue
        rows.append(
            [
                workers,
                locked["starts_per_second"],
                shared["starts_per_second"],
                f"{shared['starts_per_second'] / locked['starts_per_second']:.1f}x",
                f"{locked['lock_wait_p95_ms']:.0f} / {shared['lock_wait_p95_ms']:.0f}",
                f"{locked['lock_wait_median_ms']:.0f} / {shared['lock_wait_median_ms']:.0f}",
                f"{locked['lock_held_median_ms']:.0f}",
                f"{shared['started_racing']} of {shared['trials_created']}",
                " / ".join(
                    f"{c['trials_created']}/{c['budget_trials'] - c['existing_trials']}"
                    for c in (locked, shared)
                ),
                max(locked["connections_max"], shared["connections_max"]),
                f"{locked['load_average'][0]:.1f} / {shared['load_average'][0]:.1f}",
            ]
        )
    return table(
        [
            "workers",
            "starts/s, exclusive lock",
            "starts/s, shared",
            "ratio",
            "lock wait p95 ms (exclusive / shared)",
            "lock wait median ms (exclusive / shared)",
            "exclusive lock held median ms",
            "started racing",
            "trials / budget (exclusive / shared)",
            "connections max",
            "load avg (exclusive / shared)",
        ],
        rows,
    )


if __name__ == "__main__":
    main()
