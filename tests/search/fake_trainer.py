"""A fast stand-in for `trainer.fit` / `trainer.data.load_data`, for search tests and soak runs.

It behaves like `fit`: calls `report(step, EvalReport)` after each evaluation (step = epochs
completed), lets `report` raise to stop, and returns a `FitResult`. Its mAP50-95 is a smooth,
deterministic function of the loss weights and learning rate (best near lcls 0.1, lobj 1.0,
lbox 0.5, lr 0.003), growing over the epochs, so that TPE has something to find and Hyperband
something to prune. A seed other than the recipe's 0 shifts it by a small deterministic amount
(`seed_noise`, within +-0.01): the run-to-run noise that `tune confirm` measures. Used by
subprocess workers through `--trainer-module tests.search.fake_trainer`
(or `$TUNE_TRAINER_MODULE`); environment knobs:

- FAKE_STEP_SECONDS: sleep per epoch (default 0.02)
- FAKE_FAIL_TRIALS / FAKE_NAN_TRIALS: comma-separated trial numbers that raise RuntimeError /
  NonFiniteLossError at their first epoch
- FAKE_CHECKPOINT=1: like the real trainer, save `last.pt` (here a small JSON file) in
  `config.out` after each evaluation, before reporting it, and resume from it when
  `config.resume` is set (off by default: the worker would upload it to the artifact store)
- FAKE_DIE_LCLS + FAKE_DIE_AT_EPOCH: a run whose lcls equals FAKE_DIE_LCLS SIGKILLs its own
  process during that epoch (before its evaluation), every time: a trial that keeps killing its
  worker (the baselines of studies/smoke.toml have lcls 0.5, sampled values never do)
- FAKE_HOLD_FILE: while this file exists, an epoch does not start (a test holds a worker's trial
  in place, neither finishing nor asking for another, until it deletes the file)
"""

from __future__ import annotations

import json
import math
import os
import re
import signal
import time
from collections.abc import Callable, Generator, Iterator, Sequence
from pathlib import Path
from typing import Any

from trainer.config import TrainConfig, evaluates_after
from trainer.records import EvalLine, EvalReport, FitResult, NonFiniteLossError, TrainLine

OPTIMUM = {"lcls": 0.1, "lobj": 1.0, "lbox": 0.5, "lr": 0.003}


def final_map(config: TrainConfig) -> float:
    """The mAP50-95 a full run of `config` reaches."""
    distance = sum(math.log(getattr(config, k) / v) ** 2 for k, v in OPTIMUM.items())
    bonus = {"SGD": 0.0, "Adam": 0.02, "AdamW": 0.03}[config.optimizer]
    return 0.5 * math.exp(-distance / 6.0) + bonus + seed_noise(config)


def seed_noise(config: TrainConfig) -> float:
    """A run's luck: 0 at seed 0 (every test but confirm's), else a fixed value within +-0.01
    that depends on the seed and the setting (so paired differences vary too)."""
    return 0.01 * math.sin(config.seed * 2.39996 + 7 * config.lcls) if config.seed else 0.0


def trial_number(config: TrainConfig) -> int | None:
    match = re.search(r"trial-(\d+)", config.out)
    return int(match.group(1)) if match else None


def _listed(name: str, number: int | None) -> bool:
    listed = {int(n) for n in os.environ.get(name, "").split(",") if n.strip()}
    return number in listed


def load_data(data: str, imgsz: int, skip_bad: bool = False) -> dict[str, Any]:
    return {"data": data, "imgsz": imgsz, "pid": os.getpid()}


def fit(
    config: TrainConfig,
    report: Callable[[int, EvalReport], None] | None = None,
    data: Any = None,
) -> FitResult:
    epochs = _epochs(config, report)
    while True:
        try:
            next(epochs)
        except StopIteration as end:
            return end.value  # type: ignore[no-any-return]


