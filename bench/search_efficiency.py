"""Search efficiency: at equal compute, random search, TPE without pruning and TPE with the default
pruner, over many seeds, on two generated data sets.

    uv run python -m bench.search_efficiency --jobs 2                  # the study as it is (GPU)
    uv run python -m bench.search_efficiency --preset cpu --jobs 2     # scaled to fit 2 CPU cores
    uv run python -m bench.search_efficiency --from-results R.json     # re-summarise, no training

Methods, each through the search package's own trial lifecycle (`search.running.rounds.run_round`)
and the real trainer (`trainer.fit.fit`), one SQLite study per data set, method and seed, one torch
thread per study (`--jobs N` runs N studies at once, each in its own process):

- random: `RandomSampler`, no pruning;
- tpe: `TPESampler` as `studies/loss-weights.toml` sets it (multivariate, constant liar), no
  pruning;
- tpe+pruner: the loss-weights default, TPE with the study file's pruner (successive halving on
  validation mAP50-95, wrapped in tune's `SparingPruner`).

Every method starts from nothing: no baselines and no trainer-defaults start trial, which would
hand every method the same good point. Each runs trials until it has spent the budget, counted in
training iterations (a pruned trial costs the iterations it ran; one iteration is one batch on
every method, so this is equal compute). "Best at budget" counts only COMPLETE trials that ended
within it; a study with none counts as 0.

Summary per data set: for each method the median and interquartile range of the best at budget
over seeds; the target, random search's median best at budget; the budget each method needs to
reach it (median over seeds, a seed that never does counting as infinite); and the Mann-Whitney U
test between every pair of methods (`search.confirm.stats.mann_whitney_u`). The goal: TPE with the
pruner reaches the target with at most a third of the budget, and its best at budget is higher
than random search's with one-sided p < 0.05. Writes bench/results/<name>.json and .html.
"""

from __future__ import annotations

import argparse
import itertools
import json
import math
import multiprocessing
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any, Protocol

import optuna
from optuna.trial import TrialState

from bench import load_average, machine, median, percentile, table, write_results
from trainer.shapes import STYLES

STUDY = "loss-weights"
RANDOM, TPE, TPE_PRUNER = "random", "tpe", "tpe+pruner"
METHODS: dict[str, tuple[str, bool]] = {  # name -> (sampler, prunes with the study's pruner)
    RANDOM: ("Random", False),
    TPE: ("TPE", False),
    TPE_PRUNER: ("TPE", True),
}
DATASETS = tuple(STYLES)  # the generated data sets of trainer/shapes.py
GOAL_BUDGET_FRACTION = 1 / 3
GOAL_P = 0.05


@dataclass(frozen=True)
class Settings:
    """One benchmark configuration (everything that changes the numbers).

    None: as `studies/loss-weights.toml` says (trial length, evaluation interval, the pruner's
    first rung, TPE's start-up trials).
    """

    imgsz: int = 128
    epochs: int | None = None
    eval_interval: int | None = None
    min_resource: int | None = None  # the pruner's first rung, in epochs
    batch: int = 32
    train_images: int = 1200
    val_images: int = 250
    budget_trials: int = 16  # the budget, in full-length trials' worth of iterations
    seeds: int = 8
    n_startup_trials: int | None = None
    datasets: tuple[str, ...] = DATASETS
    device: str = "cpu"


PRESETS = {
    # The loss-weights study's trials (33 epochs, rungs at 6 and 18): what a GPU with several
    # studies at once can run (bench/gpu.sh). TPE models after 3 random draws: of the study's 8
    # start-up trials 6 are its enqueued baselines and start trial, which this benchmark leaves
    # out, and 8 random ones would be half the budget, the first third of it all random draws
    # shared with random search (docs/benchmarks.md, "Search efficiency").
    "study": Settings(n_startup_trials=3),
    # Scaled so that 8 seeds x 3 methods on one data set fit in about 75 minutes of two cores:
    # 6-epoch trials (222 iterations, mAP50-95 ~0.06 with the trainer's defaults), evaluated every
    # epoch, one rung at epoch 4, 120 validation images, a budget of 8 trials. TPE models after 3
    # random draws: in the study 6 of its 8 start-up trials are the enqueued baselines and start
    # trial, which this benchmark leaves out.
    "cpu": Settings(
        epochs=6,
        eval_interval=1,
        min_resource=4,
        val_images=120,
        budget_trials=8,
        n_startup_trials=3,
        datasets=("shapes",),
    ),
}


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
    params: dict[str, Any] | None = None  # the trial's drawn params
    race: bool = False  # a race run: a setting already run, on a fresh seed, never pruned
    incumbent: bool = False  # the trial the study stands behind at its end (`study_best`)


