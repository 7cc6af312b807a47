"""The parameters a trainer accepts: one declaration each, from which everything else is derived.

A `Param` says a parameter's name, kind, valid range or choices, default, help and where it
comes from in the field's hyperparameter files. A `ParamRegistry` is one trainer's list of them.
The search space's checks (`search/study/space.py`), the study file's pins, `tune train`'s options,
`hyp.yaml` and the report's labels all read a registry, so a parameter is spelled once, where its
trainer declares it: for tune's own detector that is its `TrainConfig` field (`param(...)` in
`trainer/config.py`), for an adapter its module (`search/trainers/`).

This module knows nothing of Optuna: `trainer/` never imports the search side.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any, Literal

Kind = Literal["float", "int", "bool", "choice", "str", "floats"]
# kinds a search space can draw (`floats` is drawn through the milestone fractions, space.py)
SEARCHABLE_KINDS: tuple[str, ...] = ("float", "int", "bool", "choice")
# parameter groups (`Param.group`), shared by every trainer: the report plots the loss weights
# against each other, whatever the trainer calls them (tune's lbox, Ultralytics' box)
LOSS_WEIGHT, OPT, SCHED, AUG = "loss weight", "optimisation", "schedule", "augmentation"
_META = "tune.param"


@dataclass(frozen=True)
class SearchRange:
    """A parameter's natural search range, which a `[space]` entry `{}` takes.

    Either bounds (`low`, `high`, `log`) or `around`, a factor on both sides of the default drawn
    log-uniformly (`around=3`: default / 3 to default x 3), clipped to the parameter's valid
    values. For a choice or a boolean, no field: every choice. Field tuners keep such a table per
    key (Ultralytics' `Tuner.space`, YOLOv5's `meta` in `train.py --evolve`).
    """

    low: float | None = None
    high: float | None = None
    log: bool = False
    around: float | None = None

    def __post_init__(self) -> None:
        bounded = self.low is not None and self.high is not None
        if self.around is not None and (bounded or self.around <= 1):
            raise ValueError(f"a range around the default needs only around > 1, got {self}")
        if self.around is None and (self.low is None) != (self.high is None):
            raise ValueError(f"a search range needs both low and high, got {self}")


@dataclass(frozen=True)
class Param:
    """One parameter a trainer accepts.

    `low`/`high` bound a number (or, for `floats`, each of its numbers); `low_open`/`high_open`
    exclude the bound itself, so "momentum in [0, 1)" is `low=0, high=1, high_open=True`.
    `hyp` is its key in the hyp file `tune best --export` writes (trainer/hyp.py): YOLOv5's and
    Ultralytics' name where they have one (`box`, `lr0`), else tune's own (`milestones`).
    `group` gathers parameters for people: the report plots "loss weight" ones against each other.
    """

    name: str
    kind: Kind
    default: Any
    help: str = ""
    low: float | None = None
    high: float | None = None
    low_open: bool = False
    high_open: bool = False
    choices: tuple[str, ...] = ()
    nullable: bool = False  # None is a valid value (e.g. "not set: the trainer decides")
    hyp: str | None = None
    group: str = ""
    search: SearchRange | None = None  # its natural search range; None: give one in [space]

    @property
    def searchable(self) -> bool:
        """Whether a `[space]` entry may draw this parameter directly."""
        return self.kind in SEARCHABLE_KINDS

    def describe(self) -> str:
        """The valid values as help and errors show them: `[0, 1)`, `{SGD, Adam}`."""
        if self.kind == "choice":
            return "{" + ", ".join(self.choices) + "}"
        if self.kind == "bool":
            return "true | false"
        if self.kind == "str":
            return "a string"
        what = {"int": "integers in ", "floats": "a list of numbers in "}.get(self.kind, "")
        return what + self._interval()

    def _interval(self) -> str:
        low = "-inf" if self.low is None else f"{self.low:g}"
        high = "inf" if self.high is None else f"{self.high:g}"
        interval = f"{'(' if self.low_open or self.low is None else '['}{low}, {high}"
        return interval + (")" if self.high_open or self.high is None else "]")

    def in_range(self, number: float) -> bool:
        """Whether one number lies inside [low, high] (open ends excluded)."""
        if not math.isfinite(number):
            return False
        if self.low is not None and (number < self.low or (self.low_open and number == self.low)):
            return False
        return not (
            self.high is not None
            and (number > self.high or (self.high_open and number == self.high))
        )

    def problem(self, value: Any) -> str | None:
        """Why `value` is not valid for this parameter (None when it is)."""
        if value is None:
            return None if self.nullable else "must be set"
        if self.kind == "bool":
            return None if isinstance(value, bool) else "must be true or false"
        if self.kind == "str":
            return None if isinstance(value, str) else "must be a string"
        if self.kind == "choice":
            return None if value in self.choices else f"must be one of {self.describe()}"
        numbers = list(value) if self.kind == "floats" and isinstance(value, list | tuple) else None
        if self.kind == "floats" and numbers is None:
            return "must be a list of numbers"
        for number in numbers if numbers is not None else [value]:
            if not _is_number(number) or (self.kind == "int" and not isinstance(number, int)):
                kind = "an integer" if self.kind == "int" else "a number"
                return f"must be {kind} in {self._interval()}"
            if not self.in_range(float(number)):
                return f"must be in {self._interval()}"
        return None

    def check(self, value: Any) -> None:
        """Raise `ValueError` naming the parameter and the value when `value` is not valid."""
        problem = self.problem(value)
        if problem is not None:
            raise ValueError(f"{self.name} {problem}, but got {self.name}={value!r}")


@dataclass(frozen=True)
class ParamRegistry:
    """One trainer's parameters, in declaration order."""

    trainer: str
    params: tuple[Param, ...]

    def __post_init__(self) -> None:
        names = [p.name for p in self.params]
        twice = sorted({n for n in names if names.count(n) > 1})
        if twice:
            raise ValueError(f"trainer {self.trainer!r} declares {', '.join(twice)} twice")

    def __iter__(self) -> Iterator[Param]:
        return iter(self.params)

    def __contains__(self, name: object) -> bool:
        return any(p.name == name for p in self.params)

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(p.name for p in self.params)

    def get(self, name: str) -> Param | None:
        return next((p for p in self.params if p.name == name), None)

    def require(self, name: str, where: str = "") -> Param:
        """The parameter `name`, or a `ValueError` listing the valid names."""
        param = self.get(name)
        if param is None:
            at = f"{where}: " if where else ""
            valid = f"valid: {', '.join(self.names)}" if self.names else "it declares none"
            raise ValueError(f"{at}{name} is not a parameter of trainer {self.trainer!r} ({valid})")
        return param

    def defaults(self) -> dict[str, Any]:
        return {p.name: p.default for p in self.params}

    def check(self, values: Mapping[str, Any], where: str = "") -> None:
        """Every key must be a parameter and every value valid: a `ValueError` naming the first
        that is not."""
        at = f"{where}: " if where else ""
        for name, value in values.items():
            param = self.require(name, where)
            problem = param.problem(value)
            if problem is not None:
                raise ValueError(f"{at}{name} {problem}, but got {name}={value!r}")

    def by_hyp_key(self) -> dict[str, str]:
        """hyp-file key -> parameter name, for the parameters that have one."""
        return {p.hyp: p.name for p in self.params if p.hyp}

    def in_group(self, group: str) -> tuple[str, ...]:
        return tuple(p.name for p in self.params if p.group == group)


