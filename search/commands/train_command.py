"""`tune train`: one training run from the command line, printing the notes' log lines."""

from __future__ import annotations

import logging
import sys
from pathlib import Path
from typing import Any

from trainer.config import TrainConfig
from trainer.hyp import load_hyp

# CLI option -> TrainConfig field, where the names differ or need parsing
_NOT_CONFIG = {"hyp", "ctx"}


def build_train_config(values: dict[str, Any], explicit: set[str]) -> TrainConfig:
    """The run's config: defaults, then the hyp file (if any), then options typed by the user.

    `values` are every option's value, `explicit` the names the user typed; an option left at its
    default does not override what the hyp file says.
    """
    # an option given no default (None) leaves the field to TrainConfig's recipe
    options = {k: v for k, v in values.items() if k not in _NOT_CONFIG and v is not None}
    if "milestones" in options:
        options["milestones"] = _parse_milestones(options["milestones"])
    options["out"] = str(options["out"])
    hyp_path = values.get("hyp")
    if hyp_path is not None:
        hyp = load_hyp(Path(hyp_path))
        notice = hyp.notice()  # YOLOv5 keys tune's trainer cannot use: say so, don't stop
        if notice:
            print(f"note: {notice}", file=sys.stderr)
        for key, value in hyp.overrides.items():
            if key not in explicit:
                options[key] = value
    return TrainConfig.from_dict(options)


def run_train(values: dict[str, Any], explicit: set[str]) -> None:
    """Build the config, train, and print a one-line summary; errors become one clear line."""
    import typer

    try:
        config = build_train_config(values, explicit)
    except ValueError as exc:  # before importing torch: a typo costs no seconds
        typer.secho(f"error: {exc}", err=True, fg=typer.colors.RED)
        raise typer.Exit(2) from None

    from trainer.data import DataError
    from trainer.fit import fit
    from trainer.records import NonFiniteLossError

    logging.basicConfig(level=logging.INFO, format="%(message)s", stream=sys.stdout, force=True)
    try:
        result = fit(config)
    except (DataError, ValueError, NonFiniteLossError) as exc:
        typer.secho(f"error: {exc}", err=True, fg=typer.colors.RED)
        raise typer.Exit(2) from None
    except KeyboardInterrupt:
        typer.secho("interrupted: the last checkpoint is in the run directory (--resume)", err=True)
        raise typer.Exit(130) from None
    print(
        f"done: mAP50 {result.mAP50:.4f} mAP50-95 {result.mAP50_95:.4f} "
        f"inference {result.inference_ms:.2f} ms/image, "
        f"{result.images_per_second:.0f} train img/s, "
        f"{result.epochs_completed} epochs on {result.device}; run directory {result.run_dir}"
    )


def _parse_milestones(text: str | list[float] | tuple[float, ...]) -> tuple[float, ...]:
    if not isinstance(text, str):
        return tuple(float(m) for m in text)
    try:
        return tuple(float(part) for part in text.split(",") if part.strip())
    except ValueError:
        raise ValueError(
            f"milestones must be comma-separated numbers, but got milestones={text!r}"
        ) from None
