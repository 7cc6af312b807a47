"""The hyperparameter file `tune best --export` writes and `tune train --hyp` reads.

It is a complete YOLOv5 hyp file: every key YOLOv5's training reads, tune's values where tune has
one, YOLOv5's own defaults (`YOLOV5_DEFAULTS`) for the rest, then tune's own keys (`optimizer`,
`milestones`, `gamma`, `lr_decay`, `nbs`, `ema_decay`, `close_mosaic`). So one file trains YOLOv5
(`python train.py --hyp FILE`, its header says what does not carry over) and reproduces the trial
in tune (`tune train --hyp FILE`).

The hyp keys are declared once, with their `TrainConfig` fields (`param(..., hyp="box")` in
trainer/config.py): `HYP_TO_CONFIG` is derived from them, so a new field with a `hyp=` key is
exported and read back with no change here.
"""

from __future__ import annotations

import textwrap
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from trainer.config import TRAIN_PARAMS, TrainConfig

# hyp key -> TrainConfig field, from the fields' own declarations
HYP_TO_CONFIG: dict[str, str] = TRAIN_PARAMS.by_hyp_key()

YOLOV5_COMMIT = "5081342f04fb287fc2e5f2b5a4e06752b7937b1c"
YOLOV5_SOURCE = f"ultralytics/yolov5@{YOLOV5_COMMIT[:8]} data/hyps/hyp.scratch-low.yaml"
# YOLOv5's defaults: data/hyps/hyp.scratch-low.yaml (train.py's default --hyp), read from
# github.com/ultralytics/yolov5 at commit 5081342f04fb287fc2e5f2b5a4e06752b7937b1c (its values
# unchanged since de62f93), in the file's order. Every key but iou_t is
# read as hyp[key] (a KeyError when missing) by train.py (lr0, lrf, momentum, weight_decay,
# warmup_*, box, cls, obj, anchor_t), utils/loss.py (box, cls, obj, cls_pw, obj_pw, fl_gamma,
# anchor_t) or utils/dataloaders.py (hsv_*, degrees, translate, scale, shear, perspective,
# flipud, fliplr, mosaic, mixup, copy_paste); iou_t has an --evolve range but nothing reads it.
# The keys tune's trainer has no setting for are the ones it fixes at these same values
# (trainer/loss.py: anchor ratio 4, plain BCE, no focal loss; trainer/augment.py: no rotation,
# shear, perspective, vertical flip, mixup or copy-paste).
YOLOV5_DEFAULTS: dict[str, float] = {
    "lr0": 0.01,
    "lrf": 0.01,
    "momentum": 0.937,
    "weight_decay": 0.0005,
    "warmup_epochs": 3.0,
    "warmup_momentum": 0.8,
    "warmup_bias_lr": 0.1,
    "box": 0.05,
    "cls": 0.5,
    "cls_pw": 1.0,
    "obj": 1.0,
    "obj_pw": 1.0,
    "iou_t": 0.20,
    "anchor_t": 4.0,
    "fl_gamma": 0.0,
    "hsv_h": 0.015,
    "hsv_s": 0.7,
    "hsv_v": 0.4,
    "degrees": 0.0,
    "translate": 0.1,
    "scale": 0.5,
    "shear": 0.0,
    "perspective": 0.0,
    "flipud": 0.0,
    "fliplr": 0.5,
    "mosaic": 1.0,
    "mixup": 0.0,
    "copy_paste": 0.0,
}
# commented out in hyp.scratch-low.yaml, read with hyp.get("anchors") (train.py): anchors per
# output layer; tune's detector has 3 (trainer/model.py)
YOLOV5_OPTIONAL: dict[str, float] = {"anchors": 3}
# YOLOv5 keys tune's trainer has no setting for (fixed at YOLOv5's defaults)
YOLOV5_ONLY: tuple[str, ...] = tuple(
    k for k in (*YOLOV5_DEFAULTS, *YOLOV5_OPTIONAL) if k not in HYP_TO_CONFIG
)


