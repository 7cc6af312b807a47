"""Side by side: tune's default recipe against Ultralytics YOLOv8n, same data, size, batch, cores.

    uv run python -m bench.peer                      # shapes (30 epochs, 128 px) + small (15, 192)
    uv run python -m bench.peer --sets shapes --epochs 30
    uv run python -m bench.peer --quick              # seconds: a tiny shapes set, tune only
                                                     # unless ultralytics is importable

For each data set, one after the other in this one invocation (the machine is shared: both see
the same neighbours), two child processes train from scratch:

- **tune**: `trainer.fit.fit(TrainConfig(data, imgsz, batch, epochs, threads))`, every other
  field at its default: what `tune train --data X` runs;
- **ultralytics**: `YOLO("yolov8n.yaml").train(...)` with its default recipe, installed into an
  ephemeral environment by `uv run --with ultralytics` (never a dependency of tune), offline
  (`YOLO_OFFLINE=1`, `plots=False`, `amp=False`, the data yaml's absolute `path:`);
- **ultralytics-via-tune** (`--via-tune`): the same run as one trial of tune's Ultralytics
  trainer (`search/trainers/ultralytics.py`, its defaults are Ultralytics' own, evaluated every
  epoch): what the adapter costs and whether a trial matches running Ultralytics yourself. Needs
  the optional extra (`uv sync --extra ultralytics`).

Each child reports one JSON line per epoch: epoch, seconds since its training call began (data
loading, training and the per-epoch validation included), mAP50-95 and mAP50 on the same
validation images. Results: `bench/results/peer-<name>.json` and a Plotly figure
`peer-<name>.html` (mAP50-95 against wall seconds and against epochs). The load average is
recorded before and after each run.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from bench import load_average, machine, table, write_results

CHECKPOINTS_S = (150.0, 300.0, 600.0)
REPO = Path(__file__).resolve().parents[1]
UV_PEER = ["uv", "run", "--with", "ultralytics", "python", "-m", "bench.peer"]


def value_at(curve: Sequence[dict[str, float]], seconds: float, key: str = "mAP50_95") -> float:
    """The metric of the last evaluation finished by `seconds` (0 before the first)."""
    done = [p[key] for p in curve if p["seconds"] <= seconds]
    return done[-1] if done else 0.0


def summarise(runs: dict[str, dict[str, Any]], epochs: int | None = None) -> list[list[Any]]:
    """Rows of a table: trainer, mAP50-95 at each checkpoint in seconds, final, time, img/s.

    Points past `epochs` (a final re-validation some trainers report) are left out."""
    rows = []
    for trainer, run in runs.items():
        curve = [p for p in run["curve"] if epochs is None or p["epoch"] <= epochs]
        last = curve[-1] if curve else {"mAP50_95": 0.0, "mAP50": 0.0, "seconds": 0.0}
        rows.append(
            [trainer]
            + [value_at(curve, s) for s in CHECKPOINTS_S]
            + [last["mAP50_95"], last["mAP50"], last["seconds"], run.get("train_images_per_s")]
        )
    return rows


# --- children: one training run each, one JSON line per epoch on stdout ----------------------


def _emit(kind: str, **values: Any) -> None:
    print("PEER " + json.dumps({"kind": kind, **values}), flush=True)


def parse_overrides(text: str) -> dict[str, Any]:
    """`model=nano,lr=0.01` -> {"model": "nano", "lr": 0.01} (values as JSON where they parse)."""
    overrides: dict[str, Any] = {}
    for item in filter(None, text.split(",")):
        key, _, raw = item.partition("=")
        try:
            overrides[key.strip()] = json.loads(raw)
        except json.JSONDecodeError:
            overrides[key.strip()] = raw.strip()
    return overrides


def child_tune(
    data: str, imgsz: int, batch: int, epochs: int, threads: int, out: str, overrides: str = ""
) -> None:
    from trainer.config import TrainConfig
    from trainer.fit import fit
    from trainer.records import EvalReport

    config = TrainConfig(
        data=data, imgsz=imgsz, batch=batch, epochs=epochs, threads=threads, out=out,
        **parse_overrides(overrides),
    )  # fmt: skip
    start = time.perf_counter()

    def report(step: int, metrics: EvalReport) -> None:
        seconds = time.perf_counter() - start
        _emit(
            "epoch",
            epoch=step,
            seconds=seconds,
            mAP50_95=metrics.eval.mAP50_95,
            mAP50=metrics.eval.mAP50,
        )

    result = fit(config, report)
    _emit(
        "done",
        train_images_per_s=result.images_per_second,
        config=config.to_dict(),
        seconds=time.perf_counter() - start,
    )


def child_ultralytics(data: str, imgsz: int, batch: int, epochs: int, out: str) -> None:
    os.environ.setdefault("YOLO_OFFLINE", "1")
    import ultralytics  # type: ignore[import-not-found,unused-ignore]
    from ultralytics import YOLO  # type: ignore[import-not-found,unused-ignore]

    model = YOLO("yolov8n.yaml")
    marks: dict[str, float] = {}
    train_seconds: list[float] = []

    def on_train_epoch_start(trainer: Any) -> None:
        marks["epoch"] = time.perf_counter()

    def on_train_epoch_end(trainer: Any) -> None:
        train_seconds.append(time.perf_counter() - marks["epoch"])

    def on_fit_epoch_end(trainer: Any) -> None:
        if trainer.epoch + 1 > epochs:  # the final validation of best.pt, not an epoch
            return
        m = trainer.metrics
        _emit(
            "epoch",
            epoch=trainer.epoch + 1,
            seconds=time.perf_counter() - marks["start"],
            mAP50_95=float(m.get("metrics/mAP50-95(B)", 0.0)),
            mAP50=float(m.get("metrics/mAP50(B)", 0.0)),
        )

    model.add_callback("on_train_epoch_start", on_train_epoch_start)
    model.add_callback("on_train_epoch_end", on_train_epoch_end)
    model.add_callback("on_fit_epoch_end", on_fit_epoch_end)
    info = model.info(verbose=False)  # (layers, params, gradients, GFLOPs at 640)
    marks["start"] = time.perf_counter()
    model.train(
        data=data,
        imgsz=imgsz,
        batch=batch,
        epochs=epochs,
        device="cpu",
        amp=False,
        plots=False,
        project=out,
        name="run",
        exist_ok=True,
        seed=0,
        verbose=False,
    )
    n_train = _count_train_images(data)
    _emit(
        "done",
        train_images_per_s=n_train * len(train_seconds) / max(sum(train_seconds), 1e-9),
        gflops_640=info[3] if info else None,
        seconds=time.perf_counter() - marks["start"],
        version=ultralytics.__version__,
    )


def child_ultralytics_via_tune(data: str, imgsz: int, batch: int, epochs: int, out: str) -> None:
    from search.trainers.base import Evaluation, TrialJob
    from search.trainers.ultralytics import PARAMS, UltralyticsTrainer

    # Ultralytics' own default of 8 dataloader workers, as the direct run uses
    trainer = UltralyticsTrainer(workers=8)
    values = {**PARAMS.defaults(), "model": "yolov8n.yaml", "imgsz": imgsz, "batch": batch}
    job = TrialJob(values, data, epochs, 1, Path(out), seed=0, device="cpu")
    start = time.perf_counter()

    def report(evaluation: Evaluation) -> None:
        _emit(
            "epoch",
            epoch=evaluation.step,
            seconds=time.perf_counter() - start,
            mAP50_95=evaluation.metrics["mAP50_95"],
            mAP50=evaluation.metrics["mAP50"],
        )

    trainer.prepare(job)
    outcome = trainer.run(job, report)
    training = float(outcome.summary["seconds_training"])
    _emit(
        "done",
        train_images_per_s=_count_train_images(data) * epochs / max(training, 1e-9),
        seconds=time.perf_counter() - start,
    )


def _count_train_images(data: str) -> int:
    from trainer.data import read_data_yaml

    return len(read_data_yaml(data).train)


# --- the parent: data sets, runs side by side, results --------------------------------------


def _run_child(command: list[str], timeout: float, env: dict[str, str]) -> dict[str, Any]:
    load_before = load_average()
    started = time.perf_counter()
    curve: list[dict[str, Any]] = []
    done: dict[str, Any] = {}
    try:
        proc = subprocess.run(
            command, capture_output=True, text=True, timeout=timeout, env=env, cwd=REPO
        )
        stdout, stderr, rc = proc.stdout, proc.stderr, proc.returncode
    except subprocess.TimeoutExpired as exc:
        stdout = exc.stdout.decode() if isinstance(exc.stdout, bytes) else exc.stdout or ""
        stderr, rc = f"timed out after {timeout} s", -9
    for line in stdout.splitlines():
        if line.startswith("PEER "):
            record = json.loads(line[5:])
            kind = record.pop("kind")
            (curve.append(record) if kind == "epoch" else done.update(record))
    return {
        "command": " ".join(command),
        "returncode": rc,
        "curve": curve,
        **done,
        "wall_seconds": time.perf_counter() - started,
        "load_before": load_before,
        "load_after": load_average(),
        "stderr_tail": stderr[-2000:] if rc else "",
    }


def _data_sets(names: Sequence[str], quick: bool, work: Path) -> dict[str, str]:
    from bench.small_data import small_data_yaml
    from trainer.shapes import cache_root, shapes_yaml

    sets = {}
    for name in names:
        if name == "shapes":
            path = shapes_yaml(work / "cache", n_train=32, n_val=16) if quick else shapes_yaml()
        elif name == "small":
            path = small_data_yaml(
                work / "small" if quick else cache_root() / "bench-small-v1",
                *((16, 8) if quick else ()),
            )
        else:
            raise SystemExit(f"unknown data set {name!r} (shapes, small)")
        sets[name] = str(Path(path).resolve())
    return sets


def _ultralytics_importable() -> bool:
    try:
        import ultralytics  # type: ignore[import-not-found,unused-ignore]  # noqa: F401
    except ImportError:
        return False
    return True


def run(args: argparse.Namespace) -> Path:
    work = Path(args.work).resolve()
    work.mkdir(parents=True, exist_ok=True)
    settings = {"shapes": (args.epochs or 30, args.imgsz or 128), "small": (15, 192)}
    if args.quick:
        settings = {"shapes": (2, 64), "small": (2, 64)}
        args.batch = min(args.batch, 8)
    env = {**os.environ, "YOLO_OFFLINE": "1", "OMP_NUM_THREADS": str(args.threads)}
    results: dict[str, Any] = {"machine": machine(), "args": vars(args), "sets": {}}
    peer = not args.tune_only and (not args.quick or _ultralytics_importable())
    for name, data in _data_sets(args.sets.split(","), args.quick, work).items():
        epochs, imgsz = (
            settings[name]
            if args.epochs is None or name != "shapes"
            else (args.epochs, args.imgsz or 128)
        )
        common = [
            "--data",
            data,
            "--imgsz",
            str(imgsz),
            "--batch",
            str(args.batch),
            "--epochs",
            str(epochs),
            "--threads",
            str(args.threads),
        ]
        runs: dict[str, Any] = {}
        order = ["tune", "ultralytics"] if peer else ["tune"]
        if args.via_tune:
            order.append("ultralytics-via-tune")
        # variants of tune's recipe ride along on shapes (same invocation, same neighbours)
        if name == "shapes":
            order += [f"tune[{v}]" for v in args.tune_variant]
        for trainer in order:
            out = str(work / f"{name}-{trainer}")
            kind, _, variant = trainer.partition("[")
            own_env = kind in ("tune", "ultralytics-via-tune") or args.quick
            python = [sys.executable, "-m", "bench.peer"] if own_env else UV_PEER
            command = [*python, "--child", kind, *common, "--out", out]
            if variant:
                command += ["--overrides", variant.rstrip("]")]
            print(f"[{name}] {trainer}: {' '.join(command)}", flush=True)
            runs[trainer] = _run_child(command, args.timeout, env)
            last = runs[trainer]["curve"][-1:] or [{}]
            print(
                f"[{name}] {trainer}: rc {runs[trainer]['returncode']}, last {last[0]}", flush=True
            )
        results["sets"][name] = {
            "data": data,
            "epochs": epochs,
            "imgsz": imgsz,
            "batch": args.batch,
            "threads": args.threads,
            "runs": runs,
        }
        headers = [
            "trainer",
            *(f"mAP50-95 @ {s:.0f} s" for s in CHECKPOINTS_S),
            "final mAP50-95",
            "final mAP50",
            "seconds",
            "train img/s",
        ]
        print(table(headers, summarise(runs, epochs)), flush=True)
    path = write_results(f"peer-{args.name}", results, Path(args.results) if args.results else None)
    figure(results, path.with_suffix(".html"))
    return path


def figure_data(results: dict[str, Any]) -> list[dict[str, Any]]:
    """One trace per (data set, trainer, x axis): what the figure shows, drawing-free."""
    traces = []
    for name, entry in results["sets"].items():
        for trainer, run in entry["runs"].items():
            curve = [p for p in run["curve"] if p["epoch"] <= entry["epochs"]]
            for axis in ("seconds", "epoch"):
                traces.append(
                    {
                        "set": name,
                        "trainer": trainer,
                        "axis": axis,
                        "x": [p[axis] for p in curve],
                        "y": [p["mAP50_95"] for p in curve],
                    }
                )
    return traces


def figure(results: dict[str, Any], path: Path) -> None:
    import plotly.graph_objects as go
    from plotly.subplots import make_subplots

    names = list(results["sets"])
    fig = make_subplots(
        rows=len(names),
        cols=2,
        subplot_titles=[f"{n}: mAP50-95 vs {a}" for n in names for a in ("wall seconds", "epochs")],
    )
    colours = {"tune": "#1f77b4", "ultralytics": "#d62728"}
    for t in figure_data(results):
        row, col = names.index(t["set"]) + 1, 1 if t["axis"] == "seconds" else 2
        fig.add_trace(
            go.Scatter(
                x=t["x"],
                y=t["y"],
                mode="lines+markers",
                name=t["trainer"],
                line={"color": colours.get(t["trainer"])},
                showlegend=row == 1 and col == 1,
            ),
            row=row,
            col=col,
        )
    fig.update_layout(height=360 * len(names), width=1000, title="tune vs Ultralytics YOLOv8n")
    fig.write_html(path, include_plotlyjs="cdn")


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--sets", default="shapes,small")
    parser.add_argument("--epochs", type=int, default=None, help="shapes only (default 30)")
    parser.add_argument("--imgsz", type=int, default=None)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--timeout", type=float, default=1800)
    parser.add_argument("--tune-only", action="store_true")
    parser.add_argument(
        "--via-tune", action="store_true",
        help="also run Ultralytics as a trial of tune's Ultralytics trainer (needs the extra)",
    )  # fmt: skip
    parser.add_argument(
        "--tune-variant", action="append", default=[],
        help="also train tune with these TrainConfig overrides on shapes, e.g. model=nano",
    )  # fmt: skip
    parser.add_argument("--overrides", default="", help=argparse.SUPPRESS)
    parser.add_argument("--report", help="print the tables of a results JSON, redraw its figure")
    parser.add_argument("--name", default="cpu")
    parser.add_argument("--work", default="/tmp/tune-peer")
    parser.add_argument("--results", default=None, help="folder for the JSON and HTML")
    parser.add_argument(
        "--child", choices=["tune", "ultralytics", "ultralytics-via-tune"], help=argparse.SUPPRESS
    )
    parser.add_argument("--data", help=argparse.SUPPRESS)
    parser.add_argument("--out", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child == "tune":
        child_tune(
            args.data, args.imgsz, args.batch, args.epochs, args.threads, args.out, args.overrides
        )
    elif args.child == "ultralytics":
        child_ultralytics(args.data, args.imgsz, args.batch, args.epochs, args.out)
    elif args.child == "ultralytics-via-tune":
        child_ultralytics_via_tune(args.data, args.imgsz, args.batch, args.epochs, args.out)
    elif args.report:
        report(Path(args.report))
    else:
        print(run(args))


def report(path: Path) -> None:
    """The tables of a finished run, again (for docs/benchmarks.md), and its figure redrawn."""
    results = json.loads(path.read_text())
    headers = ["trainer", *(f"mAP50-95 @ {s:.0f} s" for s in CHECKPOINTS_S), "final mAP50-95",
               "final mAP50", "seconds", "train img/s"]  # fmt: skip
    for name, entry in results["sets"].items():
        print(f"{name}: {entry['epochs']} epochs, {entry['imgsz']} px, batch {entry['batch']}")
        print(table(headers, summarise(entry["runs"], entry["epochs"])))
        for trainer, run in entry["runs"].items():
            print(f"  {trainer}: load {run['load_before'][0]:.1f} -> {run['load_after'][0]:.1f}")
    figure(results, path.with_suffix(".html"))


if __name__ == "__main__":
    main()
