"""An evolutionary sampler in the style of YOLOv5's `--evolve` and Ultralytics' `Tuner`.

Those tuners start from the trainer's defaults and, for every new trial, take a parent from the
best few settings so far (weighted by fitness), mutate about half of its keys by a small step,
and clip to each key's bounds (`ultralytics/engine/tuner.py`, `Tuner._mutate`). With the few dozen
trials a detector study affords, that finds better settings near a good recipe where a model of
the whole space (TPE, GP) is still guessing. This is the same rule as an Optuna sampler, so it
reads its population from the study's storage: any number of workers on any machines share it,
and a trial's draw depends only on the seed, its number and the trials finished before it.

Each parameter is one gene in [0, 1]: its position in its range (on the log scale for a log
range). A child is

1. a parent drawn from the top `parents` settings by fitness, weights `fitness - min + 1e-6` as
   Ultralytics weighs them; a setting run on several seeds (the incumbent's races) counts once,
   with its mean. With no finished trial yet the parent is `x0`, the trainer's defaults;
2. with probability `crossover`, each gene taken from a second parent or the first at even odds;
3. each number mutated with probability `mutation` (at least one), by `N(0, sigma)`, reflected
   into [0, 1]; each choice with probability `choice_mutation`, to another of its choices.

A choice mutates rarely because switching it changes what the numbers mean: AdamW's learning
rate is far too low for SGD, and in the benchmark (docs/benchmarks.md, "How good is the search")
the draws that switched the optimizer at the numbers' rate were the ones that did not learn.
Neither YOLOv5 nor Ultralytics evolves the optimizer at all; a small rate keeps it searchable.

Only COMPLETE trials are parents: a pruned trial's value is from a shorter run and not
comparable. A parent outside the space (a hand-tuned baseline far from the defaults) is clipped
into it.
"""

from __future__ import annotations

import math
from collections.abc import Collection, Mapping, Sequence
from typing import Any

import numpy as np
import optuna
from optuna.distributions import (
    BaseDistribution,
    CategoricalDistribution,
    FloatDistribution,
    IntDistribution,
)
from optuna.search_space import IntersectionSearchSpace
from optuna.study import StudyDirection
from optuna.trial import FrozenTrial, TrialState

PARENTS = 5  # YOLOv5 takes the top 5, Ultralytics the top 9
MUTATION = 0.5  # chance that a gene mutates (Ultralytics 0.5, YOLOv5 0.8)
SIGMA = 0.2  # a mutation's spread, as a fraction of the range (both tuners: 0.2)
CROSSOVER = 0.5  # chance that a child mixes two parents
CHOICE_MUTATION = 0.1  # chance that a choice (the optimizer, say) mutates


class EvolutionSampler(optuna.samplers.BaseSampler):
    """Mutate the best settings so far, starting from `x0` (module docstring)."""

    def __init__(
        self,
        x0: Mapping[str, Any] | None = None,
        *,
        seed: int | None = None,
        parents: int = PARENTS,
        mutation: float = MUTATION,
        sigma: float = SIGMA,
        crossover: float = CROSSOVER,
        choice_mutation: float = CHOICE_MUTATION,
        choices: Collection[str] = (),
    ) -> None:
        if (
            parents < 1
            or not 0 < mutation <= 1
            or sigma <= 0
            or not 0 <= crossover <= 1
            or not 0 <= choice_mutation <= 1
        ):
            raise ValueError(
                "EvolutionSampler needs parents >= 1, 0 < mutation <= 1, sigma > 0, "
                "0 <= crossover <= 1 and 0 <= choice_mutation <= 1, but got "
                f"{parents=}, {mutation=}, {sigma=}, {crossover=}, {choice_mutation=}"
            )
        self._x0 = dict(x0 or {})
        # without a seed, one drawn now: a trial's genes stay the same across its calls
        self._seed = _fresh_seed() if seed is None else seed
        self._parents = parents
        self._mutation = mutation
        self._sigma = sigma
        self._crossover = crossover
        self._choice_mutation = choice_mutation
        # the space's categorical parameters, known before a trial's first draw: each of its
        # calls (one per parameter before the first trial ends) must agree on the mutation rates
        self._choices = frozenset(choices)
        self._space = IntersectionSearchSpace()

    def reseed_rng(self) -> None:
        self._seed = _fresh_seed()

    def infer_relative_search_space(
        self, study: optuna.Study, trial: FrozenTrial
    ) -> dict[str, BaseDistribution]:
        return self._space.calculate(study)

    def sample_relative(
        self,
        study: optuna.Study,
        trial: FrozenTrial,
        search_space: dict[str, BaseDistribution],
    ) -> dict[str, Any]:
        if not search_space:
            return {}
        return self._child(study, trial, search_space)

    def sample_independent(
        self,
        study: optuna.Study,
        trial: FrozenTrial,
        param_name: str,
        param_distribution: BaseDistribution,
    ) -> Any:
        # before any trial finished (no relative space yet) every parameter comes here: the
        # parent is x0, the same for each call, so the child is the same as drawn jointly
        return self._child(study, trial, {param_name: param_distribution})[param_name]

    def _child(
        self,
        study: optuna.Study,
        trial: FrozenTrial,
        space: Mapping[str, BaseDistribution],
    ) -> dict[str, Any]:
        names = sorted(set(space) | set(self._x0))  # the same order in every call of a trial
        rng = np.random.default_rng([self._seed, trial.number])
        pool = _ranked_settings(study, space, self._parents)
        if pool:
            weights = _weights([fitness for fitness, _ in pool], study.direction)
            first = pool[rng.choice(len(pool), p=weights)][1]
            parent = dict(first)
            if len(pool) > 1 and rng.random() < self._crossover:
                others = [i for i, (_, p) in enumerate(pool) if p is not first]
                second = pool[others[rng.choice(len(others), p=_renorm(weights, others))]][1]
                take = rng.random(len(names)) < 0.5
                parent.update(
                    {n: second[n] for n, t in zip(names, take, strict=True) if t and n in second}
                )
        else:
            parent = dict(self._x0)
        is_choice = [
            n in self._choices or isinstance(space.get(n), CategoricalDistribution) for n in names
        ]
        rates = np.where(is_choice, self._choice_mutation, self._mutation)
        mask = rng.random(len(names)) < rates
        numbers = [i for i, choice in enumerate(is_choice) if not choice] or list(range(len(names)))
        mask[numbers[rng.integers(len(numbers))]] = True  # at least one number mutates
        steps = rng.standard_normal(len(names)) * self._sigma
        picks = rng.random(len(names))  # a mutated choice's pick, or a missing gene's position
        child: dict[str, Any] = {}
        for i, name in enumerate(names):
            if name not in space:
                continue
            dist = space[name]
            if isinstance(dist, CategoricalDistribution):
                child[name] = _mutate_choice(dist, parent.get(name), bool(mask[i]), picks[i])
                continue
            if (
                name in parent
                and not mask[i]
                and dist._contains(dist.to_internal_repr(parent[name]))
            ):
                child[name] = parent[name]  # exactly the parent's: no round trip through a gene
                continue
            gene = _encode(dist, parent[name]) if name in parent else picks[i]
            if mask[i]:
                gene = 1.0 - abs((gene + steps[i]) % 2.0 - 1.0)  # reflected into [0, 1]
            child[name] = _decode(dist, gene)
        return child


