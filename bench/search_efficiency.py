"""Search efficiency: best validation mAP50-95 against training iterations spent, per method.

    uv run python -m bench.search_efficiency            # the loss-weights study as it is, 3 seeds
    uv run python -m bench.search_efficiency --quick    # a smaller, shorter problem, 2 seeds
    uv run python -m bench.search_efficiency --merge A.json B.json   # runs made apart, one table

Methods, all on the built-in `shapes` data set, each through the search package's own objective
(`search.objective.make_objective`) and the real trainer (`trainer.fit.fit`), the data loaded
once, in this process (one worker, one torch thread), one SQLite study per method and seed:

- hand-tuned: the five `[[baselines]]` of `studies/loss-weights.toml`, full length, in order
  (the trainer's seed is fixed, so this is one run whatever the sampler seed);
- random: `RandomSampler`, no pruning;
- tpe: `TPESampler` as the study file sets it (multivariate, constant liar, n_startup_trials),
  no pruning;
- tpe+hyperband: the loss-weights default, TPE with tune's Hyperband over epochs
  (`search/pruning.py`);
- tpe+hyperband-at-once (only when named in --methods): the same with `n_min_trials = 1`, so a
  rung decides from its first value (Optuna's own Hyperband; the default before n_min_trials).

The search methods start from nothing (no baselines enqueued): otherwise they would "match" the
best hand-tuned setting by running it. Each method runs trials until it has spent the budget, in
training iterations (a pruned trial costs the iterations it ran). The best mAP50-95 at a budget
counts only COMPLETE trials that ended within it. Writes bench/results/search_efficiency[-quick]
.json and .html (a Plotly figure).
"""

from __future__ import annotations

import argparse
import json
import math
import multiprocessing
import tempfile
import time
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import optuna
from optuna.trial import TrialState

from bench import load_average, machine, median, table, write_results

STUDY = "loss-weights"
METHODS: dict[str, tuple[str, str, dict[str, Any]]] = {  # name -> (sampler, pruner, its settings)
    "random": ("Random", "none", {}),
    "tpe": ("TPE", "none", {}),
    "tpe+hyperband": ("TPE", "Hyperband", {}),
    # not run unless named: Hyperband deciding from a rung's first value (n_min_trials 1, Optuna's
    # own behaviour), the loss-weights default before n_min_trials
    "tpe+hyperband-at-once": ("TPE", "Hyperband", {"n_min_trials": 1}),
}
DEFAULT_METHODS = ("random", "tpe", "tpe+hyperband")
HAND_TUNED = "hand-tuned"


@dataclass(frozen=True)
class Settings:
    """One benchmark configuration (everything that changes the numbers)."""

    imgsz: int = 128
    epochs: int = 4  # studies/loss-weights.toml's trial length (checked in main)
    batch: int = 32
    train_images: int = 1200
    val_images: int = 250
    budget_trials: int = 24  # the budget, in full-length trials' worth of iterations
    seeds: int = 3
    n_startup_trials: int | None = None  # None: the study file's
    baselines: int = 5  # how many of the hand-tuned settings to run (all five but in smoke tests)
    device: str = "cpu"


# Sized for ~15-25 minutes on two busy cores; TPE's start-up shortened so it can model at all.
QUICK = Settings(
    imgsz=96, epochs=3, batch=16, val_images=100, budget_trials=4, seeds=2, n_startup_trials=3
)


@dataclass
class TrialRow:
    """One trial as the benchmark sees it."""

    number: int
    state: str
    value: float | None
    iterations: int
    spent: int  # cumulative iterations of this study after this trial
    seconds: float
    label: str | None = None


