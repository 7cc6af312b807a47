"""tune's own detector as a trainer (`[trial] trainer = "tune"`, the default).

Its parameters are `TrainConfig`'s (`trainer/config.py`, each declared once with `param(...)`),
less the ones the search sets for every trial (`JOB_FIELDS`: data, length, device, threads,
seed) and `weights` (a local file that other machines would not have). The training function is
`trainer.fit.fit`, or one with the same signature: tests and soak runs pass fakes (`train_fn`,
`load_data`, or the worker's `--trainer-module` naming a module with `fit` and `load_data`).
"""

from __future__ import annotations

import importlib
import os
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, Protocol

from search.trainers.base import (
    Done,
    Evaluation,
    PackedJob,
    Refill,
    ReportFn,
    TrainerError,
    TrialJob,
    TrialOutcome,
)
from trainer.config import PACK_SHARED_FIELDS, TRAIN_PARAMS, PackMember, TrainConfig
from trainer.params import ParamRegistry
from trainer.records import EvalReport, FitResult

# set from the TrialJob, never pinned or drawn
JOB_FIELDS: tuple[str, ...] = ("data", "epochs", "eval_interval", "device", "threads", "seed")
PARAMS = ParamRegistry(
    "tune", tuple(p for p in TRAIN_PARAMS if p.name not in (*JOB_FIELDS, "weights"))
)
COMPONENTS: tuple[str, ...] = ("box", "obj", "cls")
CHECKPOINT = "last.pt"  # trainer/run_dir.py saves it after each evaluation, before reporting
# for tests and soak runs: a module with fit(config, report, data) and optionally load_data()
TRAINER_MODULE_ENV = "TUNE_TRAINER_MODULE"

LoadDataFn = Callable[[str, int, bool], Any]


class TrainFn(Protocol):
    """What `trainer.fit.fit` looks like (tests and soak runs pass fakes)."""

    def __call__(
        self,
        config: TrainConfig,
        report: Callable[[int, EvalReport], None] | None = ...,
        data: Any = ...,
    ) -> FitResult: ...


def load_fit(module: str | None = None) -> tuple[TrainFn, LoadDataFn | None]:
    """`fit` and `load_data` of the real trainer, or of `module` (or `$TUNE_TRAINER_MODULE`).
    Imported lazily: the trainer pulls in torch, which fakes never need."""
    module = module or os.environ.get(TRAINER_MODULE_ENV)
    if module:
        mod = importlib.import_module(module)
        return mod.fit, getattr(mod, "load_data", None)
    from trainer.data import load_data
    from trainer.fit import fit

    return fit, load_data


def load_fit_pack(module: str | None = None) -> Any:
    """`fit_pack` of the real trainer (`trainer/packed.py`) or of `module` (a fake's)."""
    module = module or os.environ.get(TRAINER_MODULE_ENV)
    if module:
        found = getattr(importlib.import_module(module), "fit_pack", None)
        if found is None:
            raise TrainerError(f"trainer module {module!r} has no fit_pack: it cannot pack")
        return found
    from trainer import packed

    return packed.fit_pack


