"""The hyp file `tune best --export` writes: a complete YOLOv5 hyp file (every key YOLOv5's
training reads, with a number), tune's values on top of YOLOv5's defaults, and read back by
`tune train --hyp` to the same values."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.search.test_train_command import tune_train_config
from trainer.config import TRAIN_PARAMS, TrainConfig
from trainer.hyp import HYP_TO_CONFIG, YOLOV5_DEFAULTS, load_hyp, write_hyp

# The keys YOLOv5 reads as hyp[key] (a KeyError when the file lacks one), from
# github.com/ultralytics/yolov5 at commit 5081342f04fb287fc2e5f2b5a4e06752b7937b1c, found by
# grepping `hyp["..."]` / `h["..."]` in each file. Not listed: `anchors` (read with hyp.get),
# `label_smoothing` (train.py sets it from --label-smoothing before loss.py reads it).
YOLOV5_READS: dict[str, tuple[str, ...]] = {
    "train.py": (
        "lr0", "lrf", "momentum", "weight_decay", "warmup_epochs", "warmup_momentum",
        "warmup_bias_lr", "box", "cls", "obj", "anchor_t",
    ),
    "utils/loss.py": ("box", "cls", "obj", "cls_pw", "obj_pw", "fl_gamma", "anchor_t"),
    "utils/dataloaders.py": (
        "hsv_h", "hsv_s", "hsv_v", "degrees", "translate", "scale", "shear", "perspective",
        "flipud", "fliplr", "mosaic", "mixup", "copy_paste",
    ),
}  # fmt: skip

# data/hyps/hyp.scratch-low.yaml at the same commit, its values verbatim (header comments left out)
HYP_SCRATCH_LOW = """\
lr0: 0.01 # initial learning rate (SGD=1E-2, Adam=1E-3)
lrf: 0.01 # final OneCycleLR learning rate (lr0 * lrf)
momentum: 0.937 # SGD momentum/Adam beta1
weight_decay: 0.0005 # optimizer weight decay 5e-4
warmup_epochs: 3.0 # warmup epochs (fractions ok)
warmup_momentum: 0.8 # warmup initial momentum
warmup_bias_lr: 0.1 # warmup initial bias lr
box: 0.05 # box loss gain
cls: 0.5 # cls loss gain
cls_pw: 1.0 # cls BCELoss positive_weight
obj: 1.0 # obj loss gain (scale with pixels)
obj_pw: 1.0 # obj BCELoss positive_weight
iou_t: 0.20 # IoU training threshold
anchor_t: 4.0 # anchor-multiple threshold
# anchors: 3  # anchors per output layer (0 to ignore)
fl_gamma: 0.0 # focal loss gamma (efficientDet default gamma=1.5)
hsv_h: 0.015 # image HSV-Hue augmentation (fraction)
hsv_s: 0.7 # image HSV-Saturation augmentation (fraction)
hsv_v: 0.4 # image HSV-Value augmentation (fraction)
degrees: 0.0 # image rotation (+/- deg)
translate: 0.1 # image translation (+/- fraction)
scale: 0.5 # image scale (+/- gain)
shear: 0.0 # image shear (+/- deg)
perspective: 0.0 # image perspective (+/- fraction), range 0-0.001
flipud: 0.0 # image flip up-down (probability)
fliplr: 0.5 # image flip left-right (probability)
mosaic: 1.0 # image mosaic (probability)
mixup: 0.0 # image mixup (probability)
copy_paste: 0.0 # segment copy-paste (probability)
"""

# a trial far from the recipe in every hyp key, so a value that is lost shows
TRIAL = TrainConfig(
    lcls=0.3, lbox=0.07, lobj=0.6, optimizer="SGD", lr=0.002, momentum=0.85, weight_decay=0.0007,
    warmup_epochs=1.5, warmup_bias_lr=0.05, warmup_momentum=0.7, lr_decay="none", lrf=0.2,
    milestones=(0.6, 0.85), gamma=0.3, nbs=32, ema_decay=0.999, mosaic=0.5, close_mosaic=2,
    scale=0.25, translate=0.05, fliplr=0.25, hsv_h=0.01, hsv_s=0.5, hsv_v=0.3,
)  # fmt: skip


def _exported(tmp_path: Path, config: TrainConfig = TRIAL) -> tuple[Path, dict[str, Any]]:
    path = tmp_path / "hyp.yaml"
    write_hyp(path, config, header="tune best --study s: trial 7")
    return path, yaml.safe_load(path.read_text())


def test_the_defaults_are_yolov5s_own_file() -> None:
    assert list(YOLOV5_DEFAULTS.items()) == list(yaml.safe_load(HYP_SCRATCH_LOW).items())


def test_every_key_yolov5_reads_is_there_with_a_number(tmp_path: Path) -> None:
    _, hyp = _exported(tmp_path)
    for source, keys in YOLOV5_READS.items():
        for key in keys:
            assert key in hyp, f"YOLOv5's {source} reads hyp[{key!r}]"
            value = hyp[key]
            assert isinstance(value, int | float) and not isinstance(value, bool), (key, value)


def test_tunes_values_land_on_top_and_yolov5s_defaults_fill_the_rest(tmp_path: Path) -> None:
    path, hyp = _exported(tmp_path)
    assert (hyp["cls"], hyp["box"], hyp["obj"], hyp["lr0"]) == (0.3, 0.07, 0.6, 0.002)
    assert (hyp["optimizer"], hyp["milestones"], hyp["gamma"]) == ("SGD", [0.6, 0.85], 0.3)
    tune_keys = set(HYP_TO_CONFIG)
    for key, default in YOLOV5_DEFAULTS.items():
        if key not in tune_keys:
            assert hyp[key] == default, key
    text = path.read_text()
    assert text.startswith("# tune best --study s: trial 7\n")
    assert "cls: 0.3  # tune" in text and "fl_gamma: 0.0  # YOLOv5 default" in text
    # the header says what does not carry over, with this trial's numbers
    comments = " ".join(ln.lstrip("#").strip() for ln in text.splitlines() if ln.startswith("#"))
    said = ("--optimizer SGD", "box *= 3/nl", "cls 0.3*80/nc, obj 15.", "no MultiStepLR",
            "set lrf: 1.0", "fixed at 64", "ModelEMA", "close_mosaic", "--evolve")  # fmt: skip
    for words in said:
        assert words in comments, words
    assert max(len(line) for line in text.splitlines()) <= 100


def test_the_mapping_is_derived_from_the_config_fields() -> None:
    assert TRAIN_PARAMS.by_hyp_key() == HYP_TO_CONFIG
    assert (HYP_TO_CONFIG["lr0"], HYP_TO_CONFIG["box"], HYP_TO_CONFIG["cls"]) == (
        "lr",
        "lbox",
        "lcls",
    )


def test_tune_train_hyp_reads_the_export_back(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path, _ = _exported(tmp_path)
    config, output = tune_train_config(["--hyp", str(path)], monkeypatch)
    for field in HYP_TO_CONFIG.values():
        assert getattr(config, field) == getattr(TRIAL, field), field
    assert "ignored" not in output  # YOLOv5's keys at the values tune's trainer fixes


def test_yolov5_only_keys_are_known_and_reported_when_tune_cannot_use_them(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "yolov5.yaml"
    path.write_text(HYP_SCRATCH_LOW.replace("degrees: 0.0", "degrees: 10.0") + "anchors: 3\n")
    hyp = load_hyp(path)
    assert hyp.overrides["lcls"] == 0.5 and "degrees" not in hyp.overrides
    assert hyp.ignored == (("degrees", 10.0),)
    config, output = tune_train_config(["--hyp", str(path)], monkeypatch)
    assert (config.lobj, config.momentum) == (1.0, 0.937)
    assert "ignored, tune's trainer has no setting for degrees=10.0 (tune: 0.0)" in output


def test_an_unknown_key_is_an_error_naming_it(tmp_path: Path) -> None:
    path = tmp_path / "hyp.yaml"
    path.write_text("lr0: 0.01\nlbox: 0.5\n")
    with pytest.raises(ValueError, match=r"hyp.yaml: unknown key\(s\) lbox \(known: box, obj, "):
        load_hyp(path)
