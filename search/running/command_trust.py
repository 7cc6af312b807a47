"""A worker runs a command from the storage only when its own side says so.

A study of the command trainer stores its command template with the study (`[trial.command]`:
`command`, and `resume_args` appended on a retry). Taken as it is, write access to the storage
would be a shell on every worker. So a worker runs such a study only when

- it was given the study file (`tune worker --study FILE.toml`) and the stored command is the
  file's, or
- it was started with the command's digest (`--allow-command DIGEST`, or `$TUNE_ALLOW_COMMAND`;
  `tune launch` prints it for the workers of other hosts and gives it to its own) and the
  stored command has that digest.

Otherwise, or on any difference, it stops before it starts a trial, with one line naming the
study and what differs. Studies of tune's own trainer and of Ultralytics run no command and are
unaffected. What the command is given (parameter values, data paths) is data, never shell:
`search/trainers/command.py`.
"""

from __future__ import annotations

import hashlib
import json
import shlex
from collections.abc import Mapping
from typing import Any

ALLOW_ENV = "TUNE_ALLOW_COMMAND"
_EXECUTED = ("command", "resume_args")  # what of `[trial.command]` becomes a process's argv


class UntrustedCommand(ValueError):
    """The stored command is not one this worker's side allows: the message is one line."""


def executed(options: Mapping[str, Any]) -> dict[str, list[str]]:
    """What of `[trial.command]` options becomes a command line: the command and resume args."""
    return {key: [str(part) for part in options.get(key) or ()] for key in _EXECUTED}


def command_digest(options: Mapping[str, Any]) -> str:
    """The SHA-256 of the executed part of `[trial.command]` (hex): what `--allow-command`
    takes. Any change to the command or its resume arguments changes it."""
    canonical = json.dumps(executed(options), sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(canonical.encode()).hexdigest()


def check_command(
    study: str,
    trainer: str,
    stored: Mapping[str, Any],
    *,
    study_file: tuple[str, Mapping[str, Any]] | None = None,
    allowed_digest: str | None = None,
) -> None:
    """Raise `UntrustedCommand` unless the study's stored `[trial.<trainer>]` options run no
    command, or run the one the worker's side allows: the `[trial.command]` options of its own
    `study_file` (its path, its options), or the command of `allowed_digest`."""
    if trainer != "command":
        return
    shown = _shown(stored)
    if study_file is not None:
        path, options = study_file
        difference = _difference(executed(stored), executed(options))
        if difference:
            raise UntrustedCommand(
                f"study {study!r}: the command stored with it differs from {path}'s: "
                f"{difference}; no trial of it runs on this worker"
            )
        return
    if allowed_digest:
        if command_digest(stored) != allowed_digest.strip().lower():
            raise UntrustedCommand(
                f"study {study!r}: the command stored with it ({shown}) is not the one "
                f"--allow-command (${ALLOW_ENV}) allows; no trial of it runs on this worker"
            )
        return
    raise UntrustedCommand(
        f"study {study!r} runs a command stored with it ({shown}); a worker runs one only when "
        f"its own side says so: give it the study file (--study FILE.toml) or the digest "
        f"`tune launch` printed (--allow-command DIGEST or ${ALLOW_ENV})"
    )


def _shown(options: Mapping[str, Any]) -> str:
    words = executed(options)
    text = shlex.join(words["command"])
    if words["resume_args"]:
        text += f", resume args {shlex.join(words['resume_args'])}"
    return text if len(text) <= 160 else text[:157] + "..."


def _difference(stored: dict[str, list[str]], own: dict[str, list[str]]) -> str:
    for key in _EXECUTED:
        theirs, ours = stored[key], own[key]
        if theirs == ours:
            continue
        for i in range(max(len(theirs), len(ours))):
            there = theirs[i] if i < len(theirs) else None
            here = ours[i] if i < len(ours) else None
            if there != here:
                return f"{key}[{i}] is {there!r} there, {here!r} here"
    return ""
