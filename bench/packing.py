"""Trial packing: aggregate trial-images/s of K packed trials against one trial alone.

    uv run python -m bench.packing --k 1,2,4                       # CPU, 1 thread
    uv run python -m bench.packing --device cuda --k 1,2,4,8,16,32,64
    uv run python -m bench.packing --device cuda --model medium --k 1,4,16
    uv run python -m bench.packing --fusion                        # the fusion probe (CPU)
    uv run python -m bench.packing --shrink 4 --iters 20           # a pack whose slots empty
    uv run python -m bench.packing --eval --k 1,4,16               # K trials' evaluations

Main mode: one solo `trainer.fit.fit` and `trainer.packed.fit_packed` with K trials (AdamW,
SGD and Adam by turns, all one seed), nano, 128 px, batch 32, one epoch of `--iters` iterations
on the first `iters * batch` images of `shapes` (32 validation images), side by side in one
process. Per run: the median iteration time (a packed trial's `train_latency` is its share of
the pack's iteration, so `batch / latency` is the pack's aggregate trial-images/s), and on CUDA
the peak memory (`torch.cuda.max_memory_allocated`) per trial. Writes
bench/results/packing-<device>.json.

Evaluation mode: K nano trials (their own random weights) evaluated at one boundary on the
whole validation split of `shapes` (250 images), as fit does it K times (`evaluate` and
`coco_map` per trial) and as a pack does it once (`evaluate_slots`, one pass of the fused
model, and `coco_maps`); then the mAP step alone, COCOeval (faster-coco-eval) on the host once
per trial as tune did before `trainer/mean_ap.py`, against `mean_average_precision` for the K
runs at once on the device. Median of `--repeats` seconds each; the mAPs of every way must
agree. Writes bench/results/packing-eval-<device>.json.

Fusion mode: forward + loss + backward of K nano detectors at (64 px, batch 8) and (128 px,
batch 32), median ms per iteration, for K separate modules, a loop of `functional_call` over
slices of stacked tensors, `torch.func.vmap` over `stack_module_state`, and the grouped
(`build_detector(trials=K)`) model: the measurement behind trainer/packed.py's choice.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import statistics
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import torch

from bench import machine, table, write_results
from bench.coco_reference import cocoeval_map
from trainer.config import TrainConfig
from trainer.data import DetectionData, DetectionSplit, load_data
from trainer.evaluate import coco_map, coco_maps, evaluate, evaluate_slots, ground_truth
from trainer.fit import autocast_for, fit, resolve_device
from trainer.loss import DetectionLoss, LossWeights
from trainer.model import build_detector
from trainer.packed import PackMember, fit_pack, fit_packed, load_trial_state, packed_names
from trainer.packed_state import solo_detector
from trainer.records import FitResult

OPTIMIZERS: tuple[dict[str, Any], ...] = (
    {},
    {"optimizer": "SGD", "lr": 0.01},
    {"optimizer": "Adam", "lr": 0.001},
)


def _head(split: DetectionSplit, n: int) -> DetectionSplit:
    n = min(n, len(split))
    return dataclasses.replace(
        split,
        images=split.images[:n],
        boxes=split.boxes[:n],
        image_ids=split.image_ids[:n],
        paths=split.paths[:n],
        orig_sizes=split.orig_sizes[:n],
        letterboxes=split.letterboxes[:n],
    )


def _peak_mb(device: str) -> float | None:
    if not device.startswith("cuda"):
        return None
    return torch.cuda.max_memory_allocated() / 2**20


def _reset_peak(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()


def _setup(args: argparse.Namespace, **config: Any) -> tuple[DetectionData, Path, TrainConfig]:
    """The data (`--iters` batches of `shapes`, 32 validation images), a scratch folder and the
    one-epoch config every run of this benchmark starts from, with `config`'s changes."""
    torch.set_num_threads(args.threads)
    full = load_data("shapes", args.imgsz)
    data = DetectionData(
        full.names, _head(full.train, args.iters * args.batch), _head(full.val, 32)
    )
    base = TrainConfig(
        model=args.model, imgsz=args.imgsz, batch=args.batch, epochs=1, device=args.device,
        threads=args.threads,
    )  # fmt: skip
    return data, Path(tempfile.mkdtemp(prefix="packing-")), base.replace(**config)


