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


def test_defaults_are_the_first_hand_tuned_setting() -> None:
    c = TrainConfig()
    assert (c.lcls, c.lobj, c.lbox, c.optimizer, c.lr) == (0.5, 1.0, 0.05, "SGD", 0.001)
    assert (c.momentum, c.weight_decay, c.gamma) == (0.9, 0.0005, 0.5)
    assert c.milestones == (10000, 20000, 30000)
