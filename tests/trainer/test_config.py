"""TrainConfig validation: every mistake names the field and the value."""

from __future__ import annotations

import pytest

from trainer.config import TrainConfig


@pytest.mark.parametrize(
    "changes, field",
    [
        ({"lbox": -1.0}, "lbox=-1.0"),
        ({"lcls": float("nan")}, "lcls=nan"),
        ({"lbox": 0.0, "lobj": 0.0, "lcls": 0.0}, "lbox=0.0"),
        ({"optimizer": "RMSprop"}, "optimizer='RMSprop'"),
        ({"model": "huge"}, "model='huge'"),
        ({"lr": 0.0}, "lr=0.0"),
        ({"momentum": 1.5}, "momentum=1.5"),
        ({"gamma": 0.0}, "gamma=0.0"),
        ({"imgsz": 100}, "imgsz=100"),
        ({"batch": 0}, "batch=0"),
        ({"epochs": -2}, "epochs=-2"),
        ({"milestones": (0.8, 0.5)}, "milestones=[0.8, 0.5]"),
        ({"milestones": (0.5, 200)}, "milestones=[0.5, 200.0]"),
        ({"device": "tpu"}, "device='tpu'"),
        ({"lr_decay": "step"}, "lr_decay='step'"),
        ({"lrf": 0.0}, "lrf=0.0"),
        ({"nbs": 0}, "nbs=0"),
        ({"ema_decay": 1.0}, "ema_decay=1.0"),
        ({"ema_tau": 0.0}, "ema_tau=0.0"),
        ({"warmup_epochs": -1.0}, "warmup_epochs=-1.0"),
        ({"warmup_bias_lr": float("inf")}, "warmup_bias_lr=inf"),
        ({"warmup_momentum": 1.2}, "warmup_momentum=1.2"),
        ({"mosaic": 1.5}, "mosaic=1.5"),
        ({"close_mosaic": -1}, "close_mosaic=-1"),
        ({"scale": 1.0}, "scale=1.0"),
        ({"translate": -0.1}, "translate=-0.1"),
        ({"fliplr": 2.0}, "fliplr=2.0"),
        ({"hsv_h": -0.5}, "hsv_h=-0.5"),
        ({"hsv_s": 1.5}, "hsv_s=1.5"),
        ({"hsv_v": 1.01}, "hsv_v=1.01"),
    ],
)
def test_invalid_values_name_the_field(changes: dict[str, object], field: str) -> None:
    with pytest.raises(ValueError, match=field.replace("[", r"\[").replace("]", r"\]")):
        TrainConfig(**changes)  # type: ignore[arg-type]


def test_round_trip_through_json(tmp_path) -> None:  # type: ignore[no-untyped-def]
    config = TrainConfig(lcls=0.05, lbox=0.5, optimizer="Adam", milestones=(0.6, 0.9))
    config.save(tmp_path / "config.json")
    assert TrainConfig.load(tmp_path / "config.json") == config


def test_unknown_key_is_named() -> None:
    with pytest.raises(ValueError, match=r"unknown training option.*lrr"):
        TrainConfig.from_dict({"lrr": 0.1})


def test_defaults_are_the_fields_recipe() -> None:
    c = TrainConfig()
    assert (c.optimizer, c.lr_decay, c.lrf, c.nbs, c.ema_decay) == (
        "AdamW",
        "linear",
        0.01,
        64,
        0.9999,
    )
    assert (c.mosaic, c.close_mosaic, c.warmup_epochs, c.warmup_momentum) == (1.0, 10, 3.0, 0.8)
    assert c.milestones == ()  # no MultiStepLR steps unless asked for (the notes' schedule)


def test_the_notes_first_model_is_still_expressible() -> None:
    notes = TrainConfig(
        lcls=0.5, lobj=1.0, lbox=0.05, optimizer="SGD", lr=0.001, momentum=0.9,
        milestones=(10000, 20000, 30000), gamma=0.5, lr_decay="none",
    )  # fmt: skip
    assert notes.milestone_iters(50_000) == [10000, 20000, 30000]
