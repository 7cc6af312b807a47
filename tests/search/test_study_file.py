"""Study files: every file in studies/ loads and samples; every mistake is one clear message."""

from __future__ import annotations

import copy
import tomllib
from pathlib import Path
from typing import Any

import optuna
import pytest

from search.bookkeeping import trial_record
from search.study.pruning import stop_points
from search.study.space import ChoiceParam, FloatParam
from search.study.study_file import (
    Overrides,
    StudyFileError,
    apply_overrides,
    load_study_file,
    parse_study,
    resolve_study_path,
)
from trainer.config import TrainConfig

STUDIES = Path(__file__).parents[2] / "studies"
HAND_TUNED = [  # DESIGN.md: (lcls, lobj, lbox, optimizer)
    (0.5, 1.0, 0.05, "SGD"),
    (0.05, 1.0, 0.5, "SGD"),
    (0.25, 1.0, 0.25, "SGD"),
    (0.05, 0.5, 0.5, "SGD"),
    (0.05, 1.0, 0.5, "Adam"),
]


def _raw(name: str = "loss-weights") -> dict[str, Any]:
    return tomllib.loads((STUDIES / f"{name}.toml").read_text())


@pytest.mark.parametrize("path", sorted(STUDIES.glob("*.toml")), ids=lambda p: p.stem)
def test_every_study_file_loads_and_samples(path: Path) -> None:
    spec = load_study_file(str(path))
    study = optuna.create_study(
        direction="maximize",
        sampler=spec.make_sampler(),
        pruner=spec.make_pruner(trial_record.runs_fixed_length),
    )
    for baseline in spec.baselines:
        study.enqueue_trial(baseline.as_dict())
    for i in range(len(spec.baselines) + 5):
        trial = study.ask()
        params = spec.space.sample(trial)
        job = spec.job(params, out=f"runs/x/trial-{i}")
        spec.trainer.params.check(job.values)  # every drawn value is one the trainer accepts
        milestones = list(job.values.get("milestones", ()))
        assert milestones == sorted(milestones) and all(0 < m <= 1 for m in milestones)
        if spec.trial.trainer == "tune":
            config = spec.train_config(params, out=f"runs/x/trial-{i}")
            assert config.epochs == spec.trial.epochs
        if i < len(spec.baselines):
            assert params == spec.baselines[i].as_dict()  # enqueued values come back exactly
        study.tell(trial, 0.1 * i)


def test_loss_weights_holds_the_five_hand_tuned_settings() -> None:
    spec = load_study_file("loss-weights")
    assert spec.name == "loss-weights"
    assert spec.objective.metric == "mAP50_95"
    assert spec.sampler.type == "Evolution" and spec.pruner.type == "SuccessiveHalving"
    got = []
    for b in spec.baselines:
        config = spec.train_config(b.as_dict())
        got.append((config.lcls, config.lobj, config.lbox, config.optimizer))
        assert (config.lr, config.momentum, config.weight_decay, config.gamma) == (
            0.001,
            0.9,
            0.0005,
            0.5,
        )
        assert config.milestones == (1.0, 1.0)  # 10000/20000/30000 iterations: beyond a short run
    assert got == HAND_TUNED
    for name in ("lcls", "lobj", "lbox"):
        param = spec.space.get(name)
        assert isinstance(param, FloatParam) and param.log
        # around the trainer's default, a factor of 3 either way
        default = getattr(TrainConfig, name)
        assert (param.low, param.high) == pytest.approx((default / 3, default * 3))
    optimizer = spec.space.get("optimizer")
    assert isinstance(optimizer, ChoiceParam)
    assert set(optimizer.choices) == {"SGD", "Adam", "AdamW"}


def test_sampled_milestones_are_always_increasing() -> None:
    spec = load_study_file("loss-weights")
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=1))
    for _ in range(200):
        trial = study.ask()
        milestones = spec.train_config(spec.space.sample(trial)).milestones
        assert len(milestones) == 2 and 0 < milestones[0] <= milestones[1] <= 1
        study.tell(trial, 0.0)


def test_overrides_replace_the_files_values(tmp_path: Path) -> None:
    data = tmp_path / "data.yaml"
    data.write_text("path: .\n")
    spec = load_study_file(
        "loss-weights", Overrides(epochs=2, data=str(data), n_trials=7, timeout=30, seed=5)
    )
    assert (spec.trial.epochs, spec.trial.data) == (2, str(data))
    assert (spec.budget.n_trials, spec.budget.timeout, spec.sampler.seed) == (7, 30.0, 5)
    assert spec.raw["trial"]["epochs"] == 2  # what launch stores for the workers
    assert stop_points(spec.pruner, spec.trial.epochs, spec.trial.eval_interval) == (2,)
    spec = load_study_file("loss-weights", Overrides(budget_epochs=500))
    assert (spec.budget.epochs, spec.raw["budget"]["epochs"]) == (500, 500)


