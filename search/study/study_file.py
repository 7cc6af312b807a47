"""Study files: a TOML file per study (data only, never executed), validated into a `StudySpec`.

Layout (see `studies/loss-weights.toml`):

    name = "loss-weights"
    [objective]  metric = "mAP50_95", optional latency_budget_ms (a constraint, not an objective)
    [budget]     epochs (training epochs across all trials) and/or n_trials (COMPLETE + PRUNED),
                 both for the whole study; optional timeout (seconds), baseline_epochs
    [trial]      trainer ("tune" | "ultralytics" | "command", search/trainers/), data, epochs (a
                 trial's full length), eval_interval, device, plus any parameter of the trainer
                 pinned for every trial (model, imgsz, batch, ...); [trial.<trainer>] its options
    [sampler]    type = "Evolution" | "CMA-ES" | "GP" | "TPE" | "Random" (search/study/samplers.py),
                 optional seed, n_startup_trials, start_from_defaults
    [pruner]     type = "SuccessiveHalving" | "Hyperband" | "Median" | "None", min_resource,
                 reduction_factor, n_min_trials (search/study/pruning.py)
    [space]      see search/study/space.py
    [[baselines]] label plus a value for every [space] parameter (milestones as fractions)

Every mistake is one `StudyFileError` naming the file, the key and the value. The validated raw
table (with CLI overrides applied) is what `launch` stores with the study, so that workers on other
machines run exactly the same settings without needing the file.
"""

from __future__ import annotations

import copy
import functools
import math
import re
import tomllib
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import optuna
from optuna.trial import FrozenTrial

from search.study.evolution import CHOICE_MUTATION
from search.study.pruning import PRUNER_TYPES, PrunerSpec, SparingPruner, build_pruner, stop_points
from search.study.samplers import SAMPLER_TYPES, SamplerSpec, build_sampler
from search.study.space import ChoiceParam, SearchSpace, SpaceError, parse_space
from search.trainers import DEFAULT_TRAINER, make_trainer
from search.trainers.base import Trainer, TrainerError, TrialJob, packs
from trainer.config import TrainConfig
from trainer.params import ParamRegistry

STUDIES_DIR = Path("studies")
BUILTIN_DATA: tuple[str, ...] = ("shapes",)
METRICS: tuple[str, ...] = ("mAP50_95", "mAP50")
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
_KIND_NAMES: dict[type, str] = {int: "an integer", float: "a number", str: "a string"}
_TOP_KEYS = ("name", "objective", "budget", "trial", "sampler", "pruner", "space", "baselines")


class StudyFileError(ValueError):
    """A mistake in a study file: one message naming the key and the value."""


@dataclass(frozen=True)
class Objective:
    metric: str = "mAP50_95"  # maximised; weight-independent (see DESIGN.md, "the trap")
    latency_budget_ms: float | None = None  # inference ms per image; a constraint when set


@dataclass(frozen=True)
class Budget:
    """What the whole study may spend, shared by every worker on every machine
    (search/bookkeeping/budget.py).

    `epochs` counts training: the epochs every trial trained, summed over the study (a pruned
    trial counts the epochs it ran, a retry only those after the checkpoint it resumed from).
    It is the unit of compute that does not depend on the machine, and the one successive
    halving allocates. `n_trials` counts COMPLETE + PRUNED trials. With both, the first spent
    ends the study.
    """

    epochs: int | None = None
    n_trials: int | None = None
    timeout: float | None = None  # seconds a launch (or a worker) keeps taking new trials
    # baselines train this many epochs of the full-length schedule, then stop (None: the full
    # length); the report compares them with the best trial at this length
    baseline_epochs: int | None = None


@dataclass(frozen=True)
class TrialSettings:
    """`[trial]`: what every trial of the study shares. The trainer's own parameters pinned
    here (`model = "nano"`, `lr_decay = "none"`, ...) are its `recipe`; the rest follow the
    trainer's defaults, and `[space]` parameters are drawn."""

    trainer: str = DEFAULT_TRAINER
    data: str = "shapes"
    epochs: int = 12
    eval_interval: int = 1
    device: str = "auto"
    # trials a worker trains at once as one pack (search/running/rounds.py), or "auto" (`pack_size`)
    pack: int | str = 1
    recipe: tuple[tuple[str, Any], ...] = ()
    options: tuple[tuple[str, Any], ...] = ()  # the `[trial.<trainer>]` table


