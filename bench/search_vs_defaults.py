"""Does the search beat the trainer's defaults? Several studies per sampler, each study's
incumbent and the defaults retrained on the same fresh seeds, paired.

    uv run python -m bench.search_vs_defaults --jobs 2                      # the CPU preset
    uv run python -m bench.search_vs_defaults --preset study --jobs 16      # 33-epoch trials (GPU)
    uv run python -m bench.search_vs_defaults --from-results R.json         # re-summarise

For each data set and sampler (`--methods`, default Evolution and, as the control, Random over
the same space), `--studies` independent studies of `studies/loss-weights.toml` (sampler seeds
0, 1, ...) run through the search package's own objective and the real trainer
(`bench.search_efficiency.run_study`), each until it has spent its budget of training iterations
(`--budget-trials` full-length trials' worth; a pruned trial costs what it ran). Every study
starts from the trainer's defaults (its start trial), with the study's space around them and its
pruner; the hand-tuned baselines are left out (they would cost every method the same).

A study's incumbent is the trial it stands behind at its end, as `tune best` names it: a
challenger that beat the incumbent on one seed was raced against it on fresh seeds (`--races`,
the default; paid from the budget, at most half of it) and replaced it only if it won there. With
`--no-races`, the best COMPLETE trial. It and the defaults are then retrained at the full
length on `--fresh-seeds` seeds no study used (the same seeds for both: paired). Per study: the
paired gain over the defaults (mean, 95% interval); per method: in how many studies the
incumbent beat the defaults on the fresh seeds, the mean gain over studies with its 95% interval
(a one-sample t over the studies' mean gains) and as a share of the defaults' mAP50-95; and the
budget each method needed until its best single run reached the median final incumbent of the
first method (Evolution), against random search's. Writes bench/results/<name>.json.
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

from bench import load_average, machine, median, table, write_results
from bench.search_efficiency import Settings as StudySettings
from bench.search_efficiency import (
    TrialRow,
    _run_in_process,
    bench_table,
    budget_to_reach,
)

GOAL_WINS = 3 / 4  # studies whose incumbent beats the defaults on fresh seeds
GOAL_GAIN = 0.05  # mean gain, a share of the defaults' mAP50-95
GOAL_BUDGET_RATIO = 0.5  # the search's budget to its level over random search's


@dataclass(frozen=True)
class Settings:
    """One benchmark configuration (everything that changes the numbers)."""

    datasets: tuple[str, ...] = ("shapes",)
    methods: tuple[str, ...] = ("Evolution", "Random")
    studies: int = 4
    fresh_seeds: tuple[int, ...] = (1001, 1002, 1003)
    imgsz: int = 128
    batch: int = 32
    epochs: int = 33
    eval_interval: int = 3
    min_resource: int = 6
    budget_trials: int = 8
    train_images: int = 1200
    val_images: int = 250
    retrain_all: bool = True  # False: only the first method's incumbents (and the defaults)
    races: bool = True  # a challenger races the incumbent on fresh seeds before it replaces it
    device: str = "cpu"


PRESETS = {
    # The loss-weights study's own trials (33 epochs at 128 px, rungs at 6 and 18 epochs).
    "study": Settings(),
    # Scaled to about an hour of two CPU cores for one data set: 12-epoch trials at 128 px
    # (444 iterations, where the defaults' mAP50-95 is measurable, docs/benchmarks.md), evaluated
    # every 2 epochs, the first rung at 4, a budget of 6 trials per study.
    "cpu": Settings(epochs=12, eval_interval=2, min_resource=4, budget_trials=6),
    # a smoke run: every step on a tiny data set, a minute of one core; its numbers mean nothing
    "quick": Settings(
        studies=2,
        fresh_seeds=(1001, 1002),
        imgsz=64,
        batch=16,
        epochs=2,
        eval_interval=1,
        min_resource=1,
        budget_trials=3,
        train_images=64,
        val_images=32,
    ),
}


def scaled_rung(settings: Settings, epochs: int) -> int:
    """The first rung for `epochs`-epoch trials at the same share of a trial as `settings`' (a
    multiple of its evaluation interval): a rung a fixed number of epochs in stops a longer
    trial ever earlier in its schedule, where the ranking of settings is noise
    (docs/benchmarks.md, "where the first rung may sit")."""
    share = settings.min_resource / settings.epochs
    every = settings.eval_interval
    return max(every, every * round(share * epochs / every))


def study_table(settings: Settings, data: str, method: str, seed: int) -> dict[str, Any]:
    """The loss-weights study as this benchmark runs it: its space, sampler and pruner, the
    benchmark's length, no baselines, the defaults as its start trial."""
    raw = bench_table(f"bench-{method.lower()}-{seed}", data, settings)
    study_sampler = raw.get("sampler", {})
    raw["sampler"] = {"type": method, "seed": seed, "start_from_defaults": True}
    if method in ("Evolution", "CMA-ES") and "choice_mutation" in study_sampler:
        raw["sampler"]["choice_mutation"] = study_sampler["choice_mutation"]  # the study's rate
    if method in ("TPE", "GP"):
        raw["sampler"]["n_startup_trials"] = 3
    if settings.races:  # what races may spend (`budget.race_room`); the benchmark stops the study
        raw["budget"] = {"epochs": settings.budget_trials * settings.epochs}
    raw["pruner"] = {**raw.get("pruner", {}), "min_resource": settings.min_resource}
    return raw