def _study_table(settings: Settings, data: str, method: str, seed: int) -> dict[str, Any]:
    from search.study_file import Overrides, apply_overrides, read_study_table

    raw = apply_overrides(read_study_table(STUDY)[0], Overrides(epochs=settings.epochs, data=data))
    raw["name"] = f"bench-{method.replace('+', '-')}-{seed}"
    raw["trial"] = {
        **raw["trial"],
        "imgsz": settings.imgsz,
        "batch": settings.batch,
        "device": settings.device,
    }
    raw["budget"] = {"n_trials": 100_000}  # this benchmark stops on iterations, not trials
    if method == HAND_TUNED:
        raw["baselines"] = raw["baselines"][: settings.baselines]
        raw["pruner"] = {"type": "none"}
        raw["budget"] = {"n_trials": len(raw["baselines"])}
        return raw
    raw.pop("baselines", None)
    sampler, pruner, pruner_settings = METHODS[method]
    # from nothing: the trainer-defaults start trial would hand every method the same good point
    raw["sampler"] = {**raw["sampler"], "type": sampler, "seed": seed, "start_from_defaults": False}
    if settings.n_startup_trials is not None:
        raw["sampler"]["n_startup_trials"] = settings.n_startup_trials
    raw["pruner"] = {**raw["pruner"], "type": pruner, **pruner_settings}
    if pruner == "none":
        raw["pruner"] = {"type": "none"}
    return raw


def run_study(
    settings: Settings,
    data_path: str,
    data: Any,
    method: str,
    seed: int,
    budget: int,
    tmp: Path,
    deadline: float | None = None,
) -> list[TrialRow]:
    """Run one method with one seed until `budget` iterations are spent (hand-tuned: 5 trials).

    With a `deadline` (a `time.time()` value) no trial starts after it: the study ends short of
    its budget, and the summary says how far every study got.
    """
    from search import trial_record
    from search.launch import prepare_study
    from search.objective import GracefulStop, TrialTally, WorkerContext, make_objective
    from search.storage import open_storage
    from search.study_file import parse_study
    from search.trainers.builtin import TuneTrainer
    from trainer.fit import fit

    raw = _study_table(settings, data_path, method, seed)
    spec = parse_study(raw, f"bench {method} seed {seed}")
    storage = open_storage(f"sqlite:///{tmp / (spec.name + '.db')}", create_schema=True)
    prepare_study(spec, storage)  # stores the spec, enqueues the baselines (hand-tuned only)
    study = optuna.load_study(
        study_name=spec.name,
        storage=storage,
        sampler=spec.make_sampler(0),
        pruner=spec.make_pruner(),
    )
    trainer = TuneTrainer(fit, lambda *_: data)  # the data set loaded once for every study
    trainer.prepare(spec.job({}, out=tmp))
    ctx = WorkerContext(
        spec=spec,
        trainer=trainer,
        device=settings.device,
        device_label=settings.device,
        worker_id="bench",
        threads=1,
        runs_dir=tmp / "runs",
        stop=GracefulStop(),
        tally=TrialTally(),
        log=lambda line: None,
    )
    objective = make_objective(ctx)
    rows: list[TrialRow] = []
    spent = 0
    while (spent < budget) if method != HAND_TUNED else (len(rows) < len(spec.baselines)):
        if deadline is not None and time.time() >= deadline:
            print(f"   {method} seed {seed}: time limit reached at {spent}/{budget}", flush=True)
            break
        started = time.perf_counter()
        finished: list[optuna.trial.FrozenTrial] = []
        study.optimize(
            objective,
            n_trials=1,
            catch=(Exception,),
            callbacks=[_collect_into(finished)],
            gc_after_trial=False,
        )
        trial = finished[0]
        evals = trial_record.read_eval_lines(trial)
        iterations = int(evals[-1]["iter"]) if evals else 0
        spent += iterations
        row = TrialRow(
            number=trial.number,
            state=trial.state.name,
            value=trial.value if trial.state == TrialState.COMPLETE else None,
            iterations=iterations,
            spent=spent,
            seconds=time.perf_counter() - started,
            label=trial_record.read_baseline(trial),
        )
        rows.append(row)
        shown = f"{row.value:.4f}" if row.value is not None else "-"
        print(
            f"   {method} seed {seed} trial {row.number}: {row.state} mAP50-95 {shown} "
            f"({row.iterations} it, {spent}/{budget}, {row.seconds:.0f} s)",
            flush=True,
        )
        if trial.state == TrialState.FAIL:
            print(f"     failed: {trial_record.read_error(trial)}", flush=True)
    storage.engine.dispose()
    return rows


def _run_in_process(
    settings: Settings,
    data_path: str,
    method: str,
    seed: int,
    budget: int,
    tmp: Path,
    deadline: float | None,
) -> list[TrialRow]:
    """One study in a worker process of its own (`--jobs`): its own data, one torch thread."""
    import torch

    from trainer.data import load_data

    torch.set_num_threads(1)
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    data = load_data(data_path, settings.imgsz)
    return run_study(settings, data_path, data, method, seed, budget, tmp, deadline)