# the search's own settings; every other [trial] key is a parameter of the trainer
_SETTINGS = ("trainer", "data", "epochs", "eval_interval", "device", "pack")


@dataclass(frozen=True)
class Baseline:
    label: str
    params: tuple[tuple[str, Any], ...]  # in [space] order, as enqueued

    def as_dict(self) -> dict[str, Any]:
        return dict(self.params)


@dataclass(frozen=True)
class Overrides:
    """CLI values that replace the file's (None: keep the file's)."""

    epochs: int | None = None
    data: str | None = None
    n_trials: int | None = None
    budget_epochs: int | None = None
    timeout: float | None = None
    seed: int | None = None


@dataclass(frozen=True)
class StudySpec:
    """A validated study. `raw` is the TOML table it came from, overrides applied."""

    name: str
    objective: Objective
    budget: Budget
    trial: TrialSettings
    sampler: SamplerSpec
    pruner: PrunerSpec
    space: SearchSpace
    baselines: tuple[Baseline, ...]
    raw: dict[str, Any]

    @property
    def baseline_epochs(self) -> int:
        """How many epochs of the full-length schedule a baseline trains."""
        return self.budget.baseline_epochs or self.trial.epochs

    @functools.cached_property
    def trainer(self) -> Trainer:
        """The trainer the study runs (`[trial] trainer`, its `[trial.<name>]` options)."""
        return make_trainer(self.trial.trainer, dict(self.trial.options))

    def values(self, params: Mapping[str, Any]) -> dict[str, Any]:
        """The trainer's parameter values of one trial: its defaults, the study's pins, then
        the drawn `params`."""
        return {
            **self.trainer.params.defaults(),
            **dict(self.trial.recipe),
            **self.space.to_values(params),
        }

    def job(self, params: Mapping[str, Any], out: Path | str, **fields: Any) -> TrialJob:
        """The `TrialJob` of one trial; `fields` set its other fields (seed, device, ...)."""
        return _trial_job(self.trial, self.values(params), out, **fields)

    def train_config(self, params: dict[str, Any], **fields: Any) -> TrainConfig:
        """For a study of tune's own trainer: the `TrainConfig` of one trial (study settings,
        pins, drawn `params`, then `fields`)."""
        settings = _job_settings(self.trial)
        return TrainConfig(
            **{**settings, **dict(self.trial.recipe), **self.space.to_values(params), **fields}
        )

    def start_params(self) -> dict[str, Any] | None:
        """The [space] params of the trainer's defaults (with [trial]'s pins), when the sampler
        starts from them; None otherwise."""
        if not self.sampler.start_from_defaults:
            return None
        return self.space.params_of(self.values({}), "sampler.start_from_defaults")

    def default_params(self) -> dict[str, Any] | None:
        """The [space] params of the trainer's defaults (with [trial]'s pins), or None when they
        lie outside the space."""
        try:
            return self.space.params_of(self.values({}), "the trainer's defaults")
        except SpaceError:
            return None

    def make_sampler(self, offset: int = 0) -> optuna.samplers.BaseSampler:
        """The sampler (`search/study/samplers.py`), started from the trainer's defaults where
        it can be; `offset` (a worker index) keeps parallel workers from drawing alike."""
        choices = [p.name for p in self.space.params if isinstance(p, ChoiceParam)]
        return build_sampler(self.sampler, self.default_params(), offset, choices)

    def make_pruner(self, spare: Callable[[FrozenTrial], bool]) -> SparingPruner:
        """The `[pruner]` over evaluation steps (epochs completed, up to `trial.epochs`), never
        stopping a trial `spare` names (baselines and race runs: `trial_record.runs_fixed_length`)
        and waiting for `n_min_trials` evaluations at a step (`search/study/pruning.py`)."""
        return build_pruner(self.pruner, self.trial.epochs, spare)


