"""Worker throughput: training images/s and the worker's duty cycle, on CPU (and GPU when present).

    uv run python -m bench.throughput            # CPU: 4 trials x 2 epochs, 1 and 2 threads
    uv run python -m bench.throughput --quick    # CPU: 3 trials x 1 epoch, 1 thread

CPU section: the REAL worker loop (`search.running.worker.run_worker`) with the real trainer on
`shapes` (nano, 128 px, batch 32), a SQLite study made from `studies/loss-weights.toml` in a
temporary folder (its first trials are the hand-tuned baselines). Images/s is the trainer's own
`FitResult.images_per_second` (training iterations only, timed per iteration); the duty cycle is
`WorkerStats.duty_cycle`: seconds in training and evaluation over the worker's wall time (which
includes loading the data set, shown apart, and every storage round trip).

GPU section (runs only when `torch.cuda.is_available()`): images/s per trial for the nano and
medium models, GPU utilisation sampled with `nvidia-smi` (or `torch.cuda.utilization`) while
training, and the aggregate images/s of 1, 2 and 4 trials training at once on the one GPU, each
in its own process, started together after loading their data.
"""

from __future__ import annotations

import argparse
import math
import multiprocessing as mp
import queue
import shutil
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any

import optuna

from bench import PeriodicSampler, load_average, machine, median, table, write_results
from search.running.local_workers import mps_running

STUDY = "loss-weights"


# --- CPU: the real worker loop -------------------------------------------------------------------


def worker_run(
    trials: int,
    epochs: int,
    threads: int,
    imgsz: int = 128,
    data: str = "shapes",
    device: str = "cpu",
) -> dict[str, Any]:
    """Run `trials` trials of `epochs` epochs through `run_worker`; images/s and duty cycle."""
    import torch

    from search.bookkeeping import trial_record
    from search.bookkeeping.storage import open_storage
    from search.control.study_setup import prepare_study
    from search.running.worker import WorkerOptions, run_worker
    from search.study.study_file import Overrides, apply_overrides, parse_study, read_study_table
    from search.trainers.builtin import TuneTrainer
    from trainer.data import load_data
    from trainer.fit import fit

    raw = apply_overrides(read_study_table(STUDY)[0], Overrides(epochs=epochs, data=data))
    raw["name"] = "bench-throughput"
    raw["trial"] = {**raw["trial"], "imgsz": imgsz, "device": device}
    raw["budget"] = {"n_trials": trials}
    loading: list[float] = []

    def timed_load(data: str, size: int, skip_bad: bool) -> Any:
        started = time.perf_counter()
        try:
            return load_data(data, size, skip_bad)
        finally:
            loading.append(time.perf_counter() - started)

    with tempfile.TemporaryDirectory(prefix="tune-bench-") as tmp:
        url = f"sqlite:///{Path(tmp) / 'tune.db'}"
        storage = open_storage(url, create_schema=True)
        prepare_study(parse_study(raw, "bench throughput"), storage)
        load = load_average()
        options = WorkerOptions(
            threads=threads,
            runs_dir=Path(tmp) / "runs",
            handle_signals=False,
            log=lambda line: print(f"   {line}", flush=True),
        )
        stats = run_worker(raw["name"], url, options, trainer=TuneTrainer(fit, timed_load))
        study = optuna.load_study(study_name=raw["name"], storage=url)
        summaries = [trial_record.read_summary(t) for t in study.get_trials(deepcopy=False)]
        storage.engine.dispose()
    torch.set_num_threads(1)
    rates = [s["images_per_second"] for s in summaries if s]
    data_seconds = sum(loading)
    busy = stats.trials.busy_seconds
    return {
        "device": device,
        "threads": threads,
        "trials": trials,
        "epochs": epochs,
        "imgsz": imgsz,
        "data": data,
        "trials_complete": stats.trials.complete,
        "trials_pruned": stats.trials.pruned,
        "trials_failed": stats.trials.failed,
        "images_per_second_per_trial": rates,
        "images_per_second_median": median(rates),
        "busy_seconds": busy,
        "data_loading_seconds": data_seconds,
        "wall_seconds": stats.wall_seconds,
        "duty_cycle": stats.duty_cycle,
        "duty_cycle_after_loading": busy / max(stats.wall_seconds - data_seconds, 1e-9),
        "load_average": load,
        "load_average_after": load_average(),
    }


# --- GPU: per model, utilisation, sharing ---------------------------------------------------------


