"""Which checkpoint belongs to an evaluation when another process writes it (the command trainer).

tune's own trainer and the Ultralytics adapter save their checkpoint on the thread that reports,
before it reports: the file is complete and of that step when the search uploads it. A command
is another process, which goes on while tune reads: its file can be half written, or already
the next step's. So for each evaluation line the command trainer takes a **snapshot**, a private
copy that nothing else writes, and reports that copy as the step's checkpoint:

- **Named in the line** (`"checkpoint": "last.pt"` in the evaluation line): the script says it
  has finished writing that file for this step (best written to a temporary name and renamed).
  It is copied at once.
- **Otherwise** the file must be **stable** (its inode, modification time and size the same at
  two looks `STABLE_SECONDS` apart, and not empty) and **new** (not the version taken for the
  previous evaluation, nor the one the run started with). tune waits up to `WAIT_SECONDS` for
  that, and gives up early when the script has already written its next evaluation line (a
  version seen now may be the next step's) or has exited (a file left by a killed writer rests
  forever, torn). When no such version comes, the evaluation is
  reported without a checkpoint: the one uploaded before stays the one a retry resumes from,
  and the storage knows its step. A version that completes after such a miss may be the missed
  step's, so the next evaluation takes only a version that appears after its own line.

Every copy is checked: the file's state is the same before and after the copy, or the copy is
thrown away and taken again (within the same wait). A copy is therefore one whole version of the
file, never a torn one, whichever way the script writes.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import time
from collections.abc import Callable
from pathlib import Path

STABLE_SECONDS = 0.5  # unchanged this long: the writer is done with it
WAIT_SECONDS = 5.0  # for a new, stable version after an evaluation line
SNAPSHOT_NAME = ".tune-checkpoint"  # in the trial's folder: the copy the search uploads
_POLL = 0.02

FileState = tuple[int, int, int]  # (inode, modification time in ns, size)


def file_state(path: Path) -> FileState | None:
    """`path`'s (inode, mtime ns, size), or None when there is no file."""
    try:
        stat = os.stat(path)
    except FileNotFoundError:
        return None
    return (stat.st_ino, stat.st_mtime_ns, stat.st_size)


def snapshot(source: Path, dest: Path) -> FileState | None:
    """Copy `source` to `dest` as one consistent version of it: the state it had when the copy
    began, returned. None, and `dest` untouched, when `source` is missing or empty or changed
    while it was copied."""
    before = file_state(source)
    if before is None or before[2] == 0:
        return None
    partial = dest.with_name(dest.name + ".partial")
    try:
        with open(source, "rb") as src, open(partial, "wb") as out:
            opened = os.fstat(src.fileno())
            if (opened.st_ino, opened.st_mtime_ns, opened.st_size) != before:
                raise _Changed
            shutil.copyfileobj(src, out)
            copied = out.tell()
        if file_state(source) != before or copied != before[2]:
            raise _Changed
    except (_Changed, FileNotFoundError):
        with contextlib.suppress(FileNotFoundError):
            partial.unlink()
        return None
    os.replace(partial, dest)
    return before


class _Changed(Exception):
    """The file changed while it was being copied."""


class CheckpointWatch:
    """Takes one run's checkpoint snapshots, one per evaluation (see the module docstring)."""

    def __init__(
        self,
        path: Path,
        snapshot_path: Path,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self.path = path
        self.snapshot_path = snapshot_path
        self._clock, self._sleep = clock, sleep
        # the file the run starts with (a retry's restored checkpoint, an earlier attempt's
        # file) is not the checkpoint of this run's first evaluation
        self._taken = file_state(path)
        self._missed = False

    def named(self, name: str) -> Path | None:
        """The snapshot of `name` (relative to the checkpoint's folder), which the evaluation
        line says is complete; None when it is missing or changes while it is copied."""
        state = snapshot(self.path.parent / name, self.snapshot_path)
        if state is None:
            return None
        self._taken, self._missed = state, False
        return self.snapshot_path

    def wait(self, give_up: Callable[[], bool] = lambda: False) -> Path | None:
        """After an evaluation line that names no checkpoint: the snapshot of a new, stable
        version of the file, waited for up to `WAIT_SECONDS`; None when none came, or when
        `give_up()` says the script has gone on to its next evaluation or exited."""
        # after a miss, the version on disk now may be the missed step's, finished late
        old = file_state(self.path) if self._missed else self._taken
        deadline = self._clock() + WAIT_SECONDS
        seen, since = file_state(self.path), self._clock()
        while True:
            if give_up():
                self._missed = True
                return None
            now = self._clock()
            if seen is not None and seen != old and seen[2] > 0 and now - since >= STABLE_SECONDS:
                state = snapshot(self.path, self.snapshot_path)
                if state == seen:
                    self._taken, self._missed = state, False
                    return self.snapshot_path
            if now >= deadline:
                self._missed = True
                return None
            self._sleep(_POLL)
            state = file_state(self.path)
            if state != seen:
                seen, since = state, self._clock()