class TrialSettings(Protocol):
    """What a search benchmark's settings pin in every trial (both benchmarks' `Settings`)."""

    @property
    def imgsz(self) -> int: ...
    @property
    def batch(self) -> int: ...
    @property
    def device(self) -> str: ...
    @property
    def eval_interval(self) -> int | None: ...
    @property
    def epochs(self) -> int | None: ...


def bench_table(name: str, data: str, settings: TrialSettings) -> dict[str, Any]:
    """The loss-weights study table as a search benchmark runs it: named `name`, on `data`, its
    trials as long and as `settings` pin them, no budget of its own (the benchmark stops on
    iterations) and no baselines (they would cost every method the same)."""
    from search.study.study_file import Overrides, apply_overrides, read_study_table

    pins = {
        "imgsz": settings.imgsz,
        "batch": settings.batch,
        "device": settings.device,
        "eval_interval": settings.eval_interval,
    }
    raw = apply_overrides(read_study_table(STUDY)[0], Overrides(epochs=settings.epochs, data=data))
    raw["name"] = name
    raw["trial"] = {**raw["trial"], **{k: v for k, v in pins.items() if v is not None}}
    raw["budget"] = {"n_trials": 100_000}
    raw.pop("baselines", None)
    return raw


def _study_table(settings: Settings, data: str, method: str, seed: int) -> dict[str, Any]:
    raw = bench_table(f"bench-{method.replace('+', '-')}-{seed}", data, settings)
    sampler, prunes = METHODS[method]
    raw["sampler"] = {**raw["sampler"], "type": sampler, "seed": seed, "start_from_defaults": False}
    if settings.n_startup_trials is not None:
        raw["sampler"]["n_startup_trials"] = settings.n_startup_trials
    if not prunes:
        raw["pruner"] = {"type": "none"}
    elif settings.min_resource is not None:
        raw["pruner"] = {**raw["pruner"], "min_resource": settings.min_resource}
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
    raw: dict[str, Any] | None = None,
    race: bool = False,
) -> list[TrialRow]:
    """Run one method with one seed on one data set until `budget` iterations are spent, or the
    table's own `[budget]` is: a trial it cannot pay on stops where a worker's would.

    With a `deadline` (a `time.time()` value) no trial but the first starts after it: the study
    ends short of its budget, and the summary compares every study where all of them got to.
    `raw`: the study table to run instead of this benchmark's (`bench/search_vs_defaults.py`
    gives its own). With `race`, the study races a challenger against the incumbent on fresh
    seeds after each full-length run, as a worker does (`ManagedStudy.race`, paid from the
    table's `[budget] epochs`), and the row of the trial the study stands behind at its end is
    marked `incumbent`.
    """
    from search.bookkeeping import trial_record
    from search.bookkeeping.budget import decide
    from search.bookkeeping.storage import open_storage
    from search.confirm.incumbent import study_best
    from search.control.study_manager import ManagedStudy
    from search.control.study_setup import prepare_study
    from search.running.rounds import run_round
    from search.running.trial_run import GracefulStop, TrialTally, WorkerContext
    from search.study.study_file import parse_study
    from search.trainers.builtin import TuneTrainer
    from trainer.fit import fit

    raw = raw or _study_table(settings, data_path, method, seed)
    spec = parse_study(raw, f"bench {method} seed {seed}")
    folder = Path(tempfile.mkdtemp(prefix=f"{spec.name}-", dir=tmp))  # data sets share `tmp`
    storage = open_storage(f"sqlite:///{folder / 'study.db'}", create_schema=True)
    prepare_study(spec, storage)  # stores the spec
    study = optuna.load_study(
        study_name=spec.name,
        storage=storage,
        sampler=spec.make_sampler(0),
        pruner=spec.make_pruner(trial_record.runs_fixed_length),
    )
    managed = ManagedStudy(study, storage)
    trainer = TuneTrainer(fit, lambda *_: data)  # the data set loaded once for every study
    trainer.prepare(spec.job({}, out=folder))
    ctx = WorkerContext(
        spec=spec,
        trainer=trainer,
        device=settings.device,
        device_label=settings.device,
        worker_id="bench",
        threads=1,
        runs_dir=folder / "runs",
        stop=GracefulStop(),
        tally=TrialTally(),
        log=lambda line: None,
        after_told=(lambda told: managed.race(told, spec)) if race else None,
        # with a `[budget] epochs` (races need one) a kept trial the budget cannot pay on stops
        # there ("stopped: budget spent"), as a worker's does: no study trains past its budget
        extend_hold=lambda trial, step: managed.extend_hold(trial, step, spec),
    )
    alone = _Alone(study)
    rows: list[TrialRow] = []
    spent = 0
    name = f"{Path(data_path).parent.name or data_path} {method} seed {seed}"
    while spent < budget:
        # the first trial starts whatever the time: a study without one compares with nothing
        if deadline is not None and rows and time.time() >= deadline:
            print(f"   {name}: time limit reached at {spent}/{budget}", flush=True)
            break
        decision, why = decide(spec, managed.budget_use(spec))  # the table's own budget
        if decision != "start":
            print(f"   {name}: {why}", flush=True)
            break
        started = time.perf_counter()
        told = run_round(alone, ctx, 1, set())
        # nothing else runs the study: its one trial always starts and is never dropped
        assert isinstance(told, list) and not isinstance(told[0], str)
        trial = told[0]
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
            params=dict(trial.params),
            race=trial_record.read_race(trial) is not None,
        )
        rows.append(row)
        shown = f"{row.value:.4f}" if row.value is not None else "-"
        print(
            f"   {name} trial {row.number}: {row.state} mAP50-95 {shown} "
            f"({row.iterations} it, {spent}/{budget}, {row.seconds:.0f} s)",
            flush=True,
        )
        if trial.state == TrialState.FAIL:
            print(f"     failed: {trial_record.read_error(trial)}", flush=True)
    if race:
        best, _ = study_best(study, spec=spec)
        for row in rows:
            row.incumbent = best is not None and row.number == best.number
    storage.engine.dispose()
    return rows


