"""Trial packing: trials of one architecture trained as one fused model on one batch stream.

`fit_pack(first, refill=, done=, data=)` trains the `PackMember`s of `first` (a `TrainConfig`
and an optional `report`) as one pack of `len(first)` slots. Each trial keeps what a solo
`fit()` has: its own initialisation (its seed, its `weights`), loss weights, optimizer kind,
lr, momentum, weight decay, warmup, decay, milestones and gamma (`trainer.packed_optim`),
epochs, `eval_interval`, BatchNorm statistics, EMA, run directory, `metrics.jsonl`,
evaluations, `report` callback and checkpoint. The trials share what makes one fused model on
one batch stream (`PACK_SHARED_FIELDS`: the model, image size, batch, data, augmentation...); a
`ValueError` names the first field that differs. `fit_packed(configs, reports, data)` is the
batch form: the trials start together, nothing refills, one outcome per config.

**Slots and refill.** After every epoch of the pack, once its evaluations are done, each slot
whose trial ended (ran its epochs, failed, or its `report` raised) calls `done(member,
outcome)`, its `FitResult` or the exception that ended it, and then `refill()`: a member it
returns is loaded into that slot at this epoch boundary, exactly as a trial that starts a pack
(fresh weights from its seed or its checkpoint, its own EMA, BatchNorm statistics, zeroed
optimizer state and a schedule from its iteration 0, its run directory); None leaves the slot
empty for good and the pack ends when every slot is. An empty slot would still cost its share
of every convolution, so once a slot is empty the fused model is rebuilt at the epoch boundary
with only the live trials (`compact=False` keeps the zeroed slot: no loss, no step): each moves
with its weights, EMA, BatchNorm statistics, optimizer state and schedule, and the stream goes
on where it was, so its curve is the one it had in the wider pack up to the grouped backward's
rounding (to 1e-9 in float64; a pack of one is then its solo run to the bit). A member that
has nothing left to train (resumed from a finished run) is evaluated, finished and handed to
`done` at once. A refilled member that cannot share the pack raises `ValueError` from
`fit_pack` before anything of it is loaded (the other trials stay at their last checkpoints).
So the trials of a pack may be at different epochs: each counts its own, evaluates at its own
`eval_interval` boundaries and after its own last epoch; every trial's epoch is the same
batches long, so a trial's epoch boundaries are the pack's.

**Evaluation.** The trials due at an epoch boundary are evaluated together: one pass of the
fused model over the validation split, each slot holding the weights its trial evaluates with
(its EMA's, or its own when it keeps none), and one mAP for all of them on the device
(`trainer.mean_ap`); then each is recorded, checkpointed and reported as `fit` does. So K trials
launch one pass's kernels instead of K, and none waits for COCOeval on the host. A packed
trial's evaluation is its solo one: in float64 the same mAP and validation losses to 1e-9
(tests/trainer/test_packed.py). On this CPU the fused pass takes 1x to 1.6x the time of K solo
passes (K = 1 to 16), as fused training does (bench.packing --eval, docs/benchmarks.md); it is
made for the GPU.

Failures are per trial: a non-finite loss, or an exception raised by its `report` (a pruned
trial), stops that trial (its weights are zeroed so nothing non-finite flows through the fused
model) and the others go on. An error that is no trial's own (bad data, out of memory)
propagates.

**One batch stream.** A solo run draws its shuffles and augmentations from a generator seeded
with its `seed`; a pack draws one stream, the one its first trial's solo run would draw. A trial
that starts with the pack and whose seed equals the first trial's (the usual case: a study's
trials share one seed) sees exactly the batches of its solo run; any other trial is still
initialised from its own seed but sees the pack's batches, and a refilled trial sees them from
the point the stream has reached when it joins (its epoch 0 is the pack's epoch e). Mosaic is a
per-epoch switch (off for a trial's last `close_mosaic` epochs), so trials at different epochs
may disagree on it: the oldest trial's augmentation is the stream's, and the trials that
disagree draw the same epoch from a copy of the stream's state with theirs (the fused model
then takes one image set per trial); the stream goes on from the oldest trial's draws.

**Resume in any pack.** A member whose config has `resume=True` continues from its
checkpoint (a solo run's or a packed trial's: the same format) in whatever slot of whatever pack
it is given, at any epoch of the others: weights, EMA, optimizer state, schedule and counters
are its own. Its batch stream cannot always be: the pack's stream continues from the checkpoint
of the member in slot 0 of `first` when that one resumes (so a pack resumed as the same pack
repeats an uninterrupted one exactly), and every other resumed trial continues on the pack's
stream wherever it is, not on the generator its checkpoint holds. A packed trial's checkpoint is
written by fit's own `Resumable.checkpoint` from solo-shaped copies (`trainer.packed_state`), so
`fit(config.replace(resume=True))` continues it alone too.

**Fusion: grouped convolutions** (as HFTA): `build_detector(..., trials=K)` is one network with
K times the channels, every convolution in K groups and BatchNorm over K times the channels, so
each trial keeps its own statistics and nothing mixes trials; the number of kernels an iteration
launches does not grow with K (what a launch-bound GPU needs: one nano trial keeps an H200 busy
22% of the time). Of the fused forms measured (a loop over slices, `torch.func.vmap`, grouped:
`bench.packing --fusion`, docs/benchmarks.md, "Trial packing"), grouped is the fastest at K=4
and at small sizes and keeps one plain `nn.Module` (channels_last, autocast, state_dicts as
usual), so it is the pack's form. On a CPU no fusion beats separate runs (the CPU is compute
bound and fusion only saves overhead): packing is for the GPU.

**Equivalence.** A pack of one is its solo run to the bit (float32, CPU). In a pack of K > 1 the
forward is the solo one to the bit, but the grouped convolutions' and BatchNorms' backward sum
in another order (weight gradients off by ~1e-5 of their scale in float32, ~1e-14 in float64):
in float64 a packed trial follows its solo loss curve to 1e-9 over 20 iterations (measured:
exactly), in float32 training amplifies the rounding to a few 1e-2 by iteration 20
(tests/trainer/test_packed.py). A trial that trains hard amplifies even float64's rounding (SGD
at lr 0.01 with loss weights 0.5 / 1.0: 1e-2 by iteration 20, as for a solo run whose initial
weights are scaled by 1 + 1e-15).
"""