def _collect_into(
    finished: list[optuna.trial.FrozenTrial],
) -> Callable[[optuna.Study, optuna.trial.FrozenTrial], None]:
    def collect(_study: optuna.Study, frozen: optuna.trial.FrozenTrial) -> None:
        finished.append(frozen)

    return collect


def best_at(rows: list[TrialRow], budget: float) -> float:
    """Best COMPLETE value among trials that ended within `budget` iterations (NaN if none)."""
    values = [r.value for r in rows if r.value is not None and r.spent <= budget]
    return max(values) if values else math.nan


def budget_to_reach(rows: list[TrialRow], target: float) -> int | None:
    """Iterations spent when the best COMPLETE value first reached `target`; None if never."""
    for row in rows:
        if row.value is not None and row.value >= target:
            return row.spent
    return None


def summarise(
    runs: dict[str, list[list[TrialRow]]], budget: int
) -> tuple[float, list[dict[str, Any]]]:
    """The best hand-tuned value, and one summary row per method (medians over seeds)."""
    hand = runs[HAND_TUNED][0]
    target = max((r.value for r in hand if r.value is not None), default=math.nan)
    # A second, harder bar for when every hand-tuned setting scores near zero (short runs):
    # half the best value any run of any method reached.
    every = [r.value for seeds in runs.values() for rows in seeds for r in rows if r.value]
    half_best = max(every, default=math.nan) / 2
    # Studies cut short by --time-limit are compared where all of them got to.
    spent = [_spent(rows) for m, seeds in runs.items() if m != HAND_TUNED for rows in seeds]
    compared_at = min([budget, *spent])
    summary = []
    for method, seeds in runs.items():
        reached = [budget_to_reach(rows, target) for rows in seeds]
        hits = [b for b in reached if b is not None]
        reached_half = [budget_to_reach(rows, half_best) for rows in seeds]
        at_budget = [
            best_at(rows, compared_at if method != HAND_TUNED else math.inf) for rows in seeds
        ]
        summary.append(
            {
                "method": method,
                "seeds": len(seeds),
                "trials_median": median([len(rows) for rows in seeds]),
                "pruned_median": median([sum(r.state == "PRUNED" for r in rows) for rows in seeds]),
                "failed_total": sum(r.state == "FAIL" for rows in seeds for r in rows),
                "spent_min": min((_spent(rows) for rows in seeds), default=0),
                "compared_at": compared_at,
                "best_at_budget_median": median([v for v in at_budget if not math.isnan(v)]),
                "best_at_budget_min": min(at_budget, default=math.nan),
                "best_at_budget_max": max(at_budget, default=math.nan),
                "reached_hand_tuned": f"{len(hits)}/{len(seeds)}",
                # median over seeds, counting a seed that never reached it as infinitely costly
                "budget_to_match_median": _median_with_misses(reached),
                "budget_to_match": reached,
                "half_best": half_best,
                "reached_half_best": f"{sum(b is not None for b in reached_half)}/{len(seeds)}",
                "budget_to_half_best_median": _median_with_misses(reached_half),
                "budget_to_half_best": reached_half,
            }
        )
    return target, summary


def _spent(rows: list[TrialRow]) -> int:
    """Iterations a study spent in all (it may stop short of the budget at --time-limit)."""
    return rows[-1].spent if rows else 0


def _median_with_misses(reached: list[int | None]) -> float:
    values = sorted(math.inf if b is None else float(b) for b in reached)
    return median(values) if values else math.nan