_LOADED: dict[str, Any] = {}  # data path -> loaded data set, per process


def _run_in_process(
    settings: Settings,
    data_path: str,
    method: str,
    seed: int,
    budget: int,
    tmp: Path,
    deadline: float | None,
    raw: dict[str, Any] | None = None,
    race: bool = False,
) -> list[TrialRow]:
    """One study in a worker process (`--jobs`): the data loaded once per process, one thread."""
    import torch

    from trainer.data import load_data

    torch.set_num_threads(1)
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    if data_path not in _LOADED:
        _LOADED[data_path] = load_data(data_path, settings.imgsz)
    data = _LOADED[data_path]
    return run_study(settings, data_path, data, method, seed, budget, tmp, deadline, raw, race)


class _Alone:
    """Where a benchmark study's trials start: only this process runs the study, and it counts
    its own budget, so every trial may start at once (no study lock, no start gate)."""

    def __init__(self, study: optuna.Study) -> None:
        self.study = study

    def claim(self, patient: bool = True) -> _Alone:
        return self

    def release(self) -> None:
        pass


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


def summarise(runs: dict[str, list[list[TrialRow]]], budget: int) -> dict[str, Any]:
    """One data set's summary: per method, the best at budget over seeds and the budget to reach
    random search's median best; Mann-Whitney U tests between methods; the goal."""
    from search.confirm.stats import mann_whitney_u

    # a seed whose study of some method never started (--time-limit) is left out, and the
    # studies cut short are compared where all of them got to
    n_seeds = min(len(seeds) for seeds in runs.values())
    kept = [i for i in range(n_seeds) if all(seeds[i] for seeds in runs.values())]
    left_out = n_seeds - len(kept)
    if not kept:
        raise SystemExit(
            f"no seed has a trial of every method ({', '.join(runs)}): nothing to compare "
            "(a --time-limit too short for the first trials?)"
        )
    runs = {method: [seeds[i] for i in kept] for method, seeds in runs.items()}
    spent = [rows[-1].spent for seeds in runs.values() for rows in seeds]
    compared_at = min([budget, *spent])
    finals = {
        method: [_zero_if_nan(best_at(rows, compared_at)) for rows in seeds]
        for method, seeds in runs.items()
    }
    target = median(finals[RANDOM]) if RANDOM in finals else math.nan
    methods: list[dict[str, Any]] = []
    for method, seeds in runs.items():
        values = finals[method]
        reached = [budget_to_reach(rows, target) for rows in seeds]
        to_target = _median_with_misses(reached)
        methods.append(
            {
                "method": method,
                "seeds": len(seeds),
                "trials_median": median([len(rows) for rows in seeds]),
                "pruned_median": median([sum(r.state == "PRUNED" for r in rows) for rows in seeds]),
                "failed_total": sum(r.state == "FAIL" for rows in seeds for r in rows),
                "best_at_budget": values,
                "best_median": median(values),
                "best_q25": percentile(values, 25),
                "best_q75": percentile(values, 75),
                "best_min": min(values),
                "best_max": max(values),
                "budget_to_target": reached,
                "budget_to_target_median": to_target,
                "budget_to_target_fraction": to_target / compared_at,
                "reached_target": f"{sum(b is not None for b in reached)}/{len(seeds)}",
            }
        )
    tests = [
        {
            "first": a,
            "second": b,
            **asdict(mann_whitney_u(finals[a], finals[b], "two-sided")),
        }
        for a, b in itertools.combinations(runs, 2)
    ]
    goal: dict[str, Any] = {"budget_fraction_goal": GOAL_BUDGET_FRACTION, "p_goal": GOAL_P}
    if RANDOM in finals and TPE_PRUNER in finals:
        [row] = [m for m in methods if m["method"] == TPE_PRUNER]
        fraction = float(row["budget_to_target_fraction"])
        higher = mann_whitney_u(finals[TPE_PRUNER], finals[RANDOM], "greater")
        goal.update(
            budget_fraction=fraction,
            p_higher=higher.p_value,
            u=higher.u,
            budget_met=fraction <= GOAL_BUDGET_FRACTION,
            higher_met=higher.p_value < GOAL_P and median(finals[TPE_PRUNER]) > target,
        )
    return {
        "compared_at": compared_at,
        "seeds_left_out": left_out,
        "target": target,
        "methods": methods,
        "tests": tests,
        "goal": goal,
    }