def _job_settings(trial: TrialSettings) -> dict[str, Any]:
    """What `[trial]` sets of every trial's job, whatever the trainer."""
    return {
        "data": trial.data,
        "epochs": trial.epochs,
        "eval_interval": trial.eval_interval,
        "device": trial.device,
    }


def _trial_job(
    trial: TrialSettings, values: Mapping[str, Any], out: Path | str, **fields: Any
) -> TrialJob:
    return TrialJob(values=values, out=Path(out), **{**_job_settings(trial), **fields})


def resolve_study_path(name_or_path: str, studies_dir: Path | None = None) -> Path:
    """`NAME` -> `studies/NAME.toml` (working folder, then beside the package); a path as is."""
    given = Path(name_or_path)
    if given.suffix == ".toml" or len(given.parts) > 1:
        if not given.is_file():
            raise StudyFileError(f"study file not found: {given}")
        return given
    folders = [studies_dir] if studies_dir else [STUDIES_DIR, Path(__file__).parents[2] / "studies"]
    for folder in folders:
        candidate = folder / f"{name_or_path}.toml"
        if candidate.is_file():
            return candidate
    known = sorted({p.stem for f in folders if f.is_dir() for p in f.glob("*.toml")})
    raise StudyFileError(
        f"no study named {name_or_path!r} (looked for {folders[0] / (name_or_path + '.toml')}; "
        f"known: {', '.join(known) or 'none'})"
    )


def read_study_table(name_or_path: str) -> tuple[dict[str, Any], Path]:
    """A study file's raw TOML table (not validated) and the path it was read from."""
    path = resolve_study_path(name_or_path)
    try:
        return tomllib.loads(path.read_text()), path
    except tomllib.TOMLDecodeError as exc:
        raise StudyFileError(f"{path}: not valid TOML: {exc}") from None


def load_study_file(
    name_or_path: str, overrides: Overrides | None = None, *, check_data: bool = True
) -> StudySpec:
    """Read, override and validate a study file (by name or path)."""
    raw, path = read_study_table(name_or_path)
    return parse_study(
        apply_overrides(raw, overrides or Overrides()), str(path), check_data=check_data
    )


def apply_overrides(raw: dict[str, Any], overrides: Overrides) -> dict[str, Any]:
    """A copy of the raw table with the CLI's values written into it (validated afterwards)."""
    raw = copy.deepcopy(raw)
    for table, key, value in (
        ("trial", "epochs", overrides.epochs),
        ("trial", "data", overrides.data),
        ("budget", "n_trials", overrides.n_trials),
        ("budget", "epochs", overrides.budget_epochs),
        ("budget", "timeout", overrides.timeout),
        ("sampler", "seed", overrides.seed),
    ):
        if value is not None:
            section = raw.setdefault(table, {})
            if isinstance(section, dict):
                section[key] = value
    # `--epochs` shorter than the pruner's first rung or the baselines' length: they move to the
    # last epoch rather than refusing a setting the user did not write
    for table, key in (("pruner", "min_resource"), ("budget", "baseline_epochs")):
        section = raw.get(table)
        if overrides.epochs is not None and isinstance(section, dict):
            value = section.get(key)
            if isinstance(value, int) and value > overrides.epochs:
                section[key] = overrides.epochs
    return raw


def parse_study(
    raw: dict[str, Any], source: str = "<study>", *, check_data: bool = True
) -> StudySpec:
    """Validate a raw study table. Errors read `SOURCE: key: problem, but got key=value`."""
    try:
        return _parse(raw, check_data)
    except StudyFileError as exc:
        raise StudyFileError(f"{source}: {exc}") from None
    except SpaceError as exc:
        raise StudyFileError(f"{source}: {exc}") from None