def test_an_epochs_override_below_the_first_rung_moves_the_rung_instead_of_failing() -> None:
    spec = load_study_file("loss-weights")
    assert (spec.pruner.min_resource, spec.baseline_epochs) == (6, 6)
    spec = load_study_file("loss-weights", Overrides(epochs=4))
    assert (spec.trial.epochs, spec.pruner.min_resource, spec.baseline_epochs) == (4, 4, 4)
    spec = load_study_file("loss-weights", Overrides(epochs=9))
    assert (spec.pruner.min_resource, spec.baseline_epochs) == (6, 6)


def test_data_override_to_a_missing_file_is_named() -> None:
    with pytest.raises(StudyFileError, match=r"trial\.data.*data='nowhere/data\.yaml'"):
        load_study_file("loss-weights", Overrides(data="nowhere/data.yaml"))


def test_unknown_study_name_lists_the_known_ones() -> None:
    with pytest.raises(StudyFileError, match=r"no study named 'nope'.*loss-weights"):
        resolve_study_path("nope")


def test_invalid_toml_is_one_message(tmp_path: Path) -> None:
    path = tmp_path / "bad.toml"
    path.write_text("name = \n")
    with pytest.raises(StudyFileError, match=r"bad\.toml: not valid TOML"):
        load_study_file(str(path))


def _set(raw: dict[str, Any], dotted: str, value: Any) -> None:
    *parents, last = dotted.split(".")
    table = raw
    for key in parents:
        table = table[int(key)] if isinstance(table, list) else table.setdefault(key, {})
    if value is _DELETE:
        del table[last]
    else:
        table[last] = value


_DELETE = object()

# (what to change, value, a regex the one-line message must match: key and value)
BAD = [
    ("colour", "red", r"unknown key 'colour' in the top level.*colour='red'"),
    ("trial.epoch", 3, r"unknown key 'epoch' in \[trial\].*epoch=3"),
    ("sampler.kind", "TPE", r"unknown key 'kind' in \[sampler\]"),
    ("space.lcls.step", 0.1, r"unknown key space\.lcls\.step"),
    ("space.dropout", {"low": 0.1, "high": 0.2}, r"unknown parameter space\.dropout"),
    (
        "space.lcls",
        {"low": 2.0, "high": 0.1, "log": True},
        r"space\.lcls: low must be <= high.*low=2",
    ),
    (
        "space.lr",
        {"low": 0.0, "high": 0.1, "log": True},
        r"space\.lr: a log range needs low > 0.*low=0",
    ),
    ("space.lobj", {"low": "a", "high": 1.0}, r"space\.lobj\.low must be a finite number.*low='a'"),
    ("space.lbox", {"low": 0.1, "high": 1.0, "log": "yes"}, r"space\.lbox\.log.*log='yes'"),
    (
        "space.optimizer",
        {"choices": ["SGD", "Lion"]},
        r"space\.optimizer\.choices: unknown optimizer 'Lion'",
    ),
    (
        "space.optimizer",
        {"choices": []},
        r"space\.optimizer\.choices must be a non-empty list.*choices=\[\]",
    ),
    (
        "space.momentum",
        {"low": 0.5, "high": 1.5},
        r"space\.momentum\.high is not a valid momentum.*1\.5",
    ),
    ("space.milestone1", {"low": 0.3, "high": 1.2}, r"space\.milestone1: fractions.*high=1\.2"),
    ("baselines.0.lcls", -1.0, r"baselines\[0\] \(first model\): lcls must be in \[0, inf\)"),
    ("baselines.1.optimizer", "Lion", r"baselines\[1\].*optimizer='Lion' is outside the space"),
    (
        "baselines.0.dropout",
        0.1,
        r"baselines\[0\].*dropout is not a parameter of \[space\].*dropout=0\.1",
    ),
    ("baselines.2.lobj", _DELETE, r"baselines\[2\] \(abandoned early\): missing lobj"),
    (
        "baselines.0.milestones",
        [0.8, 0.5],
        r"baselines\[0\].*milestones must be 2 increasing.*\[0\.8, 0\.5\]",
    ),
    ("baselines.1.label", "first model", r"baselines\[1\]\.label must be unique.*'first model'"),
    (
        "trial.data",
        "missing/data.yaml",
        r"trial\.data: no such data set.*data='missing/data\.yaml'",
    ),
    ("trial.epochs", "ten", r"trial\.epochs must be an integer.*epochs='ten'"),
    ("trial.epochs", 0, r"epochs must be .*epochs=0"),
    ("trial.imgsz", 100, r"imgsz must be a multiple of 32.*imgsz=100"),
    ("trial.model", "huge", r"model must be one of.*model='huge'"),
    ("budget.n_trials", 0, r"budget\.n_trials must be >= 1.*n_trials=0"),
    ("budget.epochs", _DELETE, r"\[budget\] needs epochs .* or n_trials"),
    ("budget.epochs", 2.5, r"budget\.epochs must be an integer.*epochs=2\.5"),
    ("budget.epochs", 5, r"budget\.epochs must be >= 6, the epochs a trial trains before.*=5"),
    ("budget.baseline_epochs", 0, r"budget\.baseline_epochs must be >= 1.*baseline_epochs=0"),
    ("budget.baseline_epochs", 34, r"baseline_epochs must be <= trial\.epochs=33.*=34"),
    ("budget.rungs", 3, r"unknown key 'rungs' in \[budget\]"),
    ("budget.timeout", -5, r"budget\.timeout must be > 0.*timeout=-5"),
    ("objective.metric", "loss", r"objective\.metric must be one of.*metric='loss'"),
    ("objective.latency_budget_ms", 0, r"latency_budget_ms must be > 0"),
    ("sampler.type", "CMA", r"sampler\.type must be one of.*type='CMA'"),
    ("space.lr", {"around": 1.0}, r"space\.lr\.around must be a factor > 1.*around=1\.0"),
    ("space.lr", {"around": 3, "low": 0.1}, r"unknown key space\.lr\.low \(around takes no"),
    ("space.nesterov", {}, r"space\.nesterov: trainer .tune. declares no natural search range"),
    ("pruner.type", "ASHA", r"pruner\.type must be one of SuccessiveHalving, .*type='ASHA'"),
    ("pruner.min_resource", 99, r"pruner\.min_resource.*<= trial\.epochs=33.*min_resource=99"),
    ("pruner.reduction_factor", 1, r"pruner\.reduction_factor must be >= 2.*=1"),
    ("sampler.start_from_defaults", "yes", r"start_from_defaults must be true or false.*'yes'"),
    (
        "space.lr",
        {"low": 0.0001, "high": 0.005, "log": True},
        r"sampler\.start_from_defaults: lr=0\.01 is outside the space \[0\.0001, 0\.005\]",
    ),
    ("pruner.n_min_trials", 0, r"pruner\.n_min_trials must be >= 1.*n_min_trials=0"),
    ("name", "has space", r"name must be.*name='has space'"),
    ("trial", 3, r"\[trial\] must be a table.*trial=3"),
    ("trial.lr_decay", "step", r"\[trial\] lr_decay must be one of.*'step'"),
    ("trial.lr", 0.01, r"\[trial\] pins lr, which \[space\] draws: keep one of the two"),
    ("trial.milestones", [0.5], r"\[trial\] pins milestones, which \[space\] draws"),
    ("trial.out", "elsewhere", r"unknown key 'out' in \[trial\]"),
]