@dataclass(frozen=True)
class HypFile:
    """A hyp file as `tune train` uses it: `TrainConfig` field overrides, and the YOLOv5 keys it
    sets to a value tune's trainer cannot use (`(key, value)`, tune keeps YOLOv5's default)."""

    path: Path
    overrides: dict[str, Any]
    ignored: tuple[tuple[str, Any], ...] = ()

    def notice(self) -> str | None:
        """One line saying what is ignored, or None when nothing is."""
        if not self.ignored:
            return None
        keys = ", ".join(f"{k}={v!r} (tune: {_default(k)!r})" for k, v in self.ignored)
        return f"{self.path}: ignored, tune's trainer has no setting for {keys}"


def config_to_hyp(config: TrainConfig) -> dict[str, Any]:
    """tune's hyp values of a config, in declaration order (milestones as a list)."""
    values = config.to_dict()
    return {key: values[field] for key, field in HYP_TO_CONFIG.items()}


def yolov5_text(config: TrainConfig, header: str = "") -> str:
    """The exported file: `header` and what does not carry over to YOLOv5, as comments, then
    one key a line, each marked with where its value comes from."""
    tune = config_to_hyp(config)
    lines = [f"# {line}".rstrip() for line in header.splitlines()]
    if lines:
        lines.append("#")
    lines += _yolov5_notes(config)
    for key, default in YOLOV5_DEFAULTS.items():
        origin = "tune" if key in tune else "YOLOv5 default"
        lines.append(f"{key}: {yaml_value(tune.get(key, default))}  # {origin}")
    # YOLOv5's train.py reads its keys by name, so these are harmless there; but --evolve builds
    # its genes from every key of the file and looks each up in its ranges (KeyError)
    lines.append("# tune's own keys: YOLOv5's train.py ignores them; remove them for --evolve")
    lines += [f"{k}: {yaml_value(v)}" for k, v in tune.items() if k not in YOLOV5_DEFAULTS]
    return "\n".join(lines) + "\n"


def write_hyp(path: Path, config: TrainConfig, header: str = "") -> None:
    """Write the hyp file of `config` (`yolov5_text`)."""
    Path(path).write_text(yolov5_text(config, header))


def load_hyp(path: Path) -> HypFile:
    """Read a hyp YAML: tune's keys become `TrainConfig` field overrides, YOLOv5's other keys are
    known (and `ignored` when not at the value tune's trainer fixes), any other key is an error
    naming it."""
    path = Path(path)
    try:
        raw = yaml.safe_load(path.read_text())
    except FileNotFoundError:
        raise ValueError(f"hyperparameter file not found: {path}") from None
    except yaml.YAMLError as exc:
        raise ValueError(f"{path} is not valid YAML: {exc}") from None
    if not isinstance(raw, dict):
        raise ValueError(
            f"{path} must hold a mapping of hyperparameters, but got {type(raw).__name__}"
        )
    unknown = [k for k in raw if k not in HYP_TO_CONFIG and k not in YOLOV5_ONLY]
    if unknown:
        known = ", ".join((*HYP_TO_CONFIG, *YOLOV5_ONLY))
        raise ValueError(f"{path}: unknown key(s) {', '.join(map(str, unknown))} (known: {known})")
    overrides = {HYP_TO_CONFIG[k]: v for k, v in raw.items() if k in HYP_TO_CONFIG}
    ignored = tuple((k, v) for k, v in raw.items() if k in YOLOV5_ONLY and v != _default(k))
    return HypFile(path, overrides, ignored)


def read_hyp(path: Path) -> dict[str, Any]:
    """The `TrainConfig` field overrides of a hyp file (`load_hyp`)."""
    return load_hyp(path).overrides


def _default(key: str) -> Any:
    return {**YOLOV5_DEFAULTS, **YOLOV5_OPTIONAL}[key]


def yaml_value(value: Any) -> str:
    """One value in YAML flow style: a number, a string, a bool, or a list as `[a, b]`."""
    return str(yaml.safe_dump([value], default_flow_style=True).strip()[1:-1])