def draw(runs: dict[str, list[list[TrialRow]]], target: float, budget: int, path: Path) -> None:
    """The Plotly figure: best mAP50-95 so far against iterations, one line per method and seed."""
    import plotly.graph_objects as go

    colours = {
        HAND_TUNED: "#444444",
        "random": "#1f77b4",
        "tpe": "#ff7f0e",
        "tpe+hyperband": "#2ca02c",
    }
    fig = go.Figure()
    for method, seeds in runs.items():
        for i, rows in enumerate(seeds):
            xs, ys, best = [0], [0.0], 0.0
            for row in rows:
                if row.value is not None:
                    best = max(best, row.value)
                xs.append(row.spent)
                ys.append(best)
            fig.add_trace(
                go.Scatter(
                    x=xs,
                    y=ys,
                    mode="lines+markers",
                    line={"shape": "hv", "color": colours.get(method)},
                    name=f"{method}" + (f" (seed {i})" if method != HAND_TUNED else ""),
                    legendgroup=method,
                )
            )
    fig.add_hline(y=target, line_dash="dash", annotation_text="best hand-tuned setting")
    fig.add_vline(x=budget, line_dash="dot", annotation_text="budget")
    fig.update_layout(
        title="Best validation mAP50-95 against training iterations spent (shapes)",
        xaxis_title="training iterations spent (all trials of the study)",
        yaxis_title="best mAP50-95 so far (COMPLETE trials)",
        template="plotly_white",
    )
    fig.write_html(path, include_plotlyjs="cdn")


def main(argv: list[str] | None = None) -> dict[str, Any]:
    """Run every method and seed, print the tables, write the JSON results and the figure."""
    parser = argparse.ArgumentParser(prog="python -m bench.search_efficiency", description=__doc__)
    parser.add_argument("--quick", action="store_true", help="smaller problem, 2 seeds")
    parser.add_argument("--seeds", type=int, help="sampler seeds per search method")
    parser.add_argument("--epochs", type=int, help="epochs of a full-length trial")
    parser.add_argument("--budget-trials", type=int, help="budget in full-length trials")
    parser.add_argument("--imgsz", type=int, help="image size")
    parser.add_argument("--batch", type=int, help="batch size")
    parser.add_argument("--train-images", type=int, help="first N shapes training images")
    parser.add_argument("--val-images", type=int, help="first N shapes validation images")
    parser.add_argument("--startup-trials", type=int, help="TPE n_startup_trials")
    parser.add_argument("--baselines", type=int, help="run only the first N hand-tuned settings")
    parser.add_argument(
        "--methods",
        default=",".join(DEFAULT_METHODS),
        help=f"search methods to run, of {', '.join(METHODS)}",
    )
    parser.add_argument(
        "--jobs", type=int, default=1, help="studies run at once, each in its own process"
    )
    parser.add_argument(
        "--time-limit",
        type=float,
        help="seconds: no trial starts after this (studies may end short of the budget)",
    )
    parser.add_argument("--out", type=Path, default=None, help="results folder")
    parser.add_argument(
        "--from-results", type=Path, help="re-summarise a results JSON (no training)"
    )
    parser.add_argument(
        "--merge",
        type=Path,
        nargs="+",
        help="results JSONs of the same problem, other methods: write one (--out), no training",
    )
    args = parser.parse_args(argv)
    if args.from_results:
        return resummarise(args.from_results)
    if args.merge:
        return merge_results(args.merge, args.out)
    import torch

    torch.set_num_threads(1)
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    settings = QUICK if args.quick else Settings()
    changes = {
        "seeds": args.seeds,
        "epochs": args.epochs,
        "budget_trials": args.budget_trials,
        "imgsz": args.imgsz,
        "batch": args.batch,
        "train_images": args.train_images,
        "val_images": args.val_images,
        "n_startup_trials": args.startup_trials,
        "baselines": args.baselines,
    }
    settings = Settings(**{**asdict(settings), **{k: v for k, v in changes.items() if v}})
    from search.study_file import read_study_table

    study_epochs = read_study_table(STUDY)[0]["trial"]["epochs"]
    if settings.epochs != study_epochs and not args.quick and not args.epochs:
        raise SystemExit(f"Settings.epochs {settings.epochs} is not the study's {study_epochs}")
    if torch.cuda.is_available():
        settings = Settings(**{**asdict(settings), "device": "cuda"})
    methods = [m for m in args.methods.split(",") if m]
    for method in methods:
        if method not in METHODS:
            raise SystemExit(f"unknown method {method!r} (known: {', '.join(METHODS)})")

    from trainer.data import load_data
    from trainer.shapes import N_TRAIN, N_VAL, shapes_yaml

    full_set = (settings.train_images, settings.val_images) == (N_TRAIN, N_VAL)
    data_path = (
        "shapes"
        if full_set
        else str(shapes_yaml(n_train=settings.train_images, n_val=settings.val_images))
    )
    data = load_data(data_path, settings.imgsz)
    iters_per_epoch = len(data.train) // settings.batch
    budget = settings.budget_trials * settings.epochs * iters_per_epoch
    print(
        f"shapes {len(data.train)} train / {len(data.val)} val images at {settings.imgsz} px, "
        f"batch {settings.batch}, {settings.epochs} epochs a trial; budget {budget} iterations "
        f"per method and seed; load average {load_average()[0]:.2f}",
        flush=True,
    )
    started = time.perf_counter()
    deadline = None if args.time_limit is None else time.time() + args.time_limit
    loads = [load_average()[0]]
    tasks = [(HAND_TUNED, 0)] + [(m, seed) for seed in range(settings.seeds) for m in methods]
    runs: dict[str, list[list[TrialRow]]] = {}
    with tempfile.TemporaryDirectory(prefix="tune-bench-") as tmp:
        if args.jobs <= 1:
            for method, seed in tasks:
                print(f"-- {method}, seed {seed}", flush=True)
                rows = run_study(
                    settings, data_path, data, method, seed, budget, Path(tmp), deadline
                )
                runs.setdefault(method, []).append(rows)
                loads.append(load_average()[0])
        else:
            print(f"-- {len(tasks)} studies, {args.jobs} at a time", flush=True)
            spawn = multiprocessing.get_context("spawn")  # CUDA cannot be forked
            with ProcessPoolExecutor(args.jobs, mp_context=spawn) as pool:
                futures = [
                    pool.submit(
                        _run_in_process, settings, data_path, m, seed, budget, Path(tmp), deadline
                    )
                    for m, seed in tasks
                ]
                for (method, _), future in zip(tasks, futures, strict=True):
                    runs.setdefault(method, []).append(future.result())
                    loads.append(load_average()[0])
    target, summary = summarise(runs, budget)
    wall = time.perf_counter() - started

    print(_tables(runs, summary, target, budget))
    name = "search_efficiency-quick" if args.quick else "search_efficiency"
    payload = {
        "bench": "search_efficiency",
        "mode": "quick" if args.quick else "full",
        "machine": machine(),
        "settings": asdict(settings),
        "data": {"path": data_path, "train": len(data.train), "val": len(data.val)},
        "budget_iterations": budget,
        "iterations_per_epoch": iters_per_epoch,
        "best_hand_tuned": target,
        "summary": summary,
        "goal": _goal(summary),
        "runs": {m: [[asdict(r) for r in rows] for rows in seeds] for m, seeds in runs.items()},
        "wall_seconds": wall,
        "load_average_samples": loads,
        "load_average_median": median(loads),
    }
    path = write_results(name, payload, args.out)
    draw(runs, target, budget, path.with_suffix(".html"))
    print(f"results: {path} and {path.with_suffix('.html')} ({wall:.0f} s)")
    return payload


