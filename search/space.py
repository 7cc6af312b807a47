"""The search space of a study: which `TrainConfig` fields Optuna draws, and over what ranges.

A space is declared in the `[space]` table of a study file, one entry per parameter:

    lcls = { low = 0.02, high = 2.0, log = true }
    optimizer = { choices = ["SGD", "Adam", "AdamW"] }

Parameters left out of the table keep their `TrainConfig` default. The `MultiStepLR` milestones
are drawn as two numbers that can never come out of order: `milestone1`, the first milestone as a
fraction of the run, and `milestone2_rest`, the second milestone as a fraction of what remains
after the first (`m2 = m1 + milestone2_rest * (1 - m1)`). A fraction of 1.0 falls at the very end
of the run, i.e. no decay, which is how the hand-tuned 10000/20000/30000-iteration milestones
behave in a short run.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import optuna

from trainer.config import OPTIMIZERS, TrainConfig

# Parameters drawn as floats that map one-to-one onto a TrainConfig field.
FLOAT_FIELDS: tuple[str, ...] = ("lcls", "lobj", "lbox", "lr", "momentum", "weight_decay", "gamma")
MILESTONE1 = "milestone1"
MILESTONE2_REST = "milestone2_rest"
CHOICE_FIELDS: dict[str, tuple[str, ...]] = {"optimizer": OPTIMIZERS}
PARAM_NAMES: tuple[str, ...] = (
    "lcls",
    "lobj",
    "lbox",
    "optimizer",
    "lr",
    "momentum",
    "weight_decay",
    MILESTONE1,
    MILESTONE2_REST,
    "gamma",
)


class SpaceError(ValueError):
    """A mistake in a `[space]` table or a baseline, naming the key and the value."""


@dataclass(frozen=True)
class FloatParam:
    """A float drawn uniformly (or log-uniformly) from [low, high]."""

    name: str
    low: float
    high: float
    log: bool = False

    def suggest(self, trial: optuna.Trial) -> float:
        return trial.suggest_float(self.name, self.low, self.high, log=self.log)

    def contains(self, value: Any) -> bool:
        is_number = isinstance(value, int | float) and not isinstance(value, bool)
        return is_number and self.low <= value <= self.high

    def describe(self) -> str:
        return f"[{self.low:g}, {self.high:g}]{' log' if self.log else ''}"


@dataclass(frozen=True)
class ChoiceParam:
    """One of a fixed list of strings."""

    name: str
    choices: tuple[str, ...]

    def suggest(self, trial: optuna.Trial) -> str:
        return trial.suggest_categorical(self.name, list(self.choices))

    def contains(self, value: Any) -> bool:
        return value in self.choices

    def describe(self) -> str:
        return "{" + ", ".join(self.choices) + "}"


Param = FloatParam | ChoiceParam


@dataclass(frozen=True)
class SearchSpace:
    """The parameters a study draws, in declaration order."""

    params: tuple[Param, ...]

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(p.name for p in self.params)

    def get(self, name: str) -> Param | None:
        return next((p for p in self.params if p.name == name), None)

    def sample(self, trial: optuna.Trial) -> dict[str, Any]:
        """Draw every parameter (or take the enqueued value, for a baseline trial)."""
        return {p.name: p.suggest(trial) for p in self.params}

    def to_overrides(self, params: Mapping[str, Any]) -> dict[str, Any]:
        """`TrainConfig` field values for drawn `params` (milestones assembled from fractions)."""
        overrides = {k: v for k, v in params.items() if k in FLOAT_FIELDS or k in CHOICE_FIELDS}
        if MILESTONE1 in params:
            first = float(params[MILESTONE1])
            if MILESTONE2_REST in params:
                second = first + float(params[MILESTONE2_REST]) * (1.0 - first)
                overrides["milestones"] = (first, min(1.0, max(first, second)))
            else:
                overrides["milestones"] = (first,)
        return overrides

    def baseline_params(self, values: Mapping[str, Any], where: str) -> dict[str, Any]:
        """Turn a baseline's values (milestones as fractions of the run) into this space's params.

        Every parameter of the space must be given, nothing else, and each value must lie inside
        the space (so that the baseline is a point the search could have drawn).
        """
        given = dict(values)
        params: dict[str, Any] = {}
        if "milestones" in given:
            params.update(self._milestone_params(given.pop("milestones"), where))
        for key, value in given.items():
            if key not in self.names or key in (MILESTONE1, MILESTONE2_REST):
                known = ", ".join(self._baseline_keys())
                raise SpaceError(
                    f"{where}: {key} is not a parameter of [space] (give: {known}), "
                    f"but got {key}={value!r}"
                )
            params[key] = value
        for param in self.params:
            if param.name not in params:
                shown = "milestones" if param.name in (MILESTONE1, MILESTONE2_REST) else param.name
                raise SpaceError(f"{where}: missing {shown} (every [space] parameter must be set)")
            value = params[param.name]
            if not param.contains(value):
                raise SpaceError(
                    f"{where}: {param.name}={value!r} is outside the space {param.describe()}"
                )
        return {p.name: params[p.name] for p in self.params}

    def params_of(self, config: TrainConfig, where: str) -> dict[str, Any]:
        """This space's params for the values `config` trains with (its milestones as fractions;
        none: at the end of the run). A `SpaceError` when one lies outside the space."""
        values: dict[str, Any] = {
            k: getattr(config, k) for k in self._baseline_keys() if k != "milestones"
        }
        if MILESTONE1 in self.names:
            want = 2 if MILESTONE2_REST in self.names else 1
            values["milestones"] = list(config.milestones) or [1.0] * want
        return self.baseline_params(values, where)

    def _baseline_keys(self) -> list[str]:
        keys = [n for n in self.names if n not in (MILESTONE1, MILESTONE2_REST)]
        return [*keys, "milestones"] if MILESTONE1 in self.names else keys

    def _milestone_params(self, value: Any, where: str) -> dict[str, float]:
        if MILESTONE1 not in self.names:
            raise SpaceError(
                f"{where}: milestones is not a parameter of [space], but got milestones={value!r}"
            )
        want = 2 if MILESTONE2_REST in self.names else 1
        ok = (
            isinstance(value, list)
            and len(value) == want
            and all(isinstance(v, int | float) and not isinstance(v, bool) for v in value)
            and all(0 < v <= 1 for v in value)
            and value == sorted(value)
        )
        if not ok:
            raise SpaceError(
                f"{where}: milestones must be {want} increasing fractions of the run in (0, 1], "
                f"but got milestones={value!r}"
            )
        first = float(value[0])
        params = {MILESTONE1: first}
        if want == 2:
            rest = self.get(MILESTONE2_REST)
            assert isinstance(rest, FloatParam)
            # with the first milestone at the end of the run the second one is there too,
            # whatever the fraction; take the range's low end so that it is always inside
            frac = (float(value[1]) - first) / (1.0 - first) if first < 1.0 else rest.low
            params[MILESTONE2_REST] = frac
        return params


def parse_space(table: Any, where: str = "space") -> SearchSpace:
    """Validate a `[space]` table into a `SearchSpace`; every mistake names its key and value."""
    if not isinstance(table, dict) or not table:
        raise SpaceError(
            f"[{where}] must be a table with at least one parameter, but got {table!r}"
        )
    params: list[Param] = []
    for name, spec in table.items():
        key = f"{where}.{name}"
        if name not in PARAM_NAMES:
            raise SpaceError(
                f"unknown parameter {key} (known: {', '.join(PARAM_NAMES)}), "
                f"but got {name}={spec!r}"
            )
        if not isinstance(spec, dict):
            raise SpaceError(
                f"{key} must be a table like {{ low = .., high = .. }}, but got {spec!r}"
            )
        params.append(
            _parse_choice(key, name, spec)
            if name in CHOICE_FIELDS
            else _parse_float(key, name, spec)
        )
    names = [p.name for p in params]
    if MILESTONE2_REST in names and MILESTONE1 not in names:
        raise SpaceError(f"{where}.{MILESTONE2_REST} needs {where}.{MILESTONE1} as well")
    return SearchSpace(tuple(params))


def _parse_choice(key: str, name: str, spec: dict[str, Any]) -> ChoiceParam:
    unknown = sorted(set(spec) - {"choices"})
    if unknown:
        raise SpaceError(f"unknown key {key}.{unknown[0]} (known: choices), but got {spec!r}")
    choices = spec.get("choices")
    if not isinstance(choices, list) or not choices:
        raise SpaceError(f"{key}.choices must be a non-empty list, but got choices={choices!r}")
    allowed = CHOICE_FIELDS[name]
    for choice in choices:
        if choice not in allowed:
            raise SpaceError(
                f"{key}.choices: unknown {name} {choice!r} (known: {', '.join(allowed)}), "
                f"but got choices={choices!r}"
            )
    if len(set(choices)) != len(choices):
        raise SpaceError(f"{key}.choices has duplicates, but got choices={choices!r}")
    return ChoiceParam(name, tuple(choices))


def _parse_float(key: str, name: str, spec: dict[str, Any]) -> FloatParam:
    unknown = sorted(set(spec) - {"low", "high", "log"})
    if unknown:
        raise SpaceError(
            f"unknown key {key}.{unknown[0]} (known: low, high, log), but got {spec!r}"
        )
    for bound in ("low", "high"):
        value = spec.get(bound)
        if (
            not isinstance(value, int | float)
            or isinstance(value, bool)
            or not math.isfinite(value)
        ):
            raise SpaceError(f"{key}.{bound} must be a finite number, but got {bound}={value!r}")
    low, high = float(spec["low"]), float(spec["high"])
    log = spec.get("log", False)
    if not isinstance(log, bool):
        raise SpaceError(f"{key}.log must be true or false, but got log={log!r}")
    if low > high:
        raise SpaceError(f"{key}: low must be <= high, but got low={low:g}, high={high:g}")
    if log and low <= 0:
        raise SpaceError(f"{key}: a log range needs low > 0, but got low={low:g}")
    if name == MILESTONE1 and not (low > 0 and high <= 1):
        raise SpaceError(
            f"{key}: fractions of the run lie in (0, 1], but got low={low:g}, high={high:g}"
        )
    if name == MILESTONE2_REST and not (low >= 0 and high <= 1):
        raise SpaceError(
            f"{key}: fractions of the rest lie in [0, 1], but got low={low:g}, high={high:g}"
        )
    if name in FLOAT_FIELDS:
        for bound, value in (("low", low), ("high", high)):
            try:
                TrainConfig.from_dict({name: value})
            except ValueError as exc:
                raise SpaceError(f"{key}.{bound} is not a valid {name}: {exc}") from None
    return FloatParam(name, low, high, log)
