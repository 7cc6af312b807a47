"""Trial packing: aggregate trial-images/s of K packed trials against one trial alone.

    uv run python -m bench.packing --k 1,2,4                       # CPU, 1 thread
    uv run python -m bench.packing --device cuda --k 1,2,4,8,16,32,64
    uv run python -m bench.packing --device cuda --model medium --k 1,4,16
    uv run python -m bench.packing --fusion                        # the fusion probe (CPU)
    uv run python -m bench.packing --shrink 4 --iters 20           # a pack whose slots empty

Main mode: one solo `trainer.fit.fit` and `trainer.packed.fit_packed` with K trials (AdamW,
SGD and Adam by turns, all one seed), nano, 128 px, batch 32, one epoch of `--iters` iterations
on the first `iters * batch` images of `shapes` (32 validation images), side by side in one
process. Per run: the median iteration time (a packed trial's `train_latency` is its share of
the pack's iteration, so `batch / latency` is the pack's aggregate trial-images/s), and on CUDA
the peak memory (`torch.cuda.max_memory_allocated`) per trial. Writes
bench/results/packing-<device>.json.

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
from trainer.config import TrainConfig
from trainer.data import DetectionData, DetectionSplit, load_data
from trainer.fit import fit
from trainer.loss import DetectionLoss, LossWeights
from trainer.model import build_detector
from trainer.packed import PackMember, fit_pack, fit_packed, load_trial_state, packed_names
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
    args = parser.parse_args()
    args.k = [int(k) for k in args.k.split(",")]
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