def _parse(raw: dict[str, Any], check_data: bool) -> StudySpec:
    _check_keys(raw, _TOP_KEYS, "the top level")
    name = raw.get("name")
    if not isinstance(name, str) or not _NAME.match(name):
        raise StudyFileError(
            f"name must be letters, digits, '.', '_' or '-' (a folder name), but got name={name!r}"
        )
    objective = _objective(_table(raw, "objective"))
    trial_table = _table(raw, "trial")
    trainer = _trainer(trial_table)
    # `around` is relative to what a trial would run without the space: defaults, then pins
    pins = {k: v for k, v in trial_table.items() if k in trainer.params}
    space = parse_space(raw.get("space"), trainer.params, pins)
    trial = _trial(trial_table, trainer, check_data, space.drawn_values())
    sampler = _sampler(_table(raw, "sampler"))
    pruner = _pruner(_table(raw, "pruner"), trial)
    budget = _budget(_table(raw, "budget", required=True), trial, pruner)
    baselines = _baselines(raw.get("baselines", []), space, trainer.params)
    spec = StudySpec(
        name, objective, budget, trial, sampler, pruner, space, baselines, copy.deepcopy(raw)
    )
    spec.start_params()  # the trainer's defaults must lie inside [space]: say so now
    return spec


def _table(raw: dict[str, Any], key: str, required: bool = False) -> dict[str, Any]:
    if key not in raw and not required:
        return {}
    value = raw.get(key)
    if not isinstance(value, dict):
        raise StudyFileError(f"[{key}] must be a table, but got {key}={value!r}")
    return value


def _check_keys(table: dict[str, Any], allowed: tuple[str, ...], where: str) -> None:
    for key in table:
        if key not in allowed:
            raise StudyFileError(
                f"unknown key {key!r} in {where} (known: {', '.join(allowed)}), "
                f"but got {key}={table[key]!r}"
            )


def _get(
    table: dict[str, Any], where: str, key: str, kind: type, default: Any, *, required: bool = False
) -> Any:
    if key not in table:
        if required:
            raise StudyFileError(f"{where}.{key} is required")
        return default
    value = table[key]
    if kind is float:
        ok = isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)
    else:
        ok = isinstance(value, kind) and not isinstance(value, bool)
    if not ok:
        raise StudyFileError(f"{where}.{key} must be {_KIND_NAMES[kind]}, but got {key}={value!r}")
    return float(value) if kind is float else value


def _positive(where: str, key: str, value: float | None, minimum: float = 1) -> None:
    if value is not None and value < minimum:
        raise StudyFileError(f"{where}.{key} must be >= {minimum:g}, but got {key}={value!r}")


def _objective(t: dict[str, Any]) -> Objective:
    _check_keys(t, ("metric", "direction", "latency_budget_ms"), "[objective]")
    metric = _get(t, "objective", "metric", str, "mAP50_95")
    if metric not in METRICS:
        raise StudyFileError(
            f"objective.metric must be one of {', '.join(METRICS)}, but got {metric=}"
        )
    direction = _get(t, "objective", "direction", str, "maximize")
    if direction not in ("maximize", "maximise"):
        raise StudyFileError(f"objective.direction: mAP is maximised, but got {direction=}")
    budget = _get(t, "objective", "latency_budget_ms", float, None)
    if budget is not None and budget <= 0:
        raise StudyFileError(
            f"objective.latency_budget_ms must be > 0, but got latency_budget_ms={budget}"
        )
    return Objective(metric, budget)


def _budget(t: dict[str, Any], trial: TrialSettings, pruner: PrunerSpec) -> Budget:
    _check_keys(t, ("epochs", "n_trials", "timeout", "baseline_epochs"), "[budget]")
    epochs = _get(t, "budget", "epochs", int, None)
    n_trials = _get(t, "budget", "n_trials", int, None)
    if epochs is None and n_trials is None:
        raise StudyFileError(
            "[budget] needs epochs (training epochs across all trials) or n_trials (finished "
            f"trials), or both, but got {t!r}"
        )
    _positive("budget", "n_trials", n_trials)
    first_stop = stop_points(pruner, trial.epochs, trial.eval_interval)[0]
    if epochs is not None and epochs < first_stop:
        raise StudyFileError(
            f"budget.epochs must be >= {first_stop}, the epochs a trial trains before it can "
            f"first be stopped (pruner.min_resource, trial.eval_interval), but got {epochs=}"
        )
    timeout = _get(t, "budget", "timeout", float, None)
    if timeout is not None and timeout <= 0:
        raise StudyFileError(f"budget.timeout must be > 0 seconds, but got timeout={timeout}")
    baseline_epochs = _get(t, "budget", "baseline_epochs", int, None)
    _positive("budget", "baseline_epochs", baseline_epochs)
    if baseline_epochs is not None and baseline_epochs > trial.epochs:
        raise StudyFileError(
            f"budget.baseline_epochs must be <= trial.epochs={trial.epochs}, "
            f"but got {baseline_epochs=}"
        )
    return Budget(epochs, n_trials, timeout, baseline_epochs)


