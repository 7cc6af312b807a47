"""Hyperparameter files laid out like YOLOv5/Ultralytics `hyp.yaml`.

`tune best --export` writes one, `tune train --hyp` reads one. The keys people already know
(`lr0`, `momentum`, `weight_decay`, `box`, `obj`, `cls`, `lrf`, `warmup_*`, `hsv_*`, `mosaic`, ...)
map onto `TrainConfig` fields; tune adds `optimizer`, `milestones`, `gamma`, `lr_decay` and
`ema_decay`, so an exported file reproduces the whole recipe a trial ran with.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from trainer.config import TrainConfig

# hyp key -> TrainConfig field
HYP_TO_CONFIG: dict[str, str] = {
    "lr0": "lr",
    "momentum": "momentum",
    "weight_decay": "weight_decay",
    "box": "lbox",
    "obj": "lobj",
    "cls": "lcls",
    "optimizer": "optimizer",
    "milestones": "milestones",
    "gamma": "gamma",
    # the recipe around them, under Ultralytics' names where it has one
    "lrf": "lrf",
    "lr_decay": "lr_decay",
    "warmup_epochs": "warmup_epochs",
    "warmup_momentum": "warmup_momentum",
    "warmup_bias_lr": "warmup_bias_lr",
    "nbs": "nbs",
    "ema_decay": "ema_decay",
    "hsv_h": "hsv_h",
    "hsv_s": "hsv_s",
    "hsv_v": "hsv_v",
    "translate": "translate",
    "scale": "scale",
    "fliplr": "fliplr",
    "mosaic": "mosaic",
    "close_mosaic": "close_mosaic",
}


def config_to_hyp(config: TrainConfig) -> dict[str, Any]:
    """The hyp-file view of a config (milestones as a list)."""
    values = config.to_dict()
    return {key: values[field] for key, field in HYP_TO_CONFIG.items()}


def read_hyp(path: Path) -> dict[str, Any]:
    """Read a hyp YAML into `TrainConfig` field overrides; unknown keys are an error naming them."""
    path = Path(path)
    try:
        raw = yaml.safe_load(path.read_text())
    except FileNotFoundError:
        raise ValueError(f"hyperparameter file not found: {path}") from None
    except yaml.YAMLError as exc:
        raise ValueError(f"{path} is not valid YAML: {exc}") from None
    if not isinstance(raw, dict):
        raise ValueError(
            f"{path} must hold a mapping of hyperparameters, but got {type(raw).__name__}"
        )
    unknown = sorted(set(raw) - set(HYP_TO_CONFIG))
    if unknown:
        known = ", ".join(HYP_TO_CONFIG)
        raise ValueError(f"{path}: unknown key(s) {', '.join(unknown)} (known: {known})")
    return {HYP_TO_CONFIG[key]: value for key, value in raw.items()}


def write_hyp(path: Path, config: TrainConfig, header: str = "") -> None:
    """Write the hyp file of `config`, with an optional comment header."""
    text = yaml.safe_dump(config_to_hyp(config), sort_keys=False)
    comment = "".join(f"# {line}\n" for line in header.splitlines())
    Path(path).write_text(comment + text)
