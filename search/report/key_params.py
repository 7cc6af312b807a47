"""Which of a study's parameters the report singles out, read from its trainer's registry.

The loss weights (the contour of two of them, the legend) are the trainer's parameters in the
group "loss weight" (`trainer.params.Param.group`): `lbox`, `lobj`, `lcls` for tune's detector,
the adapter's own for another trainer (Ultralytics: `box`, `cls`, `dfl`). The legend adds the
optimizer and the initial learning rate, found by their hyp-file keys (`optimizer`, `lr0`), the
names the field gives them whatever a trainer calls them. `contour_params` picks the two loss
weights Optuna's contour view plots.

The registry comes from the study table launch stored (`trial_record.read_study_spec`). A study
tune did not create has none, and a trainer whose module does not import here (an adapter of a
newer tune) gives none: then tune's own names, when the trials have them, else every number the
trials drew. Nothing here imports the trainers' heavy packages (`search.trainers` builds them
without).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from optuna.trial import FrozenTrial, TrialState

from search.bookkeeping import trial_record
from search.trainers import DEFAULT_TRAINER, make_trainer
from trainer.params import LOSS_WEIGHT, ParamRegistry

LEGEND_HYP_KEYS: tuple[str, ...] = ("optimizer", "lr0")


@dataclass(frozen=True)
class KeyParams:
    """The parameters the report names: `loss_weights` in the registry's order, `legend` the
    loss weights and then the optimizer and learning rate (those a trial has are shown)."""

    loss_weights: tuple[str, ...]
    legend: tuple[str, ...]


def study_registry(spec: Mapping[str, Any] | None) -> ParamRegistry | None:
    """The parameter registry of the trainer the stored study table names; None when there is no
    table or its trainer cannot be built here."""
    trial = spec.get("trial", {}) if spec is not None else None
    if not isinstance(trial, Mapping):
        return None
    name = trial.get("trainer", DEFAULT_TRAINER)
    options = trial.get(name, {}) if isinstance(name, str) else {}
    return _registry(name, options if isinstance(options, Mapping) else {})


def _registry(name: Any, options: Mapping[str, Any]) -> ParamRegistry | None:
    try:
        return make_trainer(name, options).params
    except Exception:  # a trainer that can't be built here must not cost the report
        return None


def _of_registry(registry: ParamRegistry) -> KeyParams:
    weights = registry.in_group(LOSS_WEIGHT)
    by_hyp = registry.by_hyp_key()
    extras = tuple(by_hyp[k] for k in LEGEND_HYP_KEYS if k in by_hyp)
    return KeyParams(weights, (*weights, *(n for n in extras if n not in weights)))


def _drawn(trial: FrozenTrial) -> Mapping[str, Any]:
    if trial.params:
        return trial.params
    config = trial.user_attrs.get(trial_record.CONFIG)  # a baseline enqueued with fixed values
    return config if isinstance(config, Mapping) else {}


def key_params(spec: Mapping[str, Any] | None, trials: Sequence[FrozenTrial]) -> KeyParams:
    """The report's named parameters of a study: from the registry of the trainer its stored
    table names, else tune's when the trials carry them, else the numbers the trials drew."""
    registry = study_registry(spec)
    if registry is not None:
        return _of_registry(registry)
    tune = _registry(DEFAULT_TRAINER, {})
    if tune is not None:
        found = _of_registry(tune)
        if any(k in _drawn(t) for t in trials for k in found.loss_weights):
            return found
    numbers: dict[str, None] = {}  # first-seen order
    for t in trials:
        for k, v in t.params.items():
            if isinstance(v, int | float) and not isinstance(v, bool):
                numbers.setdefault(k)
    return KeyParams(tuple(numbers), tuple(numbers))


def _spread(values: set[float]) -> float:
    low, high = min(values), max(values)
    return high / low if low > 0 else math.inf  # a weight switched off spreads the widest


def contour_params(trials: Sequence[FrozenTrial], loss_weights: Sequence[str]) -> list[str] | None:
    """Two loss weights that vary across complete trials: the two the search spread widest
    (largest over smallest value), where it looked the most (in the notes: lcls and lbox)."""
    complete = [t for t in trials if t.state == TrialState.COMPLETE]
    spreads = []
    for i, k in enumerate(loss_weights):
        values = {
            float(v)
            for t in complete
            if isinstance(v := t.params.get(k), int | float) and not isinstance(v, bool)
        }
        if len(values) > 1:
            spreads.append((-_spread(values), i, k))
    return [k for _, _, k in sorted(spreads)[:2]] if len(spreads) >= 2 else None
