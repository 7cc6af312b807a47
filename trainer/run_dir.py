"""The files of one run directory, written so that a crash never leaves a half-written file.

config.json        the resolved TrainConfig
metrics.jsonl      training lines (epoch, iter, lr, loss, lbox, lobj, lcls, latency) and
                   evaluation lines (epoch, iter, mAP50, mAP50_95, val_*), one JSON per line
predictions.json   the last evaluation's detections, COCO results format
summary.json       the FitResult of a finished run
last.pt            checkpoint after the last evaluation (resume from here)
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import torch

from trainer.config import TrainConfig
from trainer.records import EvalLine, FitResult, TrainLine


class RunDir:
    """Paths and writers of a run directory."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self.path.mkdir(parents=True, exist_ok=True)

    @property
    def metrics(self) -> Path:
        return self.path / "metrics.jsonl"

    @property
    def checkpoint(self) -> Path:
        return self.path / "last.pt"

    def write_config(self, config: TrainConfig) -> None:
        _atomic_write_text(self.path / "config.json", json.dumps(config.to_dict(), indent=2) + "\n")

    def start_metrics(self, keep_through_iter: int) -> None:
        """Start metrics.jsonl afresh, or, when resuming, keep only lines up to the checkpoint."""
        kept: list[str] = []
        if keep_through_iter > 0 and self.metrics.exists():
            kept = [
                line
                for line in self.metrics.read_text().splitlines()
                if line.strip() and json.loads(line)["iter"] <= keep_through_iter
            ]
        _atomic_write_text(self.metrics, "".join(line + "\n" for line in kept))

    def append(self, record: TrainLine | EvalLine) -> None:
        with self.metrics.open("a") as f:
            f.write(json.dumps(record.to_dict()) + "\n")

    def write_predictions(self, predictions: list[dict[str, Any]]) -> None:
        _atomic_write_text(self.path / "predictions.json", json.dumps(predictions))

    def write_summary(self, result: FitResult) -> None:
        _atomic_write_text(
            self.path / "summary.json", json.dumps(result.to_dict(), indent=2) + "\n"
        )

    def save_checkpoint(self, state: dict[str, Any]) -> None:
        tmp = self.checkpoint.with_suffix(".pt.tmp")
        torch.save(state, tmp)
        os.replace(tmp, self.checkpoint)

    def load_checkpoint(self) -> dict[str, Any] | None:
        if not self.checkpoint.exists():
            return None
        # weights_only: a checkpoint may come from a shared artifact store (a retry on another
        # machine); it must never be able to run code, only carry tensors and numbers
        state: dict[str, Any] = torch.load(self.checkpoint, map_location="cpu", weights_only=True)
        return state


def _atomic_write_text(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)
