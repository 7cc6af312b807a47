"""Samplers as a study's `[sampler]` table names them.

- `Evolution` (`search/study/evolution.py`): mutate the best settings so far, starting from the
  trainer's defaults, as YOLOv5's `--evolve` and Ultralytics' `Tuner` do; made for a few dozen
  trials near a good recipe;
- `CMA-ES`: Optuna's `CmaEsSampler` started at the defaults (`x0`); its categorical parameters
  are drawn by the evolutionary sampler around the defaults (CMA-ES models numbers only);
- `GP`: Optuna's `GPSampler` (Gaussian process, log expected improvement), random for its first
  `n_startup_trials`;
- `TPE`: Optuna 5's defaults (multivariate, constant liar), random for its first
  `n_startup_trials`;
- `Random`: uniform draws, the control every other sampler must beat.

Which one a study uses by default is measured (docs/benchmarks.md, "How good is the search").
Every sampler takes the study's seed plus `7919 x` the worker's index, so parallel workers do not
draw alike and a study is reproducible with its seed.
"""

from __future__ import annotations

import warnings
from collections.abc import Collection, Mapping
from dataclasses import dataclass
from typing import Any

import optuna

from search.study.evolution import CHOICE_MUTATION, EvolutionSampler

SAMPLER_TYPES: tuple[str, ...] = ("Evolution", "CMA-ES", "GP", "TPE", "Random")


@dataclass(frozen=True)
class SamplerSpec:
    type: str = "TPE"
    seed: int | None = None
    n_startup_trials: int = 10  # TPE and GP: random draws before the model
    # the first sampled trial trains with the trainer's own defaults (a point the search starts
    # from, enqueued after the baselines; pruned like any other sampled trial)
    start_from_defaults: bool = False
    # the evolution's chance that a choice (the optimizer, say) mutates (search/study/evolution.py)
    choice_mutation: float = CHOICE_MUTATION


def build_sampler(
    spec: SamplerSpec,
    x0: Mapping[str, Any] | None,
    offset: int = 0,
    choices: Collection[str] = (),
) -> optuna.samplers.BaseSampler:
    """The sampler of `spec` for the worker with index `offset`; `x0`: the space's params of the
    trainer's defaults (None when they lie outside the space: the evolution starts from uniform
    draws, CMA-ES from the middle). `choices`: the names of the space's categorical parameters,
    which CMA-ES leaves to the evolutionary sampler and the evolution mutates rarely."""
    seed = None if spec.seed is None else spec.seed + 7919 * offset
    if spec.type == "Evolution":
        return EvolutionSampler(
            x0, seed=seed, choice_mutation=spec.choice_mutation, choices=choices
        )
    if spec.type == "CMA-ES":
        numeric = {k: v for k, v in (x0 or {}).items() if k not in choices}
        with warnings.catch_warnings():
            # deprecated since Optuna 4.9 for removal in 6.0, with no other way to centre it
            warnings.filterwarnings("ignore", message="`x0` has been deprecated")
            return optuna.samplers.CmaEsSampler(
                x0=numeric or None,
                seed=seed,
                n_startup_trials=0,
                independent_sampler=EvolutionSampler(
                    x0, seed=seed, choice_mutation=spec.choice_mutation, choices=choices
                ),
                warn_independent_sampling=False,
            )
    if spec.type == "GP":
        return optuna.samplers.GPSampler(seed=seed, n_startup_trials=spec.n_startup_trials)
    if spec.type == "Random":
        return optuna.samplers.RandomSampler(seed=seed)
    if spec.type == "TPE":
        return optuna.samplers.TPESampler(seed=seed, n_startup_trials=spec.n_startup_trials)
    raise ValueError(
        f"sampler type must be one of {', '.join(SAMPLER_TYPES)}, but got {spec.type!r}"
    )