def _fresh_seed() -> int:
    return int(np.random.default_rng().integers(2**32))


def _ranked_settings(
    study: optuna.Study, space: Mapping[str, BaseDistribution], top: int
) -> list[tuple[float, dict[str, Any]]]:
    """The best `top` distinct settings of COMPLETE trials (mean value over their runs)."""
    runs: dict[tuple[Any, ...], list[float]] = {}
    params: dict[tuple[Any, ...], dict[str, Any]] = {}
    for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)):
        if t.value is None or not math.isfinite(t.value) or not set(space) <= set(t.params):
            continue
        key = tuple(sorted((k, repr(v)) for k, v in t.params.items() if k in space))
        runs.setdefault(key, []).append(t.value)
        params.setdefault(key, {k: t.params[k] for k in space})
    sign = -1.0 if study.direction == StudyDirection.MINIMIZE else 1.0
    ranked = sorted(runs, key=lambda k: -sign * float(np.mean(runs[k])))[:top]
    return [(float(np.mean(runs[k])), params[k]) for k in ranked]


def _weights(fitness: Sequence[float], direction: StudyDirection) -> np.ndarray:
    values = np.asarray(fitness, dtype=float)
    if direction == StudyDirection.MINIMIZE:
        values = -values
    weights = values - values.min() + 1e-6
    return weights / weights.sum()


def _renorm(weights: np.ndarray, keep: list[int]) -> np.ndarray:
    kept = weights[keep]
    return kept / kept.sum()


def _encode(dist: BaseDistribution, value: Any) -> float:
    assert isinstance(dist, FloatDistribution | IntDistribution)
    low, high, x = float(dist.low), float(dist.high), float(value)
    if high == low:
        return 0.5
    if dist.log:
        low, high, x = math.log(low), math.log(high), math.log(max(x, dist.low))
    return min(1.0, max(0.0, (x - low) / (high - low)))


def _decode(dist: BaseDistribution, gene: float) -> float | int:
    assert isinstance(dist, FloatDistribution | IntDistribution)
    low, high = float(dist.low), float(dist.high)
    if dist.log:
        x = math.exp(math.log(low) + gene * (math.log(high) - math.log(low)))
    else:
        x = low + gene * (high - low)
    if dist.step is not None:
        x = low + round((x - low) / dist.step) * dist.step
    x = min(high, max(low, x))
    return round(x) if isinstance(dist, IntDistribution) else x


def _mutate_choice(dist: CategoricalDistribution, value: Any, mutate: bool, pick: float) -> Any:
    choices = list(dist.choices)
    if value not in choices:
        return choices[int(pick * len(choices)) % len(choices)]
    others = [c for c in choices if c != value]
    if not mutate or not others:
        return value
    return others[int(pick * len(others)) % len(others)]
