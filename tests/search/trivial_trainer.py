"""A trainer that does no training: the soak test's objective, and a way to make chosen trials fail.

`fit` reports one evaluation per epoch (two in the smoke study, so that the pruner and the
storage writes of a real trial run) and returns at once: every second a trial takes is the
search's control plane (claim, ask, record, report, prune check, tell). Workers load it through
`--trainer-module tests.search.trivial_trainer` (or `$TUNE_TRAINER_MODULE`). It never imports
torch unless asked to simulate an out-of-memory error, so soak workers start without it.

Environment knobs:

- TRIVIAL_FAIL: `N:kind,...`, trial numbers that fail at their first step, kind being `raise`
  (RuntimeError), `nan` (NonFiniteLossError, the trainer's non-finite loss), `oom`
  (torch.OutOfMemoryError as CUDA raises it, simulated on CPU) or `url` (a RuntimeError quoting
  `$TUNE_STORAGE`, password and all, as a careless library might: the security tests check that
  it is masked wherever it is shown or stored).
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable
from typing import Any

from trainer.config import TrainConfig
from trainer.records import EvalLine, EvalReport, FitResult, NonFiniteLossError, TrainLine

FAIL_ENV = "TRIVIAL_FAIL"
FAILURE_KINDS = ("raise", "nan", "oom", "url")


def trial_number(config: TrainConfig) -> int | None:
    """The trial number the worker wrote into the run folder name (`.../trial-0042`)."""
    match = re.search(r"trial-(\d+)", config.out)
    return int(match.group(1)) if match else None


def failures() -> dict[int, str]:
    """`$TRIVIAL_FAIL` as {trial number: kind}."""
    planned: dict[int, str] = {}
    for item in os.environ.get(FAIL_ENV, "").split(","):
        if not item.strip():
            continue
        number, _, kind = item.partition(":")
        if kind not in FAILURE_KINDS:
            raise ValueError(f"{FAIL_ENV} kinds are {FAILURE_KINDS}, but got {item=}")
        planned[int(number)] = kind
    return planned


def _fail(kind: str, number: int) -> None:
    if kind == "raise":
        raise RuntimeError(f"trivial failure in trial {number}")
    if kind == "url":
        raise RuntimeError(f"lost {os.environ.get('TUNE_STORAGE', '?')} in trial {number}")
    if kind == "nan":
        raise NonFiniteLossError(f"loss is nan at iter 1 (trial {number})")
    import torch  # only here: the soak's workers never pay for importing torch

    # the message CUDA gives; the class is the one torch.cuda raises
    raise torch.OutOfMemoryError(
        "CUDA out of memory. Tried to allocate 2.00 GiB (GPU 0; 7.79 GiB total capacity)"
    )


def load_data(data: str, imgsz: int, skip_bad: bool = False) -> dict[str, Any]:
    """Nothing to load: the data set is a label."""
    return {"data": data, "imgsz": imgsz}


def fit(
    config: TrainConfig,
    report: Callable[[int, EvalReport], None] | None = None,
    data: Any = None,
) -> FitResult:
    """Report `config.epochs` evaluations of a value made from the weights; return at once."""
    number = trial_number(config)
    kind = failures().get(number) if number is not None else None
    if kind is not None and number is not None:
        _fail(kind, number)
    # deterministic, different per setting, higher for later steps (so Hyperband has a ranking)
    base = 0.5 / (1.0 + abs(config.lcls - 0.1) + abs(config.lbox - 0.5) + abs(config.lr - 0.003))
    for step in range(1, config.epochs + 1):
        value = base * step / config.epochs
        line = TrainLine(step, step, config.lr, 1.0 / step, 0.3, 0.4, 0.3, 0.0)
        metrics = EvalReport(
            eval=EvalLine(step, step, value * 1.5, value, 0.3, 0.4, 0.3, 1.0),
            train=[line],
            seconds_training=0.0,
            seconds_evaluating=0.0,
        )
        if report is not None:
            report(step, metrics)
    return FitResult(
        mAP50=base * 1.5,
        mAP50_95=base,
        inference_ms=1.0,
        train_latency=0.0,
        epochs_completed=config.epochs,
        iterations=config.epochs,
        images_per_second=0.0,
        seconds_training=0.0,
        seconds_evaluating=0.0,
        device="cpu",
        run_dir=config.out,
    )
