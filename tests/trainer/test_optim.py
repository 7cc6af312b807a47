"""The optimizer's parameter groups and the warmup + MultiStepLR schedule."""

from __future__ import annotations

import itertools

import pytest
import torch
from torch import nn

from trainer.config import TrainConfig
from trainer.optim import build_optimizer, build_scheduler, parameter_groups


def _model() -> nn.Module:
    return nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.Flatten(), nn.Linear(4, 2))


def _lrs(config: TrainConfig, total_iters: int) -> list[float]:
    """The lr used by each iteration 1..total_iters."""
    optimizer = build_optimizer(_model(), config)
    scheduler = build_scheduler(optimizer, config, total_iters)
    lrs = []
    for _ in range(total_iters):
        lrs.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        scheduler.step()
    return lrs


def test_weight_decay_only_on_conv_and_linear_weights() -> None:
    model = _model()
    decay, no_decay = parameter_groups(model, 0.0005)
    conv, bn, linear = model[0], model[1], model[3]
    assert {id(p) for p in decay["params"]} == {id(conv.weight), id(linear.weight)}  # type: ignore[attr-defined]
    assert {id(p) for p in no_decay["params"]} == {
        id(conv.bias),
        id(bn.weight),
        id(bn.bias),
        id(linear.bias),  # type: ignore[attr-defined]
    }
    assert decay["weight_decay"] == 0.0005 and no_decay["weight_decay"] == 0.0


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
    lrs = _lrs(TrainConfig(lr=0.001, warmup_iters=100, milestones=(300, 600), gamma=0.5), 800)
    assert lrs[0] == pytest.approx(0.001 / 100)  # iteration 1: near 0, like the notes' first line
    # linear from lr/100 to lr over 100 iterations
    assert lrs[49] == pytest.approx(0.001 * (0.01 + 0.99 * 49 / 100))
    assert all(a < b for a, b in itertools.pairwise(lrs[:101]))
    assert lrs[100] == pytest.approx(0.001)  # warmup done
    assert lrs[299] == pytest.approx(0.001)  # iteration 300: the last before the first milestone
    assert lrs[300] == pytest.approx(0.0005)
    assert lrs[599] == pytest.approx(0.0005)
    assert lrs[600] == pytest.approx(0.00025)


def test_milestones_as_fractions_of_the_run() -> None:
    config = TrainConfig(lr=0.01, warmup_iters=0, milestones=(0.5, 0.75), gamma=0.1)
    assert config.milestone_iters(200) == [100, 150]
    lrs = _lrs(config, 200)
    assert lrs[99] == pytest.approx(0.01)
    assert lrs[100] == pytest.approx(0.001)
    assert lrs[150] == pytest.approx(0.0001)


def test_default_warmup_is_a_short_share_of_the_run() -> None:
    config = TrainConfig()
    assert config.resolved_warmup_iters(400) == 20
    assert config.resolved_warmup_iters(1_000_000) == 1000
