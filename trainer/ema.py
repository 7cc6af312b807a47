"""An exponential moving average of a model's weights, the weights a run evaluates and keeps.

Averaging the weights of the last few hundred optimizer steps removes most of the step-to-step
noise of small-batch training: YOLOv5 and Ultralytics evaluate, checkpoint and export the
average, never the raw weights. The decay ramps up, `decay * (1 - exp(-updates / tau))`, so
that the random initialisation and the first wild steps fade out fast instead of being averaged
in for thousands of steps. BatchNorm running statistics (float buffers) are averaged too; integer
buffers (`num_batches_tracked`) are copied.
"""

from __future__ import annotations

import copy
import math
from typing import Any

import torch
from torch import nn


def ema_decay_at(decay: float, tau: float, updates: int) -> float:
    """The weight kept from the average at update number `updates` (1-based): the ramp."""
    return decay * (1 - math.exp(-updates / tau))


class ModelEMA:
    """`module` holds the averaged weights; call `update(model)` after every optimizer step."""

    def __init__(self, model: nn.Module, decay: float = 0.9999, tau: float = 2000.0) -> None:
        if not 0 <= decay < 1:
            raise ValueError(f"decay must be in [0, 1), but got {decay=}")
        if not tau > 0:
            raise ValueError(f"tau must be > 0, but got {tau=}")
        self.module = copy.deepcopy(model).eval()
        self.module.requires_grad_(False)
        self.decay = decay
        self.tau = tau
        self.updates = 0

    def decay_at(self, updates: int) -> float:
        """The weight kept from the average at update number `updates` (1-based)."""
        return ema_decay_at(self.decay, self.tau, updates)

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        """Move the average towards `model`'s current weights (and copy integer buffers)."""
        self.updates += 1
        d = self.decay_at(self.updates)
        current = model.state_dict()
        averaged, fresh = [], []
        for name, value in self.module.state_dict().items():
            if value.dtype.is_floating_point:
                averaged.append(value)
                fresh.append(current[name].detach())
            else:
                value.copy_(current[name])
        # one fused call over all tensors: the per-tensor loop costs more than the math here
        torch._foreach_lerp_(averaged, fresh, 1 - d)

    def state_dict(self) -> dict[str, Any]:
        return {"module": self.module.state_dict(), "updates": self.updates}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.module.load_state_dict(state["module"])
        self.updates = int(state["updates"])