def resummarise(path: Path) -> dict[str, Any]:
    """Recompute the summary, tables and figure of a results JSON from its stored trials."""
    payload: dict[str, Any] = json.loads(path.read_text())
    return _summarise_into(payload, path)


def merge_results(paths: list[Path], out_dir: Path | None = None) -> dict[str, Any]:
    """One results JSON from runs of different methods, made apart, on the same problem.

    Refused unless every part has the same settings and data, no method twice, and hand-tuned
    runs equal to the last digit: the trainer is deterministic on one machine, so differing
    hand-tuned values mean different machines (or code), whose methods do not compare.
    """
    parts: list[dict[str, Any]] = [json.loads(p.read_text()) for p in paths]
    first = parts[0]
    runs: dict[str, Any] = {HAND_TUNED: first["runs"][HAND_TUNED]}
    for path, part in zip(paths, parts, strict=True):
        for key in ("settings", "data", "budget_iterations"):
            if part[key] != first[key]:
                raise SystemExit(f"{path}: {key} {part[key]} differ from {paths[0]}'s {first[key]}")
        hand = [(r["label"], r["value"]) for r in part["runs"][HAND_TUNED][0]]
        if hand != [(r["label"], r["value"]) for r in runs[HAND_TUNED][0]]:
            raise SystemExit(
                f"{path}: its hand-tuned runs ({', '.join(f'{v:.6g}' for _, v in hand)}) differ "
                f"from {paths[0]}'s: made on another machine or with other code, so its methods "
                "cannot be compared with those of the other parts"
            )
        for method, seeds in part["runs"].items():
            if method == HAND_TUNED:
                continue
            if method in runs:
                raise SystemExit(f"{path}: method {method!r} is in two of the parts")
            runs[method] = seeds
    payload = {
        **first,
        "runs": runs,
        "machine": [part["machine"] for part in parts],
        "wall_seconds": sum(part["wall_seconds"] for part in parts),
        "load_average_samples": [x for part in parts for x in part["load_average_samples"]],
        "merged_from": [
            {"path": str(p), "methods": [m for m in part["runs"] if m != HAND_TUNED]}
            for p, part in zip(paths, parts, strict=True)
        ],
    }
    payload["load_average_median"] = median(payload["load_average_samples"])
    return _summarise_into(payload, write_results("search_efficiency", payload, out_dir))


