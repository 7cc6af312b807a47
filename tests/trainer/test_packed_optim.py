"""The packed optimizer against torch's own SGD / Adam / AdamW and tune's schedule, step for step:
K solo models, each with `build_optimizer` / `build_scheduler`, against one packed optimizer over
their parameters laid end to end, on the same gradients."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import Tensor, nn

from trainer.config import TrainConfig
from trainer.optim import (
    SCHEDULER_BEFORE_STEP_WARNING,
    build_optimizer,
    build_scheduler,
    optimizer_steps,
    set_warmup_momentum,
)
from trainer.packed_optim import PackedOptimizer, TrialSchedule, apply_schedules

TOTAL, PER_EPOCH = 12, 4  # iterations of the short run, iterations per epoch


def _model(seed: int) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.Flatten(), nn.Linear(4, 2))


def _groups_of(model: nn.Module, config: TrainConfig) -> list[list[Tensor]]:
    return [list(g["params"]) for g in build_optimizer(model, config).param_groups]


def _pack(models: list[nn.Module], configs: list[TrainConfig]) -> list[list[Tensor]]:
    """Each parameter of the K models concatenated along dim 0 (trial-major), per group."""
    per_model = [_groups_of(m, c) for m, c in zip(models, configs, strict=True)]
    return [
        [torch.cat([p[g][i].detach() for p in per_model]).clone() for i in range(len(group))]
        for g, group in enumerate(per_model[0])
    ]


CONFIGS = [
    # every kind, Nesterov, warmup of lr / bias lr / momentum, decay, milestones, and nominal
    # batches that make the trials step at different iterations
    TrainConfig(optimizer="SGD", lr=0.01, momentum=0.937, warmup_iters=5, warmup_bias_lr=0.1,
                batch=16, nbs=64, milestones=(8,), gamma=0.3, weight_decay=0.001),
    TrainConfig(optimizer="Adam", lr=0.003, momentum=0.8, warmup_iters=3, batch=16, nbs=16,
                lr_decay="cosine", weight_decay=0.01),
    TrainConfig(optimizer="AdamW", lr=0.02, momentum=0.9, warmup_iters=0, batch=16, nbs=32,
                weight_decay=0.05, lrf=0.2),
    TrainConfig(optimizer="SGD", lr=0.05, momentum=0.6, nesterov=True, warmup_iters=4,
                batch=16, nbs=16, lr_decay="none", milestones=(0.5,)),
]  # fmt: skip


@pytest.mark.filterwarnings(f"ignore:{SCHEDULER_BEFORE_STEP_WARNING}")
@pytest.mark.parametrize(
    "chosen", [[0, 1, 2, 3], [0], [1], [2], [3], [2, 0]], ids=lambda c: "-".join(map(str, c))
)
def test_packed_steps_match_torch_and_tunes_schedule_step_for_step(chosen: list[int]) -> None:
    configs = [CONFIGS[i] for i in chosen]
    models = [_model(seed) for seed in range(len(configs))]
    packed = _pack(models, configs)
    solo = [build_optimizer(m, c) for m, c in zip(models, configs, strict=True)]
    schedulers = [
        build_scheduler(o, c, TOTAL, PER_EPOCH) for o, c in zip(solo, configs, strict=True)
    ]
    kinds = [c.optimizer for c in configs]
    optimizer = PackedOptimizer(packed, kinds, [c.nesterov for c in configs])
    schedules = [TrialSchedule(c, TOTAL, PER_EPOCH) for c in configs]
    last_steps = [0] * len(configs)
    gen = torch.Generator().manual_seed(0)
    for it in range(TOTAL):
        last_batch = (it // PER_EPOCH + 1) * PER_EPOCH
        active = []
        for k, (config, opt, schedule) in enumerate(zip(configs, solo, schedules, strict=True)):
            set_warmup_momentum(opt, config, schedule.warmup, it)
            schedule.begin(it)
            assert schedule.lrs() == [g["lr"] for g in opt.param_groups]
            steps = optimizer_steps(config, schedule.warmup, it, last_steps[k], last_batch)
            assert steps == schedule.steps_now(it, last_steps[k], last_batch)
            active.append(steps)
            if steps:
                last_steps[k] = it + 1
        apply_schedules(optimizer, schedules)
        # the same gradients (summed over accumulated batches) on both sides
        for g, group in enumerate(optimizer.groups):
            for i, p in enumerate(group):
                grads = [torch.randn(_groups_of(m, c)[g][i].shape, generator=gen)
                         for m, c in zip(models, configs, strict=True)]  # fmt: skip
                for k, (m, c) in enumerate(zip(models, configs, strict=True)):
                    q = _groups_of(m, c)[g][i]
                    q.grad = grads[k] if q.grad is None else q.grad + grads[k]
                whole = torch.cat(grads)
                p.grad = whole if p.grad is None else p.grad + whole
        mask = torch.tensor(active)
        optimizer.step(mask)
        optimizer.zero_grad(mask)
        for k, opt in enumerate(solo):
            if active[k]:
                opt.step()
                opt.zero_grad(set_to_none=True)
            schedulers[k].step()
            schedules[k].end()
        for g, group in enumerate(optimizer.groups):
            for i, p in enumerate(group):
                blocks = p.unflatten(0, (len(configs), -1))
                for k, (m, c) in enumerate(zip(models, configs, strict=True)):
                    q = _groups_of(m, c)[g][i]
                    torch.testing.assert_close(
                        blocks[k].view_as(q), q.detach(), rtol=0, atol=0,
                        msg=lambda s, k=k, it=it: f"trial {k} iteration {it}: {s}",
                    )  # fmt: skip
    # the state in torch's format, ready for a solo checkpoint, and loaded back
    for k, opt in enumerate(solo):
        state = optimizer.trial_state(k)
        params = [p for g in opt.param_groups for p in g["params"]]
        assert len(state) == len(params)
        for entry, p in zip(state, params, strict=True):
            for name, value in opt.state[p].items():
                torch.testing.assert_close(entry[name].view_as(value), value)
        fresh = PackedOptimizer(copy.deepcopy(packed), kinds, [c.nesterov for c in configs])
        fresh.load_trial_state(k, [{n: v.view_as(v) for n, v in e.items()} for e in state])
        assert [e.keys() for e in fresh.trial_state(k)] == [e.keys() for e in state]


def test_a_trial_that_does_not_step_keeps_its_weights_and_state_exactly() -> None:
    p = torch.arange(12.0).reshape(6, 2)  # 3 trials of [2, 2]
    optimizer = PackedOptimizer([[p]], ["SGD", "Adam", "AdamW"])
    optimizer.lr.fill_(0.1)
    optimizer.momentum.fill_(0.9)
    p.grad = torch.ones_like(p)
    optimizer.step()
    before = p.clone(), {n: t.clone() for n, t in optimizer.state[id(p)].items()}
    p.grad = torch.full_like(p, float("nan"))  # a failed trial's gradient must not leak
    p.grad[:2] = 1.0
    optimizer.step(torch.tensor([True, False, False]))
    assert torch.equal(p[2:], before[0][2:])
    for name, value in optimizer.state[id(p)].items():
        assert torch.equal(value[2:], before[1][name][2:]), name
    assert not torch.equal(p[:2], before[0][:2])
    assert optimizer.steps.tolist() == [2, 1, 1]


def test_bad_kinds_and_shapes_are_refused() -> None:
    with pytest.raises(ValueError, match="kind='RMSprop'"):
        PackedOptimizer([[torch.zeros(4)]], ["RMSprop"])
    with pytest.raises(ValueError, match="not a multiple of the 3 trials"):
        PackedOptimizer([[torch.zeros(4)]], ["SGD"] * 3)


@pytest.mark.parametrize("optimizer", ["SGD", "Adam", "AdamW"])
def test_a_setting_the_pack_does_not_carry_per_trial_is_refused(
    optimizer: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A trial's optimizer with a setting the packed step would ignore (here: one a future
    `build_optimizer` might pass) fails the pack instead of training another trial than its
    solo run."""
    import trainer.packed_optim as packed_optim

    config = TrainConfig(optimizer=optimizer, epochs=1)
    TrialSchedule(config, 10, 10)  # what tune's own build_optimizer sets is carried

    made = packed_optim.build_optimizer
    other = {"SGD": {"dampening": 0.1}, "Adam": {"eps": 1e-6}, "AdamW": {"betas": (0.9, 0.99)}}
    key, value = next(iter(other[optimizer].items()))

    def build_with_more(model: nn.Module, config: TrainConfig) -> torch.optim.Optimizer:
        built = made(model, config)
        for group in built.param_groups:
            group[key] = value
        return built

    monkeypatch.setattr(packed_optim, "build_optimizer", build_with_more)
    with pytest.raises(ValueError, match=rf"{optimizer} setting {key}=.* is not carried"):
        TrialSchedule(config, 10, 10)
