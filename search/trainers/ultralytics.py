"""Ultralytics as a trainer (`[trial] trainer = "ultralytics"`).

A trial is one `YOLO(model).train(...)` run, fully offline, from a model yaml (`yolov8n.yaml`,
built from scratch) or a local `.pt`, in the trial's own folder (`job.out`: Ultralytics'
`args.yaml`, `results.csv`, `weights/last.pt` and `weights/best.pt`, kept per trial, plus tune's
`config.json`, `metrics.jsonl` and `summary.json`). The parameters (`ultralytics_params.py`) are
Ultralytics' own train arguments plus the hand-tuning notes' `MultiStepLR` schedule
(`milestones`, `gamma`), which multiplies Ultralytics' own lr schedule.

Evaluations reach the search through Ultralytics' callbacks: `on_fit_epoch_end` runs after the
validation and after `last.pt` is saved, on the same thread, so a report's checkpoint is
complete and of its step. An
exception from `report` (pruned, worker stopping) propagates out of Ultralytics' training loop,
and out of `run`. Losses are reported unweighted: Ultralytics multiplies each component by its
gain (`box`, `cls`, `dfl`) before it logs it, and the adapter divides the gain back out.

`ultralytics` is an optional extra (`uv sync --extra ultralytics`): nothing here imports it until
a trial starts, so study files are checked and reports drawn on machines without it.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import statistics
import time
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from types import ModuleType
from typing import Any

from search.trainers.base import (
    Evaluation,
    ReportFn,
    TrainerError,
    TrialJob,
    TrialOutcome,
    train_key,
)
from search.trainers.ultralytics_params import COMPONENTS, OWN, PARAMS
from trainer.config import evaluates_after

INSTALL = "uv sync --extra ultralytics"
CHECKPOINT = "weights/last.pt"  # relative to the trial's folder, Ultralytics' save_dir
# Ultralytics' loss item -> component; YOLO26's DFL-free head logs its box-distance loss as
# l1_loss, and the `dfl` gain is what multiplies it (cfg/default.yaml: "DFL ... L1 on YOLO26")
_LOSS_ITEMS: dict[str, str] = {
    "box_loss": "box",
    "cls_loss": "cls",
    "dfl_loss": "dfl",
    "l1_loss": "dfl",
}
_OPTIONS: dict[str, str] = {
    "workers": "dataloader worker processes (0: load in the trial's own process)",
    "log_every": "a training line every N iterations (and the first)",
}


class UltralyticsTrainer:
    """Runs `YOLO(model).train(...)` for each trial (see the module docstring)."""

    name = "ultralytics"
    params = PARAMS
    components = COMPONENTS
    checkpoint: str | None = CHECKPOINT

    def __init__(self, workers: int = 0, log_every: int = 20) -> None:
        self.workers = workers
        self.log_every = log_every

    def check(self, job: TrialJob) -> None:
        """The checks that tie values to the machine or to each other (a model that would be
        downloaded, milestones out of order): a `TrainerError` naming them."""
        values = {**PARAMS.defaults(), **job.values}
        _model_source(str(values["model"]))
        ms = list(values["milestones"])
        if ms != sorted(ms):
            raise TrainerError(f"milestones must be in increasing order, but got milestones={ms}")

    def prepare(self, job: TrialJob) -> None:
        import_ultralytics()
        self.check(job)
        _data_yaml(job.data)  # generates `shapes` once per worker, before the first trial

    def run(self, job: TrialJob, report: ReportFn) -> TrialOutcome:
        ul = import_ultralytics()
        self.check(job)
        values = {**PARAMS.defaults(), **job.values}
        PARAMS.check(values, "trial")
        if job.threads is not None:
            import torch

            torch.set_num_threads(job.threads)
        out = job.out.resolve()
        out.mkdir(parents=True, exist_ok=True)
        data = _write_data_yaml(_data_yaml(job.data), out / "data.yaml")
        last = out / "weights" / "last.pt"
        resume = job.resume and last.is_file()
        if resume:
            finished = _finished_outcome(last, job.epochs)
            if finished is not None:
                return finished
        _write_json(out / "config.json", {"trainer": self.name, "values": values, **_job(job)})
        log = _RunLog(out / "metrics.jsonl", keep_through_epoch=_epochs_done(last) if resume else 0)
        device, amp = _device(job.device)
        progress = _Progress(job, values, log, report, self.log_every, device != "cpu")
        args: dict[str, Any] = {
            "data": str(data),
            "device": device,
            "workers": self.workers,
            "plots": False,
            # exactly job.out (project/name would make job.out2 on a clash); the one folder
            # argument a resume accepts as well
            "save_dir": str(out),
        }
        if resume:
            model = ul.YOLO(str(last))
            args["resume"] = True
        else:
            model = ul.YOLO(str(_model_source(str(values["model"]))))
            args |= {k: v for k, v in values.items() if k not in OWN and k != "model"}
            args |= {
                "epochs": job.epochs,
                "amp": amp,
                "patience": 0,  # no early stopping: the pruner decides when a trial stops
                "val": True,
                "verbose": False,
            }
            if job.seed is not None:
                args["seed"] = job.seed
        for event, callback in progress.callbacks().items():
            model.add_callback(event, callback)
        schedule = _with_milestones(list(values["milestones"]), float(values["gamma"]))
        trainer_cls = _trainer_class(progress.evaluates, schedule, progress.final_eval)
        started = time.perf_counter()
        with _no_font_download():
            model.train(trainer=trainer_cls, **args)
        if progress.last is None:
            raise TrainerError(f"Ultralytics trained {out} without an evaluation to report")
        best = out / "weights" / "best.pt"
        inference_ms = _inference_ms(ul, best if best.is_file() else last, values, device)
        final = {k: progress.last.metrics[k] for k in ("mAP50", "mAP50_95")}
        summary = {
            "trainer": self.name,
            "ultralytics": ul.__version__,
            "run_dir": str(out),
            "best_pt": str(best) if best.is_file() else None,
            "last_pt": str(last),
            "epochs": job.epochs,
            **final,
            # best.pt's own validation (Ultralytics' final_eval), not reported to the pruner
            **{f"best_{k}": v for k, v in progress.best.items()},
            "seconds": time.perf_counter() - started,
            "seconds_training": progress.seconds_training,
            "seconds_evaluating": progress.seconds_evaluating,
            "train_latency": statistics.median(progress.latencies) if progress.latencies else 0.0,
            "inference_ms": inference_ms,
            "values": values,
        }
        _write_json(out / "summary.json", summary)
        return TrialOutcome(metrics=final, summary=summary, inference_ms=inference_ms)


def from_options(options: Mapping[str, Any], where: str) -> UltralyticsTrainer:
    """`[trial.ultralytics]`: `workers` (dataloader processes, default 0) and `log_every`
    (training lines, default 20); nothing is imported."""
    unknown = sorted(set(options) - set(_OPTIONS))
    if unknown:
        raise TrainerError(
            f"unknown key {where}.{unknown[0]} (known: {', '.join(_OPTIONS)})"
            if len(unknown) == 1
            else f"unknown keys {', '.join(f'{where}.{k}' for k in unknown)} "
            f"(known: {', '.join(_OPTIONS)})"
        )
    workers = options.get("workers", 0)
    if not isinstance(workers, int) or isinstance(workers, bool) or workers < 0:
        raise TrainerError(f"{where}.workers must be an integer >= 0, but got {workers=!r}")
    log_every = options.get("log_every", 20)
    if not isinstance(log_every, int) or isinstance(log_every, bool) or log_every < 1:
        raise TrainerError(f"{where}.log_every must be an integer >= 1, but got {log_every=!r}")
    return UltralyticsTrainer(workers=workers, log_every=log_every)


# --- what one run reports -------------------------------------------------------------------


class _Progress:
    """Ultralytics' callbacks, turned into training lines and `Evaluation`s."""

    def __init__(
        self,
        job: TrialJob,
        values: Mapping[str, Any],
        log: _RunLog,
        report: ReportFn,
        log_every: int,
        sync_cuda: bool,
    ) -> None:
        self.job = job
        self.gains = {c: float(values[c]) for c in COMPONENTS}
        self.log = log
        self.report = report
        self.log_every = log_every
        self.sync_cuda = sync_cuda
        self.last: Evaluation | None = None
        self.best: dict[str, float] = {}
        self.latencies: list[float] = []
        self.seconds_training = 0.0
        self.seconds_evaluating = 0.0
        self._pending: list[dict[str, float]] = []  # training lines since the last report
        self._since = [0.0, 0.0]  # training, evaluating seconds since the last report
        self._sums: dict[str, float] = {}
        self._interval = [0, 0.0]  # iterations, seconds since the last training line
        self._iter = 0
        self._clock = {"batch": 0.0, "epoch": 0.0, "val": 0.0}
        self._final = False

    def callbacks(self) -> dict[str, Callable[[Any], None]]:
        return {
            "on_train_epoch_start": self._epoch_start,
            "on_train_batch_start": self._batch_start,
            "on_train_batch_end": self._batch_end,
            "on_train_epoch_end": self._epoch_end,
            "on_fit_epoch_end": self._fit_epoch_end,
        }

    def evaluates(self, step: int) -> bool:
        """Whether the epoch that completes `step` epochs is evaluated (and reported)."""
        return evaluates_after(step, self.job.epochs, self.job.eval_interval)

    def final_eval(self) -> None:
        """Ultralytics' validation of best.pt after the last epoch comes next: not a report."""
        self._final = True

    def unweighted(self, items: Mapping[str, float], prefix: str = "") -> dict[str, float]:
        """Components by name, the gain divided out. A gain of 0 leaves nothing to divide: the
        logged value is 0 whatever the model does, so that component is left out, not faked."""
        out = {}
        for name, value in items.items():
            component = _LOSS_ITEMS.get(name.removeprefix(prefix))
            if component is None:
                raise TrainerError(
                    f"Ultralytics logged a loss {name!r} the adapter does not know "
                    f"(known: {', '.join(_LOSS_ITEMS)}); its gain cannot be divided out"
                )
            if self.gains[component] > 0:
                out[component] = float(value) / self.gains[component]
        return out

    def _epoch_start(self, trainer: Any) -> None:
        self._iter = trainer.epoch * len(trainer.train_loader)  # also right after a resume
        self._clock["epoch"] = time.perf_counter()

    def _batch_start(self, trainer: Any) -> None:
        self._clock["batch"] = time.perf_counter()

    def _batch_end(self, trainer: Any) -> None:
        if self.sync_cuda:
            import torch

            torch.cuda.synchronize()
        elapsed = time.perf_counter() - self._clock["batch"]
        self._iter += 1
        self.latencies.append(elapsed)
        items = {k: float(v) for k, v in trainer.loss_items.items()}
        for k, v in {"loss": sum(items.values()), **items}.items():
            self._sums[k] = self._sums.get(k, 0.0) + v
        self._interval[0] += 1
        self._interval[1] += elapsed
        if self._iter == 1 or self._iter % self.log_every == 0:
            self._line(trainer)

    def _line(self, trainer: Any) -> None:
        n, seconds = self._interval
        mean = {k: v / n for k, v in self._sums.items()}
        line = {
            "epoch": trainer.epoch + 1,  # the epoch being trained, counted from 1
            "iter": self._iter,
            # the "weight" group (Ultralytics' first): biases warm up from their own lr
            "lr": float(trainer.optimizer.param_groups[0]["lr"]),
            "loss": mean.pop("loss"),  # weighted total: not comparable across gains
            **{train_key(c): v for c, v in self.unweighted(mean).items()},
            "latency": seconds / n,
        }
        if all(math.isfinite(v) for v in line.values()):  # a non-finite loss fails the epoch
            self._pending.append(line)
            self.log.append(line)
        self._sums, self._interval = {}, [0, 0.0]

    def _epoch_end(self, trainer: Any) -> None:
        now = time.perf_counter()
        self._since[0] += now - self._clock["epoch"]
        self._clock["val"] = now

    def _fit_epoch_end(self, trainer: Any) -> None:
        metrics = trainer.metrics or {}
        if self._final:
            self.best = _maps(metrics)
            return
        self._since[1] += time.perf_counter() - self._clock["val"]
        step = trainer.epoch + 1
        val = {k: float(v) for k, v in metrics.items() if k.startswith("val/")}
        losses = {f"train/{k}": float(v) for k, v in (trainer.tloss or {}).items()}
        # Ultralytics goes on after a non-finite loss it cannot recover from (the first epoch,
        # or a broken model's validation): its mAP would be a meaningless 0
        if not all(math.isfinite(v) for v in (losses | val).values()):
            from trainer.records import NonFiniteLossError

            raise NonFiniteLossError(
                f"Ultralytics' loss became non-finite in epoch {step}: {losses | val} "
                f"(lr0={trainer.args.lr0}, optimizer={trainer.args.optimizer}); "
                "try a lower learning rate"
            )
        if not self.evaluates(step):
            return
        evaluation = Evaluation(
            step=step,
            metrics={**_maps(metrics), "val_loss": sum(val.values())},  # val_loss: weighted
            losses=self.unweighted(val, prefix="val/"),
            train=self._pending,
            iter=self._iter,
            seconds_training=self._since[0],
            seconds_evaluating=self._since[1],
            # saved by Ultralytics on this thread just before this callback (`save_model`)
            checkpoint=self.job.out / CHECKPOINT,
        )
        self.seconds_training += self._since[0]
        self.seconds_evaluating += self._since[1]
        self._pending, self._since = [], [0.0, 0.0]
        self.log.append(evaluation.to_point()["eval"])
        self.last = evaluation
        self.report(evaluation)  # may raise: pruned, or the worker stops