def _study_settings(settings: Settings) -> StudySettings:
    return StudySettings(
        device=settings.device,
        imgsz=settings.imgsz,
        epochs=settings.epochs,
        batch=settings.batch,
        train_images=settings.train_images,
        val_images=settings.val_images,
    )


_LOADED: dict[str, Any] = {}


def retrain(settings: Settings, data: str, params: dict[str, Any], seed: int) -> float:
    """mAP50-95 of one setting trained at the full length on `seed` (in a worker process)."""
    import optuna
    import torch

    from search.study.study_file import parse_study
    from trainer.data import load_data
    from trainer.fit import fit

    torch.set_num_threads(1)
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    spec = parse_study(study_table(settings, data, "Random", 0), "bench retrain")
    if data not in _LOADED:
        _LOADED[data] = load_data(data, settings.imgsz)
    with tempfile.TemporaryDirectory() as out:
        config = spec.train_config(
            params, seed=seed, threads=1, out=out, eval_interval=settings.epochs, log_interval=10**6
        )
        return fit(config, data=_LOADED[data]).mAP50_95


def data_path(dataset: str, settings: Settings) -> str:
    """The data.yaml of a data set: `shapes` (built in) or `small` (bench/small_data.py)."""
    from bench.search_efficiency import data_path as shapes_path
    from bench.small_data import small_data_yaml
    from trainer.shapes import cache_root

    if dataset == "small":
        return str(small_data_yaml(cache_root() / "bench-small"))
    return shapes_path(dataset, _study_settings(settings))