@pytest.mark.parametrize(("dotted", "value", "message"), BAD, ids=[b[0] for b in BAD])
def test_each_mistake_is_one_clear_message(dotted: str, value: Any, message: str) -> None:
    raw = copy.deepcopy(_raw())
    _set(raw, dotted, value)
    with pytest.raises(StudyFileError, match=message) as caught:
        parse_study(raw, "studies/loss-weights.toml")
    text = str(caught.value)
    assert text.startswith("studies/loss-weights.toml: ")
    assert "\n" not in text


def test_milestone2_rest_needs_milestone1() -> None:
    raw = _raw()
    del raw["space"]["milestone1"]
    for b in raw["baselines"]:
        del b["milestones"]
    with pytest.raises(StudyFileError, match=r"space\.milestone2_rest needs space\.milestone1"):
        parse_study(raw)


def test_a_space_may_leave_parameters_at_their_defaults() -> None:
    raw = {
        "name": "tiny",
        "budget": {"n_trials": 3},
        "space": {"lcls": {"low": 0.1, "high": 1.0}},
        "baselines": [{"label": "b", "lcls": 0.5}],
    }
    spec = parse_study(apply_overrides(raw, Overrides(epochs=2)))
    config = spec.train_config(spec.baselines[0].as_dict())
    assert config.lcls == 0.5 and config.lobj == TrainConfig().lobj and config.epochs == 2


def test_trial_pins_reach_every_trial_and_the_rest_follows_the_recipe() -> None:
    raw = _raw()
    raw["trial"].update(lr_decay="none", warmup_iters=7, nbs=32, ema_decay=0.0)
    spec = parse_study(raw, "loss-weights")
    baseline = spec.baselines[0]
    config = spec.train_config(baseline.as_dict(), out="x")
    # pinned: the notes' schedule (warmup, then MultiStepLR alone), as for short trials
    assert (config.lr_decay, config.warmup_iters, config.nbs, config.ema_decay) == (
        "none",
        7,
        32,
        0.0,
    )
    assert config.hsv_s == TrainConfig().hsv_s  # not pinned: the trainer's recipe
    assert (config.lr, config.optimizer) == (0.001, "SGD")  # the baseline's own values