def _maps(metrics: Mapping[str, Any]) -> dict[str, float]:
    names = {
        "mAP50": "metrics/mAP50(B)",
        "mAP50_95": "metrics/mAP50-95(B)",
        "precision": "metrics/precision(B)",
        "recall": "metrics/recall(B)",
    }
    return {k: float(metrics[v]) for k, v in names.items() if v in metrics}


def _with_milestones(
    milestones: list[float], gamma: float
) -> Callable[[Callable[[float], float], int], Callable[[float], float]]:
    """The notes' MultiStepLR on top of Ultralytics' lr factor `lf(epoch)`: times `gamma` from
    each milestone (a fraction of the `epochs`) on. Ultralytics steps its schedule per epoch, so
    the milestones fall on epoch boundaries."""

    def schedule(lf: Callable[[float], float], epochs: int) -> Callable[[float], float]:
        if not milestones:
            return lf
        return lambda x: lf(x) * gamma ** sum(x >= m * epochs for m in milestones)

    return schedule


def _trainer_class(
    evaluates: Callable[[int], bool],
    schedule: Callable[[Callable[[float], float], int], Callable[[float], float]],
    final_eval: Callable[[], None],
) -> type:
    """Ultralytics' `DetectionTrainer` with the three things a trial needs that its arguments
    cannot say: the milestones, validation only at evaluation epochs, and cleanup on a stop."""
    import torch
    from ultralytics.models.yolo.detect import DetectionTrainer

    base: Any = DetectionTrainer  # untyped: its attributes are set in its own methods

    class TrialTrainer(base):
        lf: Callable[[float], float]  # Ultralytics' lr factor per epoch, warmup included

        def _setup_scheduler(self) -> None:
            super()._setup_scheduler()
            self.lf = schedule(self.lf, self.epochs)
            self.scheduler = torch.optim.lr_scheduler.LambdaLR(self.optimizer, lr_lambda=self.lf)

        def validate(self) -> tuple[Any, Any]:
            if evaluates(self.epoch + 1):
                return super().validate()
            # no fitness: Ultralytics then neither counts the epoch for best.pt nor early-stops
            return self.metrics, None

        def final_eval(self) -> None:
            final_eval()
            super().final_eval()

        def _do_train(self) -> None:
            try:
                super()._do_train()
            except BaseException:
                # a stop (pruned, interrupted) leaves no dataloader workers behind
                for name in ("train_loader", "test_loader"):
                    close = getattr(getattr(self, name, None), "close", None)
                    if close is not None:
                        close()
                raise

    return TrialTrainer