class TuneTrainer:
    """Runs `fit(TrainConfig, report, data)` for each trial, or `fit_pack` for a pack of
    them (`trainer/packed.py`); the data set is loaded once."""

    name = "tune"
    params = PARAMS
    components = COMPONENTS
    pack_shared = PACK_SHARED_FIELDS
    checkpoint: str | None = CHECKPOINT

    def __init__(
        self,
        train_fn: TrainFn | None = None,
        load_data: LoadDataFn | None = None,
        module: str | None = None,
    ) -> None:
        self._train_fn = train_fn
        self._injected = train_fn is not None  # a fake fit, which has no fit_pack
        self._load_data = load_data
        self._module = module
        self._data: Any = None

    def _fns(self) -> tuple[TrainFn, LoadDataFn | None]:
        if self._train_fn is None:
            self._train_fn, default_load = load_fit(self._module)
            self._load_data = self._load_data or default_load
        return self._train_fn, self._load_data

    def config(self, job: TrialJob) -> TrainConfig:
        """The `TrainConfig` a job trains with."""
        fields = {
            "data": job.data,
            "epochs": job.epochs,
            "eval_interval": job.eval_interval,
            "device": job.device,
            "threads": job.threads,
            "out": str(job.out),
            "resume": job.resume,
        }
        if job.seed is not None:
            fields["seed"] = job.seed
        return TrainConfig(**{**job.values, **fields})

    def check(self, job: TrialJob) -> None:
        """The checks that tie values together (imgsz a multiple of 32, milestones in order...):
        a `ValueError` naming them."""
        self.config(job)

    def prepare(self, job: TrialJob) -> None:
        _, load_data = self._fns()
        if load_data is not None:
            self._data = load_data(job.data, self.config(job).imgsz, False)

    def run(self, job: TrialJob, report: ReportFn) -> TrialOutcome:
        train_fn, _ = self._fns()

        def on_eval(step: int, metrics: EvalReport) -> None:
            report(evaluation_of(step, metrics, job.out / CHECKPOINT))

        return outcome_of(train_fn(self.config(job), on_eval, self._data))

    def auto_pack(self, job: TrialJob) -> int:
        """How many of the study's trials fit one pack on the job's device (after `prepare`)."""
        from trainer.pack_probe import auto_pack_size

        return auto_pack_size(self.config(job), self._data)

    def run_pack(self, first: Sequence[PackedJob], refill: Refill, done: Done) -> None:
        if self._module is None and self._injected:
            raise TrainerError("an injected train_fn cannot pack: pass a trainer module")
        fit_pack = load_fit_pack(self._module)
        self._fns()
        jobs: dict[int, PackedJob] = {}

        def member(packed: PackedJob) -> PackMember:
            def on_eval(step: int, metrics: EvalReport) -> None:
                packed.report(evaluation_of(step, metrics, packed.job.out / CHECKPOINT))

            made = PackMember(self.config(packed.job), on_eval)
            jobs[id(made)] = packed
            return made

        def next_member() -> PackMember | None:
            packed = refill()
            return None if packed is None else member(packed)

        def ended(made: PackMember, result: FitResult | BaseException) -> None:
            packed = jobs.pop(id(made))
            done(packed, result if isinstance(result, BaseException) else outcome_of(result))

        fit_pack([member(p) for p in first], refill=next_member, done=ended, data=self._data)


def outcome_of(result: FitResult) -> TrialOutcome:
    """tune's `FitResult` as the search's `TrialOutcome`."""
    return TrialOutcome(
        metrics={"mAP50": result.mAP50, "mAP50_95": result.mAP50_95},
        summary=result.to_dict(),
        inference_ms=result.inference_ms,
    )


def evaluation_of(step: int, metrics: EvalReport, checkpoint: Path | None = None) -> Evaluation:
    """tune's `EvalReport` as the search's `Evaluation` (the same stored point). `checkpoint`:
    the run folder's checkpoint, which `fit` saved for this step before it reported."""
    e = metrics.eval
    return Evaluation(
        step=step,
        metrics={"mAP50": e.mAP50, "mAP50_95": e.mAP50_95, "val_loss": e.val_loss},
        losses={"box": e.val_lbox, "obj": e.val_lobj, "cls": e.val_lcls},
        train=[line.to_dict() for line in metrics.train],
        iter=e.iter,
        seconds_training=metrics.seconds_training,
        seconds_evaluating=metrics.seconds_evaluating,
        checkpoint=checkpoint,
    )


def from_options(options: Mapping[str, Any], where: str) -> TuneTrainer:
    """`[trial.tune]`: tune's own trainer takes no options. (A fake `fit` for tests comes only
    from the worker's `--trainer-module` or `$TUNE_TRAINER_MODULE`, never from a study file or
    the storage: a study must not name code for workers to import.)"""
    if options:
        raise TrainerError(f"unknown key {where}.{sorted(options)[0]} (trainer 'tune' has none)")
    return TuneTrainer()
