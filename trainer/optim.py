"""Optimizer and learning-rate schedule, built from torch.optim as the notes' runs used them.

Weight decay applies to conv and linear weights only (decaying BatchNorm scales and biases hurts
small detectors; YOLOv5 and torchvision's references do the same). The schedule is a linear
warmup from ~0 (the notes show lr 0.00000 at iteration 1 rising to 0.001) chained with
MultiStepLR, both stepped once per iteration so milestones count iterations of the whole run.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.optim.lr_scheduler import ChainedScheduler, LinearLR, LRScheduler, MultiStepLR

from trainer.config import TrainConfig


def parameter_groups(model: nn.Module, weight_decay: float) -> list[dict[str, object]]:
    """Two groups: conv/linear weights with weight decay, everything else (BN, biases) without."""
    decay: list[nn.Parameter] = []
    no_decay: list[nn.Parameter] = []
    for module in model.modules():
        for name, param in module.named_parameters(recurse=False):
            if not param.requires_grad:
                continue
            is_weight = name == "weight" and isinstance(module, nn.Conv2d | nn.Linear)
            (decay if is_weight else no_decay).append(param)
    return [
        {"params": decay, "weight_decay": weight_decay},
        {"params": no_decay, "weight_decay": 0.0},
    ]


def build_optimizer(model: nn.Module, config: TrainConfig) -> torch.optim.Optimizer:
    """SGD (momentum, optional Nesterov), Adam or AdamW over `parameter_groups`."""
    groups = parameter_groups(model, config.weight_decay)
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


def build_scheduler(
    optimizer: torch.optim.Optimizer, config: TrainConfig, total_iters: int
) -> LRScheduler:
    """Linear warmup then MultiStepLR; call `.step()` after every optimizer step."""
    warmup = config.resolved_warmup_iters(total_iters)
    milestones = config.milestone_iters(total_iters)
    multistep = MultiStepLR(optimizer, milestones=milestones, gamma=config.gamma)
    if warmup <= 0:
        return multistep
    # start_factor 1/warmup: lr is lr/warmup after the first step, like the notes' first line
    linear = LinearLR(optimizer, start_factor=1.0 / warmup, end_factor=1.0, total_iters=warmup)
    return ChainedScheduler([linear, multistep])
