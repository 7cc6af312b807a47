"""Chaos soak: rounds of a study whose workers are killed and whose database is stopped at random.

A soak of the reliability tests, longer than CI's, and with them here because it runs their
harness. Each round starts a PostgreSQL server of its own (`own_postgres.py`), runs the `smoke`
study with the fake trainer under `chaos.py`'s supervisor (SIGKILLs of random workers, fail
points right after trial creation and friends, database outages of 0.3 to 3 s), and checks what
CI's chaos tests check: the budget exactly, nothing RUNNING or WAITING, every reaped trial
retried with its parameters. The figures go to docs/reliability.md.

    uv run python -m tests.search.chaos_soak [--quick] [--rounds N] [--kills K] [--outages O]
        [--trials T]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from bench import load_average, machine, median, table, write_results
from tests.search.chaos import ChaosPlan, check_study, run_chaos
from tests.search.own_postgres import own_postgres_server


def one_round(plan: ChaosPlan) -> dict[str, Any]:
    """One study under `plan` on a fresh server: its figures, and whether its checks held."""
    with own_postgres_server() as server, tempfile.TemporaryDirectory() as tmp:

        def outage(seconds: float) -> None:
            server.stop()
            time.sleep(seconds)
            server.start()

        run = run_chaos(server.new_database(), Path(tmp), plan, outage)
        try:
            check_study(run, plan.n_trials)
            problem = None
        except AssertionError as exc:
            problem = str(exc).splitlines()[0][:300]
    finished = sum(t.state.name in ("COMPLETE", "PRUNED") for t in run.trials)
    return {
        "seed": plan.seed,
        "kills": sum(d.cause == "kill" for d in run.deaths),
        "failpoint_deaths": sum(d.cause == "failpoint" for d in run.deaths),
        "outages": len(run.outages),
        "trials": len(run.trials),
        "reaped_and_retried": len(run.lost()),
        "trials_lost": plan.n_trials - finished,
        "longest_running_after_death_s": run.longest_running_after_death(),
        "seconds": run.seconds,
        "checks": "held" if problem is None else f"FAILED: {problem}",
        "summary": run.summary(),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="one short round")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--kills", type=int, default=15, help="SIGKILLs per round")
    parser.add_argument("--outages", type=int, default=6, help="database stops per round")
    parser.add_argument("--trials", type=int, default=30, help="budget of each round's study")
    parser.add_argument("--workers", type=int, default=3)
    parser.add_argument("--seed", type=int, default=0, help="round i uses seed + i")
    args = parser.parse_args()
    if args.quick:
        args.rounds, args.kills, args.outages, args.trials = 1, 3, 1, 6
    load_before = load_average()
    rounds = []
    for i in range(args.rounds):
        plan = ChaosPlan(
            workers=args.workers,
            n_trials=args.trials,
            kills=args.kills,
            failpoint_deaths=args.kills // 2,
            outages=args.outages,
            time_limit=900.0,
            seed=args.seed + i,
        )
        result = one_round(plan)
        print(f"round {i + 1}/{args.rounds}: {result['checks']}; {result['summary']}", flush=True)
        rounds.append(result)
    columns = ["seed", "kills", "failpoint_deaths", "outages", "trials", "reaped_and_retried",
               "trials_lost", "longest_running_after_death_s", "seconds", "checks"]  # fmt: skip
    print(table(columns, [[r[c] for c in columns] for r in rounds]))
    totals = {
        "rounds": len(rounds),
        "deaths_survived": sum(r["kills"] + r["failpoint_deaths"] for r in rounds),
        "outages_survived": sum(r["outages"] for r in rounds),
        "trials_lost": sum(r["trials_lost"] for r in rounds),
        "rounds_whose_checks_failed": sum(r["checks"] != "held" for r in rounds),
        "longest_running_after_death_s": max(r["longest_running_after_death_s"] for r in rounds),
        "median_round_seconds": median([r["seconds"] for r in rounds]),
    }
    print(totals)
    path = write_results(
        "chaos",
        {
            "command": " ".join(["uv run python -m tests.search.chaos_soak", *sys.argv[1:]]),
            "args": vars(args),
            "machine": machine(),
            "load_average_before": load_before,
            "rounds": rounds,
            "totals": totals,
        },
    )
    print(f"results: {path}")


if __name__ == "__main__":
    main()
