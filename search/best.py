"""`tune best`: the best trial's parameters, and its hyperparameter file for `tune train --hyp`.

The exported file is laid out like YOLOv5/Ultralytics `hyp` files (`lr0`, `momentum`,
`weight_decay`, `box`, `obj`, `cls`, plus `optimizer`, `milestones`, `gamma`), written by
`trainer/hyp.py` from the trial's stored `TrainConfig`, so it reproduces exactly what ran.
"""

from __future__ import annotations

from pathlib import Path

import optuna
from optuna.trial import FrozenTrial

from search import trial_record
from trainer.config import TrainConfig
from trainer.hyp import config_to_hyp, write_hyp


class NoBestTrialError(RuntimeError):
    """The study has no complete (feasible) trial yet."""


def best_trial(study: optuna.Study) -> FrozenTrial:
    """The best complete trial (feasible ones only, when a latency budget is set)."""
    try:
        return study.best_trial
    except ValueError:
        raise NoBestTrialError(
            f"study {study.study_name!r} has no complete trial yet (see `tune status`)"
        ) from None


def trial_config(trial: FrozenTrial) -> TrainConfig:
    """The `TrainConfig` the trial trained with, as stored on it."""
    stored = trial_record.read_config(trial)
    if stored is None:
        raise NoBestTrialError(f"trial {trial.number} has no stored config (not run by tune?)")
    return TrainConfig.from_dict(stored)


def format_best(study: optuna.Study, trial: FrozenTrial) -> str:
    """The text `tune best` prints: value, origin and hyp values of the best trial."""
    label = trial_record.read_baseline(trial)
    origin = f"baseline {label!r}" if label else "sampled"
    lines = [
        f"study {study.study_name}: best trial {trial.number} ({origin}) mAP50-95 {trial.value:.4f}"
    ]
    hyp = config_to_hyp(trial_config(trial))
    lines.extend(f"  {k}: {_fmt(v)}" for k, v in hyp.items())
    return "\n".join(lines)


def export_best(study: optuna.Study, trial: FrozenTrial, path: Path) -> Path:
    """Write the best trial's hyp YAML to `path`."""
    header = (
        f"tune best --study {study.study_name}: trial {trial.number}, "
        f"mAP50-95 {trial.value:.4f}\nuse with: tune train --hyp {path}"
    )
    path.parent.mkdir(parents=True, exist_ok=True)
    write_hyp(path, trial_config(trial), header=header)
    return path


def _fmt(value: object) -> str:
    if isinstance(value, float):
        return f"{value:.6g}"
    if isinstance(value, list):
        return "[" + ", ".join(_fmt(v) for v in value) + "]"
    return str(value)