def comment_lines(paragraphs: list[str], width: int = 96) -> list[str]:
    """Paragraphs as wrapped comment lines (`# ...`); a paragraph starting "- " is a bullet whose
    continuation lines are indented, one starting "  " is kept as it is (a command)."""
    lines = []
    for text in paragraphs:
        if text.startswith("  ") or not text:
            lines.append(f"# {text}".rstrip())
            continue
        indent = "  " if text.startswith("- ") else ""
        lines += [f"# {line}" for line in textwrap.wrap(text, width, subsequent_indent=indent)]
    return lines


def _yolov5_notes(config: TrainConfig) -> list[str]:
    """What the file means to YOLOv5, and what of the trial does not carry over to it (each claim
    checked against YOLOv5's source at `YOLOV5_COMMIT`)."""
    c = config
    schedule = {
        "linear": "tune's lr_decay linear is YOLOv5's default",
        "cosine": "tune's lr_decay cosine is --cos-lr",
        "none": "for tune's lr_decay none (a constant lr) set lrf: 1.0",
    }[c.lr_decay]
    cos_lr = " --cos-lr" if c.lr_decay == "cosine" else ""
    notes = [
        f"A complete YOLOv5 hyp file: tune's values over YOLOv5's own defaults ({YOLOV5_SOURCE}),"
        " every key its train.py, utils/loss.py and utils/dataloaders.py read; tune's own keys"
        " follow at the end.",
        "  tune train --hyp FILE",
        f"  python train.py --hyp FILE --optimizer {c.optimizer}{cos_lr} --img {c.imgsz}"
        f" --batch-size {c.batch} --epochs {c.epochs} \\",
        "      --data DATA.yaml --cfg MODEL.yaml --weights ''",
        "What does not carry over to YOLOv5:",
        "- optimizer: a train.py flag there (--optimizer, default SGD), not a hyp key; its SGD is"
        f" always Nesterov (tune: nesterov={str(c.nesterov).lower()}).",
        "- box, cls, obj: YOLOv5's train.py rescales the gains before use, box *= 3/nl,"
        " cls *= nc/80*3/nl, obj *= (imgsz/640)^2*3/nl (nl detection layers, nc classes); tune"
        " applies them as written, to the same YOLOv5-style loss components. For the gains this"
        f" trial used, a YOLOv5 file (nl=3, --img {c.imgsz}) would say box {c.lbox:g},"
        f" cls {c.lcls:g}*80/nc, obj {c.lobj * (640 / c.imgsz) ** 2:.6g}.",
        "- lr schedule: YOLOv5 steps the lr once per epoch (tune: every iteration), linearly from"
        f" lr0 to lr0 * lrf, or cosine with --cos-lr; {schedule}. It has no MultiStepLR:"
        f" milestones and gamma are tune's (here milestones={list(c.milestones)},"
        f" gamma={c.gamma:g}).",
        f"- nbs: fixed at 64 in train.py (tune: {c.nbs}). ema_decay: YOLOv5's ModelEMA is fixed"
        f" at decay 0.9999, tau 2000 (tune: {c.ema_decay:g}, tau {c.ema_tau:g}). close_mosaic:"
        " YOLOv5 has none, its mosaic stays on to the end (tune: off for the last"
        f" {c.close_mosaic} epochs).",
        f"- model: tune's detector (model={c.model}) is tune's own; choose a YOLOv5 --cfg.",
    ]
    if c.warmup_iters is not None:
        notes.append(
            f"- warmup_iters={c.warmup_iters}: YOLOv5 counts warmup in epochs only,"
            " max(round(warmup_epochs * batches), 100) iterations."
        )
    if not c.augment:
        notes.append(
            "- augment=false: this trial trained without augmentation; YOLOv5 has no such switch"
            " (set hsv_*, translate, scale, fliplr and mosaic to 0)."
        )
    return comment_lines(notes)
