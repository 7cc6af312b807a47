"""The optimizer's parameter groups, the schedules (warmup, decay to lrf, MultiStepLR), SGD
momentum warmup and the nominal batch (gradient accumulation, weight-decay scaling)."""

from __future__ import annotations

import itertools
import math

import pytest
import torch
from torch import nn

from trainer.config import TrainConfig
from trainer.optim import (
    BIAS_GROUP,
    BN_GROUP,
    DECAY_GROUP,
    accumulate_at,
    build_optimizer,
    build_scheduler,
    parameter_groups,
    set_warmup_momentum,
)


def _model() -> nn.Module:
    return nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.Flatten(), nn.Linear(4, 2))


def _lrs(config: TrainConfig, total_iters: int, group: int = DECAY_GROUP) -> list[float]:
    """The lr used by each iteration 1..total_iters."""
    optimizer = build_optimizer(_model(), config)
    scheduler = build_scheduler(optimizer, config, total_iters)
    lrs = []
    for _ in range(total_iters):
        lrs.append(optimizer.param_groups[group]["lr"])
        optimizer.step()
        scheduler.step()
    return lrs


def test_weight_decay_only_on_conv_and_linear_weights() -> None:
    model = _model()
    groups = parameter_groups(model, 0.0005)
    conv, bn, linear = model[0], model[1], model[3]
    ids = [{id(p) for p in g["params"]} for g in groups]  # type: ignore[attr-defined]
    assert ids[DECAY_GROUP] == {id(conv.weight), id(linear.weight)}
    assert ids[BIAS_GROUP] == {id(conv.bias), id(bn.bias), id(linear.bias)}
    assert ids[BN_GROUP] == {id(bn.weight)}
    assert [g["weight_decay"] for g in groups] == [0.0, 0.0005, 0.0]


def test_weight_decay_scales_with_the_nominal_batch() -> None:
    # batch 16 accumulates 4 batches to the nominal 64: same decay per image as batch 64
    assert TrainConfig(batch=16, nbs=64).accumulate() == 4
    group = build_optimizer(_model(), TrainConfig(batch=16, weight_decay=0.001)).param_groups
    assert group[DECAY_GROUP]["weight_decay"] == pytest.approx(0.001)
    # batch 96 > nbs: a step every batch, decay scaled up by 96 / 64
    config = TrainConfig(batch=96, weight_decay=0.001)
    assert config.accumulate() == 1
    decay = build_optimizer(_model(), config).param_groups[DECAY_GROUP]["weight_decay"]
    assert decay == pytest.approx(0.0015)


def test_accumulation_ramps_up_over_the_warmup() -> None:
    config = TrainConfig(batch=16, nbs=64)
    steps = [accumulate_at(config, 100, i) for i in range(0, 130, 10)]
    assert steps[0] == 1 and steps[-1] == 4 and steps == sorted(steps)
    assert accumulate_at(config, 0, 0) == 4


@pytest.mark.parametrize(
    "name, cls",
    [("SGD", torch.optim.SGD), ("Adam", torch.optim.Adam), ("AdamW", torch.optim.AdamW)],
)
def test_optimizer_kinds(name: str, cls: type) -> None:
    optimizer = build_optimizer(_model(), TrainConfig(optimizer=name, lr=0.01, momentum=0.8))
    assert isinstance(optimizer, cls)
    group = optimizer.param_groups[0]
    assert group["lr"] == 0.01
    if name == "SGD":
        assert group["momentum"] == 0.8
    else:
        assert group["betas"][0] == 0.8


def test_warmup_then_milestones_in_iterations() -> None:
    config = TrainConfig(
        lr=0.001, warmup_iters=100, milestones=(300, 600), gamma=0.5, lr_decay="none"
    )
    lrs = _lrs(config, 800)
    assert lrs[0] == 0.0  # iteration 1: lr 0, like the notes' first line and Ultralytics
    assert lrs[50] == pytest.approx(0.001 * 50 / 100)  # linear from 0 to lr over 100
    assert all(a < b for a, b in itertools.pairwise(lrs[:101]))
    assert lrs[100] == pytest.approx(0.001)  # warmup done
    assert lrs[299] == pytest.approx(0.001)  # iteration 300: the last before the first milestone
    assert lrs[300] == pytest.approx(0.0005)
    assert lrs[599] == pytest.approx(0.0005)
    assert lrs[600] == pytest.approx(0.00025)


def test_bias_lr_and_momentum_warm_up_from_their_own_start() -> None:
    config = TrainConfig(
        optimizer="SGD", lr=0.01, momentum=0.937, warmup_iters=100, warmup_bias_lr=0.1,
        warmup_momentum=0.8, lr_decay="none",
    )  # fmt: skip
    bias = _lrs(config, 200, BIAS_GROUP)
    assert bias[0] == pytest.approx(0.1) and bias[50] == pytest.approx(0.055)  # 0.1 -> 0.01
    assert all(a > b for a, b in itertools.pairwise(bias[:101]))
    assert bias[100] == pytest.approx(0.01) == bias[199]
    optimizer = build_optimizer(_model(), config)
    seen = []
    for i in (0, 50, 100, 150):
        set_warmup_momentum(optimizer, config, 100, i)
        seen.append(optimizer.param_groups[DECAY_GROUP]["momentum"])
    assert seen == pytest.approx([0.8, 0.8685, 0.937, 0.937])


def test_default_warmup_is_the_fields() -> None:
    # max(warmup_epochs * iterations per epoch, 100): 3 epochs of 37 iterations
    config = TrainConfig(epochs=30)
    assert config.resolved_warmup_iters(30 * 37, 37) == 111
    assert config.resolved_warmup_iters(30 * 10, 10) == 100  # at least 100
    assert config.replace(warmup_epochs=0).resolved_warmup_iters(300, 10) == 0
    assert config.replace(warmup_iters=7).resolved_warmup_iters(300, 10) == 7


@pytest.mark.parametrize("decay", ["linear", "cosine"])
def test_decay_to_lrf_over_the_run(decay: str) -> None:
    config = TrainConfig(lr=0.01, lrf=0.1, warmup_iters=0, lr_decay=decay)
    lrs = _lrs(config, 1000)
    assert lrs[0] == pytest.approx(0.01)
    assert all(a >= b for a, b in itertools.pairwise(lrs))
    assert lrs[-1] == pytest.approx(0.001, rel=0.02)
    middle = 0.01 * (0.1 + 0.9 * 0.5)  # both pass halfway at the midpoint
    assert lrs[500] == pytest.approx(middle, rel=1e-6)
    if decay == "cosine":
        assert lrs[250] == pytest.approx(0.01 * (0.1 + 0.9 * (1 + math.cos(math.pi / 4)) / 2))


def test_milestones_as_fractions_of_the_run() -> None:
    config = TrainConfig(
        lr=0.01, warmup_iters=0, milestones=(0.5, 0.75), gamma=0.1, lr_decay="none"
    )
    assert config.milestone_iters(200) == [100, 150]
    lrs = _lrs(config, 200)
    assert lrs[99] == pytest.approx(0.01)
    assert lrs[100] == pytest.approx(0.001)
    assert lrs[150] == pytest.approx(0.0001)