def _trainer(t: dict[str, Any]) -> Trainer:
    name = _get(t, "trial", "trainer", str, DEFAULT_TRAINER)
    options = t.get(name, {})
    if not isinstance(options, dict):
        raise StudyFileError(f"[trial.{name}] must be a table, but got {name}={options!r}")
    try:
        return make_trainer(name, options)
    except TrainerError as exc:
        raise StudyFileError(str(exc)) from None


def _trial(
    t: dict[str, Any], trainer: Trainer, check_data: bool, space_names: tuple[str, ...]
) -> TrialSettings:
    registry = trainer.params
    for key, value in t.items():
        if key not in (*_SETTINGS, trainer.name) and key not in registry:
            raise StudyFileError(
                f"unknown key {key!r} in [trial]: neither a setting ({', '.join(_SETTINGS)}) "
                f"nor a parameter of trainer {trainer.name!r} (valid: {', '.join(registry.names)})"
                f", but got {key}={value!r}"
            )
    recipe = {k: v for k, v in t.items() if k in registry and k not in _SETTINGS}
    drawn = sorted(set(recipe) & set(space_names))
    if drawn:
        raise StudyFileError(
            f"[trial] pins {', '.join(drawn)}, which [space] draws: keep one of the two"
        )
    if "milestones" in recipe and isinstance(recipe["milestones"], list):
        recipe["milestones"] = tuple(recipe["milestones"])
    d = TrialSettings()
    settings = TrialSettings(
        trainer=trainer.name,
        data=_get(t, "trial", "data", str, d.data),
        epochs=_get(t, "trial", "epochs", int, d.epochs),
        eval_interval=_get(t, "trial", "eval_interval", int, d.eval_interval),
        device=_get(t, "trial", "device", str, d.device),
        pack=_pack(t, trainer, space_names),
        recipe=tuple(sorted(recipe.items())),
        options=tuple(sorted(dict(t.get(trainer.name, {})).items())),
    )
    _positive("trial", "epochs", settings.epochs)
    _positive("trial", "eval_interval", settings.eval_interval)
    try:
        registry.check(recipe)
        # the trainer's own checks of values together (tune: imgsz a multiple of 32, ...)
        check = getattr(trainer, "check", None)
        if check is not None:
            check(_trial_job(settings, {**registry.defaults(), **recipe}, "."))
    except (ValueError, TypeError) as exc:
        raise StudyFileError(f"[trial] {exc}") from None
    data = settings.data
    if check_data and data not in BUILTIN_DATA and not Path(data).is_file():
        raise StudyFileError(
            f"trial.data: no such data set file (a data.yaml, or one of "
            f"{', '.join(BUILTIN_DATA)}), but got data={data!r}"
        )
    return settings


def _pack(t: dict[str, Any], trainer: Trainer, space_names: tuple[str, ...]) -> int | str:
    """`[trial] pack`: a number of trials >= 1, or "auto"; packing needs a trainer that packs
    and a space that draws nothing the trials of a pack share (architecture, batch stream)."""
    pack = t.get("pack", TrialSettings.pack)
    if pack != "auto" and (not isinstance(pack, int) or isinstance(pack, bool) or pack < 1):
        raise StudyFileError(f'trial.pack must be a number >= 1 or "auto", but got {pack=}')
    if pack == 1:
        return pack
    if not packs(trainer):
        raise StudyFileError(
            f"trial.pack: trainer {trainer.name!r} trains one trial at a time, but got {pack=}"
        )
    shared = sorted(set(space_names) & set(getattr(trainer, "pack_shared", ())))
    if shared:
        raise StudyFileError(
            f"trial.pack: the trials of a pack share {', '.join(shared)}, which [space] draws; "
            f"pin it in [trial] or set pack = 1, but got {pack=}"
        )
    return pack


