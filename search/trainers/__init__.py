"""The trainers a study can run: `[trial] trainer = "tune" | "ultralytics" | "command"`.

Each adapter module has `from_options(options, where) -> Trainer`, which validates the study
file's `[trial.<name>]` table (its own options) and builds the trainer without importing anything
heavy: a study file is checked, and a report drawn, on machines that do not have the trainer's
packages. `base.py` says what a trainer is.
"""

from __future__ import annotations

import importlib
from collections.abc import Mapping
from typing import Any

from search.trainers.base import Trainer, TrainerError

DEFAULT_TRAINER = "tune"
# name -> module (under search.trainers) that builds it
_MODULES: dict[str, str] = {
    "tune": "builtin",
    "ultralytics": "ultralytics",
    "command": "command",
}
TRAINER_NAMES: tuple[str, ...] = tuple(_MODULES)


def make_trainer(name: str, options: Mapping[str, Any] | None = None) -> Trainer:
    """The trainer `name` with its `[trial.<name>]` options; a `TrainerError` naming the valid
    trainers or the bad option."""
    module = _MODULES.get(name)
    if module is None:
        raise TrainerError(
            f"trial.trainer must be one of {', '.join(TRAINER_NAMES)}, but got trainer={name!r}"
        )
    built: Trainer = importlib.import_module(f"search.trainers.{module}").from_options(
        dict(options or {}), f"trial.{name}"
    )
    return built
