"""The study lock on SQLite (one machine): an flock on a file in the temporary folder, named
after the database and the study, exclusive only. The kernel releases it when the holding
process dies."""

from __future__ import annotations

import fcntl
import hashlib
import tempfile
import time
from pathlib import Path

from optuna.storages import RDBStorage


class FileLock:
    """One process's hold on the study's lock file."""

    def __init__(self, storage: RDBStorage, study_id: int) -> None:
        database = storage.engine.url.database or ":memory:"
        key = hashlib.sha1(f"{Path(database).resolve()}:{study_id}".encode()).hexdigest()
        self.path = Path(tempfile.gettempdir()) / f"tune-{key[:16]}.lock"
        self._file = open(self.path, "wb")  # noqa: SIM115  # closed by `release`

    def try_acquire(self, seconds: float) -> bool:
        """Try for up to `seconds`, every 10 ms (flock has no bounded wait)."""
        end = time.monotonic() + seconds
        while True:
            try:
                fcntl.flock(self._file, fcntl.LOCK_EX | fcntl.LOCK_NB)
                return True
            except BlockingIOError:
                if time.monotonic() >= end:
                    return False
            time.sleep(0.01)

    def holder(self) -> str:
        return f"held by another process on this machine ({self.path})"

    def holders(self) -> int:
        raise ValueError("the study lock has no shared mode on SQLite")

    def release(self, held: bool) -> None:
        if self._file.closed:
            return
        if held:
            fcntl.flock(self._file, fcntl.LOCK_UN)
        self._file.close()