from __future__ import annotations

import contextlib
import copy
import logging
import time
import warnings
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import Tensor

from trainer.augment import AugmentSpec
from trainer.config import PACK_SHARED_FIELDS, PackMember, TrainConfig, evaluates_after
from trainer.data import DetectionData, iterate_batches
from trainer.evaluate import coco_maps, evaluate_slots, ground_truth
from trainer.fit import (
    Report,
    Resumable,
    RunParts,
    augment_spec,
    autocast_for,
    finish_run,
    prepare_run,
    record_evaluation,
)
from trainer.iteration_log import (
    LogInterval,
    StepClock,
    TrainState,
    loss_values,
    record_iteration,
)
from trainer.loss import DetectionLoss, LossWeights
from trainer.mean_ap import GroundTruth
from trainer.model import Detector, build_detector, load_weights
from trainer.optim import DECAY_GROUP, SCHEDULER_BEFORE_STEP_WARNING, parameter_groups
from trainer.packed_optim import PackedOptimizer, TrialSchedule, apply_schedules
from trainer.packed_state import (
    PackedEMA,
    load_trial_state,
    packed_names,
    restore_trial,
    solo_detector,
    solo_ema,
    solo_optimizer,
    trial_state_dict,
    zero_trial,
)
from trainer.records import EvalLine, FitResult, NonFiniteLossError
from trainer.run_dir import RunDir

logger = logging.getLogger("trainer")


def check_packable(configs: Sequence[TrainConfig]) -> None:
    """A `ValueError` naming the first field that differs between trials, or a shared `out`."""
    if not configs:
        raise ValueError("a pack needs at least one trial, but got configs=[]")
    lead = configs[0]
    for i, config in enumerate(configs[1:], start=1):
        name = _differing(lead, config)
        if name is not None:
            raise ValueError(
                f"packed trials must share {name}, but trial 0 has {name}="
                f"{getattr(lead, name)!r} and trial {i} has {name}={getattr(config, name)!r}"
            )
    outs = [str(Path(c.out).resolve()) for c in configs]
    if len(set(outs)) != len(outs):
        repeated = next(o for o in outs if outs.count(o) > 1)
        raise ValueError(f"each packed trial needs its own out, but got out={repeated!r} twice")


def _differing(lead: TrainConfig, config: TrainConfig) -> str | None:
    return next((n for n in PACK_SHARED_FIELDS if getattr(lead, n) != getattr(config, n)), None)