# --- the run's surroundings -------------------------------------------------------------------


def import_ultralytics(needed_by: str = "trainer 'ultralytics'") -> ModuleType:
    """The `ultralytics` package, imported offline; a `TrainerError` with the install command
    saying who needs it."""
    # read once, when ultralytics is first imported: no version checks, no online lookups
    os.environ["YOLO_OFFLINE"] = "1"
    try:
        import ultralytics
    except ImportError as exc:
        raise TrainerError(
            f"{needed_by} needs the ultralytics package, which is not installed "
            f"({exc}); install it with: {INSTALL}"
        ) from exc
    return ultralytics


@contextlib.contextmanager
def _no_font_download() -> Iterator[None]:
    """Ultralytics' data check fetches Arial.ttf for its plots even with plots=False and
    YOLO_OFFLINE (a HEAD request, up to 3 s): a trial never reaches the network, so skip it."""
    import ultralytics.data.utils as data_utils

    check_font = data_utils.check_font
    data_utils.check_font = lambda *args, **kwargs: None
    try:
        yield
    finally:
        data_utils.check_font = check_font


def _model_source(model: str) -> str:
    """`model` when training from it never downloads: a model yaml (Ultralytics' own, like
    `yolov8n.yaml`, or a file) or a `.pt` that exists here."""
    path = Path(model).expanduser()
    if path.suffix in (".yaml", ".yml"):
        return str(path) if path.is_file() else model
    if path.suffix == ".pt" and path.is_file():
        return str(path.resolve())
    raise TrainerError(
        "model must be a model yaml (e.g. yolov8n.yaml) or the path of a local .pt "
        f"(Ultralytics would download anything else), but got model={model!r}"
    )