def _gpu_utilisation() -> float | None:
    """GPU 0's utilisation in %, from `nvidia-smi` or `torch.cuda.utilization`; None without."""
    if shutil.which("nvidia-smi"):
        out = subprocess.run(
            ["nvidia-smi", "--query-gpu=utilization.gpu", "--format=csv,noheader,nounits"],
            capture_output=True,
            text=True,
            timeout=10,
        ).stdout.split()
        return float(out[0]) if out else None
    import torch

    try:
        return float(torch.cuda.utilization())
    except Exception:  # needs pynvml; no reading rather than a wrong one
        return None


def gpu_utilisation() -> PeriodicSampler:
    """Samples GPU utilisation (%) every 0.5 s while in the `with` block."""
    return PeriodicSampler(_gpu_utilisation, 0.5)


def _gpu_fit(model: str, imgsz: int, batch: int, epochs: int, barrier: Any, out: Any) -> None:
    """One trial in its own process: load data, wait for the others, train, send the numbers."""
    from trainer.config import TrainConfig
    from trainer.data import load_data
    from trainer.fit import fit

    data = load_data("shapes", imgsz)
    barrier.wait(600)
    started = time.time()
    with tempfile.TemporaryDirectory(prefix="tune-bench-") as tmp:
        config = TrainConfig(
            model=model, imgsz=imgsz, batch=batch, epochs=epochs, device="cuda", out=tmp
        )
        result = fit(config, None, data)
    out.put(
        {
            "images_per_second": result.images_per_second,
            "images": result.iterations * batch,
            "seconds_training": result.seconds_training,
            "started": started,
            "ended": time.time(),
        }
    )


def gpu_trials(
    model: str, imgsz: int, batch: int, epochs: int, at_once: int, limit: float = 300.0
) -> dict[str, Any]:
    """`at_once` trials of `model` training together on GPU 0; per-trial and aggregate images/s.

    Trials still running `limit` seconds after the common start are killed and counted as not
    finished (without MPS, four trials sharing an H200 stalled: see docs/benchmarks.md).
    """
    spawn = mp.get_context("spawn")
    barrier, out = spawn.Barrier(at_once + 1), spawn.Queue()
    procs = [
        spawn.Process(target=_gpu_fit, args=(model, imgsz, batch, epochs, barrier, out))
        for _ in range(at_once)
    ]
    for p in procs:
        p.start()
    barrier.wait(600)
    deadline = time.monotonic() + limit
    results: list[dict[str, Any]] = []
    with gpu_utilisation() as utilisation:
        for _ in procs:
            try:
                results.append(out.get(timeout=max(deadline - time.monotonic(), 0.1)))
            except queue.Empty:
                break
    for p in procs:
        p.join(5)
        if p.is_alive():
            p.kill()
    span = max(r["ended"] for r in results) - min(r["started"] for r in results) if results else 0.0
    return {
        "model": model,
        "imgsz": imgsz,
        "batch": batch,
        "epochs": epochs,
        "mps": mps_running(),
        "trials_at_once": at_once,
        "trials_finished": len(results),
        "limit_seconds": limit,
        "images_per_second_per_trial": [r["images_per_second"] for r in results],
        # training only: the trials' own rates (timed per iteration) added up
        "sum_images_per_second": sum(r["images_per_second"] for r in results),
        # everything from the common start to the last trial's end (evaluations included)
        "aggregate_images_per_second": (
            sum(r["images"] for r in results) / span if span else math.nan
        ),
        "gpu_utilisation_median": median(utilisation.samples),
        "gpu_utilisation_samples": len(utilisation.samples),
    }


def gpu_section(quick: bool) -> dict[str, Any]:
    """The GPU measurements, or why they were not run."""
    import torch

    if not torch.cuda.is_available():
        return {"run": False, "reason": "no CUDA device: torch.cuda.is_available() is False"}
    epochs = 1 if quick else 3
    print(f"-- GPU: nano and medium, {epochs} epoch(s) each", flush=True)
    per_model = [gpu_trials(m, 128, 32, epochs, 1) for m in ("nano", "medium")]
    print("-- GPU: 1, 2 and 4 nano trials at once", flush=True)
    sharing = [gpu_trials("nano", 128, 32, epochs, k) for k in (1, 2, 4)]
    print("-- GPU: the worker loop, duty cycle", flush=True)
    with gpu_utilisation() as utilisation:
        worker = worker_run(2 if quick else 4, 4, 1, device="cuda")
    worker["gpu_utilisation_median"] = median(utilisation.samples)
    return {
        "run": True,
        "device": torch.cuda.get_device_name(0),
        "per_model": per_model,
        "sharing": sharing,
        "worker": worker,
    }


