"""Trial packing: K trials of one architecture trained as one fused model on one batch stream.

`fit_packed(configs, reports, data)` trains K `TrainConfig`s that share the model, image size,
batch, epochs, data and augmentation (a `ValueError` names the first field that differs) and
returns, per trial, its `FitResult` or the exception that stopped it. Each trial keeps what a
solo `fit()` has: its own initialisation (its seed, its `weights`), loss weights, optimizer kind,
lr, momentum, weight decay, warmup, decay, milestones and gamma (`trainer.packed_optim`),
BatchNorm statistics, EMA, run directory, `metrics.jsonl`, evaluations, `report` callback and
checkpoint. The checkpoint is written by fit's own `checkpoint_state` from solo-shaped copies of
the trial's weights, EMA, optimizer and scheduler, so `fit(config.replace(resume=True))`
continues a packed trial alone, and `fit_packed` resumes a pack from its trials' checkpoints.

Failures are per trial: a non-finite loss, or an exception raised by its `report` (a pruned
trial), stops that trial (its weights are zeroed so nothing non-finite flows through the fused
model) and the others go on. An error that is no trial's own (bad data, out of memory)
propagates.

**One batch stream.** A solo run draws its shuffles and augmentations from a generator seeded
with its `seed`; a pack draws one stream, the one its first trial's solo run would draw. A trial
whose seed equals the first trial's (the usual case: a study's trials share one seed) sees
exactly the batches of its solo run; another trial is still initialised from its own seed but
sees the pack's batches. Its checkpoint holds the pack's generator, so a retried trial resumes
the stream it was trained on. A pack resumes only when all its trials resume from the same point
(or none does): they share one stream.

**Fusion: grouped convolutions** (as HFTA): `build_detector(..., trials=K)` is one network with
K times the channels, every convolution in K groups and BatchNorm over K times the channels, so
each trial keeps its own statistics and nothing mixes trials; the number of kernels an iteration
launches does not grow with K (what a launch-bound GPU needs: one nano trial keeps an H200 busy
22% of the time). Measured on this VM's CPU (1 thread, nano; forward + loss + backward, median
ms per iteration; `uv run python -m bench.packing --fusion`):

    64 px batch 8         K=1    K=2    K=4
    separate models      24.1   52.4  110.1
    loop (slices)        35.3   72.3  156.2
    vmap                 69.6   87.8  119.4
    grouped              34.5   54.5   95.7
    128 px batch 32
    separate models     135    317    705
    loop (slices)       177    356   1020
    vmap                235    456    908
    grouped             171    426    766

(separate: K real channels_last modules; loop: `functional_call` on each trial's slice of the
stacked tensors; vmap: `torch.func.vmap(functional_call)` over `stack_module_state` tensors;
grouped: the fused network above, without channels_last in this probe; the machine was shared,
so figures move by 10-20%.) On 2 CPU cores no fusion beats separate runs: the CPU is compute
bound and fusion only saves overhead. Grouped is the fastest fused form at K=4 and at small
sizes, and vmap adds a per-op cost that is worst at K=1 (2x); grouped keeps one plain
`nn.Module` (channels_last, autocast, state_dicts as usual), so it is the pack's form.

End to end on this CPU (`uv run python -m bench.packing --k 1,2,4`, 1 thread, nano, 128 px,
batch 32), a pack is slower than separate runs: aggregate trial-images/s 0.86x of one solo `fit`
at K=1, 0.62x at K=2, 0.53x at K=4 (bench/results/packing-cpu.json). Packing is for the GPU,
where it has not been measured yet (`--device cuda`).
"""

from __future__ import annotations

import copy
import logging
import time
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import Tensor

