"""`tune train`'s options: left alone, they are the trainer's recipe (`TrainConfig()`); typed, they
win over a `--hyp` file, which wins over the recipe."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from search.cli import app
from search.commands import train_command
from trainer.config import TrainConfig


def tune_train_config(args: list[str], monkeypatch: pytest.MonkeyPatch) -> tuple[TrainConfig, str]:
    """The config `tune train ARGS` would train with, and what it printed (the CLI parsed for
    real, training not run)."""
    seen: list[TrainConfig] = []

    def capture(values: dict[str, Any], explicit: set[str]) -> None:
        seen.append(train_command.build_train_config(values, explicit))

    monkeypatch.setattr(train_command, "run_train", capture)
    result = CliRunner().invoke(app, ["train", *args])
    assert result.exit_code == 0, result.output
    return seen[0], result.output


def test_defaults_are_the_trainers_recipe(monkeypatch: pytest.MonkeyPatch) -> None:
    config, _ = tune_train_config([], monkeypatch)
    assert config == TrainConfig()  # model, optimizer, lr, loss weights, schedule: one place


def test_typed_options_win_over_the_hyp_file_and_the_file_over_the_recipe(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    hyp = tmp_path / "hyp.yaml"
    hyp.write_text("lr0: 0.003\nbox: 0.7\noptimizer: SGD\n")
    config, _ = tune_train_config(
        ["--hyp", str(hyp), "--lr", "0.02", "--milestones", "0.5,0.8"], monkeypatch
    )
    assert (config.lr, config.lbox, config.optimizer) == (0.02, 0.7, "SGD")
    assert config.milestones == (0.5, 0.8)
    assert config.lcls == TrainConfig().lcls  # neither typed nor in the file
