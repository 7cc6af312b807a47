"""The trainer's acceptance run: the five hand-tuned settings at the default run length.

Trains the default model on `shapes` once per hand-tuned setting of DESIGN.md (taken from
the `loss-weights` study's baselines, so there is one list of them) with every other option at
`tune train`'s defaults, and prints a table of mAP, throughput and run time. The spread between
the best and the worst setting is what shows that the data set makes loss weights matter.

    uv run python -m bench.hand_tuned                 # the five settings, default length
    uv run python -m bench.hand_tuned --quick         # 2 epochs each, a smoke run
    uv run python -m bench.hand_tuned --throughput    # only time the nano model's training step

Results go to bench/results/hand_tuned.json (hand_tuned_quick.json, hand_tuned_throughput.json).
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

import torch

from search.study.study_file import load_study_file
from trainer.config import TrainConfig
from trainer.data import iterate_batches, load_data
from trainer.fit import fit
from trainer.loss import DetectionLoss, LossWeights
from trainer.model import build_detector
from trainer.optim import build_optimizer

RESULTS = Path(__file__).parent / "results"
# the baseline keys that are TrainConfig fields; milestones stay at the trainer's defaults
HAND_TUNED_FIELDS = ("lcls", "lobj", "lbox", "optimizer", "lr", "momentum", "weight_decay", "gamma")


def hand_tuned_configs(epochs: int | None, out: Path) -> list[tuple[str, TrainConfig]]:
    """(label, config) of every baseline of the loss-weights study, at tune train's defaults."""
    spec = load_study_file("loss-weights")
    configs = []
    for i, baseline in enumerate(spec.baselines):
        values = {k: v for k, v in baseline.as_dict().items() if k in HAND_TUNED_FIELDS}
        config = TrainConfig(**values, out=str(out / f"setting-{i}"))
        configs.append(
            (baseline.label, config if epochs is None else config.replace(epochs=epochs))
        )
    return configs


def measure_throughput(threads: int, seconds: float = 20.0) -> dict[str, float]:
    """Training images/s of the nano model at 128 px, batch 32: forward, loss, backward, step."""
    torch.set_num_threads(threads)
    data = load_data("shapes", 128)
    model = build_detector("nano", len(data.names)).to(memory_format=torch.channels_last)  # type: ignore[call-overload]
    config = TrainConfig()
    loss_fn = DetectionLoss(model, LossWeights.of(config))
    optimizer = build_optimizer(model, config)
    generator = torch.Generator().manual_seed(0)
    times: list[float] = []
    start = time.perf_counter()
    while time.perf_counter() - start < seconds:
        for images, targets, _ in iterate_batches(
            data.train, 32, shuffle=True, augment=True, generator=generator
        ):
            t0 = time.perf_counter()
            images = images.contiguous(memory_format=torch.channels_last)
            parts = loss_fn(model(images), targets)
            optimizer.zero_grad(set_to_none=True)
            (parts.total * images.shape[0]).backward()
            optimizer.step()
            times.append(time.perf_counter() - t0)
            if time.perf_counter() - start > seconds:
                break
    per_iter = statistics.median(times[3:])  # skip the first iterations (allocator warm-up)
    return {"threads": threads, "iterations": len(times), "images_per_second": 32 / per_iter}


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawTextHelpFormatter
    )
    parser.add_argument("--quick", action="store_true", help="2 epochs per setting")
    parser.add_argument("--throughput", action="store_true", help="only time the training step")
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    args = parser.parse_args()

    RESULTS.mkdir(exist_ok=True)
    results: dict[str, Any] = {"load_average_start": os.getloadavg()[0], "settings": []}
    if args.throughput:
        runs = [measure_throughput(args.threads) for _ in range(3)]
        rates = sorted(r["images_per_second"] for r in runs)
        print(
            f"nano, 128 px, batch 32, {args.threads} threads: {rates[1]:.0f} training images/s "
            f"(median of 3 runs of 20 s: {', '.join(f'{r:.0f}' for r in rates)})"
        )
        throughput = {"runs": runs, "median": rates[1], "load_average_end": os.getloadavg()[0]}
        (RESULTS / "hand_tuned_throughput.json").write_text(json.dumps(throughput, indent=2))
        return
    torch.set_num_threads(args.threads)
    data = load_data("shapes", 128)
    with tempfile.TemporaryDirectory() as tmp:
        for label, config in hand_tuned_configs(2 if args.quick else None, Path(tmp)):
            start = time.perf_counter()
            result = fit(config, data=data)
            row = {
                "label": label,
                **{k: getattr(config, k) for k in ("lcls", "lobj", "lbox", "optimizer", "lr")},
                "epochs": config.epochs,
                "mAP50": result.mAP50,
                "mAP50_95": result.mAP50_95,
                "images_per_second": result.images_per_second,
                "inference_ms": result.inference_ms,
                "seconds": time.perf_counter() - start,
            }
            results["settings"].append(row)
            print(json.dumps(row))
    results["load_average_end"] = os.getloadavg()[0]
    maps = [r["mAP50_95"] for r in results["settings"]]
    results["spread_mAP50_95"] = max(maps) - min(maps)

    print()
    print(
        "| setting | lcls | lobj | lbox | optimizer | mAP50 | mAP50-95 | train img/s | run time |"
    )
    print("| --- | --- | --- | --- | --- | --- | --- | --- | --- |")
    for r in results["settings"]:
        print(
            f"| {r['label']} | {r['lcls']} | {r['lobj']} | {r['lbox']} | {r['optimizer']} | "
            f"{r['mAP50']:.3f} | {r['mAP50_95']:.3f} | {r['images_per_second']:.0f} | "
            f"{r['seconds']:.0f} s |"
        )
    print(f"\nbest - worst mAP50-95: {results['spread_mAP50_95']:.3f}")
    name = "hand_tuned_quick.json" if args.quick else "hand_tuned.json"
    (RESULTS / name).write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()