# --- entry point -------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> dict[str, Any]:
    """Run the CPU section (and the GPU one when CUDA is present); print and write results."""
    parser = argparse.ArgumentParser(prog="python -m bench.throughput", description=__doc__)
    parser.add_argument("--quick", action="store_true", help="3 trials x 1 epoch, 1 thread")
    parser.add_argument("--trials", type=int, help="trials in the CPU worker run")
    parser.add_argument("--epochs", type=int, help="epochs per trial")
    parser.add_argument("--threads", help="comma-separated torch thread counts (CPU)")
    parser.add_argument("--imgsz", type=int, default=128)
    parser.add_argument("--data", default="shapes", help="shapes, or a data.yaml (smoke tests)")
    parser.add_argument("--skip-gpu", action="store_true", help="leave out the GPU section")
    parser.add_argument("--skip-cpu", action="store_true", help="leave out the CPU section")
    parser.add_argument("--out", type=Path, default=None, help="results folder")
    args = parser.parse_args(argv)
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    trials = args.trials or (3 if args.quick else 4)
    epochs = args.epochs or (1 if args.quick else 2)
    threads = [int(t) for t in (args.threads or ("1" if args.quick else "1,2")).split(",")]

    cpu = []
    for n in [] if args.skip_cpu else threads:
        print(f"-- CPU worker, {trials} trials x {epochs} epochs, {n} thread(s)", flush=True)
        cpu.append(worker_run(trials, epochs, n, args.imgsz, args.data))
    gpu = {"run": False, "reason": "--skip-gpu"} if args.skip_gpu else gpu_section(args.quick)

    print(_tables(cpu, gpu))
    payload = {
        "bench": "throughput",
        "mode": "quick" if args.quick else "full",
        "machine": machine(),
        "cpu": cpu,
        "gpu": gpu,
    }
    name = "throughput-quick" if args.quick else "throughput"
    print(f"results: {write_results(name, payload, args.out)}")
    return payload


def _tables(cpu: list[dict[str, Any]], gpu: dict[str, Any]) -> str:
    out = table(
        [
            "threads",
            "trials x epochs",
            "images/s per trial (median)",
            "train+eval s",
            "data loading s",
            "worker wall s",
            "duty cycle",
            "duty cycle after loading",
            "load avg",
        ],
        [
            [
                c["threads"],
                f"{c['trials']} x {c['epochs']}",
                c["images_per_second_median"],
                c["busy_seconds"],
                c["data_loading_seconds"],
                c["wall_seconds"],
                f"{c['duty_cycle']:.0%}",
                f"{c['duty_cycle_after_loading']:.0%}",
                c["load_average"][0],
            ]
            for c in cpu
        ],
    )
    if not gpu.get("run"):
        return out + f"\n\nGPU section not run: {gpu.get('reason')}"
    rows = [
        [
            g["model"],
            "on" if g["mps"] else "off",
            f"{g['trials_at_once']} ({g['trials_finished']} done in {g['limit_seconds']:.0f} s)",
            median(g["images_per_second_per_trial"]),
            g["sum_images_per_second"],
            g["aggregate_images_per_second"],
            g["gpu_utilisation_median"],
        ]
        for g in gpu["per_model"] + gpu["sharing"]
    ]
    headers = [
        "model",
        "MPS",
        "trials at once",
        "training images/s per trial (median)",
        "training images/s, all trials",
        "images/s over the wall span (eval included)",
        "GPU util %",
    ]
    w = gpu["worker"]
    worker = (
        f"worker loop on the GPU: {w['trials']} trials x {w['epochs']} epochs, "
        f"{w['images_per_second_median']:.0f} training images/s per trial, busy "
        f"{w['busy_seconds']:.1f} s of {w['wall_seconds']:.1f} s (duty cycle "
        f"{w['duty_cycle']:.0%}, {w['duty_cycle_after_loading']:.0%} after loading), "
        f"GPU util median {w['gpu_utilisation_median']}%"
    )
    return out + f"\n\nGPU: {gpu['device']}\n" + table(headers, rows) + "\n\n" + worker


if __name__ == "__main__":
    main()