def throughput(args: argparse.Namespace) -> dict[str, Any]:
    data, root, base = _setup(args, log_interval=10**6)
    rows: list[dict[str, Any]] = []
    _reset_peak(args.device)
    with _busy(args.device) as busy:
        solo = fit(base.replace(out=str(root / "solo")), data=data)
    solo_rate = args.batch / solo.train_latency
    rows.append(
        {"run": "solo fit", "k": 1, "iteration_s": solo.train_latency, "trial_images_s": solo_rate,
         "vs_solo": 1.0, "peak_mb_per_trial": _peak_mb(args.device), "gpu_busy": busy()}
    )  # fmt: skip
    for k in args.k:
        configs = [
            base.replace(out=str(root / f"k{k}" / str(i)), **OPTIMIZERS[i % len(OPTIMIZERS)])
            for i in range(k)
        ]
        _reset_peak(args.device)
        with _busy(args.device) as busy:
            results = fit_packed(configs, data=data)
        result = results[0]
        if not isinstance(result, FitResult):
            raise result
        peak = _peak_mb(args.device)
        rate = args.batch / result.train_latency
        rows.append(
            {"run": f"pack of {k}", "k": k, "iteration_s": result.train_latency * k,
             "trial_images_s": rate, "vs_solo": rate / solo_rate,
             "peak_mb_per_trial": None if peak is None else peak / k, "gpu_busy": busy()}
        )  # fmt: skip
        print(f"K={k}: {rate:.1f} trial-images/s ({rate / solo_rate:.2f}x solo)", flush=True)
    return {"rows": rows, "solo": solo.to_dict()}


def shrink(args: argparse.Namespace) -> dict[str, Any]:
    """A pack of `--shrink` K trials whose K - 1 end after one epoch and one trains on for two
    more, once shrinking to its live trial (the default) and once keeping its zeroed slots, side
    by side: the wall time of the pack and the last trial's iteration time in its last epochs."""
    data, root, base = _setup(args, log_interval=1, eval_interval=3)
    rows = []
    for compact in (True, False):
        members = [
            PackMember(base.replace(out=str(root / f"{compact}-{i}"), epochs=1 if i else 3))
            for i in range(args.shrink)
        ]
        started = time.perf_counter()
        fit_pack(members, data=data, compact=compact)
        wall = time.perf_counter() - started
        lines = [json.loads(line) for line in (root / f"{compact}-0" / "metrics.jsonl").open()]
        tail = [line["latency"] for line in lines if line.get("epoch", 0) >= 1 and "lr" in line]
        rows.append(
            {"run": "shrinks" if compact else "keeps its empty slots", "k": args.shrink,
             "wall_s": wall, "tail_iteration_s": statistics.median(tail)}
        )  # fmt: skip
        print(rows[-1], flush=True)
    return {"rows": rows, "tail_speedup": rows[1]["tail_iteration_s"] / rows[0]["tail_iteration_s"]}


def evaluation(args: argparse.Namespace) -> dict[str, Any]:
    """K trials' evaluations at one boundary, each way side by side (module docstring)."""
    torch.set_num_threads(args.threads)
    data = load_data("shapes", args.imgsz)
    rows = [_evaluation_row(args, k, data) for k in args.k]
    return {"rows": rows, "val_images": len(data.val)}


