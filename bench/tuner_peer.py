"""tune's search against Ultralytics' own tuner, on Ultralytics' trainer, at equal training epochs.

    uv run python -m bench.tuner_peer --quick                       # minutes: a smoke run
    uv run python -m bench.tuner_peer --epochs 10 --iterations 6    # the comparison
    # bench/results/tuner_peer[-NAME].json

Needs the optional extra (`uv sync --extra ultralytics`: tune's Ultralytics trainer and the peer
share it; nothing of Ultralytics is a dependency of tune's core). Offline, as `bench/peer.py`.
On one data set (`shapes` at 128 px, or `--data` a data.yaml), YOLOv8n from scratch, one after
the other in this invocation:

1. **Ultralytics' tuner**: `YOLO("yolov8n.yaml").tune(data, epochs=E, iterations=N, ...)`, its
   default space and rule (`ultralytics/engine/tuner.py`: the defaults first, then mutations of
   the best so far). Its winner: `best_hyperparameters.yaml`. It ranks by Ultralytics' fitness
   (0.1 mAP50 + 0.9 mAP50-95), every iteration with seed 0.
2. **tune**: `studies/ultralytics.toml` as a user runs it (Evolution around Ultralytics'
   defaults, the start trial first, successive halving), its trials E epochs long, evaluated at
   the end only, and a budget of E x N epochs: the same training epochs as the tuner's. Its
   `[space]` leaves out tune's own MultiStepLR keys (milestones, gamma), which plain
   Ultralytics cannot train with, so that each winner is a set of Ultralytics train args. The
   study runs in the real worker loop (`run_worker`) on a SQLite file. Its winners: its best
   single run (what the tuner's winner also is) and, when a race chose another, the incumbent
   (`study_best`: the defaults until a challenger wins a race, which a small budget cannot pay).
3. **Retrained on fresh seeds**: Ultralytics' defaults, the tuner's winner and tune's, each
   `YOLO("yolov8n.yaml").train(..., seed=S, **args)` for E epochs on the same `--seeds` fresh
   seeds; the last epoch's validation mAP50-95 of each, and each winner's gain over the defaults
   paired by seed (`search.confirm.stats.gain`).

Goal (docs/benchmarks.md, "How good is the search"): tune's winner at least as good as the
tuner's, and better than the defaults.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

from bench import load_average, machine, table, write_results

RETRAIN_SEEDS = 1001  # the first fresh seed; the studies' own trials use 0
OWN_KEYS = ("milestone1", "milestone2_rest", "gamma")  # tune's MultiStepLR, not Ultralytics'


def ultralytics_args(
    data_yaml: str, imgsz: int, batch: int, epochs: int, device: str
) -> dict[str, Any]:
    """What every Ultralytics run here trains with besides its hyperparameters: offline, fp32
    (Ultralytics' AMP check downloads a model), no plots, no early stop (`bench/peer.py`)."""
    return {
        "data": data_yaml,
        "imgsz": imgsz,
        "batch": batch,
        "epochs": epochs,
        "device": "0" if device == "cuda" else "cpu",
        "amp": False,
        "plots": False,
        "patience": 0,
        "workers": 0,
        "verbose": False,
    }


def train_once(common: dict[str, Any], hyp: dict[str, Any], seed: int, out: Path) -> float:
    """One Ultralytics run from scratch: its last epoch's validation mAP50-95."""
    from ultralytics import YOLO  # type: ignore[import-not-found,unused-ignore]

    last: dict[str, float] = {}

    def on_fit_epoch_end(trainer: Any) -> None:
        if trainer.epoch + 1 <= common["epochs"]:  # not the final validation of best.pt
            last["mAP50_95"] = float(trainer.metrics.get("metrics/mAP50-95(B)", 0.0))

    model = YOLO("yolov8n.yaml")
    model.add_callback("on_fit_epoch_end", on_fit_epoch_end)
    model.train(**common, **hyp, seed=seed, project=str(out), name=f"seed{seed}", exist_ok=True)
    return last.get("mAP50_95", 0.0)


def run_tuner(common: dict[str, Any], iterations: int, out: Path) -> dict[str, Any]:
    """Ultralytics' tuner: its winner's hyperparameters and each iteration's fitness."""
    from ultralytics import YOLO  # type: ignore[import-not-found,unused-ignore]

    started = time.perf_counter()
    YOLO("yolov8n.yaml").tune(
        **common, iterations=iterations, save=False, project=str(out), name="tune", seed=0
    )
    tune_dir = out / "tune"
    import yaml

    best = yaml.safe_load((tune_dir / "best_hyperparameters.yaml").read_text()) or {}
    rows = [
        json.loads(line)
        for line in (tune_dir / "tune_results.ndjson").read_text().split("\n")
        if line
    ]
    return {
        "best": {k: v for k, v in best.items() if not str(k).startswith("#")},
        "fitness": [row.get("fitness") for row in rows],
        "seconds": time.perf_counter() - started,
    }


def run_tune_study(
    data_yaml: str, imgsz: int, batch: int, epochs: int, iterations: int, device: str, out: Path
) -> dict[str, Any]:
    """tune's study of the Ultralytics trainer at the tuner's total epochs: its incumbent."""
    import optuna

    from search.bookkeeping import trial_record
    from search.bookkeeping.storage import open_storage
    from search.confirm.incumbent import study_best
    from search.control.study_setup import prepare_study
    from search.running.worker import WorkerOptions, run_worker
    from search.study.study_file import Overrides, apply_overrides, parse_study, read_study_table

    raw = apply_overrides(read_study_table("ultralytics")[0], Overrides(epochs=epochs))
    raw["name"] = "bench-tuner-peer"
    raw["trial"] = {
        **raw["trial"],
        "data": data_yaml,
        "imgsz": imgsz,
        "batch": batch,
        "device": device,
        "eval_interval": epochs,  # as the tuner's winner is judged: at the end of its run
    }
    raw["space"] = {k: v for k, v in raw["space"].items() if k not in OWN_KEYS}
    raw["budget"] = {"epochs": epochs * iterations}
    raw.pop("baselines", None)
    spec = parse_study(raw, "bench tuner_peer")
    out.mkdir(parents=True, exist_ok=True)
    url = f"sqlite:///{out / 'study.db'}"
    prepare_study(spec, open_storage(url, create_schema=True))
    started = time.perf_counter()
    options = WorkerOptions(
        runs_dir=out / "runs",
        artifacts=out / "artifacts",
        threads=os.cpu_count() or 1,
        handle_signals=False,
        log=lambda line: print(f"   {line}", flush=True),
    )
    stats = run_worker(spec.name, url, options)
    study = optuna.load_study(study_name=spec.name, storage=url)
    trials = study.get_trials(deepcopy=False)
    incumbent, _ = study_best(study, trials, spec)
    if incumbent is None:
        raise SystemExit("tune's study ended without a complete trial")
    best = study.best_trial
    return {
        "best": dict(best.params),
        "best_value": best.value,
        "incumbent": dict(incumbent.params),
        "incumbent_number": incumbent.number,
        # the start trial: Ultralytics' defaults, retrained as "defaults" already
        "incumbent_defaults": next(
            (dict(t.params) for t in trials if trial_record.read_start(t)), {}
        ),
        "values": [t.value for t in trials],
        "states": [t.state.name for t in trials],
        "stopped_because": stats.stopped_because,
        "seconds": time.perf_counter() - started,
    }


def summarise(retrained: dict[str, dict[int, float]]) -> dict[str, Any]:
    """Each setting's mean over the fresh seeds and each winner's paired gain over the defaults."""
    from search.confirm.stats import gain

    defaults = retrained["defaults"]
    out: dict[str, Any] = {}
    for name, runs in retrained.items():
        found = gain(runs, defaults) if name != "defaults" else None
        out[name] = {
            "mean": statistics.fmean(runs.values()),
            "runs": runs,
            "gain": None if found is None else found.mean,
            "gain_low": None if found is None else found.low,
            "gain_high": None if found is None else found.high,
        }
    return out


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(prog="python -m bench.tuner_peer", description=__doc__)
    parser.add_argument("--quick", action="store_true", help="a tiny shapes set, 1-epoch runs")
    parser.add_argument("--data", help="a data.yaml (default: the built-in shapes)")
    parser.add_argument("--epochs", type=int, default=10, help="each run's and trial's length")
    parser.add_argument("--iterations", type=int, default=6, help="the tuner's runs; tune's budget")
    parser.add_argument("--seeds", type=int, default=3, help="fresh seeds for the retraining")
    parser.add_argument("--imgsz", type=int, default=128)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    parser.add_argument("--out", type=Path, default=None, help="results folder")
    parser.add_argument("--name", default="", help="suffix of the results file name")
    args = parser.parse_args(argv)
    os.environ.setdefault("YOLO_OFFLINE", "1")
    from trainer.shapes import shapes_yaml

    epochs, iterations, seeds = args.epochs, args.iterations, args.seeds
    with tempfile.TemporaryDirectory(prefix="tuner-peer-") as tmp:
        work = Path(tmp)
        if args.quick:
            epochs, iterations, seeds = 1, 2, 2
            data = str(shapes_yaml(work / "cache", n_train=32, n_val=16))
        else:
            data = args.data or str(shapes_yaml())
        common = ultralytics_args(data, args.imgsz, args.batch, epochs, args.device)
        load_before = load_average()
        print(f"== Ultralytics' tuner: {iterations} iterations of {epochs} epochs", flush=True)
        tuner = run_tuner(common, iterations, work / "ultralytics")
        print(f"== tune's study: {epochs * iterations} epochs of {epochs}-epoch trials", flush=True)
        study = run_tune_study(
            data, args.imgsz, args.batch, epochs, iterations, args.device, work / "tune"
        )
        settings = {
            "defaults": {},
            "ultralytics tuner": tuner["best"],
            "tune (best run)": study["best"],
        }
        if study["incumbent"] not in (study["best"], study["incumbent_defaults"]):
            settings["tune (incumbent)"] = study["incumbent"]
        retrained: dict[str, dict[int, float]] = {name: {} for name in settings}
        for seed in range(RETRAIN_SEEDS, RETRAIN_SEEDS + seeds):
            for name, hyp in settings.items():
                value = train_once(common, hyp, seed, work / "retrain" / name.replace(" ", "-"))
                retrained[name][seed] = value
                print(f"   {name} seed {seed}: {value:.4f}", flush=True)
    summary = summarise(retrained)
    print(
        table(
            ["setting", "mean mAP50-95 on fresh seeds", "runs", "gain over the defaults [95%]"],
            [
                [
                    name,
                    f"{s['mean']:.4f}",
                    ", ".join(f"{v:.4f}" for v in s["runs"].values()),
                    "-"
                    if s["gain"] is None
                    else f"{s['gain']:+.4f} [{s['gain_low']:+.4f}, {s['gain_high']:+.4f}]",
                ]
                for name, s in summary.items()
            ],
        )
    )
    payload = {
        "bench": "tuner_peer",
        "machine": machine(),
        "settings": {
            "epochs": epochs,
            "iterations": iterations,
            "seeds": seeds,
            "imgsz": args.imgsz,
            "batch": args.batch,
            "device": args.device,
            "data": args.data or "shapes",
            "quick": args.quick,
        },
        "load_before": load_before,
        "load_after": load_average(),
        "tuner": tuner,
        "tune": study,
        "summary": summary,
    }
    name = "tuner_peer" + ("-quick" if args.quick else "") + (f"-{args.name}" if args.name else "")
    print(f"results: {write_results(name, payload, args.out)}")
    return payload


if __name__ == "__main__":
    main()
