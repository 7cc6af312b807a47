"""The EMA of the weights: its update rule, and that a run evaluates and keeps the EMA."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import pytest
import torch
from torch import nn

import trainer.fit
from trainer.config import TrainConfig
from trainer.ema import ModelEMA
from trainer.shapes import shapes_yaml


def test_update_follows_the_ramped_decay() -> None:
    model = nn.Sequential(nn.Conv2d(3, 2, 1), nn.BatchNorm2d(2))
    ema = ModelEMA(model, decay=0.9, tau=10.0)
    start = model[0].weight.detach().clone()
    with torch.no_grad():
        model[0].weight.add_(1.0)
        model[1].num_batches_tracked.fill_(7)
    ema.update(model)
    d1 = 0.9 * (1 - math.exp(-1 / 10))
    assert ema.decay_at(1) == pytest.approx(d1)
    # average = d * old + (1 - d) * new
    assert torch.allclose(ema.module[0].weight, start + (1 - d1))
    assert int(ema.module[1].num_batches_tracked) == 7  # integer buffers are copied
    ema.update(model)
    d2 = 0.9 * (1 - math.exp(-2 / 10))
    assert torch.allclose(ema.module[0].weight, start + 1 - d2 * d1)
    assert ema.decay_at(10_000) == pytest.approx(0.9)  # the ramp reaches the decay
    assert not any(p.requires_grad for p in ema.module.parameters())
    restored = ModelEMA(model, decay=0.9, tau=10.0)
    restored.load_state_dict(ema.state_dict())
    assert restored.updates == 2 and torch.equal(restored.module[0].weight, ema.module[0].weight)


def test_evaluation_and_checkpoint_use_the_ema_weights(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    evaluated: list[nn.Module] = []
    real_evaluate = trainer.fit.evaluate

    def spy(model: nn.Module, *args: Any, **kwargs: Any) -> Any:
        evaluated.append(model)
        return real_evaluate(model, *args, **kwargs)

    monkeypatch.setattr(trainer.fit, "evaluate", spy)
    data = shapes_yaml(tmp_path / "cache", n_train=32, n_val=8)
    config = TrainConfig(
        data=str(data), imgsz=64, batch=16, epochs=1, threads=1, out=str(tmp_path / "run"),
        ema_tau=1.0, warmup_iters=0,
    )  # fmt: skip
    trainer.fit.fit(config)
    checkpoint = torch.load(tmp_path / "run" / "last.pt", weights_only=True)
    # 2 batches of 16 accumulate towards the nominal 64: one step, the one closing the epoch
    assert checkpoint["ema_updates"] == 1
    # the evaluated weights are the EMA's, not the trained ones
    weights = {k: v for k, v in evaluated[0].state_dict().items() if v.is_floating_point()}
    for key, value in weights.items():
        assert torch.equal(value.cpu(), checkpoint["model"][key]), key
    differs = [
        k for k in weights if not torch.equal(weights[k].cpu(), checkpoint["train_model"][k])
    ]
    assert differs  # the raw weights moved on without the average
