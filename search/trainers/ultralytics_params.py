"""The Ultralytics trainer's parameters: its own train arguments, declared once.

Names, defaults and valid ranges are Ultralytics' own (`ultralytics/cfg/default.yaml` and
`ultralytics.cfg.check_cfg`; tests/search/test_trainer_ultralytics.py checks them against the
installed version), each `hyp` key the Ultralytics argument of the same name. Besides them, the
hand-tuning notes' MultiStepLR (`milestones`, `gamma`), which the adapter (`ultralytics.py`)
applies on top of Ultralytics' own lr schedule. Nothing here imports ultralytics.
"""

from __future__ import annotations

from trainer.params import AUG, LOSS_WEIGHT, OPT, SCHED, Param, ParamRegistry, SearchRange

COMPONENTS: tuple[str, ...] = ("box", "cls", "dfl")
# Ultralytics' BaseTrainer.build_optimizer accepts these (case-insensitively); `auto` picks the
# optimizer and lr0 itself and ignores lr0 and momentum
OPTIMIZERS: tuple[str, ...] = (
    "auto",
    "SGD",
    "MuSGD",
    "Adam",
    "Adamax",
    "AdamW",
    "NAdam",
    "RAdam",
    "RMSProp",
)


# Each parameter's natural search range (a `[space]` entry `{}`) is Ultralytics' own
# `Tuner.space` (`ultralytics/engine/tuner.py`): the same bounds for tune's search as for its
# tuner, log-uniform where they span more than a factor of 100 above 0.
def _range(low: float, high: float) -> SearchRange:
    return SearchRange(low, high, log=low > 0 and high / low >= 100)


def _fraction(
    name: str, default: float, help: str, group: str, search: SearchRange | None = None
) -> Param:
    # Ultralytics' CFG_FRACTION_KEYS: valid in [0, 1]
    return Param(name, "float", default, help, low=0, high=1, hyp=name, group=group, search=search)


def _positive(
    name: str, default: float, help: str, group: str, search: SearchRange | None = None
) -> Param:
    # Ultralytics' CFG_FLOAT_KEYS have no range; a negative gain, angle or length is a mistake
    return Param(name, "float", default, help, low=0, hyp=name, group=group, search=search)


PARAMS = ParamRegistry(
    "ultralytics",
    (
        Param(
            "model",
            "str",
            "yolov8n.yaml",
            "a model yaml (built from scratch) or a local .pt; never a name Ultralytics downloads",
            hyp="model",
            group="model",
        ),
        Param("imgsz", "int", 640, "input size (rounded up to the stride)", low=32, hyp="imgsz"),
        # Ultralytics' -1 / fractions (AutoBatch) depend on the machine: a trial must not
        Param("batch", "int", 16, "images per batch", low=1, hyp="batch", group="data"),
        _positive("box", 7.5, "box (IoU) loss gain", LOSS_WEIGHT, _range(1.0, 20.0)),
        _positive("cls", 0.5, "classification loss gain", LOSS_WEIGHT, _range(0.1, 4.0)),
        _positive("dfl", 1.5, "distribution focal loss gain", LOSS_WEIGHT, _range(0.4, 12.0)),
        Param(
            "optimizer",
            "choice",
            "auto",
            "optimizer (auto: Ultralytics chooses it and lr0, ignoring lr0 and momentum)",
            choices=OPTIMIZERS,
            hyp="optimizer",
            group=OPT,
        ),
        _fraction("lr0", 0.01, "initial learning rate", OPT, _range(1e-5, 1e-2)),
        _fraction(
            "lrf",
            0.01,
            "final lr as a fraction of lr0 (Ultralytics' own decay)",
            SCHED,
            _range(0.01, 1.0),
        ),
        _fraction("momentum", 0.937, "SGD momentum / Adam beta1", OPT, _range(0.7, 0.98)),
        _fraction("weight_decay", 0.0005, "weight decay", OPT, _range(0.0, 0.001)),
        _positive(
            "warmup_epochs", 3.0, "warmup epochs (fractions allowed)", SCHED, _range(0.0, 5.0)
        ),
        _fraction(
            "warmup_momentum", 0.8, "initial momentum during warmup", SCHED, _range(0.0, 0.95)
        ),
        _fraction("warmup_bias_lr", 0.1, "initial bias lr during warmup", SCHED),
        Param("cos_lr", "bool", False, "cosine lr decay instead of linear", hyp="cos_lr"),
        Param("nbs", "int", 64, "nominal batch size (gradient accumulation)", low=1, hyp="nbs"),
        # the notes' MultiStepLR on top of Ultralytics' decay (lrf = 1: the notes' schedule alone);
        # not Ultralytics arguments, so no hyp key: an exported cfg cannot carry them
        Param(
            "milestones",
            "floats",
            (),
            "MultiStepLR milestones as fractions of the run: lr x gamma from each on",
            low=0,
            high=1,
            group=SCHED,
        ),
        Param(
            "gamma",
            "float",
            0.5,
            "lr factor at each milestone",
            low=0,
            low_open=True,
            high=1,
            group=SCHED,
        ),
        _fraction("hsv_h", 0.015, "HSV hue augmentation", AUG, _range(0.0, 0.1)),
        _fraction("hsv_s", 0.7, "HSV saturation augmentation", AUG, _range(0.0, 0.9)),
        _fraction("hsv_v", 0.4, "HSV value augmentation", AUG, _range(0.0, 0.9)),
        _positive("degrees", 0.0, "rotation (+/- degrees)", AUG, _range(0.0, 45.0)),
        _fraction("translate", 0.1, "translation (+/- fraction)", AUG, _range(0.0, 0.9)),
        _fraction("scale", 0.5, "scale gain (+/-)", AUG, _range(0.0, 0.95)),
        _positive("shear", 0.0, "shear (+/- degrees)", AUG, _range(0.0, 10.0)),
        _fraction("perspective", 0.0, "perspective (+/- fraction)", AUG, _range(0.0, 0.001)),
        _fraction("flipud", 0.0, "vertical flip probability", AUG, _range(0.0, 1.0)),
        _fraction("fliplr", 0.5, "horizontal flip probability", AUG, _range(0.0, 1.0)),
        _fraction("mosaic", 1.0, "mosaic probability", AUG, _range(0.0, 1.0)),
        _fraction("mixup", 0.0, "MixUp probability", AUG, _range(0.0, 1.0)),
        _fraction(
            "copy_paste", 0.0, "copy-paste fraction (segment/obb data)", AUG, _range(0.0, 1.0)
        ),
        Param(
            "close_mosaic",
            "int",
            10,
            "no mosaic for the final N epochs",
            low=0,
            hyp="close_mosaic",
            group=AUG,
        ),
    ),
)
# parameters that are not Ultralytics train arguments (the adapter applies them itself)
OWN: tuple[str, ...] = ("milestones", "gamma")
