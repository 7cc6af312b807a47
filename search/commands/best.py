"""`tune best`: the best trial's parameters, and a file of them for the trainer you use.

`tune best --export FILE` writes the trial's values as a file its target takes as it is
(search/commands/export.py): a complete YOLOv5 hyp file for a study of tune's own trainer (`tune
train --hyp FILE` reads it back, YOLOv5's `train.py --hyp FILE` trains with it), an Ultralytics cfg
(`yolo train cfg=FILE`) for a study of the Ultralytics trainer or when `--format ultralytics`
asks for one. The values come from the trial's stored config, so the file holds what ran.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import optuna
from optuna.trial import FrozenTrial

from search.bookkeeping import trial_record
from search.commands.export import RUN_SETTINGS, Export, export_values
from search.confirm.incumbent import study_best
from search.confirm.standing import Standing, study_standing
from search.trainers import DEFAULT_TRAINER
from trainer.config import TrainConfig
from trainer.hyp import config_to_hyp


class NoBestTrialError(RuntimeError):
    """The study has no complete (feasible) trial yet."""


def best_trial(study: optuna.Study) -> FrozenTrial:
    """The trial the study stands behind: its incumbent, chosen over seeds (the trainer's
    defaults until a challenger beat them on fresh seeds, search/confirm/incumbent.py), else the
    best complete trial (feasible ones only, when a latency budget is set)."""
    best, _ = study_best(study)
    if best is None:
        raise NoBestTrialError(
            f"study {study.study_name!r} has no complete trial yet (see `tune status`)"
        )
    return best


def study_trainer(study: optuna.Study) -> str:
    """The trainer the study's stored table names (`[trial] trainer`), tune's by default."""
    trial = (trial_record.read_study_spec(study) or {}).get("trial")
    name = trial.get("trainer") if isinstance(trial, dict) else None
    return name if isinstance(name, str) else DEFAULT_TRAINER


def trial_values(trial: FrozenTrial) -> dict[str, Any]:
    """What the trial trained with, as stored on it: the trainer's values and the job's settings
    (for tune's trainer, the fields of its `TrainConfig`)."""
    stored = trial_record.read_config(trial)
    if stored is None:
        raise NoBestTrialError(f"trial {trial.number} has no stored config (not run by tune?)")
    return stored


def format_best(study: optuna.Study, trial: FrozenTrial, standing: Standing | None = None) -> str:
    """The text `tune best` prints: value, origin and parameter values of the best trial, and
    what it is worth (the incumbent and its paired gain over the defaults, as `tune status`
    says it; `standing`: the study's, when the caller has it)."""
    standing = standing or study_standing(study, study.get_trials(deepcopy=False))
    label = trial_record.read_baseline(trial)
    origin = (
        f"baseline {label!r}"
        if label
        else "the trainer's defaults"
        if trial_record.read_start(trial) is not None
        else "sampled"
    )
    lines = [
        f"study {study.study_name}: best trial {trial.number} ({origin}) mAP50-95 "
        f"{trial.value:.4f}",
        f"  {standing.describe()}",
    ]
    values = trial_values(trial)
    if study_trainer(study) == DEFAULT_TRAINER:
        shown = config_to_hyp(TrainConfig.from_dict(values))
    else:
        shown = {k: v for k, v in values.items() if k not in RUN_SETTINGS}
    lines.extend(f"  {k}: {_fmt(v)}" for k, v in shown.items())
    return "\n".join(lines)


def export_best(
    study: optuna.Study,
    trial: FrozenTrial,
    path: Path,
    fmt: str | None = None,
    standing: Standing | None = None,
) -> Export:
    """Write the best trial's values to `path` in format `fmt` (None: the study's trainer's
    default, search/commands/export.py); an `ExportError` (a ValueError) when it cannot be."""
    trainer = study_trainer(study)
    standing = standing or study_standing(study, study.get_trials(deepcopy=False))
    header = (
        f"tune best --study {study.study_name}: trial {trial.number} of trainer {trainer}, "
        f"mAP50-95 {trial.value:.4f} ({standing.short()})"
    )
    exported = export_values(trainer, trial_values(trial), fmt, header)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(exported.text)
    return exported


def _fmt(value: object) -> str:
    if isinstance(value, float):
        return f"{value:.6g}"
    if isinstance(value, list):
        return "[" + ", ".join(_fmt(v) for v in value) + "]"
    return str(value)
