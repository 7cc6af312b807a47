"""What a command trainer tells tune: its metrics file (JSON lines) and the notes' stdout lines.

The protocol is documented for users in `docs/own-trainer.md`; in short, one JSON object per
line of the metrics file:

- an **evaluation line** has `mAP50_95` and/or `mAP50`, the step (`step`, else `epoch`: epochs
  completed), optionally `iter` (the training curves' axis), unweighted validation loss
  components as `val_l<name>` (`val_lbox`), any other numbers (`val_loss`, the weighted
  total, among them), which become metrics, and optionally `checkpoint`: the file, relative to
  the trial's folder, that the script has finished writing for this step
  (`search/trainers/checkpoint_watch.py`);
- every other line is a **training line**: `iter` (required), `epoch`, `lr`, `loss` (the
  weighted total), `latency` (seconds per iteration) and components as `l<name>`.

tune's own run folder `metrics.jsonl` (`trainer/run_dir.py`) is such a file, so `tune train` is
a valid command. On stdout, lines in the hand-tuning notes' format
(`epoch 6 / iter 1073 lr 0.00100 , loss 1.00232 latency 0.03125`) are training points, used
when the metrics file carries no training lines; every other stdout line is ignored.
"""

from __future__ import annotations

import json
import math
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeGuard

EVAL_METRICS: tuple[str, ...] = ("mAP50_95", "mAP50")  # either one makes an evaluation line
_PLACE_KEYS = ("step", "epoch", "iter")  # where a line is, not what it measured
_WEIGHTED_TOTAL = "val_loss"  # `val_l` + "oss": the weighted total, not a component named "oss"
_NOTES_LINE = re.compile(
    r"\bepoch\s+(?P<epoch>\d+)\s*/\s*iter\s+(?P<iter>\d+)\s+lr\s+(?P<lr>\S+)\s*,\s*"
    r"loss\s+(?P<loss>\S+)\s+latency\s+(?P<latency>\S+)"
)


class MetricsLineError(ValueError):
    """A metrics-file line that does not follow the protocol (the message quotes it)."""


@dataclass(frozen=True)
class EvalLine:
    """An evaluation line, parsed."""

    step: int
    metrics: dict[str, float]
    losses: dict[str, float]
    iter: int | None
    checkpoint: str | None = None  # the file, relative to OUT, the script finished for this step


@dataclass(frozen=True)
class TrainPoint:
    """A training line (from the metrics file or stdout), as the stored curve keeps it."""

    values: dict[str, float | int]

    @property
    def iter(self) -> int:
        return int(self.values["iter"])


def parse_metrics_line(
    text: str, where: str, components: tuple[str, ...] = ()
) -> EvalLine | TrainPoint | None:
    """One line of the metrics file (None for a blank one). `where` names it in errors
    (`metrics.jsonl line 3`); `components`, when declared, are the only `val_l<name>` allowed."""
    if not text.strip():
        return None
    try:
        obj = json.loads(text)
    except json.JSONDecodeError as exc:
        raise MetricsLineError(f"{where} is not JSON ({exc.msg}): {_quote(text)}") from None
    if not isinstance(obj, dict):
        raise MetricsLineError(f"{where} must be a JSON object, but got {_quote(text)}")
    numbers = {k: v for k, v in obj.items() if _is_number(v)}
    if any(k in obj for k in EVAL_METRICS):
        return _eval_line(obj, numbers, text, where, components)
    if not _is_int(obj.get("iter")):
        raise MetricsLineError(
            f"{where} is a training line (no {' or '.join(EVAL_METRICS)}), which needs an "
            f"integer iter, but got {_quote(text)}"
        )
    return TrainPoint({k: _int_or_float(k, v) for k, v in numbers.items()})