def _evaluation_row(args: argparse.Namespace, k: int, data: DetectionData) -> dict[str, Any]:
    device, val, nc = resolve_device(args.device), data.val, len(data.names)
    autocast = autocast_for(device, TrainConfig(device=args.device))
    torch.manual_seed(0)
    packed = build_detector(args.model, nc=nc, trials=k)
    packed.to(device=device, memory_format=torch.channels_last)  # type: ignore[call-overload]
    names = packed_names(packed, build_detector(args.model, nc=nc))
    solos = [solo_detector(packed, i, names, args.model) for i in range(k)]
    losses = {i: DetectionLoss(packed, LossWeights(0.05, 1.0, 0.5)) for i in range(k)}

    def timed(work: Callable[[], list[tuple[float, float]]]) -> tuple[float, Any]:
        times, result = [], []
        for _ in range(args.repeats):
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            start = time.perf_counter()
            result = work()
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            times.append(time.perf_counter() - start)
        return statistics.median(times), result

    def fused_detections() -> list[list[torch.Tensor]]:
        results = evaluate_slots(packed, losses, val, args.batch, device, autocast, True)
        return [results[i].detections for i in range(k)]

    def alone() -> list[tuple[float, float]]:
        return [
            coco_map(val, evaluate(s, losses[i], val, args.batch, device, autocast, True)
                     .detections, nc)
            for i, s in enumerate(solos)
        ]  # fmt: skip

    def fused() -> list[tuple[float, float]]:
        return coco_maps(val, fused_detections(), nc, ground_truth(val, nc, device))

    alone_s, alone_maps = timed(alone)
    fused_s, fused_maps = timed(fused)
    runs = fused_detections()
    truth = [val.original_boxes(i) for i in range(len(val))]
    host_s, host_maps = timed(lambda: [cocoeval_map(truth, r, nc, faster=True) for r in runs])
    device_s, device_maps = timed(lambda: coco_maps(val, runs, nc, ground_truth(val, nc, device)))
    for maps in (fused_maps, host_maps, device_maps):
        for got, expected in zip(maps, alone_maps, strict=True):
            if max(abs(a - b) for a, b in zip(got, expected, strict=True)) > 1e-6:
                raise AssertionError(f"mAPs disagree at K={k}: {got} and {expected}")
    row = {
        "k": k,
        "detections_per_trial": sum(len(d) for r in runs for d in r) / k,
        "alone_s": alone_s,
        "fused_s": fused_s,
        "eval_speedup": alone_s / fused_s,
        "cocoeval_host_s": host_s,
        "mean_ap_s": device_s,
        "map_speedup": host_s / device_s,
    }
    print(row, flush=True)
    return row


@contextlib.contextmanager
def _busy(device: str) -> Iterator[Callable[[], float | None]]:
    """On CUDA, GPU utilisation (%) sampled while the block runs (median, `nvidia-smi`); on CPU
    nothing (None)."""
    if device == "cpu":
        yield lambda: None
        return
    from bench.throughput import gpu_utilisation

    with gpu_utilisation() as sampler:
        yield lambda: statistics.median(sampler.samples) if sampler.samples else None


# --- fusion probe ----------------------------------------------------------------------------


def _fusion_case(k: int, mode: str, imgsz: int, batch: int, iters: int) -> float:
    from torch.func import functional_call, stack_module_state, vmap

    solos = []
    for seed in range(k):
        torch.manual_seed(seed)
        solos.append(build_detector("nano", 3))
    losses = [DetectionLoss(solos[0], LossWeights(0.05, 1.0, 0.5)) for _ in range(k)]
    x = torch.rand(batch, 3, imgsz, imgsz)
    targets = torch.tensor([[i, i % 3, 0.5, 0.5, 0.3, 0.4] for i in range(batch)])
    base = build_detector("nano", 3)
    params, buffers = stack_module_state(solos)
    grouped = build_detector("nano", 3, trials=k)
    names = packed_names(grouped, solos[0])
    for i, solo in enumerate(solos):
        load_trial_state(grouped, i, solo.state_dict(), names)
    if mode == "separate":
        for m in solos:
            m.to(memory_format=torch.channels_last)  # type: ignore[call-overload]
    times = []
    for it in range(iters):
        start = time.perf_counter()
        if mode == "separate":
            xc = x.contiguous(memory_format=torch.channels_last)
            per_trial = [m(xc) for m in solos]
        elif mode == "loop":
            per_trial = [
                functional_call(
                    base,
                    ({n: p[i] for n, p in params.items()}, {n: b[i] for n, b in buffers.items()}),
                    (x,),
                )
                for i in range(k)
            ]
        else:
            if mode == "vmap":
                outs = vmap(
                    lambda p, b, x: functional_call(base, (p, b), (x,)), in_dims=(0, 0, None)
                )(params, buffers, x)
            else:
                outs = grouped(x)
                outs = [o.unsqueeze(0) for o in outs] if k == 1 else outs
            per_trial = [[o[i] for o in outs] for i in range(k)]
        total = sum(loss(o, targets).total for loss, o in zip(losses, per_trial, strict=True))
        (total * batch).backward()  # type: ignore[union-attr]
        if it >= 2:
            times.append(time.perf_counter() - start)
        for m in (*solos, grouped):
            m.zero_grad()
        for p in params.values():
            p.grad = None
    return statistics.median(times) * 1000


