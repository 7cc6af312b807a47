"""The search space of a study: which of its trainer's parameters Optuna draws, over what ranges.

A space is declared in the `[space]` table of a study file, one entry per parameter:

    lcls = { low = 0.02, high = 2.0, log = true }     # a float (or an int: integer bounds)
    close_mosaic = { low = 0, high = 10, int = true }  # an int
    optimizer = { choices = ["SGD", "Adam", "AdamW"] } # some of a choice parameter's choices
    nesterov = { choices = [false, true] }             # a boolean
    lr = { around = 3 }                                # log-uniform, default / 3 .. default x 3
    momentum = {}                                      # the registry's natural range for it
    groups = ["loss weight", "optimisation"]           # every parameter of these groups that
                                                       # has a natural range (`Param.search`)

`around` is relative to the trainer's default with the study's `[trial]` pins applied: a study
searches near the recipe it would otherwise run (the field's own tuners, YOLOv5's `--evolve` and
Ultralytics' `Tuner`, mutate the defaults within a factor of a few), and any trainer's registry
can say what "near" means per parameter. Wide ranges stay possible with `low`/`high`.

Which names are valid, of what kind and inside which range comes from the trainer's parameter
registry (`trainer/params.py`, `search/trainers/`): a space is checked against the trainer the
study runs, so `lobj` asked of Ultralytics (which has no objectness loss) is one clear error
naming the valid parameters. Parameters left out keep the trainer's default or the study's pin.

A trainer with a `milestones` parameter (the `MultiStepLR` milestones as fractions of the run)
has them drawn as two numbers that can never come out of order: `milestone1`, the first milestone
as a fraction of the run, and `milestone2_rest`, the second as a fraction of what remains after
the first (`m2 = m1 + milestone2_rest * (1 - m1)`). A fraction of 1.0 falls at the very end of the
run, i.e. no decay, which is how the hand-tuned 10000/20000/30000-iteration milestones behave in
a short run.
"""

from __future__ import annotations

import contextlib
import math
import warnings
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any, ClassVar

import optuna

from trainer.params import Param, ParamRegistry, SearchRange

MILESTONES = "milestones"
MILESTONE1 = "milestone1"
MILESTONE2_REST = "milestone2_rest"
_MILESTONE_PARTS = (MILESTONE1, MILESTONE2_REST)
# the milestone fractions' natural ranges, for a trainer whose `milestones` has one: the first
# in the second half of the run (or at its end: no decay), the second anywhere after it
_NATURAL_FRACTIONS = {MILESTONE1: SearchRange(0.5, 1.0), MILESTONE2_REST: SearchRange(0.0, 1.0)}
GROUPS = "groups"


class SpaceError(ValueError):
    """A mistake in a `[space]` table or a baseline, naming the key and the value."""


@dataclass(frozen=True)
class _Range:
    """A number drawn uniformly (or log-uniformly) from [low, high]."""

    name: str
    low: float
    high: float
    log: bool = False

    _what: ClassVar[str] = ""  # what the range holds, for `describe`

    def contains(self, value: Any) -> bool:
        return self._is_kind(value) and self.low <= value <= self.high

    def _is_kind(self, value: Any) -> bool:
        return _is_number(value)

    def describe(self) -> str:
        return f"{self._what}[{self.low:g}, {self.high:g}]{' log' if self.log else ''}"


@dataclass(frozen=True)
class FloatParam(_Range):
    """A float drawn uniformly (or log-uniformly) from [low, high]."""

    def suggest(self, trial: optuna.Trial) -> float:
        with _baselines_may_lie_outside():
            return trial.suggest_float(self.name, self.low, self.high, log=self.log)


@dataclass(frozen=True)
class IntParam(_Range):
    """An integer drawn from [low, high] (log-uniformly when `log`)."""

    low: int
    high: int
    _what = "integers in "

    def suggest(self, trial: optuna.Trial) -> int:
        with _baselines_may_lie_outside():
            return trial.suggest_int(self.name, self.low, self.high, log=self.log)

    def _is_kind(self, value: Any) -> bool:
        return isinstance(value, int) and not isinstance(value, bool)


@dataclass(frozen=True)
class ChoiceParam:
    """One of a fixed list of strings or booleans."""

    name: str
    choices: tuple[str | bool, ...]

    def suggest(self, trial: optuna.Trial) -> Any:
        return trial.suggest_categorical(self.name, list(self.choices))

    def contains(self, value: Any) -> bool:
        # `True in (1, ...)` holds in Python: compare types too, so 1 is not a boolean choice
        return any(value == c and type(value) is type(c) for c in self.choices)

    def describe(self) -> str:
        return "{" + ", ".join(_toml(c) for c in self.choices) + "}"


