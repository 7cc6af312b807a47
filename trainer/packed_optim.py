"""One optimizer for K packed trials: SGD, Adam and AdamW over trial-major parameters.

A packed parameter holds K trials' copies of one tensor end to end along dim 0 (trial k's block
is `p.unflatten(0, (K, -1))[k]`, the layout of a grouped convolution's weight), so one tensor op
updates every trial. Stock torch optimizers take one scalar lr, momentum and weight decay per
group; here they are per-trial tensors broadcast over the blocks, and each trial has its own
kind (SGD with momentum and optional Nesterov, Adam, AdamW: Adam's beta1 is `momentum`, as
`trainer.optim.build_optimizer` does). The arithmetic is torch's own single-tensor SGD / Adam /
AdamW step, op for op, with the scalars replaced by `[K, 1, ...]` tensors, in ops that round as
torch's do (`addcmul` for torch's `add(alpha=)`, `addcdiv` of a pre-scaled numerator for its
`addcdiv(value=)`): on the CPU a trial's weights are torch's to the bit, float32 and float64
(tests compare the two step for step, exactly; `x + t * y` would round twice, and a pack of one
would drift from its solo run).

`step(active)` updates only the trials in `active` (the others accumulate gradients: a trial's
nominal batch and warmup decide when it steps); the rest keep their weights and state exactly.

The schedule stays tune's: `TrialSchedule` runs `build_scheduler` and `set_warmup_momentum` for
one trial over a stand-in torch optimizer with the same three groups and hands its lr and
momentum per group to the packed optimizer each iteration, so warmup, decay, milestones, bias lr
and momentum warmup are computed by the very code a solo run uses (and its scheduler's
`state_dict` is what a solo checkpoint holds).
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Sequence

import torch
from torch import Tensor, nn

from trainer.config import TrainConfig
from trainer.optim import (
    SCHEDULER_BEFORE_STEP_WARNING,
    accumulate_at,
    build_optimizer,
    build_scheduler,
    optimizer_steps,
    set_warmup_momentum,
)

ADAM_BETA2 = 0.999  # torch's default, as build_optimizer leaves it
ADAM_EPS = 1e-8
# A trial's own torch optimizer (`build_optimizer`, in `TrialSchedule`) decides its settings. The
# packed step takes these from it per trial (`apply_schedules`; Adam's beta1 is `momentum`)...
_CARRIED = frozenset({"params", "lr", "initial_lr", "momentum", "weight_decay", "nesterov"})
# ...runs torch's step with these fixed (any other value would be ignored in a pack)...
_ASSUMED: dict[str, dict[str, object]] = {
    "SGD": {"dampening": 0, "maximize": False},
    "Adam": {"eps": ADAM_EPS, "amsgrad": False, "maximize": False, "decoupled_weight_decay": False},
    "AdamW": {"eps": ADAM_EPS, "amsgrad": False, "maximize": False, "decoupled_weight_decay": True},
}
# ...and ignores how torch would run it, which changes no number
_HOW = frozenset({"foreach", "fused", "differentiable", "capturable"})


class PackedOptimizer:
    """SGD / Adam / AdamW for K trials over trial-major packed parameters.

    `groups[g]` lists the packed parameters of group g (tune's bias, decay, BatchNorm groups).
    Per-trial values are set through `lr`, `momentum` (SGD momentum or Adam's beta1) and
    `weight_decay`, float64 tensors `[K, G]` the caller fills before each step.
    """

    def __init__(
        self,
        groups: Sequence[Sequence[Tensor]],
        kinds: Sequence[str],
        nesterov: Sequence[bool] | None = None,
    ) -> None:
        trials = len(kinds)
        for kind in kinds:
            if kind not in ("SGD", "Adam", "AdamW"):
                raise ValueError(f"optimizer must be SGD, Adam or AdamW, but got {kind=}")
        nesterov = list(nesterov) if nesterov is not None else [False] * trials
        if len(nesterov) != trials:
            raise ValueError(f"one nesterov flag per trial, but got {len(nesterov)} for {trials}")
        self.trials = trials
        self.kinds = list(kinds)
        self.groups = [list(g) for g in groups]
        for g, params in enumerate(self.groups):
            for p in params:
                if p.shape[0] % trials:
                    raise ValueError(
                        f"a packed parameter of group {g} has dim 0 = {p.shape[0]}, not a "
                        f"multiple of the {trials} trials"
                    )
        shape = (trials, len(self.groups))
        self.lr = torch.zeros(shape, dtype=torch.float64)
        self.momentum = torch.zeros(shape, dtype=torch.float64)
        self.weight_decay = torch.zeros(shape, dtype=torch.float64)
        self.steps = torch.zeros(trials, dtype=torch.int64)  # optimizer steps taken, per trial
        self.sgd = torch.tensor([k == "SGD" for k in kinds])
        self.adam = ~self.sgd
        self.adamw = torch.tensor([k == "AdamW" for k in kinds])
        self.nesterov = torch.tensor(nesterov) & self.sgd
        # state per packed parameter: "momentum_buffer" (SGD), "exp_avg", "exp_avg_sq" (Adam);
        # allocated on the first step, for every trial (rows of the other kind stay unused)
        self.state: dict[int, dict[str, Tensor]] = {}

    def params(self) -> list[Tensor]:
        return [p for group in self.groups for p in group]

    @torch.no_grad()
    def reset_trial(self, k: int, kind: str, nesterov: bool = False) -> None:
        """Slot k starts afresh for a new trial of `kind`: no moments, no momentum buffers, no
        steps taken, no gradient accumulated (the other slots keep theirs)."""
        if kind not in ("SGD", "Adam", "AdamW"):
            raise ValueError(f"optimizer must be SGD, Adam or AdamW, but got {kind=}")
        self.kinds[k] = kind
        self.sgd[k] = kind == "SGD"
        self.adam = ~self.sgd
        self.adamw[k] = kind == "AdamW"
        self.nesterov[k] = nesterov and kind == "SGD"
        self.steps[k] = 0
        for state in self.state.values():
            for value in state.values():
                value.unflatten(0, (self.trials, -1))[k] = 0
        for p in self.params():
            if p.grad is not None:
                p.grad.unflatten(0, (self.trials, -1))[k] = 0

    @torch.no_grad()
    def step(self, active: Tensor | None = None) -> None:
        """One step for the trials in `active` (bool `[K]`, default all) from `p.grad`."""
        active = torch.ones(self.trials, dtype=torch.bool) if active is None else active
        if not bool(active.any()):
            return
        self.steps += active.long()
        for family in (self.sgd, self.adam):
            rows = family & active
            if bool(rows.any()):
                self._step_rows(rows, sgd=family is self.sgd)

    def zero_grad(self, active: Tensor | None = None) -> None:
        """Forget the gradients of the trials in `active` (all by default)."""
        for p in self.params():
            if p.grad is None:
                continue
            if active is None or bool(active.all()):
                p.grad = None
            else:
                p.grad.unflatten(0, (self.trials, -1))[active] = 0

    def _step_rows(self, rows: Tensor, sgd: bool) -> None:
        every = bool(rows.all())
        index = rows.nonzero().flatten()
        for g, params in enumerate(self.groups):
            lr, momentum, decay = self.lr[:, g], self.momentum[:, g], self.weight_decay[:, g]
            for p in params:
                if p.grad is None:
                    continue
                state = self._state_of(p, sgd)
                tensors = {"param": p, "grad": p.grad, **state}
                blocks = {name: t.unflatten(0, (self.trials, -1)) for name, t in tensors.items()}
                if not every:  # gather the stepping trials, update, scatter back
                    blocks = {name: b[index] for name, b in blocks.items()}
                chosen = slice(None) if every else index
                if sgd:
                    self._sgd(blocks, lr[chosen], momentum[chosen], decay[chosen], chosen)
                else:
                    self._adam(blocks, lr[chosen], momentum[chosen], decay[chosen], chosen)
                if not every:
                    for name in ("param", *state):
                        tensors[name].unflatten(0, (self.trials, -1))[index] = blocks[name]

    def _state_of(self, p: Tensor, sgd: bool) -> dict[str, Tensor]:
        state = self.state.setdefault(id(p), {})
        names = ("momentum_buffer",) if sgd else ("exp_avg", "exp_avg_sq")
        for name in names:
            if name not in state:
                state[name] = torch.zeros_like(p, memory_format=torch.preserve_format)
        return {name: state[name] for name in names}

    def _sgd(
        self, b: dict[str, Tensor], lr: Tensor, momentum: Tensor, decay: Tensor, chosen: object
    ) -> None:
        # torch's _single_tensor_sgd with dampening 0; a first step's buffer is the gradient
        # itself (momentum * 0 + g), as torch's clone. `x.addcmul(y, t)` with a per-trial `t`
        # rounds as torch's `x.add(y, alpha=t)` (one fused multiply-add; `x + t * y` rounds
        # twice), so a trial's weights are torch's to the bit on the CPU, float32 and float64
        param, grad, buf = b["param"], b["grad"], b["momentum_buffer"]
        like = param
        if bool((decay != 0).any()):
            grad = grad.addcmul(param, _per_trial(decay, like))
        buf.mul_(_per_trial(momentum, like)).add_(grad)
        nesterov = self.nesterov[chosen]  # type: ignore[index]
        if bool(nesterov.any()):
            ahead = grad.addcmul(buf, _per_trial(momentum, like))
            update = torch.where(_per_trial(nesterov, like), ahead, buf)
        else:
            update = buf
        param.addcmul_(update, _per_trial(-lr, like))

    def _adam(
        self, b: dict[str, Tensor], lr: Tensor, beta1: Tensor, decay: Tensor, chosen: object
    ) -> None:
        # torch's _single_tensor_adam (amsgrad off): AdamW decays the weights, Adam the gradient;
        # `addcdiv_(exp_avg * -step_size, denom)` rounds as torch's `addcdiv_(..., value=)`
        param, grad, exp_avg, exp_avg_sq = b["param"], b["grad"], b["exp_avg"], b["exp_avg_sq"]
        like = param
        decoupled = self.adamw[chosen]  # type: ignore[index]
        l2 = torch.where(decoupled, 0.0, decay)
        if bool((decay * decoupled).any()):
            param.mul_(_per_trial(1 - lr * torch.where(decoupled, decay, 0.0), like))
        if bool((l2 != 0).any()):
            grad = grad.addcmul(param, _per_trial(l2, like))
        exp_avg.lerp_(grad, _per_trial(1 - beta1, like))
        exp_avg_sq.mul_(ADAM_BETA2).addcmul_(grad, grad, value=1 - ADAM_BETA2)
        steps = self.steps[chosen].double()  # type: ignore[index]
        bias_correction1 = 1 - beta1**steps
        bias_correction2_sqrt = (1 - ADAM_BETA2**steps).sqrt()
        step_size = lr / bias_correction1
        denom = (exp_avg_sq.sqrt() / _per_trial(bias_correction2_sqrt, like)).add_(ADAM_EPS)
        param.addcdiv_(exp_avg * _per_trial(-step_size, like), denom)

    def trial_state(self, k: int) -> list[dict[str, Tensor]]:
        """Trial k's state per parameter (in `params()` order), in torch's optimizer format:
        `momentum_buffer` (SGD) or `step`, `exp_avg`, `exp_avg_sq` (Adam, AdamW); empty before
        its first step."""
        names = ("momentum_buffer",) if self.kinds[k] == "SGD" else ("exp_avg", "exp_avg_sq")
        result: list[dict[str, Tensor]] = []
        for p in self.params():
            state = self.state.get(id(p), {})
            if int(self.steps[k]) == 0 or not all(n in state for n in names):
                result.append({})
                continue
            entry = {n: state[n].unflatten(0, (self.trials, -1))[k].clone() for n in names}
            if self.kinds[k] != "SGD":
                entry = {"step": torch.tensor(float(self.steps[k])), **entry}
            result.append(entry)
        return result

    def load_trial_state(self, k: int, states: Sequence[dict[str, Tensor]]) -> None:
        """Set trial k's state from `trial_state`'s format (e.g. a solo run's checkpoint)."""
        params = self.params()
        if len(states) != len(params):
            raise ValueError(f"expected state for {len(params)} parameters, but got {len(states)}")
        sgd = self.kinds[k] == "SGD"
        steps = 0
        for p, entry in zip(params, states, strict=True):
            if not entry:
                continue
            state = self._state_of(p, sgd)
            for name, block in state.items():
                if name in entry:
                    block.unflatten(0, (self.trials, -1))[k] = entry[name].to(block)
            steps = int(entry["step"]) if "step" in entry else steps
        # SGD keeps no step count; one >= 1 only says "has stepped" (its buffers are live)
        self.steps[k] = steps if not sgd else int(any(states))


def _per_trial(values: Tensor, like: Tensor) -> Tensor:
    """`[K']` per-trial values as `[K', 1, ...]`, broadcastable over blocks shaped like `like`."""
    dtype = torch.bool if values.dtype == torch.bool else like.dtype
    return values.to(device=like.device, dtype=dtype).view(-1, *([1] * (like.ndim - 1)))


def _stand_in() -> nn.Module:
    """The smallest module with one parameter in each of tune's three groups."""
    return nn.Sequential(nn.Conv2d(1, 1, 1), nn.BatchNorm2d(1))


class TrialSchedule:
    """One trial's lr and momentum per group, and when it steps, from tune's own schedule.

    Call `begin(iteration)` before the batch (momentum warmup), read `lrs()` / `momenta()`,
    `steps_now(...)` after backward, and `end()` after the batch (the scheduler's step).
    """

    def __init__(self, config: TrainConfig, total_iters: int, iters_per_epoch: int) -> None:
        self.config = config
        self.optimizer = build_optimizer(_stand_in(), config)
        check_carried(self.optimizer, config.optimizer)
        self.scheduler = build_scheduler(self.optimizer, config, total_iters, iters_per_epoch)
        self.warmup = config.resolved_warmup_iters(total_iters, iters_per_epoch)

    def begin(self, iteration: int) -> None:
        set_warmup_momentum(self.optimizer, self.config, self.warmup, iteration)

    def lrs(self) -> list[float]:
        return [float(g["lr"]) for g in self.optimizer.param_groups]

    def momenta(self) -> list[float]:
        """SGD's momentum, or Adam's beta1, per group."""
        return [
            float(g["momentum"] if "momentum" in g else g["betas"][0])
            for g in self.optimizer.param_groups
        ]

    def weight_decays(self) -> list[float]:
        return [float(g["weight_decay"]) for g in self.optimizer.param_groups]

    def accumulate_at(self, iteration: int) -> int:
        return accumulate_at(self.config, self.warmup, iteration)

    def steps_now(self, iteration: int, last_step: int, last_batch: int) -> bool:
        return optimizer_steps(self.config, self.warmup, iteration, last_step, last_batch)

    def end(self) -> None:
        with warnings.catch_warnings():  # the stand-in optimizer never steps
            warnings.filterwarnings("ignore", SCHEDULER_BEFORE_STEP_WARNING)
            self.scheduler.step()


def check_carried(optimizer: torch.optim.Optimizer, kind: str) -> None:
    """Refuse a trial whose optimizer has a setting the packed step does not carry per trial
    (it would be ignored in a pack and the trial would not be its solo run): a `ValueError`
    naming the setting and its value."""
    assumed = _ASSUMED.get(kind, {})
    for group in optimizer.param_groups:
        for key, value in group.items():
            if key in _CARRIED or key in _HOW:
                continue
            if key == "betas":  # beta1 is carried as momentum; beta2 is fixed
                ok = kind != "SGD" and float(value[1]) == ADAM_BETA2
            else:
                ok = key in assumed and value == assumed[key]
            if not ok:
                raise ValueError(
                    f"a packed trial's {kind} setting {key}={value!r} is not carried per trial "
                    "in a pack (trainer/packed_optim.py); train this setting alone ([trial] "
                    "pack = 1)"
                )


def apply_schedules(optimizer: PackedOptimizer, schedules: Sequence[TrialSchedule | None]) -> None:
    """Copy each trial's current lr, momentum and weight decay into the packed optimizer (an
    empty slot, None, gets zeros: it never steps)."""
    zeros = [0.0] * len(optimizer.groups)

    def rows(values: Callable[[TrialSchedule], list[float]]) -> Tensor:
        return torch.tensor(
            [values(s) if s is not None else zeros for s in schedules], dtype=torch.float64
        )

    optimizer.lr.copy_(rows(TrialSchedule.lrs))
    optimizer.momentum.copy_(rows(TrialSchedule.momenta))
    optimizer.weight_decay.copy_(rows(TrialSchedule.weight_decays))