def fusion(args: argparse.Namespace) -> dict[str, Any]:
    torch.set_num_threads(args.threads)
    rows = []
    for imgsz, batch, iters in ((64, 8, 8), (128, 32, 6)):
        for mode in ("separate", "loop", "vmap", "grouped"):
            ms = [_fusion_case(k, mode, imgsz, batch, iters) for k in args.k]
            rows.append(
                {
                    "size": f"{imgsz} px batch {batch}",
                    "mode": mode,
                    "ms": dict(zip(args.k, ms, strict=True)),
                }
            )
            print(rows[-1], flush=True)
    return {"rows": rows}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--k", default="1,2,4", help="pack sizes, comma-separated")
    parser.add_argument("--model", default="nano", help="nano, small, medium, ...")
    parser.add_argument("--imgsz", type=int, default=128)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--iters", type=int, default=30, help="iterations per run")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--fusion", action="store_true", help="run the fusion probe instead")
    parser.add_argument(
        "--shrink", type=int, metavar="K", help="a pack of K whose slots empty: shrunk or kept"
    )
    parser.add_argument("--eval", action="store_true", help="time K trials' evaluations")
    parser.add_argument("--repeats", type=int, default=3, help="--eval: runs of each way")
    args = parser.parse_args()
    args.k = [int(k) for k in args.k.split(",")]
    if args.eval:
        payload = evaluation(args)
        device = "cpu" if args.device == "cpu" else "cuda"
        path = write_results(
            f"packing-eval-{device}", {"machine": machine(), "args": vars(args), **payload}
        )
        print(
            table(
                ["K", "detections/trial", "K alone s", "fused s", "speedup",
                 "COCOeval host s", "mean_ap s", "mAP speedup"],
                [
                    [r["k"], f"{r['detections_per_trial']:.0f}", f"{r['alone_s']:.2f}",
                     f"{r['fused_s']:.2f}", f"{r['eval_speedup']:.2f}x",
                     f"{r['cocoeval_host_s']:.3f}", f"{r['mean_ap_s']:.3f}",
                     f"{r['map_speedup']:.1f}x"]
                    for r in payload["rows"]
                ],
            )
        )  # fmt: skip
        print(path)
        return
    if args.shrink:
        payload = shrink(args)
        path = write_results(
            f"packing-shrink-{args.device}", {"machine": machine(), "args": vars(args), **payload}
        )
        print(f"the last trial's iterations: {payload['tail_speedup']:.2f}x faster shrunk; {path}")
        return
    if args.fusion:
        payload = fusion(args)
        path = write_results(
            "packing-fusion-cpu", {"machine": machine(), "args": vars(args), **payload}
        )
        print(path)
        return
    payload = throughput(args)
    headers = ["run", "iteration s", "trial-images/s", "vs solo", "peak MB/trial", "GPU busy %"]
    print(
        table(
            headers,
            [
                [
                    r["run"],
                    f"{r['iteration_s']:.3f}",
                    f"{r['trial_images_s']:.1f}",
                    f"{r['vs_solo']:.2f}x",
                    "-" if r["peak_mb_per_trial"] is None else f"{r['peak_mb_per_trial']:.0f}",
                    "-" if r["gpu_busy"] is None else f"{r['gpu_busy']:.0f}",
                ]
                for r in payload["rows"]
            ],
        )
    )
    device = "cpu" if args.device == "cpu" else "cuda"
    name = f"packing-{device}" + ("" if args.model == "nano" else f"-{args.model}")
    path = write_results(name, {"machine": machine(), "args": vars(args), **payload})
    print(path)


if __name__ == "__main__":
    main()