def fit_pack(
    first: Sequence[PackMember],
    *,
    refill: Callable[[], PackMember | None] | None = None,
    done: Callable[[PackMember, FitResult | Exception], None] | None = None,
    data: DetectionData | None = None,
    compact: bool = True,
) -> list[FitResult | Exception]:
    """Train `first` as one pack of `len(first)` slots, refilling each slot whose trial ended
    with `refill()` at the epoch boundary and, with `compact`, shrinking the fused model to the
    live trials once a slot stays empty; see the module docstring.

    `done(member, outcome)` is called for each trial as it ends, before its slot is refilled;
    the outcomes are also returned, in the order the trials ended.
    """
    check_packable([m.config for m in first])
    lead = first[0].config
    device, data, _ = prepare_run(lead, data)  # what the trials share: one data set, one device
    pack = _Pack(lead, data, device, slots=len(first))
    for k, member in enumerate(first):
        pack.load(k, member, stream=k == 0)

    outcomes: list[FitResult | Exception] = []
    while True:
        for k in range(len(pack.slots)):
            while (trial := pack.slots[k]) is not None and trial.ended:
                outcome = pack.finish(trial)
                outcomes.append(outcome)
                if done is not None:
                    done(trial.member, outcome)
                joining = refill() if refill is not None else None
                if joining is not None:
                    pack.load(k, joining)
        if not pack.live():
            return outcomes
        if compact and len(pack.live()) < len(pack.slots):
            pack = pack.compacted()
        pack.train_epoch()
        due = []
        for trial in pack.live():
            trial.state.epoch += 1
            epoch, config = trial.state.epoch, trial.config
            if evaluates_after(epoch, config.epochs, config.eval_interval):
                due.append(trial)
        pack.evaluate(due)


def fit_packed(
    configs: Sequence[TrainConfig],
    reports: Sequence[Report | None] | None = None,
    data: DetectionData | None = None,
) -> list[FitResult | Exception]:
    """Train the trials of `configs` as one pack that is never refilled; per trial, in the
    order of `configs`, its `FitResult` or the exception that stopped it.

    `reports[k]`, when given, is trial k's `report(step, metrics)` (`PackMember.report`).
    """
    reports = list(reports) if reports is not None else [None] * len(configs)
    if len(reports) != len(configs):
        raise ValueError(f"one report per trial, but got {len(reports)} for {len(configs)}")
    members = [PackMember(c, r) for c, r in zip(configs, reports, strict=True)]
    outcomes: dict[int, FitResult | Exception] = {}

    def record(member: PackMember, outcome: FitResult | Exception) -> None:
        outcomes[id(member)] = outcome

    fit_pack(members, done=record, data=data)
    return [outcomes[id(m)] for m in members]


@dataclass
class _Trial:
    """The trial in one slot: its member, config, run directory, schedule and progress."""

    member: PackMember
    slot: int
    joined: int  # the order trials entered the pack: the oldest one's augmentation leads
    config: TrainConfig
    run: RunDir
    schedule: TrialSchedule
    loss_fn: DetectionLoss
    state: TrainState = field(default_factory=TrainState)
    interval: LogInterval = field(default_factory=LogInterval)
    epoch_end: int = 0  # its iterations at the end of the epoch being trained
    last_eval: EvalLine | None = None
    error: Exception | None = None

    @property
    def alive(self) -> bool:
        return self.error is None

    @property
    def ended(self) -> bool:
        return self.error is not None or self.state.epoch >= self.config.epochs