def _data_yaml(data: str) -> Path:
    """The data set's `data.yaml`: `shapes` is tune's built-in one (generated on first use)."""
    from trainer.data import DataError, resolve_data

    try:
        return resolve_data(data)
    except DataError as exc:
        raise TrainerError(str(exc)) from exc


def _write_data_yaml(source: Path, target: Path) -> Path:
    """A copy of `source` whose `path` is absolute: Ultralytics reads a relative one against its
    own datasets folder (and would try to download what it does not find there), tune against
    the yaml's folder."""
    import yaml

    content = yaml.safe_load(source.read_text())
    if not isinstance(content, dict):
        raise TrainerError(f"{source}: expected a mapping with train, val and names")
    root = Path(str(content.get("path") or ".")).expanduser()
    content["path"] = str((root if root.is_absolute() else source.parent / root).resolve())
    target.write_text(yaml.safe_dump(content, sort_keys=False))
    return target


def _device(device: str) -> tuple[str, bool | str]:
    """Ultralytics' device string and `amp` for tune's device name. AMP is bf16 on CUDA: fp16
    runs Ultralytics' AMP check, which downloads yolo26n.pt; CPU trains in fp32."""
    import torch

    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cuda" or device.startswith("cuda:"):
        index = device.partition(":")[2] or "0"
        bf16 = torch.cuda.is_available() and torch.cuda.is_bf16_supported()
        return index, "bf16" if bf16 else False
    return device, False


