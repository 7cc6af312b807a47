"""`tune best --export`: a trial's values as a file the target trainer takes as it is.

Two formats, chosen with `--format`, by default from the study's trainer:

- `yolov5`, the default for tune's own trainer: a complete YOLOv5 hyp file (`python train.py
  --hyp FILE`) that `tune train --hyp FILE` reads back (trainer/hyp.py writes it);
- `ultralytics`, the default for the Ultralytics trainer: an Ultralytics cfg (`yolo train
  cfg=FILE`) holding only Ultralytics args, checked with Ultralytics' own loader before it is
  written. A trial of tune's trainer is mapped to Ultralytics args through the hyp keys its
  fields declare (`lr0`, `box`, ...: trainer/config.py); a trial of the Ultralytics trainer
  already has Ultralytics' names and is written as it is, less the adapter's own parameters.

Each file says in its header what does not carry over to the target. The exporter takes a trainer
name and a mapping of values (a trial's stored config), nothing of the trainers' modules.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from search.trainers.base import JOB_KEYS, TrainerError
from search.trainers.ultralytics import import_ultralytics
from trainer.config import TRAIN_PARAMS, TrainConfig
from trainer.hyp import HYP_TO_CONFIG, comment_lines, config_to_hyp, yaml_value, yolov5_text
from trainer.params import AUG

FORMATS: tuple[str, ...] = ("yolov5", "ultralytics")
# the formats a trainer's values export to, its default first
FORMATS_OF: dict[str, tuple[str, ...]] = {
    "tune": ("yolov5", "ultralytics"),
    "ultralytics": ("ultralytics",),
}
# what a stored trial record carries besides the trainer's values: where and how the job ran
# (search/running/trial_run.py), never a training value to carry over
# the job's settings in a trial's stored config that are no Ultralytics arg of the same meaning
# (epochs and seed are; data is the trial's machine's path, not written)
RUN_SETTINGS: tuple[str, ...] = tuple(k for k in JOB_KEYS if k not in ("epochs", "seed"))
# tune fields with an Ultralytics arg of the same name and meaning (the others map by hyp key)
_SAME_NAME: tuple[str, ...] = ("epochs", "imgsz", "batch", "seed")
# why a tune hyp key has no Ultralytics arg (a key not listed: "not an Ultralytics arg")
_NO_ULTRALYTICS_ARG: dict[str, str] = {
    "obj": "Ultralytics has no objectness loss (its detection loss is box, cls, dfl)",
    "milestones": "no MultiStepLR in Ultralytics",
    "gamma": "no MultiStepLR in Ultralytics",
    "ema_decay": "Ultralytics' ModelEMA is fixed at decay 0.9999, tau 2000",
}


class ExportError(ValueError):
    """The trial cannot be exported as asked: one line for the user."""


@dataclass(frozen=True)
class Export:
    """An exported file: its format, its text, and how to use it (one line)."""

    format: str
    text: str
    usage: str  # with FILE for the file's path

    def describe(self, path: object) -> str:
        """`wrote PATH (...)`, the line `tune best` prints."""
        return f"wrote {path} ({self.format}: {self.usage.replace('FILE', str(path))})"


def default_format(trainer: str) -> str:
    """The format a study of `trainer` exports to unless told otherwise."""
    return _formats_of(trainer)[0]


def export_values(
    trainer: str, values: Mapping[str, Any], fmt: str | None = None, header: str = ""
) -> Export:
    """The file of a trial of `trainer` that ran with `values`, in format `fmt` (None: the
    trainer's default), `header` first as comments. An `ExportError` when the trainer's values
    cannot be written in that format or the target rejects them."""
    if fmt is not None and fmt not in FORMATS:
        raise ExportError(f"format must be one of {', '.join(FORMATS)}, but got format={fmt!r}")
    fmt = fmt or default_format(trainer)
    if fmt not in _formats_of(trainer):
        raise ExportError(
            f"a trial of trainer {trainer!r} exports as {', '.join(_formats_of(trainer))}, "
            f"but got format={fmt!r}"
        )
    if fmt == "yolov5":
        usage = "tune train --hyp FILE, or YOLOv5's train.py --hyp FILE"
        return Export(fmt, yolov5_text(_tune_config(values), header), usage)
    if trainer == "tune":
        args, notes = _tune_to_ultralytics(_tune_config(values))
    else:
        args, notes = _ultralytics_args(values)
    version = _check_ultralytics({k: v for k, v, _ in args})
    usage = "yolo train cfg=FILE" + (
        "" if any(k == "model" for k, _, _ in args) else " model=MODEL"
    )
    usage += " data=DATA.yaml"
    paragraphs = [
        *header.splitlines(),
        *([""] if header else []),
        f"Ultralytics train args, checked with ultralytics {version}'s own loader:",
        f"  {usage}",
        "What does not carry over:",
        *notes,
    ]
    text = "".join(line + "\n" for line in comment_lines(paragraphs))
    text += "".join(f"{k}: {yaml_value(v)}{f'  # {why}' if why else ''}\n" for k, v, why in args)
    return Export(fmt, text, usage)


def _formats_of(trainer: str) -> tuple[str, ...]:
    formats = FORMATS_OF.get(trainer)
    if formats is None:
        raise ExportError(
            f"tune best --export writes files for trainers {', '.join(FORMATS_OF)}, "
            f"but the study's trainer is {trainer!r} (its values are printed above)"
        )
    return formats


def _tune_config(values: Mapping[str, Any]) -> TrainConfig:
    try:
        return TrainConfig.from_dict(dict(values))
    except (TypeError, ValueError) as exc:
        raise ExportError(f"the trial's stored config is not a TrainConfig: {exc}") from None


Arg = tuple[str, Any, str]  # Ultralytics key, value, where it comes from (a comment)


def _tune_to_ultralytics(config: TrainConfig) -> tuple[list[Arg], list[str]]:
    """Ultralytics args for a trial of tune's trainer, and the notes on what does not carry over.
    Claims checked against ultralytics 8.4 (engine/trainer.py, utils/torch_utils.py)."""
    known = _ultralytics_defaults()
    hyp = config_to_hyp(config)
    values: dict[str, tuple[Any, str]] = {
        k: (v, "" if HYP_TO_CONFIG[k] == k else f"tune {HYP_TO_CONFIG[k]}")
        for k, v in hyp.items()
        if k in known
    }
    values |= {k: (getattr(config, k), "") for k in _SAME_NAME}
    values["cos_lr"] = (config.lr_decay == "cosine", f"tune lr_decay={config.lr_decay}")
    if config.lr_decay == "none":  # Ultralytics' linear decay to lr0 * 1.0 is a constant lr
        values["lrf"] = (1.0, "tune lr_decay=none: a constant lr")
    if not config.augment:  # Ultralytics has no switch for all of it: each at 0
        for p in TRAIN_PARAMS:
            if p.group == AUG and p.kind == "float" and p.hyp in values:
                values[p.hyp] = (0.0, "tune augment=false")
    args = [(k, *values[k]) for k in known if k in values]
    dropped = [k for k in hyp if k not in known and k != "lr_decay"]  # lr_decay: cos_lr, lrf
    notes = [
        f"- {k}={yaml_value(hyp[k])}: {_NO_ULTRALYTICS_ARG.get(k, 'not an Ultralytics arg')}"
        for k in dropped
    ]
    warmup_iters = "" if config.warmup_iters is None else "; warmup_iters has no arg"
    notes += [
        f"- dfl: stays at Ultralytics' default {known.get('dfl')} (tune's loss has none).",
        "- box, cls: gains of Ultralytics' own loss (CIoU + DFL box, BCE cls over its assigned"
        " targets; defaults box 7.5, cls 0.5), copied as tune's numbers, which balance tune's"
        " YOLOv5-style loss: the same numbers weigh differently there.",
        "- lr schedule: Ultralytics steps the lr once per epoch (tune: every iteration), linear"
        " from lr0 to lr0 * lrf, or cosine with cos_lr.",
        "- warmup: Ultralytics warms up round(warmup_epochs * batches) iterations, at most"
        f" epochs - 1 epochs (tune: at least 100 iterations{warmup_iters}).",
        f"- nesterov: Ultralytics' SGD is always Nesterov (tune: {str(config.nesterov).lower()}).",
        f"- model: tune's own detector ({config.model}); give an Ultralytics model.",
        f"- data: the trial's ({config.data}) is not written; give data.",
    ]
    return args, notes


def _ultralytics_args(values: Mapping[str, Any]) -> tuple[list[Arg], list[str]]:
    """A trial of the Ultralytics trainer: its values are Ultralytics args already."""
    known = _ultralytics_defaults()
    # None: not set, Ultralytics decides (and rejects a None where its default is a value)
    kept = {k: v for k, v in values.items() if k not in RUN_SETTINGS and v is not None}
    args = [(k, kept[k], "") for k in known if k in kept]
    own = [k for k in kept if k not in known]
    notes = ["- data: the trial's is not written; give data."]
    if own:
        notes.insert(
            0,
            f"- {', '.join(own)}: parameters of tune's Ultralytics adapter (milestones, gamma:"
            " the MultiStepLR it adds), not Ultralytics args: plain `yolo train` decays the lr"
            " linearly to lr0 * lrf, or cosine with cos_lr.",
        )
    return args, notes


def _ultralytics_cfg() -> Any:
    """Ultralytics' config module, imported on demand (an optional extra), offline."""
    try:
        import_ultralytics("exporting an Ultralytics cfg")
    except TrainerError as exc:
        raise ExportError(str(exc)) from None
    from ultralytics import cfg

    return cfg


def _ultralytics_defaults() -> dict[str, Any]:
    return dict(_ultralytics_cfg().DEFAULT_CFG_DICT)


def _check_ultralytics(args: dict[str, Any]) -> str:
    """Check `args` as `yolo train cfg=FILE` does: every key an Ultralytics arg, each value of
    its type and range (Ultralytics' `get_cfg`, which raises on the first that is not). Returns
    the Ultralytics version that checked them."""
    cfg = _ultralytics_cfg()
    try:
        cfg.get_cfg(cfg.DEFAULT_CFG_DICT, dict(args))
    except (SyntaxError, TypeError, ValueError) as exc:
        message = " ".join(str(exc).split())
        raise ExportError(f"Ultralytics rejects the exported cfg: {message}") from None
    import ultralytics

    return str(ultralytics.__version__)