class _Pack:
    """The fused model of `slots` trials with its EMA, optimizer and batch stream, and the
    trial in each slot (None: empty)."""

    def __init__(
        self, lead: TrainConfig, data: DetectionData, device: torch.device, slots: int
    ) -> None:
        self.lead, self.data, self.device = lead, data, device
        self.iters_per_epoch = len(data.train) // lead.batch
        nc = len(data.names)
        self.model = build_detector(lead.model, nc=nc, trials=slots)
        self.packed = packed_names(self.model, build_detector(lead.model, nc=nc))
        for k in range(slots):
            zero_trial(self.model, k, self.packed)
        self.model.to(device=device, memory_format=torch.channels_last)  # type: ignore[call-overload]
        self.ema = PackedEMA(self.model)
        groups = [g["params"] for g in parameter_groups(self.model, 0.0)]
        kinds, nesterov = [lead.optimizer] * slots, [lead.nesterov] * slots
        self.optimizer = PackedOptimizer(groups, kinds, nesterov)  # type: ignore[arg-type]
        self.generator = torch.Generator().manual_seed(lead.seed)
        self.clock = StepClock(device)
        self.slots: list[_Trial | None] = [None] * slots
        self.joined = 0
        self._truth: GroundTruth | None = None

    def live(self) -> list[_Trial]:
        return [t for t in self.slots if t is not None and t.alive]

    def load(self, k: int, member: PackMember, stream: bool = False) -> None:
        """Start `member` in empty slot k: its initial weights or its checkpoint (whose batch
        stream the pack takes when `stream`)."""
        config = member.config
        name = _differing(self.lead, config)
        if name is not None:
            raise ValueError(
                f"packed trials must share {name}, but the pack has {name}="
                f"{getattr(self.lead, name)!r} and {config.out!r} has {name}="
                f"{getattr(config, name)!r}"
            )
        out = Path(config.out).resolve()
        if any(t is not None and Path(t.config.out).resolve() == out for t in self.slots):
            raise ValueError(f"each packed trial needs its own out, but {config.out!r} is packed")
        total = self.iters_per_epoch * config.epochs
        trial = _Trial(
            member=member,
            slot=k,
            joined=self.joined,
            config=config,
            run=RunDir(Path(config.out)),
            schedule=TrialSchedule(config, total, self.iters_per_epoch),
            loss_fn=DetectionLoss(self.model, LossWeights.of(config)),
        )
        self.joined += 1
        initial = _initial_detector(config, self.model.nc).state_dict()
        load_trial_state(self.model, k, initial, self.packed)
        self.ema.reset(k, config, initial, self.packed)
        self.optimizer.reset_trial(k, config.optimizer, config.nesterov)
        checkpoint = trial.run.load_checkpoint() if config.resume else None
        if checkpoint is not None:
            generator_state = restore_trial(
                checkpoint, self.model, self.ema, self.optimizer, self.packed, k, config,
                trial.schedule, trial.state,
            )  # fmt: skip
            if stream:
                self.generator.set_state(generator_state)
            logger.info(
                f"trial {config.out}: resumed from {trial.run.checkpoint} at epoch "
                f"{trial.state.epoch} / iter {trial.state.iteration} in slot {k}"
            )
        trial.run.write_config(config)
        trial.run.start_metrics(keep_through_iter=trial.state.iteration)
        self.slots[k] = trial

    def compacted(self) -> _Pack:
        """A pack of only this one's live trials (between epochs, none ended), in their slot
        order: the same weights, EMA, BatchNorm statistics, optimizer state, schedules and batch
        stream in a fused model without the empty slots."""
        live = self.live()
        smaller = _Pack(self.lead, self.data, self.device, slots=len(live))
        smaller.generator.set_state(self.generator.get_state())
        smaller.joined = self.joined
        smaller._truth = self._truth
        weights, averages = self.model.state_dict(), self.ema.module.state_dict()
        for j, trial in enumerate(live):
            k, config = trial.slot, trial.config
            state = trial_state_dict(weights, k, self.model.trials, self.packed)
            load_trial_state(smaller.model, j, state, smaller.packed)
            average = trial_state_dict(averages, k, self.model.trials, self.packed)
            smaller.ema.reset(j, config, average, smaller.packed)
            smaller.ema.updates[j] = self.ema.updates[k]
            smaller.optimizer.reset_trial(j, config.optimizer, config.nesterov)
            smaller.optimizer.load_trial_state(j, self.optimizer.trial_state(k))
            trial.slot = j
            smaller.slots[j] = trial
        logger.info(
            f"pack: {len(live)} of {len(self.slots)} slots still training, the fused model "
            f"shrinks to {len(live)}"
        )
        return smaller

    def finish(self, trial: _Trial) -> FitResult | Exception:
        """The outcome of an ended trial (its summary written when it succeeded); its slot is
        emptied."""
        outcome: FitResult | Exception
        if trial.error is not None:
            outcome = trial.error
        else:
            try:
                source = self.model if trial.config.ema_decay == 0 else self.ema.module
                final = solo_detector(source, trial.slot, self.packed, trial.config.model)
                outcome = finish_run(final, self._parts(trial), trial.last_eval)
            except Exception as exc:  # its own failure, as an evaluation's
                outcome = exc
        self._zero(trial.slot)
        self.ema.reset(trial.slot, None)
        self.slots[trial.slot] = None
        return outcome

    def _parts(self, trial: _Trial) -> RunParts:
        return RunParts(trial.loss_fn, self.data, trial.config, trial.state, self.device, trial.run)

    def fail(self, trial: _Trial, exc: Exception) -> None:
        logger.warning(f"trial {trial.slot} ({trial.config.out}) stopped: {exc}")
        trial.error = exc
        self._zero(trial.slot)

    def _zero(self, k: int) -> None:
        """Zero slot k in the model and in its EMA: a failed trial's EMA may hold the NaNs its
        weights had, and evaluations run the EMA's fused model."""
        zero_trial(self.model, k, self.packed)
        zero_trial(self.ema.module, k, self.packed)

    def evaluate(self, trials: list[_Trial]) -> None:
        """Evaluate, checkpoint and report `trials` as `fit` does, in one pass of the fused
        model over the validation split and one mAP for all of them (`evaluate_slots`,
        `coco_maps`); each trial's failure is its own. An error of the shared pass (out of
        memory) is no trial's own and propagates."""
        if not trials:
            return
        start = time.perf_counter()
        results = evaluate_slots(
            self._evaluated_model(trials), {t.slot: t.loss_fn for t in trials}, self.data.val,
            self.lead.batch, self.device, autocast_for(self.device, self.lead), channels_last=True,
        )  # fmt: skip
        maps = coco_maps(
            self.data.val, [results[t.slot].detections for t in trials], len(self.data.names),
            self.truth(),
        )  # fmt: skip
        share = (time.perf_counter() - start) / len(trials)
        for trial, trial_maps in zip(trials, maps, strict=True):
            k, config = trial.slot, trial.config
            try:
                trial.last_eval, eval_report = record_evaluation(
                    results[k], trial_maps, share, self._parts(trial)
                )
                raw = solo_detector(self.model, k, self.packed, config.model)
                averaged = solo_ema(raw, self.ema, k, self.packed)
                solo_opt = solo_optimizer(raw, config, trial.schedule, self.optimizer, k)
                solo = Resumable(
                    raw, averaged, solo_opt, trial.schedule.scheduler, self.generator, trial.state
                )
                trial.run.save_checkpoint(solo.checkpoint())
                if trial.member.report is not None:
                    trial.member.report(trial.state.epoch, eval_report)
            except Exception as exc:  # a failed or stopped trial; the pack goes on
                self.fail(trial, exc)

    def _evaluated_model(self, trials: list[_Trial]) -> Detector:
        """The fused model whose slot of each of `trials` holds the weights that trial evaluates
        with (fit's `final_weights`): its EMA's, or its own when it keeps none."""
        own = [t for t in trials if t.config.ema_decay == 0]
        if not own:
            return self.ema.module
        if len(own) == len(trials):
            return self.model
        mixed = copy.deepcopy(self.ema.module)
        weights = self.model.state_dict()
        for trial in own:
            state = trial_state_dict(weights, trial.slot, self.model.trials, self.packed)
            load_trial_state(mixed, trial.slot, state, self.packed)
        return mixed

    def truth(self) -> GroundTruth:
        """The validation split's boxes for `coco_maps`, made once per pack."""
        if self._truth is None:
            self._truth = ground_truth(self.data.val, len(self.data.names), self.device)
        return self._truth

    def train_epoch(self) -> None:
        """One pass over the training split for every live trial, as fit's `train_one_epoch`.

        Each trial steps when its own nominal batch and warmup say (`TrialSchedule.steps_now`)
        and its epoch's last batch always steps; a trial whose loss turns non-finite fails here
        and the others go on.
        """
        self.model.train()
        for trial in self.live():
            trial.epoch_end = trial.state.iteration + self.iters_per_epoch
        streams = self._streams()
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", SCHEDULER_BEFORE_STEP_WARNING)
            for batches in zip(*(s for _, s in streams), strict=True):
                if not self.live():
                    return
                wanted = [trials for trials, _ in streams]
                self._train_batch([(t, b[0], b[1]) for t, b in zip(wanted, batches, strict=True)])
        for trial in self.live():  # the epoch's losses and times, before it is evaluated
            with self._alone(trial):
                trial.interval.settle(trial.config, trial.state)

    def _streams(self) -> list[tuple[list[_Trial], Iterator[tuple[Tensor, Tensor, Tensor]]]]:
        """This epoch's batches per augmentation the live trials want: the oldest trial's from
        the pack's stream, any other from a copy of the stream's state (module docstring)."""
        wanted: list[tuple[AugmentSpec | None, list[_Trial]]] = []
        for trial in sorted(self.live(), key=lambda t: t.joined):
            spec = augment_spec(trial.config, trial.state.epoch)
            group = next((g for s, g in wanted if s == spec), None)
            if group is None:
                wanted.append((spec, [trial]))
            else:
                group.append(trial)
        start = self.generator.get_state()
        streams = []
        for i, (spec, trials) in enumerate(wanted):
            generator = self.generator
            if i:
                generator = torch.Generator()
                generator.set_state(start)
            batches = iterate_batches(
                self.data.train, self.lead.batch, shuffle=True, augment=spec or False,
                generator=generator,
            )  # fmt: skip
            streams.append((trials, batches))
        return streams

    def _train_batch(self, groups: list[tuple[list[_Trial], Tensor, Tensor]]) -> None:
        started = self.clock.start()
        live = sorted((t for trials, _, _ in groups for t in trials if t.alive), key=_slot)
        for trial in live:
            trial.schedule.begin(trial.state.iteration)
        apply_schedules(
            self.optimizer, [t.schedule if t is not None and t.alive else None for t in self.slots]
        )
        lrs = [t.schedule.lrs()[DECAY_GROUP] for t in live]
        images = self._images(groups)
        targets = {
            t.slot: batch_targets  # assigned on the host (trainer/loss.py)
            for trials, _, batch_targets in groups
            for t in trials
        }
        with autocast_for(self.device, self.lead)():
            outputs = self.model(images)
        if self.model.trials == 1:  # a pack of one is the plain detector: no trial dim
            outputs = [o.unsqueeze(0) for o in outputs]
        parts = [t.loss_fn([o[t.slot] for o in outputs], targets[t.slot]) for t in live]
        (torch.stack([p.total for p in parts]).sum() * images.shape[0]).backward()
        active = [False] * len(self.slots)
        for trial in live:
            state = trial.state
            if trial.schedule.steps_now(state.iteration, state.last_step, trial.epoch_end):
                active[trial.slot] = True
                state.last_step = state.iteration + 1
        mask = torch.tensor(active)
        self.optimizer.step(mask)
        self.optimizer.zero_grad(mask)
        if any(active):
            self.ema.update(self.model, active, self.packed)
        for trial in live:
            trial.schedule.end()
        # each trial's latency is its share of the pack's iteration
        share = self.clock.stop(started).shared(len(live))
        for trial, part, lr in zip(live, parts, lrs, strict=True):
            with self._alone(trial):
                record_iteration(
                    loss_values(part), share, lr, trial.config, trial.state, trial.interval,
                    trial.run,
                )  # fmt: skip

    @contextlib.contextmanager
    def _alone(self, trial: _Trial) -> Iterator[None]:
        """Where a trial's losses are read on the host: a non-finite one fails it alone."""
        try:
            yield
        except NonFiniteLossError as exc:
            self.fail(trial, exc)

    def _images(self, groups: list[tuple[list[_Trial], Tensor, Tensor]]) -> Tensor:
        """The model's input: the batch, or, when trials want different augmentations, one
        image set per slot (`[B, 3K, S, S]`; an empty slot gets the first set)."""
        if len(groups) == 1:
            images = groups[0][1].to(self.device, non_blocking=True)
        else:
            sets = [images.to(self.device, non_blocking=True) for _, images, _ in groups]
            per_slot = [sets[0]] * len(self.slots)
            for (trials, _, _), images in zip(groups, sets, strict=True):
                for trial in trials:
                    per_slot[trial.slot] = images
            images = torch.cat(per_slot, 1)
        return images.contiguous(memory_format=torch.channels_last)


def _slot(trial: _Trial) -> int:
    return trial.slot


def _initial_detector(config: TrainConfig, nc: int) -> Detector:
    """Trial's starting weights, exactly as its solo `fit` builds them (seed, then weights)."""
    torch.manual_seed(config.seed)
    model = build_detector(config.model, nc=nc)
    if config.weights:
        load_weights(model, config.weights)
    return model