def _zero_if_nan(value: float) -> float:
    return 0.0 if math.isnan(value) else value  # no COMPLETE trial: nothing found


def _median_with_misses(reached: list[int | None]) -> float:
    values = sorted(math.inf if b is None else float(b) for b in reached)
    return median(values) if values else math.nan


def draw(runs: dict[str, dict[str, list[list[TrialRow]]]], budget: int, path: Path) -> None:
    """The Plotly figure: best mAP50-95 so far against iterations, a panel per data set."""
    import plotly.graph_objects as go
    from plotly.subplots import make_subplots

    colours = {RANDOM: "#1f77b4", TPE: "#ff7f0e", TPE_PRUNER: "#2ca02c"}
    fig = make_subplots(rows=1, cols=len(runs), subplot_titles=list(runs))
    for col, by_method in enumerate(runs.values(), start=1):
        for method, seeds in by_method.items():
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
                        mode="lines",
                        line={"shape": "hv", "color": colours.get(method), "width": 1},
                        name=method,
                        legendgroup=method,
                        showlegend=col == 1 and i == 0,
                        hovertext=f"{method}, seed {i}",
                    ),
                    row=1,
                    col=col,
                )
        fig.add_vline(x=budget, line_dash="dot", row=1, col=col)
    fig.update_xaxes(title_text="training iterations spent (all trials of the study)")
    fig.update_yaxes(title_text="best mAP50-95 so far (COMPLETE trials)", col=1)
    fig.update_layout(
        title="Best validation mAP50-95 against training iterations, one line per seed",
        template="plotly_white",
    )
    fig.write_html(path, include_plotlyjs="cdn")


def data_path(dataset: str, settings: Settings) -> str:
    """The data.yaml of a benchmark data set at the settings' image counts (generated once)."""
    from trainer.shapes import N_TRAIN, N_VAL, SHAPES, shapes_yaml

    if dataset not in STYLES:
        raise SystemExit(f"unknown data set {dataset!r} (known: {', '.join(STYLES)})")
    full = (settings.train_images, settings.val_images) == (N_TRAIN, N_VAL)
    if dataset == SHAPES.name and full:
        return SHAPES.name  # the built-in name, as the study file says
    n_train, n_val = settings.train_images, settings.val_images
    return str(shapes_yaml(n_train=n_train, n_val=n_val, style=STYLES[dataset]))


