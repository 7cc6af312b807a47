"""A command in its own process group: started, watched, and always ended with everything it
started.

The command trainer (`command.py`) runs a user's script per trial. Stopping it (pruned, worker
stopped, hung) must stop its children too (data-loader workers, a shell's pipeline), so it
starts in a session of its own and is stopped as a group: SIGTERM, then SIGKILL after a grace
period. Its output (stdout and stderr, one pipe) is read by a thread in chunks, so that a
progress bar redrawn with carriage returns counts as output, and kept in a log file.

A process whose parent has exited is handed to PID 1, and not every PID 1 reaps (a container's
or a micro-VM's init may not): its zombie keeps the group alive, and "the group is gone" could
never be checked. So while a command runs, the worker is a child subreaper (Linux): orphans of
the command become its children, and `end_group` reaps them. Only while it runs: a subreaper
also adopts every other orphan among its descendants (a daemon some other code starts), which
nobody would reap.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import queue
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Mapping, Sequence
from pathlib import Path

_PR_SET_CHILD_SUBREAPER = 36  # linux/prctl.h
_REAP_LIMIT = 5.0  # seconds to wait for SIGKILLed processes to be reaped


def set_subreaper(on: bool) -> None:
    """Adopt this process's orphaned descendants, or stop adopting them (Linux; elsewhere a
    no-op)."""
    if not sys.platform.startswith("linux"):
        return
    with contextlib.suppress(OSError, AttributeError):
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(_PR_SET_CHILD_SUBREAPER, int(on), 0, 0, 0)


class OutputReader:
    """Reads a process's output on a thread: complete lines go to `lines`, every byte moves
    `last_output` (monotonic seconds) and is appended to `log`."""

    def __init__(self, stream: int, log: Path) -> None:
        self.lines: queue.Queue[str] = queue.Queue()
        self.last_output = time.monotonic()
        self._fd = stream
        self._log = log
        self._thread = threading.Thread(target=self._read, name="command-output", daemon=True)
        self._thread.start()

    def _read(self) -> None:
        pending = b""
        with self._log.open("ab") as log:
            while True:
                try:
                    chunk = os.read(self._fd, 65536)
                except OSError:
                    chunk = b""
                if not chunk:
                    break
                self.last_output = time.monotonic()
                log.write(chunk)
                log.flush()
                # a carriage return ends a line too: progress bars redraw one line with it
                *complete, pending = (pending + chunk).replace(b"\r", b"\n").split(b"\n")
                for line in complete:
                    if line.strip():
                        self.lines.put(line.decode("utf-8", "replace"))
        if pending.strip():
            self.lines.put(pending.decode("utf-8", "replace"))

    def join(self, timeout: float) -> None:
        """Wait for the end of the output (all writers gone), at most `timeout` seconds."""
        self._thread.join(timeout)

    def drain(self) -> list[str]:
        """The complete lines read since the previous call."""
        out = []
        while True:
            try:
                out.append(self.lines.get_nowait())
            except queue.Empty:
                return out


def start(
    argv: Sequence[str], env: Mapping[str, str], log: Path
) -> tuple[subprocess.Popen[bytes], OutputReader]:
    """Start `argv` as the leader of a new session (its own process group), output to a
    reader; `end_group` must follow. Raises `FileNotFoundError`/`PermissionError` as
    `subprocess.Popen` does."""
    set_subreaper(True)
    try:
        proc = subprocess.Popen(
            list(argv),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            env=dict(env),
            start_new_session=True,
        )
    except BaseException:
        set_subreaper(False)
        raise
    assert proc.stdout is not None
    # the reader owns the pipe from here: a raw fd, read in chunks
    fd = os.dup(proc.stdout.fileno())
    proc.stdout.close()
    try:
        reader = OutputReader(fd, log)
    except BaseException:
        os.close(fd)
        raise
    return proc, reader


def group_alive(pgid: int) -> bool:
    """Whether any process (a zombie included) is left in process group `pgid`."""
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def end_group(proc: subprocess.Popen[bytes], grace: float) -> None:
    """Stop `proc`'s process group: SIGTERM, SIGKILL after `grace` seconds, then reap. Returns
    once the group is gone (or, with processes nobody can reap, after a few seconds more)."""
    pgid = proc.pid
    _reap(proc, pgid)
    if group_alive(pgid):
        _signal(pgid, signal.SIGTERM)
        if not _wait_gone(proc, pgid, grace):
            _signal(pgid, signal.SIGKILL)
            _wait_gone(proc, pgid, _REAP_LIMIT)
    set_subreaper(False)


def _signal(pgid: int, sig: signal.Signals) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, sig)


def _wait_gone(proc: subprocess.Popen[bytes], pgid: int, seconds: float) -> bool:
    deadline = time.monotonic() + seconds
    while True:
        _reap(proc, pgid)
        if not group_alive(pgid):
            return True
        if time.monotonic() >= deadline:
            return False
        time.sleep(0.02)


def _reap(proc: subprocess.Popen[bytes], pgid: int) -> None:
    """Reap the leader (through `proc`, which keeps its exit status) and then any other member
    of the group that is this process's child (adopted orphans)."""
    if proc.poll() is None:
        return  # reaping by group first could take the leader's status from `proc`
    while True:
        try:
            pid, _ = os.waitpid(-pgid, os.WNOHANG)
        except ChildProcessError:
            return
        if pid == 0:
            return