from trainer.config import TrainConfig
from trainer.data import DetectionData, DetectionSplit, iterate_batches, load_data
from trainer.ema import ModelEMA, ema_decay_at
from trainer.fit import (
    LogInterval,
    Report,
    TrainState,
    augment_spec,
    autocast_for,
    check_data_matches,
    checkpoint_state,
    evaluate_and_record,
    finish_run,
    loss_values,
    record_iteration,
    resolve_device,
    restore_state,
)
from trainer.loss import DetectionLoss, LossWeights
from trainer.model import Detector, build_detector, load_weights
from trainer.optim import (
    DECAY_GROUP,
    SCHEDULER_BEFORE_STEP_WARNING,
    build_optimizer,
    parameter_groups,
)
from trainer.packed_optim import PackedOptimizer, TrialSchedule, apply_schedules
from trainer.records import EvalLine, FitResult, NonFiniteLossError
from trainer.run_dir import RunDir

logger = logging.getLogger("trainer")

# fields every trial of a pack shares: the architecture, the batch stream and its length
SHARED_FIELDS: tuple[str, ...] = (
    "data", "model", "imgsz", "batch", "epochs", "skip_bad", "augment", "mosaic",
    "close_mosaic", "scale", "translate", "fliplr", "hsv_h", "hsv_s", "hsv_v", "eval_interval",
    "device", "amp", "threads", "resume",
)  # fmt: skip


def check_packable(configs: Sequence[TrainConfig]) -> None:
    """A `ValueError` naming the first field that differs between trials, or a shared `out`."""
    if not configs:
        raise ValueError("a pack needs at least one trial, but got configs=[]")
    lead = configs[0]
    for i, config in enumerate(configs[1:], start=1):
        for name in SHARED_FIELDS:
            mine, theirs = getattr(lead, name), getattr(config, name)
            if mine != theirs:
                raise ValueError(
                    f"packed trials must share {name}, but trial 0 has {name}={mine!r} and "
                    f"trial {i} has {name}={theirs!r}"
                )
    outs = [str(Path(c.out).resolve()) for c in configs]
    if len(set(outs)) != len(outs):
        repeated = next(o for o in outs if outs.count(o) > 1)
        raise ValueError(f"each packed trial needs its own out, but got out={repeated!r} twice")


@dataclass
class _Trial:
    """One trial of the pack: its config, run directory, schedule and progress."""

    index: int
    config: TrainConfig
    report: Report | None
    run: RunDir
    schedule: TrialSchedule
    loss_fn: DetectionLoss
    state: TrainState = field(default_factory=TrainState)
    interval: LogInterval = field(default_factory=LogInterval)
    last_eval: EvalLine | None = None
    error: Exception | None = None

    @property
    def alive(self) -> bool:
        return self.error is None


class PackedEMA:
    """`ModelEMA` for a packed model: each trial's own decay, ramp and update count."""

    def __init__(self, model: Detector, configs: Sequence[TrainConfig]) -> None:
        self.module = copy.deepcopy(model).eval()
        self.module.requires_grad_(False)
        self.configs = list(configs)
        self.updates = [0] * len(configs)

    @torch.no_grad()
    def update(self, model: Detector, active: Sequence[bool], packed: set[str]) -> None:
        """Move the trials in `active` towards `model`'s weights (the others keep theirs)."""
        weights = []
        for k, config in enumerate(self.configs):
            if active[k] and config.ema_decay > 0:
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


def packed_names(packed: Detector, solo: Detector) -> set[str]:
    """The state_dict entries that hold one block per trial (the others, e.g. the anchors and
    BatchNorm's batch counters, are shared)."""
    solo_state = solo.state_dict()
    return {
        name
        for name, value in packed.state_dict().items()
        if value.ndim and value.shape[0] == packed.trials * solo_state[name].shape[0]
    }


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