def _inference_ms(
    ul: ModuleType, weights: Path, values: Mapping[str, Any], device: str
) -> float | None:
    """Median milliseconds per image at batch 1 (forward and NMS) of the kept weights, on one
    validation-sized blank image after a warm-up; None when it cannot be measured."""
    import numpy as np

    try:
        model = ul.YOLO(str(weights))
        image = np.zeros((int(values["imgsz"]), int(values["imgsz"]), 3), dtype=np.uint8)
        times = []
        for i in range(13):
            result = model.predict(
                image, imgsz=int(values["imgsz"]), device=device, verbose=False, save=False
            )[0]
            if i >= 3:
                times.append(result.speed["inference"] + result.speed["postprocess"])
        return float(statistics.median(times))
    except Exception:  # a measurement, not the trial: never fail a trained trial on it
        return None


def _epochs_done(checkpoint: Path) -> int:
    """Epochs completed by an Ultralytics checkpoint (-1 in it: finished and stripped)."""
    import torch

    ckpt = torch.load(checkpoint, map_location="cpu", weights_only=False)
    return int(ckpt.get("epoch", -1)) + 1


def _finished_outcome(checkpoint: Path, epochs: int) -> TrialOutcome | None:
    """A retry whose run had already finished (Ultralytics cannot resume it): the outcome from
    the checkpoint's last validation; None when there is training left."""
    import torch

    ckpt = torch.load(checkpoint, map_location="cpu", weights_only=False)
    if 0 < int(ckpt.get("epoch", -1)) + 1 < epochs:
        return None
    maps = _maps(ckpt.get("train_metrics") or {})
    if "mAP50_95" not in maps:
        return None
    final = {k: maps[k] for k in ("mAP50", "mAP50_95")}
    best = checkpoint.with_name("best.pt")
    summary = {
        "trainer": "ultralytics",
        "run_dir": str(checkpoint.parent.parent),
        "best_pt": str(best) if best.is_file() else None,
        "last_pt": str(checkpoint),
        **final,
    }
    return TrialOutcome(metrics=final, summary=summary, inference_ms=None)


def _job(job: TrialJob) -> dict[str, Any]:
    return {
        "data": job.data,
        "epochs": job.epochs,
        "eval_interval": job.eval_interval,
        "seed": job.seed,
        "device": job.device,
        "threads": job.threads,
        "resume": job.resume,
    }


class _RunLog:
    """`metrics.jsonl`: training and evaluation lines; a resume keeps those up to its checkpoint."""

    def __init__(self, path: Path, keep_through_epoch: int) -> None:
        self.path = path
        kept = []
        if keep_through_epoch > 0 and path.is_file():
            kept = [
                line
                for line in path.read_text().splitlines()
                if line.strip() and json.loads(line)["epoch"] <= keep_through_epoch
            ]
        path.write_text("".join(line + "\n" for line in kept))

    def append(self, record: Mapping[str, Any]) -> None:
        with self.path.open("a") as f:
            f.write(json.dumps(record) + "\n")


def _write_json(path: Path, content: Mapping[str, Any]) -> None:
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(content, indent=2, default=list) + "\n")
    os.replace(tmp, path)
