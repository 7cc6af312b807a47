"""A space written around the trainer's defaults, from its registry's natural ranges."""

from __future__ import annotations

import math

import pytest

from search.study.space import FloatParam, SpaceError, parse_space
from search.study.study_file import load_study_file
from search.trainers.ultralytics_params import PARAMS as ULTRALYTICS
from trainer.config import TRAIN_PARAMS, TrainConfig


def test_around_is_log_uniform_on_both_sides_of_the_default() -> None:
    space = parse_space({"lr": {"around": 3}}, TRAIN_PARAMS)
    lr = space.get("lr")
    assert isinstance(lr, FloatParam) and lr.log
    assert math.isclose(lr.low, TrainConfig.lr / 3) and math.isclose(lr.high, TrainConfig.lr * 3)


def test_around_follows_the_studys_pin_of_the_default() -> None:
    space = parse_space({"lr": {"around": 2}}, TRAIN_PARAMS, {"lr": 0.001})
    lr = space.get("lr")
    assert isinstance(lr, FloatParam)
    assert (lr.low, lr.high) == pytest.approx((0.0005, 0.002))


def test_around_is_clipped_to_the_valid_values() -> None:
    # momentum lies in [0, 1): 0.9 x 3 would not
    space = parse_space({"momentum": {"around": 3}}, TRAIN_PARAMS)
    momentum = space.get("momentum")
    assert isinstance(momentum, FloatParam)
    assert momentum.high < 1.0 and momentum.low == pytest.approx(0.3)


def test_around_a_default_of_zero_is_one_clear_error() -> None:
    with pytest.raises(SpaceError, match=r"space\.warmup_bias_lr: around needs a default above 0"):
        parse_space({"warmup_bias_lr": {"around": 3}}, TRAIN_PARAMS)


def test_an_empty_entry_takes_the_registrys_natural_range() -> None:
    space = parse_space(
        {"lcls": {}, "optimizer": {}, "lrf": {}, "milestone1": {}, "milestone2_rest": {}},
        TRAIN_PARAMS,
    )
    lcls, lrf, first = space.get("lcls"), space.get("lrf"), space.get("milestone1")
    assert isinstance(lcls, FloatParam) and lcls.low == pytest.approx(TrainConfig.lcls / 3)
    assert isinstance(lrf, FloatParam) and (lrf.low, lrf.high, lrf.log) == (0.01, 1.0, True)
    assert isinstance(first, FloatParam) and (first.low, first.high) == (0.5, 1.0)
    optimizer = space.get("optimizer")
    assert optimizer is not None and set(optimizer.choices) == {"SGD", "Adam", "AdamW"}  # type: ignore[union-attr]


def test_groups_name_what_to_search_without_numbers() -> None:
    space = parse_space(
        {"groups": ["loss weight"], "lbox": {"low": 0.01, "high": 0.1}}, TRAIN_PARAMS
    )
    assert set(space.names) == {"lbox", "lobj", "lcls"}
    lbox = space.get("lbox")
    assert isinstance(lbox, FloatParam) and (lbox.low, lbox.high) == (0.01, 0.1)  # its own entry


def test_an_unknown_group_names_the_known_ones() -> None:
    with pytest.raises(SpaceError, match=r"space\.groups must be .*known: .*loss weight"):
        parse_space({"groups": ["losses"]}, TRAIN_PARAMS)


def test_ultralytics_natural_ranges_are_its_own_tuners() -> None:
    space = parse_space({"groups": ["loss weight"]}, ULTRALYTICS)
    box = space.get("box")
    assert isinstance(box, FloatParam) and (box.low, box.high) == (1.0, 20.0)
    assert set(space.names) == {"box", "cls", "dfl"}


@pytest.mark.parametrize("name", ["loss-weights", "ultralytics"])
def test_the_studies_search_around_their_trainers_defaults(name: str) -> None:
    spec = load_study_file(name, check_data=False)
    defaults = spec.default_params()
    assert defaults is not None  # the defaults lie inside the space
    assert spec.start_params() == defaults
    for param in spec.space.params:
        if isinstance(param, FloatParam) and param.log:
            # a local space: no log range spans more than a factor of 16
            assert param.high / param.low <= 16, param


def test_hand_tuned_baselines_may_lie_outside_a_local_space() -> None:
    spec = load_study_file("loss-weights", check_data=False)
    lcls = spec.space.get("lcls")
    assert isinstance(lcls, FloatParam)
    first = spec.baselines[0].as_dict()
    assert not lcls.contains(first["lcls"])  # the notes' 0.5 is far from the default 0.03
    assert spec.values(first)["lcls"] == first["lcls"]  # and trains with what the notes say
