"""Trial k of a packed model and back: its solo-shaped weights, EMA, optimizer state, checkpoint.

A packed model (`build_detector(..., trials=K)`, `trainer.packed`) holds K trials' tensors end
to end along dim 0 (`packed_names`); the other entries (the anchors, BatchNorm's batch
counters) are shared. `trial_state_dict` cuts trial k's solo state_dict out of it and
`load_trial_state` writes one into slot k. On top of them a trial's solo `Detector`, `ModelEMA`
and torch optimizer are rebuilt for its evaluation and for its checkpoint (fit's own
`Resumable.checkpoint`), and a checkpoint, a solo run's or a packed trial's (one format), is loaded
into any slot of any pack (`restore_trial`).
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor

from trainer.config import TrainConfig
from trainer.ema import ModelEMA, ema_decay_at
from trainer.fit import Resumable
from trainer.iteration_log import TrainState
from trainer.model import Detector, build_detector
from trainer.optim import build_optimizer
from trainer.packed_optim import PackedOptimizer, TrialSchedule


def packed_names(packed: Detector, solo: Detector) -> set[str]:
    """The state_dict entries that hold one block per trial: the parameters and BatchNorm's
    running statistics (the others, the anchors and BatchNorm's batch counters, are shared;
    by name, since in a pack of one every shape is the solo one)."""
    mine, solo_state = packed.state_dict(), solo.state_dict()
    names = {name for name, _ in packed.named_parameters()} | {
        name for name, _ in packed.named_buffers() if name.endswith(("running_mean", "running_var"))
    }
    for name in names:
        if mine[name].shape[0] != packed.trials * solo_state[name].shape[0]:
            raise ValueError(f"{name} does not hold {packed.trials} trials' blocks along dim 0")
    return names


def trial_state_dict(
    state: dict[str, Tensor], k: int, trials: int, packed: set[str]
) -> dict[str, Tensor]:
    """Trial k's solo-shaped state_dict (copies) from a packed model's state_dict."""
    return {
        name: (value.unflatten(0, (trials, -1))[k] if name in packed else value)
        .detach()
        .clone()
        .contiguous()
        for name, value in state.items()
    }


def load_trial_state(target: Detector, k: int, state: dict[str, Tensor], packed: set[str]) -> None:
    """Write a solo state_dict into trial k's blocks of a packed model (shared entries too)."""
    with torch.no_grad():
        for name, value in target.state_dict().items():
            source = state[name].to(value.device)
            if name in packed:
                value.unflatten(0, (target.trials, -1))[k].copy_(source)
            else:
                value.copy_(source)


def zero_trial(model: Detector, k: int, packed: set[str]) -> None:
    """Zero slot k's weights (BatchNorm variances 1): an empty or failed slot computes zeros,
    never the NaNs a failed trial's weights would send through the fused model."""
    with torch.no_grad():
        for name, value in model.state_dict().items():
            if name in packed and value.dtype.is_floating_point:
                fill = 1.0 if name.endswith("running_var") else 0.0
                value.unflatten(0, (model.trials, -1))[k].fill_(fill)


class PackedEMA:
    """`ModelEMA` for a packed model: each slot's own decay, ramp and update count."""

    def __init__(self, model: Detector) -> None:
        self.module = copy.deepcopy(model).eval()
        self.module.requires_grad_(False)
        self.configs: list[TrainConfig | None] = [None] * model.trials
        self.updates = [0] * model.trials

    def reset(self, k: int, config: TrainConfig | None, state: dict[str, Tensor] | None = None,
              packed: set[str] | None = None) -> None:  # fmt: skip
        """Slot k averages afresh for `config`'s trial (None: nobody's), from `state`."""
        if state is not None:
            assert packed is not None
            load_trial_state(self.module, k, state, packed)
        self.configs[k] = config
        self.updates[k] = 0

    @torch.no_grad()
    def update(self, model: Detector, active: Sequence[bool], packed: set[str]) -> None:
        """Move the slots in `active` towards `model`'s weights (the others keep theirs)."""
        weights = []
        for k, config in enumerate(self.configs):
            if active[k] and config is not None and config.ema_decay > 0:
                self.updates[k] += 1
                weights.append(1 - ema_decay_at(config.ema_decay, config.ema_tau, self.updates[k]))
            else:
                weights.append(0.0)
        trials = len(self.configs)
        current = model.state_dict()
        for name, value in self.module.state_dict().items():
            if not value.dtype.is_floating_point or name not in packed:
                value.copy_(current[name])
                continue
            blocks = value.unflatten(0, (trials, -1))
            w = torch.tensor(weights, dtype=value.dtype, device=value.device)
            blocks.lerp_(
                current[name].unflatten(0, (trials, -1)), w.view(-1, *[1] * (blocks.ndim - 1))
            )