def param(default: Any, help: str = "", **spec: Any) -> Any:
    """A dataclass field declaring a trainer parameter (`Param` without name, kind, default:
    those come from the field). Use as `lbox: float = param(0.05, "box loss weight", low=0)`."""
    return dataclasses.field(default=default, metadata={_META: {"help": help, **spec}})


def registry_of(cls: type, trainer: str) -> ParamRegistry:
    """The registry of a dataclass whose fields are declared with `param(...)`; the kind comes
    from the field's type (`float`, `int`, `bool`, `str`, `tuple[float, ...]`; `choices` make a
    choice; `X | None` is nullable)."""
    params = []
    for f in dataclasses.fields(cls):
        if _META not in f.metadata:
            continue
        spec = dict(f.metadata[_META])
        annotation = str(f.type).replace(" ", "")
        nullable = annotation.endswith("|None")
        base = annotation.removesuffix("|None")
        kind: Kind
        if spec.get("choices"):
            kind = "choice"
            spec["choices"] = tuple(spec["choices"])
        elif base.startswith("tuple["):
            kind = "floats"
        elif base in ("float", "int", "bool", "str"):
            kind = base  # type: ignore[assignment]
        else:
            raise TypeError(f"{cls.__name__}.{f.name}: no parameter kind for type {f.type!r}")
        params.append(Param(f.name, kind, f.default, nullable=nullable, **spec))
    return ParamRegistry(trainer, tuple(params))


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)