def fit_packed(
    configs: Sequence[TrainConfig],
    reports: Sequence[Report | None] | None = None,
    data: DetectionData | None = None,
) -> list[FitResult | Exception]:
    """Train the trials of `configs` as one pack; see the module docstring.

    `reports[k]`, when given, is trial k's `report(step, metrics)`, called after each of its
    evaluations (after its checkpoint is saved); an exception it raises stops trial k only and
    is what `fit_packed` returns for it.
    """
    check_packable(configs)
    reports = list(reports) if reports is not None else [None] * len(configs)
    if len(reports) != len(configs):
        raise ValueError(f"one report per trial, but got {len(reports)} for {len(configs)}")
    lead = configs[0]
    if lead.threads is not None:
        torch.set_num_threads(lead.threads)
    device = resolve_device(lead.device)
    if data is None:
        data = load_data(lead.data, lead.imgsz, skip_bad=lead.skip_bad)
    check_data_matches(data, lead)
    iters_per_epoch = len(data.train) // lead.batch
    if iters_per_epoch == 0:
        raise ValueError(
            f"batch must not exceed the {len(data.train)} training images, but got "
            f"batch={lead.batch}"
        )
    total_iters = iters_per_epoch * lead.epochs
    trials_n = len(configs)

    solos = [_initial_detector(c, len(data.names)) for c in configs]
    model = build_detector(lead.model, nc=len(data.names), trials=trials_n)
    packed = packed_names(model, solos[0])
    for k, solo in enumerate(solos):
        load_trial_state(model, k, solo.state_dict(), packed)
    model.to(device=device, memory_format=torch.channels_last)  # type: ignore[call-overload]
    ema = PackedEMA(model, configs)
    groups = [g["params"] for g in parameter_groups(model, 0.0)]
    optimizer = PackedOptimizer(
        groups,  # type: ignore[arg-type]
        [c.optimizer for c in configs],
        [c.nesterov for c in configs],
    )
    generator = torch.Generator().manual_seed(lead.seed)
    trials = [
        _Trial(
            index=k,
            config=c,
            report=reports[k],
            run=RunDir(Path(c.out)),
            schedule=TrialSchedule(c, total_iters, iters_per_epoch),
            loss_fn=DetectionLoss(model, LossWeights(lbox=c.lbox, lobj=c.lobj, lcls=c.lcls)),
        )
        for k, c in enumerate(configs)
    ]
    if lead.resume:
        _resume(trials, model, ema, optimizer, generator, packed)
    for trial in trials:
        trial.run.write_config(trial.config)
        trial.run.start_metrics(keep_through_iter=trial.state.iteration)

    epoch = trials[0].state.epoch
    while epoch < lead.epochs and any(t.alive for t in trials):
        train_packed_epoch(
            model, ema, optimizer, trials, data.train, lead, device, generator, packed
        )
        epoch += 1
        for trial in trials:
            if trial.alive:
                trial.state.epoch = epoch
        if epoch % lead.eval_interval and epoch != lead.epochs:
            continue
        for trial in trials:
            if trial.alive:
                _evaluate_trial(trial, model, ema, optimizer, generator, packed, data, device)

    results: list[FitResult | Exception] = []
    for trial in trials:
        if trial.error is not None:
            results.append(trial.error)
            continue
        source = model if trial.config.ema_decay == 0 else ema.module
        final = _solo(source, trial.index, packed, trial.config.model)
        config, state, run = trial.config, trial.state, trial.run
        results.append(
            finish_run(final, trial.loss_fn, data, config, state, device, run, trial.last_eval)
        )
    return results