def _eval_line(
    obj: dict[str, Any],
    numbers: dict[str, Any],
    text: str,
    where: str,
    components: tuple[str, ...],
) -> EvalLine:
    step = obj.get("step", obj.get("epoch"))
    if not _is_int(step) or step < 1:
        raise MetricsLineError(
            f"{where} is an evaluation line, which needs step (or epoch): the epochs completed, "
            f"an integer >= 1, but got {_quote(text)}"
        )
    iteration = obj.get("iter")
    if iteration is not None and not _is_int(iteration):
        raise MetricsLineError(f"{where}: iter must be an integer, but got {_quote(text)}")
    for name in EVAL_METRICS:
        if name in obj and not _is_number(obj[name]):
            raise MetricsLineError(f"{where}: {name} must be a number, but got {_quote(text)}")
    losses: dict[str, float] = {}
    metrics: dict[str, float] = {}
    for key, value in numbers.items():
        if key in _PLACE_KEYS:
            continue
        if key.startswith("val_l") and key != _WEIGHTED_TOTAL:
            name = key.removeprefix("val_l")
            if components and name not in components:
                raise MetricsLineError(
                    f"{where}: {key} is not a declared component (trial.command.components: "
                    f"{', '.join(components)}): {_quote(text)}"
                )
            losses[name] = float(value)
        else:
            metrics[key] = float(value)
    return EvalLine(
        int(step),
        metrics,
        losses,
        int(iteration) if iteration is not None else None,
        _checkpoint_name(obj.get("checkpoint"), text, where),
    )


def _checkpoint_name(name: Any, text: str, where: str) -> str | None:
    """An evaluation line's `checkpoint`: a file inside OUT, named relative to it."""
    if name is None:
        return None
    inside = isinstance(name, str) and name and not Path(name).is_absolute()
    if not inside or ".." in Path(name).parts:
        raise MetricsLineError(
            f"{where}: checkpoint must name a file inside the trial's folder, relative to it "
            f'("last.pt"), but got {_quote(text)}'
        )
    return name


def parse_notes_line(text: str) -> TrainPoint | None:
    """A stdout line in the notes' format as a training point (None for any other line)."""
    match = _NOTES_LINE.search(text)
    if match is None:
        return None
    try:
        values = {k: float(match[k]) for k in ("lr", "loss", "latency")}
    except ValueError:
        return None
    if not all(math.isfinite(v) for v in values.values()):
        return None  # a non-finite loss is the script's to raise; the curve keeps numbers only
    return TrainPoint({"epoch": int(match["epoch"]), "iter": int(match["iter"]), **values})


@dataclass
class MetricsTail:
    """Follows a JSON-lines file as another process appends to it.

    `read()` returns the complete lines added since the previous call, numbered from 1; a last
    line without its newline waits for it (the writer may be mid-line) until `read(final=True)`.
    A file replaced (a new inode, as an atomic rewrite makes) or truncated is read again from its
    start, and `rewritten` is set: lines already handled must then be skipped by the caller.
    """

    path: Path
    rewritten: bool = False
    _fd: int | None = None
    _ino: int | None = None
    _pending: bytes = b""
    _lineno: int = 0
    _offset: int = 0

    def read(self, final: bool = False) -> list[tuple[int, str]]:
        self._follow()
        if self._fd is None:
            return []
        chunks = []
        while chunk := os.pread(self._fd, 65536, self._offset):
            chunks.append(chunk)
            self._offset += len(chunk)
        *complete, self._pending = (self._pending + b"".join(chunks)).split(b"\n")
        if final and self._pending:
            complete.append(self._pending)
            self._pending = b""
        lines = []
        for raw in complete:
            self._lineno += 1
            lines.append((self._lineno, raw.decode("utf-8", "replace")))
        return lines

    def peek(self) -> list[str]:
        """The complete lines written after what `read` returned, without consuming them."""
        if self._fd is None:
            return []
        ahead = self._pending + os.pread(self._fd, 1 << 20, self._offset)
        return [raw.decode("utf-8", "replace") for raw in ahead.split(b"\n")[:-1]]

    def _follow(self) -> None:
        try:
            stat = os.stat(self.path)
        except FileNotFoundError:
            return
        if self._fd is not None and stat.st_ino == self._ino and stat.st_size >= self._offset:
            return
        if self._fd is not None:
            os.close(self._fd)
            self.rewritten = True
        try:
            self._fd = os.open(self.path, os.O_RDONLY)
        except FileNotFoundError:
            self._fd = None
            return
        self._ino = os.fstat(self._fd).st_ino
        self._pending, self._lineno, self._offset = b"", 0, 0

    def close(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None


def _quote(text: str, limit: int = 200) -> str:
    text = text.strip()
    return repr(text if len(text) <= limit else text[:limit] + "...")


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _is_int(value: Any) -> TypeGuard[int]:
    return isinstance(value, int) and not isinstance(value, bool)


def _int_or_float(key: str, value: int | float) -> int | float:
    # epoch and iter index the curve: integers; everything else is a measurement
    return int(value) if key in ("epoch", "iter") and float(value).is_integer() else float(value)
