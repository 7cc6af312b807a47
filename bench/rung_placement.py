"""Where may a pruner's first rung sit? Rank agreement of each epoch's mAP with the final one.

Draws `--n` settings at random from a study's `[space]` (plus its baselines with `--baselines`),
trains each to the study's full length with an evaluation after every epoch, `--parallel` at a
time with one torch thread each, and prints, for every epoch e, Spearman's rank correlation of
the trials' mAP50-95 at e with their final mAP50-95, and how many of the final top third are
still in the top third at e. A rung placed before the epoch where the correlation becomes high
ranks noise: it stops trials that would have ended among the best.

    uv run python -m bench.rung_placement --study loss-weights --n 10 --parallel 2
    # bench/results/rung_placement.json

Extra `TrainConfig` values for every trial: `--set epochs=20 --set model=small`.
"""

from __future__ import annotations

import argparse
import json
import math
import multiprocessing as mp
import os
import sys
import time
from pathlib import Path
from typing import Any

RESULTS = Path(__file__).parent / "results"


def _train_one(job: tuple[int, str, dict[str, Any], dict[str, Any]]) -> dict[str, Any]:
    index, label, config_values, _ = job
    from trainer.config import TrainConfig
    from trainer.fit import fit

    curve: list[dict[str, float]] = []
    started = time.monotonic()

    def report(step: int, metrics: Any) -> None:
        curve.append(
            {
                "epoch": step,
                "mAP50_95": metrics.eval.mAP50_95,
                "mAP50": metrics.eval.mAP50,
                "seconds": time.monotonic() - started,
            }
        )
        print(f"[{index} {label}] epoch {step} mAP50-95 {metrics.eval.mAP50_95:.4f}", flush=True)

    config = TrainConfig(**config_values)
    fit(config, report)
    return {"index": index, "label": label, "config": config.to_dict(), "curve": curve}


def spearman(xs: list[float], ys: list[float]) -> float:
    """Spearman's rank correlation (average ranks for ties)."""
    from search.confirm.stats import average_ranks

    rx, ry = average_ranks(xs), average_ranks(ys)
    mx, my = sum(rx) / len(rx), sum(ry) / len(ry)
    cov = sum((a - mx) * (b - my) for a, b in zip(rx, ry, strict=True))
    sx = math.sqrt(sum((a - mx) ** 2 for a in rx))
    sy = math.sqrt(sum((b - my) ** 2 for b in ry))
    return cov / (sx * sy) if sx > 0 and sy > 0 else float("nan")


def agreement(runs: list[dict[str, Any]]) -> list[dict[str, float]]:
    """Per epoch: Spearman with the final mAP, and the share of the final top third kept."""
    finals = [r["curve"][-1]["mAP50_95"] for r in runs]
    top = max(1, len(runs) // 3)
    final_top = set(sorted(range(len(runs)), key=lambda i: -finals[i])[:top])
    rows = []
    for e in range(len(runs[0]["curve"])):
        at_e = [r["curve"][e]["mAP50_95"] for r in runs]
        top_e = set(sorted(range(len(runs)), key=lambda i: -at_e[i])[:top])
        rows.append(
            {
                "epoch": runs[0]["curve"][e]["epoch"],
                "spearman": spearman(at_e, finals),
                "top_third_kept": len(top_e & final_top) / top,
                "median_mAP50_95": sorted(at_e)[len(at_e) // 2],
            }
        )
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--study", default="loss-weights")
    parser.add_argument("--n", type=int, default=10, help="random settings drawn from [space]")
    parser.add_argument("--baselines", action="store_true", help="also train the baselines")
    parser.add_argument("--parallel", type=int, default=2)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    parser.add_argument("--name", default="rung_placement")
    args = parser.parse_args()

    import optuna

    from search.study.study_file import load_study_file

    spec = load_study_file(args.study)
    extra: dict[str, Any] = {}
    for item in args.set:
        key, _, value = item.partition("=")
        try:
            extra[key] = json.loads(value)
        except json.JSONDecodeError:
            extra[key] = value  # a bare string: --set lr_decay=linear
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    draws = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=args.seed))
    jobs: list[tuple[int, str, dict[str, Any], dict[str, Any]]] = []
    if args.baselines:
        for b in spec.baselines:
            values = spec.train_config(b.as_dict(), threads=1, **extra).to_dict()
            jobs.append((len(jobs), b.label, values, {}))
    for _ in range(args.n):
        trial = draws.ask()
        params = spec.space.sample(trial)
        out = f"runs/bench/{args.name}/{len(jobs)}"
        values = spec.train_config(params, threads=1, out=out, seed=args.seed, **extra).to_dict()
        jobs.append((len(jobs), "random", values, params))
    started = time.monotonic()
    print(f"{len(jobs)} runs, {args.parallel} at a time, load {os.getloadavg()[0]:.1f}", flush=True)
    with mp.get_context("spawn").Pool(args.parallel) as pool:
        runs = pool.map(_train_one, jobs, chunksize=1)
    rows = agreement(runs)
    for row in rows:
        print(
            f"epoch {row['epoch']:>3}: spearman {row['spearman']:+.2f}  top third kept "
            f"{row['top_third_kept']:.0%}  median mAP50-95 {row['median_mAP50_95']:.4f}"
        )
    result = {
        "command": "python -m bench.rung_placement " + " ".join(sys.argv[1:]),
        "wall_seconds": time.monotonic() - started,
        "load_average_end": os.getloadavg(),
        "runs": runs,
        "agreement": rows,
    }
    RESULTS.mkdir(exist_ok=True)
    path = RESULTS / f"{args.name}.json"
    path.write_text(json.dumps(result, indent=1) + "\n")
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