def train_packed_epoch(
    model: Detector,
    ema: PackedEMA,
    optimizer: PackedOptimizer,
    trials: list[_Trial],
    split: DetectionSplit,
    lead: TrainConfig,
    device: torch.device,
    generator: torch.Generator,
    packed: set[str],
) -> None:
    """One pass over the training split for every live trial, as fit's `train_one_epoch`.

    Each trial steps when its own nominal batch and warmup say (`TrialSchedule.steps_now`);
    a trial whose loss turns non-finite fails here and the others go on.
    """
    model.train()
    autocast = autocast_for(device, lead)
    live = [t for t in trials if t.alive]
    state = live[0].state
    spec = augment_spec(lead, state.epoch)
    batches = iterate_batches(
        split, lead.batch, shuffle=True, augment=spec or False, generator=generator
    )
    iteration = state.iteration
    last_batch = iteration + max(len(split) // lead.batch, 1)
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", SCHEDULER_BEFORE_STEP_WARNING)
        for images, targets, _ in batches:
            live = [t for t in trials if t.alive]
            if not live:
                return
            start = time.perf_counter()
            for trial in trials:
                trial.schedule.begin(iteration)
            apply_schedules(optimizer, [t.schedule for t in trials])
            lrs = [t.schedule.lrs()[DECAY_GROUP] for t in live]
            images = images.to(device, non_blocking=True)
            images = images.contiguous(memory_format=torch.channels_last)
            targets = targets.to(device)
            with autocast():
                outputs = model(images)
            if model.trials == 1:  # a pack of one is the plain detector: no trial dim
                outputs = [o.unsqueeze(0) for o in outputs]
            parts = [t.loss_fn([o[t.index] for o in outputs], targets) for t in live]
            (torch.stack([p.total for p in parts]).sum() * images.shape[0]).backward()
            active = [False] * len(trials)
            for trial in live:
                if trial.schedule.steps_now(iteration, trial.state.last_step, last_batch):
                    active[trial.index] = True
                    trial.state.last_step = iteration + 1
            mask = torch.tensor(active)
            optimizer.step(mask)
            optimizer.zero_grad(mask)
            if any(active):
                ema.update(model, active, packed)
            for trial in trials:
                trial.schedule.end()
            values = [loss_values(p) for p in parts]
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            # each trial's latency is its share of the pack's iteration
            share = (time.perf_counter() - start) / len(live)
            iteration += 1
            for trial, value, lr in zip(live, values, lrs, strict=True):
                try:
                    record_iteration(
                        value, share, lr, trial.config, trial.state, trial.interval, trial.run
                    )
                except NonFiniteLossError as exc:
                    _fail(trial, exc, model, packed)


def _evaluate_trial(
    trial: _Trial,
    model: Detector,
    ema: PackedEMA,
    optimizer: PackedOptimizer,
    generator: torch.Generator,
    packed: set[str],
    data: DetectionData,
    device: torch.device,
) -> None:
    """Evaluate, checkpoint and report one trial as `fit` does; its failure is its own."""
    k, config = trial.index, trial.config
    try:
        raw = _solo(model, k, packed, config.model)
        solo_ema = _solo_ema(raw, ema, k, packed)
        final = solo_ema.module if solo_ema is not None else raw
        assert isinstance(final, Detector)
        trial.last_eval, eval_report = evaluate_and_record(
            final, trial.loss_fn, data, config, trial.state, device, trial.run
        )
        solo_optimizer = _solo_optimizer(raw, trial, optimizer)
        trial.run.save_checkpoint(
            checkpoint_state(
                raw, solo_ema, solo_optimizer, trial.schedule.scheduler, generator, trial.state
            )
        )
        if trial.report is not None:
            trial.report(trial.state.epoch, eval_report)
    except Exception as exc:  # a failed or stopped trial; the pack goes on
        _fail(trial, exc, model, packed)


def _fail(trial: _Trial, exc: Exception, model: Detector, packed: set[str]) -> None:
    logger.warning(f"trial {trial.index} ({trial.config.out}) stopped: {exc}")
    trial.error = exc
    # zero its weights: a non-finite trial must not keep computing NaNs in the fused model
    with torch.no_grad():
        for name, value in model.state_dict().items():
            if name in packed and value.dtype.is_floating_point:
                fill = 1.0 if name.endswith("running_var") else 0.0
                value.unflatten(0, (model.trials, -1))[trial.index].fill_(fill)


def _initial_detector(config: TrainConfig, nc: int) -> Detector:
    """Trial's starting weights, exactly as its solo `fit` builds them (seed, then weights)."""
    torch.manual_seed(config.seed)
    model = build_detector(config.model, nc=nc)
    if config.weights:
        load_weights(model, config.weights)
    return model


def _solo(model: Detector, k: int, packed: set[str], size: str) -> Detector:
    """Trial k of a packed model as a solo Detector of `size` (a copy, on the same device)."""
    solo = build_detector(size, nc=model.nc)
    solo.load_state_dict(trial_state_dict(model.state_dict(), k, model.trials, packed))
    device = next(model.parameters()).device
    solo.to(device=device, memory_format=torch.channels_last)  # type: ignore[call-overload]
    return solo


def _solo_ema(raw: Detector, ema: PackedEMA, k: int, packed: set[str]) -> ModelEMA | None:
    config = ema.configs[k]
    if config.ema_decay == 0:
        return None
    solo = ModelEMA(raw, config.ema_decay, config.ema_tau)
    solo.module.load_state_dict(
        trial_state_dict(ema.module.state_dict(), k, ema.module.trials, packed)
    )
    solo.updates = ema.updates[k]
    return solo


def _solo_optimizer(
    raw: Detector, trial: _Trial, optimizer: PackedOptimizer
) -> torch.optim.Optimizer:
    """A torch optimizer over `raw` holding trial k's state and current hyperparameters: what
    a solo run's checkpoint holds."""
    solo = build_optimizer(raw, trial.config)
    params = [p for g in solo.param_groups for p in g["params"]]
    for p, state in zip(params, optimizer.trial_state(trial.index), strict=True):
        if state:
            solo.state[p] = {n: v.view_as(p) if v.ndim else v for n, v in state.items()}
    for mine, schedule_group in zip(
        solo.param_groups, trial.schedule.optimizer.param_groups, strict=True
    ):
        mine.update({key: value for key, value in schedule_group.items() if key != "params"})
    return solo


def _resume(
    trials: list[_Trial],
    model: Detector,
    ema: PackedEMA,
    optimizer: PackedOptimizer,
    generator: torch.Generator,
    packed: set[str],
) -> None:
    """Continue every trial from its checkpoint (or none, when no trial has one)."""
    checkpoints = [t.run.load_checkpoint() for t in trials]
    have = [c is not None for c in checkpoints]
    if not any(have):
        return
    if not all(have):
        fresh = [t.index for t in trials if checkpoints[t.index] is None]
        raise ValueError(
            f"packed trials share one batch stream, so they resume together: trials {fresh} "
            "have no checkpoint but the others do; resume them in their own pack or alone"
        )
    points = {(c["epoch"], c["iteration"]) for c in checkpoints if c is not None}
    streams = {bytes(c["generator"].numpy()) for c in checkpoints if c is not None}
    if len(points) > 1 or len(streams) > 1:
        raise ValueError(
            "packed trials share one batch stream, so they resume from the same point, but "
            f"their checkpoints are at (epoch, iteration) {sorted(points)} with "
            f"{len(streams)} different batch streams"
        )
    device = next(model.parameters()).device
    for trial, checkpoint in zip(trials, checkpoints, strict=True):
        assert checkpoint is not None
        raw = build_detector(trial.config.model, nc=model.nc).to(device)
        solo_ema = (
            ModelEMA(raw, trial.config.ema_decay, trial.config.ema_tau)
            if trial.config.ema_decay > 0
            else None
        )
        solo_optimizer = build_optimizer(raw, trial.config)
        restore_state(
            checkpoint, raw, solo_ema, solo_optimizer, trial.schedule.scheduler, generator,
            trial.state,
        )  # fmt: skip
        load_trial_state(model, trial.index, raw.state_dict(), packed)
        if solo_ema is not None:
            load_trial_state(ema.module, trial.index, solo_ema.module.state_dict(), packed)
            ema.updates[trial.index] = solo_ema.updates
        else:
            load_trial_state(ema.module, trial.index, raw.state_dict(), packed)
        params = [p for g in solo_optimizer.param_groups for p in g["params"]]
        optimizer.load_trial_state(
            trial.index, [dict(solo_optimizer.state.get(p, {})) for p in params]
        )
        # the schedule's stand-in groups carry the lr and momentum the solo optimizer restored
        for stand_in, restored in zip(
            trial.schedule.optimizer.param_groups, solo_optimizer.param_groups, strict=True
        ):
            stand_in.update({key: value for key, value in restored.items() if key != "params"})
        logger.info(
            f"trial {trial.index}: resumed from {trial.run.checkpoint} at epoch "
            f"{trial.state.epoch} / iter {trial.state.iteration}"
        )