Dimension = FloatParam | IntParam | ChoiceParam


@dataclass(frozen=True)
class SearchSpace:
    """The parameters a study draws, in declaration order."""

    params: tuple[Dimension, ...]

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(p.name for p in self.params)

    def get(self, name: str) -> Dimension | None:
        return next((p for p in self.params if p.name == name), None)

    def sample(self, trial: optuna.Trial) -> dict[str, Any]:
        """Draw every parameter (or take the enqueued value, for a baseline trial)."""
        return {p.name: p.suggest(trial) for p in self.params}

    def to_values(self, params: Mapping[str, Any]) -> dict[str, Any]:
        """The trainer's parameter values for drawn `params` (milestones assembled from their
        fractions)."""
        values = {k: v for k, v in params.items() if k not in _MILESTONE_PARTS}
        if MILESTONE1 in params:
            first = float(params[MILESTONE1])
            if MILESTONE2_REST in params:
                second = first + float(params[MILESTONE2_REST]) * (1.0 - first)
                values[MILESTONES] = (first, min(1.0, max(first, second)))
            else:
                values[MILESTONES] = (first,)
        return values

    def drawn_values(self) -> tuple[str, ...]:
        """The trainer parameters this space sets (its milestone fractions make `milestones`)."""
        return tuple(self.to_values({name: 0.5 for name in self.names}))

    def baseline_params(
        self, values: Mapping[str, Any], where: str, *, inside: bool = True
    ) -> dict[str, Any]:
        """Turn a baseline's values (milestones as fractions of the run) into this space's params.

        Every parameter of the space must be given, nothing else. With `inside`, each value must
        lie inside the space (the trainer's defaults, where the search starts); without, a number
        may lie outside its range (a hand-tuned setting far from the defaults a local space is
        centred on), but a choice must be one the space offers.
        """
        given = dict(values)
        params: dict[str, Any] = {}
        if MILESTONES in given:
            params.update(self._milestone_params(given.pop(MILESTONES), where))
        for key, value in given.items():
            if key not in self.names or key in _MILESTONE_PARTS:
                known = ", ".join(self._baseline_keys())
                raise SpaceError(
                    f"{where}: {key} is not a parameter of [space] (give: {known}), "
                    f"but got {key}={value!r}"
                )
            params[key] = value
        for param in self.params:
            if param.name not in params:
                shown = MILESTONES if param.name in _MILESTONE_PARTS else param.name
                raise SpaceError(f"{where}: missing {shown} (every [space] parameter must be set)")
            value = params[param.name]
            outside_ok = not inside and _is_number(value) and not isinstance(param, ChoiceParam)
            if isinstance(param, IntParam) and not isinstance(value, int):
                outside_ok = False
            if not param.contains(value) and not outside_ok:
                raise SpaceError(
                    f"{where}: {param.name}={value!r} is outside the space {param.describe()}"
                )
        return {p.name: params[p.name] for p in self.params}

    def params_of(self, values: Mapping[str, Any], where: str) -> dict[str, Any]:
        """This space's params for the trainer `values` (milestones as fractions; none: at the
        end of the run). A `SpaceError` when one lies outside the space."""
        given: dict[str, Any] = {k: values[k] for k in self._baseline_keys() if k != MILESTONES}
        if MILESTONE1 in self.names:
            want = 2 if MILESTONE2_REST in self.names else 1
            given[MILESTONES] = [float(m) for m in values.get(MILESTONES) or ()] or [1.0] * want
        return self.baseline_params(given, where)

    def _baseline_keys(self) -> list[str]:
        keys = [n for n in self.names if n not in _MILESTONE_PARTS]
        return [*keys, MILESTONES] if MILESTONE1 in self.names else keys

    def _milestone_params(self, value: Any, where: str) -> dict[str, float]:
        if MILESTONE1 not in self.names:
            raise SpaceError(
                f"{where}: milestones is not a parameter of [space], but got milestones={value!r}"
            )
        want = 2 if MILESTONE2_REST in self.names else 1
        ok = (
            isinstance(value, list)
            and len(value) == want
            and all(_is_number(v) for v in value)
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


def params_words(params: dict[str, Any]) -> str:
    """A setting in a few words, `lr=0.0123, optimizer=AdamW`: floats to 4 significant digits."""
    return ", ".join(
        f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in params.items()
    )


def space_names(registry: ParamRegistry) -> tuple[str, ...]:
    """The names a `[space]` table may use for a trainer: its searchable parameters, and the
    milestone fractions when it has `milestones`."""
    names = tuple(p.name for p in registry if p.searchable)
    return names + _MILESTONE_PARTS if MILESTONES in registry else names


def parse_space(
    table: Any,
    registry: ParamRegistry,
    defaults: Mapping[str, Any] | None = None,
    where: str = "space",
) -> SearchSpace:
    """Validate a `[space]` table against a trainer's parameters; every mistake names its key
    and value. `defaults` are the values `around` is relative to (the registry's defaults when
    None; a study passes them with its `[trial]` pins)."""
    if not isinstance(table, dict) or not table:
        raise SpaceError(
            f"[{where}] must be a table with at least one parameter, but got {table!r}"
        )
    centre = {**registry.defaults(), **(defaults or {})}
    table = _expand_groups(table, registry, where)
    known = space_names(registry)
    params: list[Dimension] = []
    for name, spec in table.items():
        key = f"{where}.{name}"
        if name not in known:
            raise SpaceError(
                f"unknown parameter {key} for trainer {registry.trainer!r} "
                f"(valid: {', '.join(known)}), but got {name}={spec!r}"
            )
        if not isinstance(spec, dict):
            raise SpaceError(
                f"{key} must be a table like {{ low = .., high = .. }}, but got {spec!r}"
            )
        param = registry.get(name)
        if not spec:
            spec = _natural(key, name, registry)
        if name in _MILESTONE_PARTS:
            params.append(_parse_fraction(key, name, spec))
        elif param is not None and param.kind in ("choice", "bool"):
            params.append(_parse_choice(key, param, spec))
        else:
            assert param is not None
            if "around" in spec:
                spec = _around(key, param, spec, centre.get(name))
            params.append(_parse_number(key, param, spec))
    names = [p.name for p in params]
    if MILESTONE2_REST in names and MILESTONE1 not in names:
        raise SpaceError(f"{where}.{MILESTONE2_REST} needs {where}.{MILESTONE1} as well")
    return SearchSpace(tuple(params))


def _expand_groups(table: dict[str, Any], registry: ParamRegistry, where: str) -> dict[str, Any]:
    """`groups = [...]`: every parameter of those groups with a natural range, as `{}`; an entry
    of its own replaces it."""
    if GROUPS not in table:
        return table
    groups = table[GROUPS]
    known = sorted({p.group for p in registry if p.group and p.search is not None})
    if not isinstance(groups, list) or not groups or not all(g in known for g in groups):
        raise SpaceError(
            f"{where}.{GROUPS} must be a list of parameter groups of trainer "
            f"{registry.trainer!r} (known: {', '.join(known)}), but got {GROUPS}={groups!r}"
        )
    expanded: dict[str, Any] = {}
    for param in registry:
        if param.group in groups and param.search is not None:
            names = _MILESTONE_PARTS if param.name == MILESTONES else (param.name,)
            expanded.update({name: {} for name in names if param.searchable or name != MILESTONES})
    explicit = {k: v for k, v in table.items() if k != GROUPS}
    return {**{k: v for k, v in expanded.items() if k not in explicit}, **explicit}


def _natural(key: str, name: str, registry: ParamRegistry) -> dict[str, Any]:
    """The `[space]` entry of a parameter's natural range (`{}` in a study file)."""
    owner = registry.get(MILESTONES if name in _MILESTONE_PARTS else name)
    natural = owner.search if owner is not None else None
    if natural is None:
        raise SpaceError(
            f"{key}: trainer {registry.trainer!r} declares no natural search range for {name}; "
            "give { low = .., high = .. } or { around = .. }, but got {}"
        )
    if name in _MILESTONE_PARTS:
        natural = _NATURAL_FRACTIONS[name]
    assert owner is not None
    if owner.kind == "bool":
        return {"choices": [False, True]}
    if owner.kind == "choice":
        return {"choices": list(owner.choices)}
    if natural.around is not None:
        return {"around": natural.around}
    return {"low": natural.low, "high": natural.high, "log": natural.log}


def _around(key: str, param: Param, spec: dict[str, Any], default: Any) -> dict[str, Any]:
    """`{ around = F }`: log-uniform from default / F to default x F, inside the valid values."""
    unknown = sorted(set(spec) - {"around"})
    if unknown:
        raise SpaceError(
            f"unknown key {key}.{unknown[0]} (around takes no other key: it is log-uniform), "
            f"but got {spec!r}"
        )
    factor = spec["around"]
    if not _is_number(factor) or not math.isfinite(factor) or factor <= 1:
        raise SpaceError(f"{key}.around must be a factor > 1, but got around={factor!r}")
    if not _is_number(default) or default <= 0:
        raise SpaceError(
            f"{key}: around needs a default above 0 to search around, "
            f"but {param.name}'s default is {default!r}"
        )
    low, high = default / factor, default * factor
    if param.high is not None:
        high = min(high, math.nextafter(param.high, -math.inf) if param.high_open else param.high)
    if param.low is not None and param.low > 0:
        low = max(low, math.nextafter(param.low, math.inf) if param.low_open else param.low)
    if param.kind == "int":
        low, high = max(1, math.ceil(low)), max(1, math.floor(high))
    return {"low": low, "high": high, "log": True}


def _parse_choice(key: str, param: Param, spec: dict[str, Any]) -> ChoiceParam:
    unknown = sorted(set(spec) - {"choices"})
    if unknown:
        raise SpaceError(f"unknown key {key}.{unknown[0]} (known: choices), but got {spec!r}")
    choices = spec.get("choices")
    if not isinstance(choices, list) or not choices:
        raise SpaceError(f"{key}.choices must be a non-empty list, but got choices={choices!r}")
    for choice in choices:
        if param.problem(choice) is not None or choice is None:
            raise SpaceError(
                f"{key}.choices: unknown {param.name} {choice!r} (known: {param.describe()}), "
                f"but got choices={choices!r}"
            )
    if len({(type(c), c) for c in choices}) != len(choices):
        raise SpaceError(f"{key}.choices has duplicates, but got choices={choices!r}")
    return ChoiceParam(param.name, tuple(choices))


def _bounds(key: str, spec: dict[str, Any]) -> tuple[float, float, bool]:
    unknown = sorted(set(spec) - {"low", "high", "log"})
    if unknown:
        raise SpaceError(
            f"unknown key {key}.{unknown[0]} (known: low, high, log), but got {spec!r}"
        )
    for bound in ("low", "high"):
        value = spec.get(bound)
        if not _is_number(value) or not math.isfinite(float(value)):  # type: ignore[arg-type]
            raise SpaceError(f"{key}.{bound} must be a finite number, but got {bound}={value!r}")
    low, high = spec["low"], spec["high"]
    log = spec.get("log", False)
    if not isinstance(log, bool):
        raise SpaceError(f"{key}.log must be true or false, but got log={log!r}")
    if low > high:
        raise SpaceError(f"{key}: low must be <= high, but got low={low:g}, high={high:g}")
    if log and low <= 0:
        raise SpaceError(f"{key}: a log range needs low > 0, but got low={low:g}")
    return low, high, log


def _parse_number(key: str, param: Param, spec: dict[str, Any]) -> FloatParam | IntParam:
    low, high, log = _bounds(key, spec)
    for bound, value in (("low", low), ("high", high)):
        problem = param.problem(value)
        if problem is not None:
            raise SpaceError(
                f"{key}.{bound} is not a valid {param.name}: {param.name} {problem}, "
                f"but got {bound}={value!r}"
            )
    if param.kind == "int":
        return IntParam(param.name, int(low), int(high), log)
    return FloatParam(param.name, float(low), float(high), log)


def _parse_fraction(key: str, name: str, spec: dict[str, Any]) -> FloatParam:
    low, high, log = _bounds(key, spec)
    if name == MILESTONE1 and not (low > 0 and high <= 1):
        raise SpaceError(
            f"{key}: fractions of the run lie in (0, 1], but got low={low:g}, high={high:g}"
        )
    if name == MILESTONE2_REST and not (low >= 0 and high <= 1):
        raise SpaceError(
            f"{key}: fractions of the rest lie in [0, 1], but got low={low:g}, high={high:g}"
        )
    return FloatParam(name, float(low), float(high), log)


@contextlib.contextmanager
def _baselines_may_lie_outside() -> Iterator[None]:
    # an enqueued baseline outside a local space is meant (SearchSpace.baseline_params):
    # Optuna uses the fixed value and warns; the warning says nothing the study file does not
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Fixed parameter .* is out of range")
        yield


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _toml(value: Any) -> str:
    return str(value).lower() if isinstance(value, bool) else str(value)