def run(settings: Settings, jobs: int) -> dict[str, Any]:
    """Run every study, then every retraining; the raw results."""
    from search.study.study_file import parse_study

    started = time.time()
    out: dict[str, Any] = {"settings": asdict(settings), "data": {}}
    with (
        tempfile.TemporaryDirectory(prefix="search-vs-defaults-") as tmp,
        ProcessPoolExecutor(jobs) as pool,
    ):
        for dataset in settings.datasets:
            path = data_path(dataset, settings)
            spec = parse_study(study_table(settings, path, "Random", 0), "bench")
            iters = spec.trial.epochs * (_train_images(path) // settings.batch)
            budget = settings.budget_trials * iters
            print(
                f"== {dataset}: {settings.studies} studies per method, budget {budget} it "
                f"({settings.budget_trials} trials of {spec.trial.epochs} epochs)",
                flush=True,
            )
            futures = {
                (method, seed): pool.submit(
                    _run_in_process,
                    _study_settings(settings),
                    path,
                    method,
                    seed,
                    budget,
                    Path(tmp),
                    None,
                    study_table(settings, path, method, seed),
                    settings.races,
                )
                for method in settings.methods
                for seed in range(settings.studies)
            }
            studies = {key: f.result() for key, f in futures.items()}
            defaults = spec.default_params()
            assert defaults is not None
            settings_to_train = {"defaults": defaults}
            for (method, seed), rows in studies.items():
                if method != settings.methods[0] and not settings.retrain_all:
                    continue  # the control's single runs still give its budget to the target
                best = incumbent(rows)
                if best is not None and best.params != defaults:
                    settings_to_train[f"{method} {seed}"] = best.params or {}
            print(
                f"== {dataset}: retraining {len(settings_to_train)} settings on seeds "
                f"{', '.join(map(str, settings.fresh_seeds))}",
                flush=True,
            )
            retrains = {
                (name, seed): pool.submit(retrain, settings, path, params, seed)
                for name, params in settings_to_train.items()
                for seed in settings.fresh_seeds
            }
            fresh: dict[str, dict[int, float]] = {}
            for (name, seed), future in retrains.items():
                fresh.setdefault(name, {})[seed] = future.result()
                print(f"   {name} seed {seed}: {fresh[name][seed]:.4f}", flush=True)
            out["data"][dataset] = {
                "path": path,
                "budget": budget,
                "defaults": defaults,
                "studies": {
                    f"{m} {s}": [asdict(r) for r in rows] for (m, s), rows in studies.items()
                },
                "fresh": {
                    name: {str(k): v for k, v in runs.items()} for name, runs in fresh.items()
                },
            }
    out["seconds"] = time.time() - started
    return out


def _train_images(path: str) -> int:
    from trainer.data import check_data

    return len(check_data(path).train)


def incumbent(rows: list[TrialRow]) -> TrialRow | None:
    """The trial a study that raced stands behind at its end (marked by `run_study`); else its
    best COMPLETE trial (its first on a tie)."""
    marked = [r for r in rows if r.incumbent]
    if marked:
        return marked[0]
    done = [r for r in rows if r.value is not None]
    return max(done, key=lambda r: (r.value, -r.number)) if done else None


def summarise(raw: dict[str, Any]) -> dict[str, Any]:
    """Per data set and method: wins on fresh seeds, the gain over the defaults, the budget."""
    from search.confirm.stats import gain

    settings = raw["settings"]
    out: dict[str, Any] = {}
    for dataset, d in raw["data"].items():
        fresh = {name: {int(k): v for k, v in runs.items()} for name, runs in d["fresh"].items()}
        base = fresh["defaults"]
        base_mean = statistics.fmean(base.values())
        methods: dict[str, Any] = {}
        finals: dict[str, list[float]] = {}
        for method in settings["methods"]:
            per_study: list[dict[str, Any]] = []
            for seed in range(settings["studies"]):
                rows = [TrialRow(**r) for r in d["studies"][f"{method} {seed}"]]
                best = incumbent(rows)
                is_defaults = best is None or best.params == d["defaults"]
                if not is_defaults and f"{method} {seed}" not in fresh:
                    continue  # not retrained (`retrain_all` off): no figure on fresh seeds
                runs = fresh.get(f"{method} {seed}", base)  # the defaults themselves: gain 0
                g = gain(runs, base)
                diffs = [runs[s] - base[s] for s in base]
                per_study.append(
                    {
                        "study": seed,
                        "trials": len(rows),
                        "pruned": sum(r.state == "PRUNED" for r in rows),
                        "race_runs": sum(r.race for r in rows),
                        "incumbent_is_defaults": is_defaults,
                        "incumbent_single_run": best.value if best else None,
                        "incumbent_fresh_mean": statistics.fmean(runs.values()),
                        "gain_mean": statistics.fmean(diffs),
                        "gain_low": g.low if g else None,
                        "gain_high": g.high if g else None,
                        "incumbent_params": best.params if best else None,
                    }
                )
            for seed in range(settings["studies"]):
                rows = [TrialRow(**r) for r in d["studies"][f"{method} {seed}"]]
                best = incumbent(rows)
                finals.setdefault(method, []).append(best.value if best and best.value else 0.0)
            gains = [float(s["gain_mean"]) for s in per_study]
            if not gains:
                methods[method] = {
                    "studies": [],
                    "wins": 0,
                    "gain_mean": math.nan,
                    "gain_low": None,
                    "gain_high": None,
                    "gain_share": math.nan,
                }
                continue
            pooled = gain(dict(enumerate(gains)), dict.fromkeys(range(len(gains)), 0.0))
            methods[method] = {
                "studies": per_study,
                "wins": sum(g > 0 for g in gains),
                "gain_mean": statistics.fmean(gains),
                "gain_low": pooled.low if pooled else None,
                "gain_high": pooled.high if pooled else None,
                "gain_share": statistics.fmean(gains) / base_mean if base_mean > 0 else math.nan,
            }
        first = settings["methods"][0]
        target = median(finals[first])
        for method in settings["methods"]:
            reached = [  # a race run's seed is not a new setting reaching the target
                budget_to_reach(
                    [row for r in d["studies"][f"{method} {s}"] if not (row := TrialRow(**r)).race],
                    target,
                )
                for s in range(settings["studies"])
            ]
            spent = [math.inf if r is None else r for r in reached]
            methods[method]["budget_to_target"] = reached
            methods[method]["budget_to_target_median"] = statistics.median(spent)
        ratio = math.nan
        if "Random" in methods and first != "Random":
            ours, theirs = (methods[m]["budget_to_target_median"] for m in (first, "Random"))
            if math.isfinite(theirs):
                ratio = ours / theirs
            elif math.isfinite(ours):
                ratio = 0.0  # random search never got there
        out[dataset] = {
            "defaults_fresh": base,
            "defaults_mean": base_mean,
            "target": target,
            "budget": d["budget"],
            "methods": methods,
            "budget_ratio": ratio,
        }
    return out


def print_tables(summary: dict[str, Any]) -> None:
    for dataset, s in summary.items():
        print(
            f"\n{dataset}: defaults on fresh seeds {s['defaults_mean']:.4f} "
            f"({', '.join(f'{v:.4f}' for v in s['defaults_fresh'].values())})"
        )
        rows = []
        for method, m in s["methods"].items():
            for st in m["studies"]:
                rows.append(
                    [
                        method,
                        str(st["study"]),
                        f"{st['trials']} ({st['pruned']} pruned, {st.get('race_runs', 0)} raced)",
                        "defaults"
                        if st["incumbent_is_defaults"]
                        else f"{st['incumbent_single_run']:.4f}",
                        f"{st['incumbent_fresh_mean']:.4f}",
                        f"{st['gain_mean']:+.4f}",
                    ]
                )
        print(table(["method", "study", "trials", "incumbent (1 run)", "fresh mean", "gain"], rows))
        for method, m in s["methods"].items():
            low, high = m["gain_low"], m["gain_high"]
            interval = f"[{low:+.4f}, {high:+.4f}]" if low is not None else "n/a"
            print(
                f"{method}: beats the defaults in {m['wins']}/{len(m['studies'])} studies (goal "
                f"{GOAL_WINS:.0%}); mean gain {m['gain_mean']:+.4f} {interval} "
                f"({100 * m['gain_share']:+.1f}% of the defaults; goal an interval above 0 and "
                f"{GOAL_GAIN:+.0%}); budget to {s['target']:.4f}: median "
                f"{m['budget_to_target_median']} it of {s['budget']}"
            )
        print(
            f"budget ratio (search / random): {s['budget_ratio']:.2f} (goal <= {GOAL_BUDGET_RATIO})"
        )


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(prog="python -m bench.search_vs_defaults", description=__doc__)
    parser.add_argument("--preset", choices=PRESETS, default="cpu")
    parser.add_argument("--datasets", help="comma-separated: shapes, shapes-large, small")
    parser.add_argument("--methods", help="comma-separated samplers, the first is the search")
    parser.add_argument("--studies", type=int, help="studies per method")
    parser.add_argument("--budget-trials", type=int, help="budget per study, in full trials")
    parser.add_argument(
        "--epochs", type=int, help="trial length (the first rung keeps its share of the preset's)"
    )
    parser.add_argument("--min-resource", type=int, help="the pruner's first rung, in epochs")
    parser.add_argument("--imgsz", type=int)
    parser.add_argument("--train-images", type=int)
    parser.add_argument("--val-images", type=int)
    parser.add_argument(
        "--races",
        action=argparse.BooleanOptionalAction,
        help="race a challenger against the incumbent on fresh seeds (default: on)",
    )
    parser.add_argument(
        "--retrain-search-only",
        action="store_true",
        help="retrain only the first method's incumbents (the control keeps its single runs)",
    )
    parser.add_argument("--jobs", type=int, default=1, help="processes at once")
    parser.add_argument("--device", help="cpu (default) or cuda")
    parser.add_argument("--name", default="search_vs_defaults")
    parser.add_argument("--from-results", type=Path)
    args = parser.parse_args(argv)
    if args.from_results:
        raw = json.loads(args.from_results.read_text())["raw"]
    else:
        settings = PRESETS[args.preset]
        changes: dict[str, Any] = {
            "datasets": tuple(args.datasets.split(",")) if args.datasets else None,
            "methods": tuple(args.methods.split(",")) if args.methods else None,
            "studies": args.studies,
            "budget_trials": args.budget_trials,
            "epochs": args.epochs,
            "imgsz": args.imgsz,
            "train_images": args.train_images,
            "val_images": args.val_images,
            "races": args.races,
            "retrain_all": False if args.retrain_search_only else None,
            "device": args.device,
        }
        if args.epochs is not None:
            changes["min_resource"] = args.min_resource or scaled_rung(settings, args.epochs)
        else:
            changes["min_resource"] = args.min_resource
        settings = replace(settings, **{k: v for k, v in changes.items() if v is not None})
        load_before = load_average()
        raw = run(settings, args.jobs)
        raw["load_before"] = load_before
        raw["load_after"] = load_average()
        raw["machine"] = machine()
    summary = summarise(raw)
    print_tables(summary)
    payload = {"raw": raw, "summary": summary}
    if not args.from_results:
        write_results(args.name, payload)
    return payload


if __name__ == "__main__":
    main()