def fit_pack(
    first: Sequence[Any],
    *,
    refill: Callable[[], Any] | None = None,
    done: Callable[[Any, FitResult | Exception], None] | None = None,
    data: Any = None,
) -> list[FitResult | Exception]:
    """`trainer.packed.fit_pack`'s contract, faked: each member (`.config`, `.report`) runs its
    epochs; an epoch of the pack takes FAKE_STEP_SECONDS once, whatever the number of trials (a
    fused model); after it, every trial that ended goes to `done` and its slot to `refill`."""
    step_seconds = float(os.environ.get("FAKE_STEP_SECONDS", "0.02"))
    slots: list[tuple[Any, Iterator[None]] | None] = [
        (m, _epochs(m.config, m.report, sleep=False)) for m in first
    ]
    ended: list[FitResult | Exception] = []
    while any(slots):
        time.sleep(step_seconds)
        for i, slot in enumerate(slots):
            if slot is None:
                continue
            member, epochs = slot
            outcome: FitResult | Exception | None = None
            try:
                next(epochs)
            except StopIteration as end:
                outcome = end.value
            except Exception as exc:  # this trial's failure, or its report stopping it
                outcome = exc
            if outcome is None:
                continue
            ended.append(outcome)
            if done is not None:
                done(member, outcome)
            joining = refill() if refill is not None else None
            slots[i] = (
                None
                if joining is None
                else (joining, _epochs(joining.config, joining.report, sleep=False))
            )
    return ended


def _epochs(
    config: TrainConfig,
    report: Callable[[int, EvalReport], None] | None = None,
    sleep: bool = True,
) -> Generator[None, None, FitResult]:
    """The fake run, one epoch per step of the generator (the last step returns its
    `FitResult`)."""
    step_seconds = float(os.environ.get("FAKE_STEP_SECONDS", "0.02"))
    number = trial_number(config)
    target = final_map(config)
    iters_per_epoch = 10
    checkpoint = Path(config.out) / "last.pt"
    saving = os.environ.get("FAKE_CHECKPOINT") == "1"
    first = 1
    if saving and config.resume and checkpoint.is_file():
        first = int(json.loads(checkpoint.read_text())["epoch"]) + 1
    die_lcls = os.environ.get("FAKE_DIE_LCLS")
    die_at = int(os.environ.get("FAKE_DIE_AT_EPOCH", "0"))
    hold = os.environ.get("FAKE_HOLD_FILE")
    for epoch in range(first, config.epochs + 1):
        while hold and os.path.exists(hold):
            time.sleep(0.05)
        if sleep:
            time.sleep(step_seconds)
        if die_lcls is not None and config.lcls == float(die_lcls) and epoch == die_at:
            os.kill(os.getpid(), signal.SIGKILL)
        if _listed("FAKE_FAIL_TRIALS", number):
            raise RuntimeError(f"fake failure in trial {number}")
        if _listed("FAKE_NAN_TRIALS", number):
            raise NonFiniteLossError(f"loss is nan at epoch {epoch}")
        if not evaluates_after(epoch, config.epochs, config.eval_interval):
            yield  # never the last epoch: that one evaluates
            continue
        progress = epoch / config.epochs
        value = target * (1 - math.exp(-3 * progress)) / (1 - math.exp(-3))
        it = epoch * iters_per_epoch
        line = TrainLine(
            epoch, it, config.lr, 1.0 / epoch, 0.3, 0.4, 0.3, step_seconds / iters_per_epoch
        )
        metrics = EvalReport(
            eval=EvalLine(epoch, it, value * 1.5, value, 0.3, 0.4, 0.3, 1.0),
            train=[line],
            seconds_training=step_seconds,
            seconds_evaluating=0.0,
        )
        if saving:
            checkpoint.parent.mkdir(parents=True, exist_ok=True)
            checkpoint.write_text(json.dumps({"epoch": epoch, "resumed_at": first - 1}))
        if report is not None:
            report(epoch, metrics)
        if epoch < config.epochs:
            yield  # the last epoch ends the run in the same step
    return FitResult(
        mAP50=target * 1.5,
        mAP50_95=target,
        inference_ms=2.0 + 10 * config.lbox,
        train_latency=step_seconds / iters_per_epoch,
        epochs_completed=config.epochs,
        iterations=config.epochs * iters_per_epoch,
        images_per_second=1000.0,
        seconds_training=step_seconds * config.epochs,
        seconds_evaluating=0.0,
        device="cpu",
        run_dir=config.out,
    )
