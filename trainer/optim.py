"""Optimizer, learning-rate schedule and warmup, built from torch.optim as the field does it.

Three parameter groups, as in YOLOv5 and Ultralytics: conv/linear weights (with weight decay),
BatchNorm scales and biases (both without: decaying them hurts small detectors). Biases get their
own group because the field warms them up from a *higher* lr (`warmup_bias_lr`) while every other
weight starts from 0: a bias can move fast without breaking anything, and the detection head's
objectness biases need to.

The schedule is one `LambdaLR` with a factor per group, stepped after every batch:

    target(i) = decay(i) * gamma ** (milestones passed by i)

where `decay` falls from 1 to `lrf` over the run (linear or cosine; "none" is the notes'
constant lr). During the warmup (`i < warmup`) the factor goes linearly from a start (0, biases
`warmup_bias_lr / lr`) to `target(i)`, Ultralytics' `np.interp(ni, [0, nw], [start, lr * lf])`.
The steps at milestones are MultiStepLR's (`bisect_right`, as torch's own closed form), so the
notes' schedule is `lr_decay="none"` plus milestones. SGD's momentum warms up from
`warmup_momentum` (no torch scheduler moves momentum outside one-cycle; `set_warmup_momentum`
does it per batch).
"""

from __future__ import annotations

import bisect
import math
from collections.abc import Callable

import torch
from torch import nn
from torch.optim.lr_scheduler import LambdaLR

from trainer.config import TrainConfig

# param_groups order: the bias group is first, as in Ultralytics (its warmup starts elsewhere)
BIAS_GROUP, DECAY_GROUP, BN_GROUP = 0, 1, 2
# torch's warning when the schedule steps before the optimizer has: intended while the first
# step is still being accumulated (the schedule counts batches, not optimizer steps)
SCHEDULER_BEFORE_STEP_WARNING = r"Detected call of `lr_scheduler\.step\(\)`"


def parameter_groups(model: nn.Module, weight_decay: float) -> list[dict[str, object]]:
    """Three groups: biases, conv/linear weights (weight decay), BatchNorm scales (none)."""
    decay: list[nn.Parameter] = []
    bn: list[nn.Parameter] = []
    bias: list[nn.Parameter] = []
    for module in model.modules():
        for name, param in module.named_parameters(recurse=False):
            if not param.requires_grad:
                continue
            if name == "bias":
                bias.append(param)
            elif name == "weight" and isinstance(module, nn.Conv2d | nn.Linear):
                decay.append(param)
            else:
                bn.append(param)
    return [
        {"params": bias, "weight_decay": 0.0},
        {"params": decay, "weight_decay": weight_decay},
        {"params": bn, "weight_decay": 0.0},
    ]


def build_optimizer(model: nn.Module, config: TrainConfig) -> torch.optim.Optimizer:
    """SGD (momentum, optional Nesterov), Adam or AdamW over `parameter_groups`.

    Weight decay is scaled by `batch * accumulate / nbs` (YOLOv5's `hyp['weight_decay'] *=
    batch_size * accumulate / nbs`): a step sums the gradients of `batch * accumulate` images.
    """
    groups = parameter_groups(model, scaled_weight_decay(config))
    if config.optimizer == "SGD":
        return torch.optim.SGD(
            groups, lr=config.lr, momentum=config.momentum, nesterov=config.nesterov
        )
    # Adam's first-moment coefficient plays momentum's role, as in YOLOv5's `--optimizer Adam`.
    betas = (config.momentum, 0.999)
    if config.optimizer == "Adam":
        return torch.optim.Adam(groups, lr=config.lr, betas=betas)
    if config.optimizer == "AdamW":
        return torch.optim.AdamW(groups, lr=config.lr, betas=betas)
    raise ValueError(f"unknown optimizer, but got optimizer={config.optimizer!r}")


def scaled_weight_decay(config: TrainConfig) -> float:
    """The decay group's weight decay: `weight_decay * batch * accumulate / nbs`."""
    return config.weight_decay * config.batch * config.accumulate() / config.nbs


def lr_decay(config: TrainConfig, total_iters: int) -> Callable[[int], float]:
    """The decay factor at iteration i: 1 at the start, `lrf` at the end of the run."""
    lrf, span = config.lrf, max(total_iters, 1)
    if config.lr_decay == "linear":
        return lambda i: 1 - (1 - lrf) * min(i / span, 1.0)
    if config.lr_decay == "cosine":
        return lambda i: lrf + (1 - lrf) * (1 + math.cos(math.pi * min(i / span, 1.0))) / 2
    return lambda i: 1.0


def build_scheduler(
    optimizer: torch.optim.Optimizer,
    config: TrainConfig,
    total_iters: int,
    iters_per_epoch: int | None = None,
) -> LambdaLR:
    """Warmup, decay and MultiStepLR as one `LambdaLR`; call `.step()` after every batch."""
    warmup = config.resolved_warmup_iters(total_iters, iters_per_epoch)
    milestones = config.milestone_iters(total_iters)
    decay = lr_decay(config, total_iters)
    gamma = config.gamma

    def factor(start: float) -> Callable[[int], float]:
        def f(i: int) -> float:
            target = decay(i) * gamma ** bisect.bisect_right(milestones, i)
            if i >= warmup:
                return target
            return start + (target - start) * i / warmup

        return f

    # iteration 0 trains weights at lr 0, as Ultralytics' interp and the notes' first log line
    bias_start = config.warmup_bias_lr / config.lr
    lambdas = [factor(bias_start if g == BIAS_GROUP else 0.0) for g in range(3)]
    return LambdaLR(optimizer, lr_lambda=lambdas)


def set_warmup_momentum(
    optimizer: torch.optim.Optimizer, config: TrainConfig, warmup: int, iteration: int
) -> None:
    """SGD momentum from `warmup_momentum` to `momentum` over the warmup (Ultralytics); Adam's
    betas are left alone, as Ultralytics does (its groups have no `momentum` key)."""
    if config.optimizer != "SGD" or iteration > warmup:
        return
    fraction = iteration / warmup if warmup else 1.0
    momentum = config.warmup_momentum + (config.momentum - config.warmup_momentum) * fraction
    for group in optimizer.param_groups:
        group["momentum"] = momentum


def accumulate_at(config: TrainConfig, warmup: int, iteration: int) -> int:
    """Batches per optimizer step at `iteration`: ramps from 1 to `accumulate()` over warmup."""
    full = config.accumulate()
    if iteration >= warmup or warmup == 0:
        return full
    return max(1, round(1 + (config.nbs / config.batch - 1) * iteration / warmup))


def optimizer_steps(
    config: TrainConfig, warmup: int, iteration: int, last_step: int, last_batch: int
) -> bool:
    """Whether batch `iteration` (0-based) closes an optimizer step: `accumulate_at` batches
    since the last step (`last_step`, in batches done), or the epoch's last batch (`last_batch`,
    batches done at its end), so no gradient is left half-accumulated across a checkpoint."""
    done = iteration + 1
    return done - last_step >= accumulate_at(config, warmup, iteration) or done >= last_batch