def _sampler(t: dict[str, Any]) -> SamplerSpec:
    keys = ("type", "seed", "n_startup_trials", "start_from_defaults", "choice_mutation")
    _check_keys(t, keys, "[sampler]")
    kind = _get(t, "sampler", "type", str, "TPE")
    if kind not in SAMPLER_TYPES:
        raise StudyFileError(
            f"sampler.type must be one of {', '.join(SAMPLER_TYPES)}, but got type={kind!r}"
        )
    seed = _get(t, "sampler", "seed", int, None)
    startup = _get(t, "sampler", "n_startup_trials", int, 10)
    _positive("sampler", "n_startup_trials", startup, 0)
    defaults = t.get("start_from_defaults", False)
    if not isinstance(defaults, bool):
        raise StudyFileError(
            f"sampler.start_from_defaults must be true or false, but got {defaults=}"
        )
    choice_mutation = _get(t, "sampler", "choice_mutation", float, CHOICE_MUTATION)
    if not 0 <= choice_mutation <= 1:
        raise StudyFileError(
            f"sampler.choice_mutation must be in [0, 1], but got {choice_mutation=}"
        )
    # read by Evolution (and CMA-ES, for its choices); other samplers leave it unused
    return SamplerSpec(kind, seed, startup, defaults, choice_mutation)


def _pruner(t: dict[str, Any], trial: TrialSettings) -> PrunerSpec:
    _check_keys(t, ("type", "min_resource", "reduction_factor", "n_min_trials"), "[pruner]")
    given = _get(t, "pruner", "type", str, PrunerSpec.type)
    # case-insensitive: studies stored before SuccessiveHalving and Median spelled "none"
    kind = next((k for k in PRUNER_TYPES if k.lower() == given.lower()), None)
    if kind is None:
        raise StudyFileError(
            f"pruner.type must be one of {', '.join(PRUNER_TYPES)}, but got type={given!r}"
        )
    min_resource = _get(t, "pruner", "min_resource", int, 1)
    _positive("pruner", "min_resource", min_resource)
    if min_resource > trial.epochs:
        raise StudyFileError(
            f"pruner.min_resource (epochs) must be <= trial.epochs={trial.epochs}, "
            f"but got min_resource={min_resource}"
        )
    factor = _get(t, "pruner", "reduction_factor", int, 3)
    _positive("pruner", "reduction_factor", factor, 2)
    n_min_trials = _get(t, "pruner", "n_min_trials", int, 1)
    _positive("pruner", "n_min_trials", n_min_trials)
    return PrunerSpec(kind, min_resource, factor, n_min_trials)


def _baselines(entries: Any, space: SearchSpace, registry: ParamRegistry) -> tuple[Baseline, ...]:
    if not isinstance(entries, list) or not all(isinstance(e, dict) for e in entries):
        raise StudyFileError(
            f"[[baselines]] must be an array of tables, but got baselines={entries!r}"
        )
    baselines: list[Baseline] = []
    for i, entry in enumerate(entries):
        where = f"baselines[{i}]"
        values = dict(entry)
        label = values.pop("label", None)
        if not isinstance(label, str) or not label.strip():
            raise StudyFileError(
                f"{where}.label must be a non-empty string, but got label={label!r}"
            )
        if any(b.label == label for b in baselines):
            raise StudyFileError(f"{where}.label must be unique, but got label={label!r} twice")
        # a hand-tuned setting may lie outside a space centred on the defaults; it must still be
        # a setting the trainer accepts
        params = space.baseline_params(values, f"{where} ({label})", inside=False)
        try:
            registry.check(space.to_values(params), f"{where} ({label})")
        except ValueError as exc:
            raise StudyFileError(str(exc)) from None
        baselines.append(Baseline(label, tuple(params.items())))
    return tuple(baselines)