def solo_detector(model: Detector, k: int, packed: set[str], size: str) -> Detector:
    """Trial k of a packed model as a solo Detector of `size` (a copy, on the same device)."""
    param = next(model.parameters())
    solo = build_detector(size, nc=model.nc).to(param.dtype)
    solo.load_state_dict(trial_state_dict(model.state_dict(), k, model.trials, packed))
    solo.to(device=param.device, memory_format=torch.channels_last)  # type: ignore[call-overload]
    return solo


def solo_ema(raw: Detector, ema: PackedEMA, k: int, packed: set[str]) -> ModelEMA | None:
    """Slot k's EMA as a solo `ModelEMA` over `raw` (None when its trial keeps none)."""
    config = ema.configs[k]
    if config is None or config.ema_decay == 0:
        return None
    solo = ModelEMA(raw, config.ema_decay, config.ema_tau)
    solo.module.load_state_dict(
        trial_state_dict(ema.module.state_dict(), k, ema.module.trials, packed)
    )
    solo.updates = ema.updates[k]
    return solo


def solo_optimizer(
    raw: Detector,
    config: TrainConfig,
    schedule: TrialSchedule,
    optimizer: PackedOptimizer,
    k: int,
) -> torch.optim.Optimizer:
    """A torch optimizer over `raw` holding slot k's state and its trial's current
    hyperparameters: what a solo run's checkpoint holds."""
    solo = build_optimizer(raw, config)
    params = [p for g in solo.param_groups for p in g["params"]]
    for p, state in zip(params, optimizer.trial_state(k), strict=True):
        if state:
            solo.state[p] = {n: v.view_as(p) if v.ndim else v for n, v in state.items()}
    for mine, schedule_group in zip(
        solo.param_groups, schedule.optimizer.param_groups, strict=True
    ):
        mine.update({key: value for key, value in schedule_group.items() if key != "params"})
    return solo


def restore_trial(
    checkpoint: dict[str, Any],
    model: Detector,
    ema: PackedEMA,
    optimizer: PackedOptimizer,
    packed: set[str],
    k: int,
    config: TrainConfig,
    schedule: TrialSchedule,
    state: TrainState,
) -> Tensor:
    """Load a checkpoint (fit's format) into slot k: weights, EMA, optimizer state, schedule
    and counters. Returns the checkpoint's batch-stream generator state, which only the pack
    can decide to honour (its one stream is everybody's)."""
    param = next(model.parameters())
    raw = build_detector(config.model, nc=model.nc).to(device=param.device, dtype=param.dtype)
    ema_of_raw = ModelEMA(raw, config.ema_decay, config.ema_tau) if config.ema_decay > 0 else None
    torch_optimizer = build_optimizer(raw, config)
    stream = torch.Generator()
    Resumable(raw, ema_of_raw, torch_optimizer, schedule.scheduler, stream, state).restore(
        checkpoint
    )
    load_trial_state(model, k, raw.state_dict(), packed)
    averaged = ema_of_raw.module if ema_of_raw is not None else raw
    ema.reset(k, config, averaged.state_dict(), packed)
    ema.updates[k] = ema_of_raw.updates if ema_of_raw is not None else 0
    params = [p for g in torch_optimizer.param_groups for p in g["params"]]
    optimizer.load_trial_state(k, [dict(torch_optimizer.state.get(p, {})) for p in params])
    # the schedule's stand-in groups carry the lr and momentum the solo optimizer restored
    for stand_in, restored in zip(
        schedule.optimizer.param_groups, torch_optimizer.param_groups, strict=True
    ):
        stand_in.update({key: value for key, value in restored.items() if key != "params"})
    return stream.get_state()