def main(argv: list[str] | None = None) -> dict[str, Any]:
    """Run every data set, method and seed; print the tables; write the results and figure."""
    parser = argparse.ArgumentParser(prog="python -m bench.search_efficiency", description=__doc__)
    parser.add_argument("--preset", choices=PRESETS, default="study", help="settings to start from")
    parser.add_argument("--seeds", type=int, help="sampler seeds per method (at least 8)")
    parser.add_argument("--epochs", type=int, help="epochs of a full-length trial")
    parser.add_argument("--eval-interval", type=int, help="evaluate every N epochs")
    parser.add_argument("--min-resource", type=int, help="the pruner's first rung, in epochs")
    parser.add_argument("--budget-trials", type=int, help="budget in full-length trials")
    parser.add_argument("--imgsz", type=int, help="image size")
    parser.add_argument("--batch", type=int, help="batch size")
    parser.add_argument("--train-images", type=int, help="first N training images")
    parser.add_argument("--val-images", type=int, help="first N validation images")
    parser.add_argument("--startup-trials", type=int, help="TPE n_startup_trials")
    parser.add_argument("--datasets", help=f"comma-separated, of {', '.join(DATASETS)}")
    parser.add_argument(
        "--methods", default=",".join(METHODS), help=f"comma-separated, of {', '.join(METHODS)}"
    )
    parser.add_argument("--jobs", type=int, default=1, help="studies at once, a process each")
    parser.add_argument(
        "--time-limit",
        type=float,
        help="seconds: no trial but each study's first starts after this (studies may end short "
        "of the budget)",
    )
    parser.add_argument("--name", default="search_efficiency", help="results file name")
    parser.add_argument("--out", type=Path, default=None, help="results folder")
    parser.add_argument(
        "--from-results", type=Path, help="re-summarise a results JSON (no training)"
    )
    args = parser.parse_args(argv)
    if args.from_results:
        return resummarise(args.from_results)
    import torch

    torch.set_num_threads(1)
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    changes = {
        "seeds": args.seeds,
        "epochs": args.epochs,
        "eval_interval": args.eval_interval,
        "min_resource": args.min_resource,
        "budget_trials": args.budget_trials,
        "imgsz": args.imgsz,
        "batch": args.batch,
        "train_images": args.train_images,
        "val_images": args.val_images,
        "n_startup_trials": args.startup_trials,
        "datasets": tuple(args.datasets.split(",")) if args.datasets else None,
    }
    settings = replace(PRESETS[args.preset], **{k: v for k, v in changes.items() if v})
    if torch.cuda.is_available():
        settings = replace(settings, device="cuda")
    methods = [m for m in args.methods.split(",") if m]
    for method in methods:
        if method not in METHODS:
            raise SystemExit(f"unknown method {method!r} (known: {', '.join(METHODS)})")
    from search.study.study_file import read_study_table

    epochs = settings.epochs or int(read_study_table(STUDY)[0]["trial"]["epochs"])
    from trainer.data import check_data

    paths = {dataset: data_path(dataset, settings) for dataset in settings.datasets}
    # text only: the studies' processes decode the images, each once (`_run_in_process`)
    train_images = {d: len(check_data(p).train) for d, p in paths.items()}
    budgets = {
        d: settings.budget_trials * epochs * (n // settings.batch) for d, n in train_images.items()
    }
    print(
        f"{', '.join(f'{d} ({n} train images)' for d, n in train_images.items())} at "
        f"{settings.imgsz} px, batch {settings.batch}, {epochs}-epoch trials, {settings.seeds} "
        f"seeds, budget {settings.budget_trials} trials = "
        f"{', '.join(f'{b} iterations ({d})' for d, b in budgets.items())}; "
        f"load average {load_average()[0]:.2f}",
        flush=True,
    )
    started = time.perf_counter()
    deadline = None if args.time_limit is None else time.time() + args.time_limit
    loads = [load_average()[0]]
    tasks = [
        (d, m, seed) for d in settings.datasets for seed in range(settings.seeds) for m in methods
    ]
    runs: dict[str, dict[str, list[list[TrialRow]]]] = {}
    with tempfile.TemporaryDirectory(prefix="tune-bench-") as tmp:
        print(f"-- {len(tasks)} studies, {args.jobs} at a time", flush=True)
        spawn = multiprocessing.get_context("spawn")  # CUDA cannot be forked
        with ProcessPoolExecutor(args.jobs, mp_context=spawn) as pool:
            futures = [
                pool.submit(
                    _run_in_process, settings, paths[d], m, seed, budgets[d], Path(tmp), deadline
                )
                for d, m, seed in tasks
            ]
            for (dataset, method, _), future in zip(tasks, futures, strict=True):
                runs.setdefault(dataset, {}).setdefault(method, []).append(future.result())
                loads.append(load_average()[0])
    payload = {
        "bench": "search_efficiency",
        "preset": args.preset,
        "machine": machine(),
        "settings": {**asdict(settings), "epochs": epochs},
        "data": {d: {"path": paths[d], "train": train_images[d]} for d in settings.datasets},
        "budget_iterations": budgets,
        "runs": {
            d: {m: [[asdict(r) for r in rows] for rows in seeds] for m, seeds in by.items()}
            for d, by in runs.items()
        },
        "wall_seconds": time.perf_counter() - started,
        "load_average_samples": loads,
        "load_average_median": median(loads),
    }
    return _summarise_into(payload, write_results(args.name, payload, args.out))


def resummarise(path: Path) -> dict[str, Any]:
    """Recompute the summary, tables and figure of a results JSON from its stored trials."""
    payload: dict[str, Any] = json.loads(path.read_text())
    return _summarise_into(payload, path)


def _summarise_into(payload: dict[str, Any], path: Path) -> dict[str, Any]:
    """Summarise `payload`'s runs into it, write it to `path` with its figure, print the tables."""
    runs = {
        dataset: {
            method: [[TrialRow(**row) for row in rows] for rows in seeds]
            for method, seeds in by_method.items()
        }
        for dataset, by_method in payload["runs"].items()
    }
    budgets = payload["budget_iterations"]
    payload["summary"] = {d: summarise(by, int(budgets[d])) for d, by in runs.items()}
    path.write_text(json.dumps(payload, indent=2, sort_keys=True, default=str) + "\n")
    draw(runs, max(int(b) for b in budgets.values()), path.with_suffix(".html"))
    print(_tables(payload["summary"]))
    print(f"results: {path} and {path.with_suffix('.html')} ({payload['wall_seconds']:.0f} s)")
    return payload


def _tables(summaries: dict[str, dict[str, Any]]) -> str:
    parts = []
    for dataset, s in summaries.items():
        methods = table(
            [
                "method",
                "seeds",
                "trials (median)",
                "pruned (median)",
                f"best mAP50-95 at {s['compared_at']} it: median [IQR] (min-max)",
                f"reached random's median best {s['target']:.4f}",
                "iterations to reach it (median; inf = not reached)",
                "fraction of the budget",
            ],
            [
                [
                    m["method"],
                    m["seeds"],
                    m["trials_median"],
                    m["pruned_median"],
                    f"{m['best_median']:.4f} [{m['best_q25']:.4f}, {m['best_q75']:.4f}] "
                    f"({m['best_min']:.4f}-{m['best_max']:.4f})",
                    m["reached_target"],
                    m["budget_to_target_median"],
                    m["budget_to_target_fraction"],
                ]
                for m in s["methods"]
            ],
        )
        tests = table(
            ["Mann-Whitney U (best at budget)", "U", "p (two-sided)", "method"],
            [
                [f"{t['first']} vs {t['second']}", t["u"], t["p_value"], t["method"]]
                for t in s["tests"]
            ],
        )
        goal = s["goal"]
        line = f"{dataset}: no goal (random and tpe+pruner were not both run)"
        if "budget_fraction" in goal:
            line = (
                f"{dataset}: tpe+pruner reaches random's median best with "
                f"{goal['budget_fraction']:.3g} of the budget (goal <= 1/3: "
                f"{'met' if goal['budget_met'] else 'missed'}); its best at budget is higher than "
                f"random's with one-sided Mann-Whitney p = {goal['p_higher']:.3g} (goal < 0.05: "
                f"{'met' if goal['higher_met'] else 'missed'})"
            )
        if s.get("seeds_left_out"):
            line += (
                f"\n({s['seeds_left_out']} seeds left out: a study of theirs never started "
                "before the time limit)"
            )
        parts.append(f"## {dataset}\n\n{methods}\n\n{tests}\n\n{line}")
    return "\n\n".join(parts)


if __name__ == "__main__":
    main()