def _summarise_into(payload: dict[str, Any], path: Path) -> dict[str, Any]:
    """Summarise `payload`'s runs into it, write it to `path` with its figure, print the tables."""
    runs = {
        method: [[TrialRow(**row) for row in rows] for rows in seeds]
        for method, seeds in payload["runs"].items()
    }
    budget = int(payload["budget_iterations"])
    target, summary = summarise(runs, budget)
    payload.update(best_hand_tuned=target, summary=summary, goal=_goal(summary))
    path.write_text(json.dumps(payload, indent=2, sort_keys=True, default=str) + "\n")
    draw(runs, target, budget, path.with_suffix(".html"))
    print(_tables(runs, summary, target, budget))
    print(f"results: {path} and {path.with_suffix('.html')}")
    return payload


def _goal(summary: list[dict[str, Any]]) -> dict[str, Any]:
    """TPE with pruning against random search: the fraction of random's budget it needs."""
    goal: dict[str, Any] = {"target_ratio": 0.30}
    for key, column in (
        ("", "budget_to_match_median"),
        ("half_best_", "budget_to_half_best_median"),
    ):
        by = {s["method"]: s[column] for s in summary}
        tpe, rnd = by.get("tpe+hyperband", math.nan), by.get("random", math.nan)
        ratio = tpe / rnd if math.isfinite(tpe) and math.isfinite(rnd) and rnd > 0 else math.nan
        goal[f"{key}tpe_hyperband_budget"] = tpe
        goal[f"{key}random_budget"] = rnd
        goal[f"{key}ratio"] = ratio
        goal[f"{key}met"] = bool(ratio <= 0.30) if math.isfinite(ratio) else None
    return goal


def _tables(
    runs: dict[str, list[list[TrialRow]]], summary: list[dict[str, Any]], target: float, budget: int
) -> str:
    hand = table(
        ["hand-tuned setting", "mAP50-95", "iterations"],
        [
            [r.label, r.value if r.value is not None else r.state, r.iterations]
            for r in runs[HAND_TUNED][0]
        ],
    )
    methods = table(
        [
            "method",
            "seeds",
            "trials (median)",
            "pruned (median)",
            "iterations spent (fewest of its seeds)",
            f"best mAP50-95 at {summary[0]['compared_at']} it, median [min, max]",
            "reached best hand-tuned",
            "iterations to match it (median; inf = not reached)",
            f"reached half-best ({summary[0]['half_best']:.4f})",
            "iterations to half-best (median)",
        ],
        [
            [
                s["method"],
                s["seeds"],
                s["trials_median"],
                s["pruned_median"],
                s["spent_min"],
                f"{s['best_at_budget_median']:.4f} [{s['best_at_budget_min']:.4f}, "
                f"{s['best_at_budget_max']:.4f}]",
                s["reached_hand_tuned"],
                s["budget_to_match_median"],
                s["reached_half_best"],
                s["budget_to_half_best_median"],
            ]
            for s in summary
        ],
    )
    goal = _goal(summary)
    line = (
        f"best hand-tuned mAP50-95 {target:.4f}; TPE+Hyperband needs "
        f"{goal['tpe_hyperband_budget']} iterations, random {goal['random_budget']}: "
        f"ratio {goal['ratio']:.3g} (goal <= 0.30); to half-best: "
        f"{goal['half_best_tpe_hyperband_budget']} vs {goal['half_best_random_budget']}, "
        f"ratio {goal['half_best_ratio']:.3g}"
    )
    return hand + "\n\n" + methods + "\n\n" + line


if __name__ == "__main__":
    main()
