"""One parameter registry per trainer: a parameter declared once is checked, drawable, pinnable,
a `tune train` option and a hyp key, with nothing else to edit."""

from __future__ import annotations

import copy
import dataclasses
import tomllib
from pathlib import Path
from typing import Any

import optuna
import pytest
from typer.testing import CliRunner

from search.cli import app
from search.study.space import SpaceError, parse_space
from search.study.study_file import StudyFileError, parse_study
from search.trainers import make_trainer
from search.trainers.builtin import PARAMS
from trainer.config import TRAIN_PARAMS, TrainConfig
from trainer.hyp import HYP_TO_CONFIG
from trainer.params import Param, ParamRegistry, param, registry_of

STUDY = Path(__file__).parents[2] / "studies" / "loss-weights.toml"


def _raw() -> dict[str, Any]:
    return tomllib.loads(STUDY.read_text())


def test_every_config_field_but_the_runs_own_is_a_declared_parameter() -> None:
    declared = set(TRAIN_PARAMS.names)
    fields = {f.name for f in dataclasses.fields(TrainConfig)}
    assert fields - declared == {"out", "resume", "extra"}  # where a run writes, not how it trains


def test_each_parameter_checks_its_own_range_with_one_clear_message() -> None:
    for name, bad, message in [
        ("lbox", -0.1, r"lbox must be in \[0, inf\), but got lbox=-0\.1"),
        ("momentum", 1.0, r"momentum must be in \[0, 1\), but got momentum=1\.0"),
        ("optimizer", "Lion", r"optimizer must be one of \{SGD, Adam, AdamW\}"),
        ("close_mosaic", 2.5, r"close_mosaic must be an integer in \[0, inf\)"),
        ("nesterov", 1, r"nesterov must be true or false, but got nesterov=1"),
    ]:
        with pytest.raises(ValueError, match=message):
            TrainConfig(**{name: bad})


def test_a_new_parameter_needs_only_its_declaration() -> None:
    # what adding `dropout` to TrainConfig would give, without touching anything else
    @dataclasses.dataclass(frozen=True)
    class Config:
        lr: float = param(0.01, "learning rate", low=0, low_open=True, hyp="lr0")
        dropout: float = param(0.1, "dropout", low=0, high=1, high_open=True, hyp="dropout")
        warmup: int = param(3, "warmup epochs", low=0)
        flip: bool = param(True, "flip")

    registry = registry_of(Config, "mine")
    assert registry.names == ("lr", "dropout", "warmup", "flip")
    assert [p.kind for p in registry] == ["float", "float", "int", "bool"]
    assert registry.by_hyp_key() == {"lr0": "lr", "dropout": "dropout"}
    space = parse_space(
        {
            "dropout": {"low": 0.0, "high": 0.5},
            "warmup": {"low": 0, "high": 5},
            "flip": {"choices": [False, True]},
        },
        registry,
    )
    trial = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=1)).ask()
    drawn = space.sample(trial)
    assert isinstance(drawn["warmup"], int) and isinstance(drawn["flip"], bool)
    with pytest.raises(SpaceError, match=r"space\.dropout\.high is not a valid dropout"):
        parse_space({"dropout": {"low": 0.0, "high": 1.0}}, registry)


def test_every_parameter_is_a_tune_train_option() -> None:
    shown = CliRunner().invoke(app, ["train", "--help"], terminal_width=200).output
    for p in TRAIN_PARAMS:
        assert f"--{p.name.replace('_', '-')}" in shown, p.name


def test_the_hyp_mapping_is_the_registrys() -> None:
    assert {v: k for k, v in HYP_TO_CONFIG.items()} == {
        p.name: p.hyp for p in TRAIN_PARAMS if p.hyp
    }


def test_integers_and_booleans_are_drawn_and_trained_with() -> None:
    raw = _raw()
    raw["space"]["close_mosaic"] = {"low": 0, "high": 10}
    raw["space"]["nesterov"] = {"choices": [False, True]}
    for baseline in raw["baselines"]:
        baseline |= {"close_mosaic": 10, "nesterov": False}
    spec = parse_study(raw)
    study = optuna.create_study(direction="maximize", sampler=optuna.samplers.RandomSampler(0))
    for _ in range(4):
        params = spec.space.sample(study.ask())
        config = spec.train_config(params)
        assert config.close_mosaic == params["close_mosaic"] and isinstance(config.nesterov, bool)


@pytest.mark.parametrize(
    ("where", "value", "message"),
    [
        (
            ("trial", "trainer"),
            "keras",
            r"trial\.trainer must be one of tune, ultralytics, command",
        ),
        (("space", "dropout"), {"low": 0.1, "high": 0.2}, r"valid: model, imgsz, batch"),
        (("trial", "dropout"), 0.1, r"nor a parameter of trainer 'tune' \(valid: model,"),
        (("trial", "warmup_momentum"), 2.0, r"\[trial\] warmup_momentum must be in \[0, 1\)"),
        (("space", "close_mosaic"), {"low": 0.5, "high": 3}, r"close_mosaic must be an integer"),
        (("trial", "tune"), {"colour": 1}, r"trial\.tune\.colour \(trainer .tune. has none\)"),
    ],
)
def test_a_study_is_checked_against_its_trainers_parameters(
    where: tuple[str, str], value: Any, message: str
) -> None:
    raw = copy.deepcopy(_raw())
    raw[where[0]][where[1]] = value
    with pytest.raises(StudyFileError, match=message) as caught:
        parse_study(raw)
    assert "\n" not in str(caught.value)


def test_the_search_sets_what_every_trial_shares_not_the_study() -> None:
    # data, length, device, threads and seed come from the job; weights are a local file
    assert not {"data", "epochs", "eval_interval", "device", "threads", "seed", "weights"} & set(
        PARAMS.names
    )
    assert make_trainer("tune").params is PARAMS


def test_a_registry_refuses_a_name_twice() -> None:
    one = Param("lr", "float", 0.1)
    with pytest.raises(ValueError, match="declares lr twice"):
        ParamRegistry("mine", (one, one))
