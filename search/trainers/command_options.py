"""`[trial.command]`, validated: the command trainer's options and the parameters its script
accepts (`command.py` runs it; `docs/own-trainer.md` documents every key).

Every mistake is one `TrainerError` naming `trial.command.<key>` and the value. Nothing here
looks at the machine: a study file is checked where the script may not be (a report's laptop).
"""

from __future__ import annotations

import re
import string
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from search.trainers.base import TrainerError
from trainer.params import Kind, Param, ParamRegistry

# placeholders tune fills from the job; a parameter `p` adds `{p}`
JOB_PLACEHOLDERS: tuple[str, ...] = (
    "hyp", "out", "metrics", "data", "epochs", "eval_interval", "seed", "device", "resume",
    "threads",
)  # fmt: skip
OPTIONS: tuple[str, ...] = (
    "command", "params", "components", "metrics", "hang_timeout", "grace", "checkpoint",
    "resume_args",
)  # fmt: skip
PARAM_KEYS: tuple[str, ...] = ("default", "kind", "low", "high", "choices", "help", "group", "hyp")
_KINDS: dict[str, Kind] = {
    "float": "float", "int": "int", "bool": "bool", "choice": "choice", "str": "str"
}  # fmt: skip
DEFAULT_METRICS = "metrics.jsonl"  # tune's own run folder's name: `tune train` needs no option
# Evaluations can run long and silent on a CPU; a shorter hang timeout is one line in the file.
DEFAULT_HANG_TIMEOUT = 900.0
DEFAULT_GRACE = 10.0  # as `docker stop`: time to save a checkpoint and exit
# A command run through one of these with `-c SCRIPT`: tune quotes each value in SCRIPT
SHELLS = frozenset({"sh", "bash", "dash", "zsh", "ksh", "mksh", "ash"})
_QUOTED_PLACEHOLDER = re.compile(r"""['"]\{\w+\}|\{\w+\}['"]""")


@dataclass(frozen=True)
class CommandOptions:
    """`[trial.command]`, validated."""

    command: tuple[str, ...]
    metrics: str = DEFAULT_METRICS
    components: tuple[str, ...] = ()
    hang_timeout: float = DEFAULT_HANG_TIMEOUT
    grace: float = DEFAULT_GRACE
    checkpoint: str | None = None
    resume_args: tuple[str, ...] = ()


def parse_options(options: Mapping[str, Any], where: str) -> tuple[CommandOptions, ParamRegistry]:
    """`[trial.command]` validated: its options and its parameters; a `TrainerError` naming the
    first bad key and value."""
    unknown = sorted(set(options) - set(OPTIONS))
    if unknown:
        raise TrainerError(f"unknown key {where}.{unknown[0]} (known: {', '.join(OPTIONS)})")
    params = ParamRegistry("command", tuple(_params(options.get("params", {}), where)))
    placeholders = (*JOB_PLACEHOLDERS, *params.names)
    command = _strings(options, "command", where, required=True)
    resume_args = _strings(options, "resume_args", where)
    for key, parts in (("command", command), ("resume_args", resume_args)):
        for i, part in enumerate(parts):
            _check_template(part, f"{where}.{key}[{i}]", placeholders)
    script = shell_script_index(command)
    if script is not None and _QUOTED_PLACEHOLDER.search(command[script]):
        raise TrainerError(
            f"{where}.command[{script}]: write placeholders bare in a shell script (tune quotes "
            f"each value for the shell), but got {command[script]!r}"
        )
    checkpoint = _relative_file(options, "checkpoint", where, None)
    if resume_args and checkpoint is None:
        raise TrainerError(
            f"{where}.resume_args needs {where}.checkpoint (the file a retry resumes from), "
            f"but got resume_args={list(resume_args)!r} and no checkpoint"
        )
    components = _strings(options, "components", where)
    for name in components:
        if not name.isidentifier():
            raise TrainerError(f"{where}.components: each must be a name, but got {name!r}")
    return (
        CommandOptions(
            command=command,
            metrics=_relative_file(options, "metrics", where, DEFAULT_METRICS) or DEFAULT_METRICS,
            components=components,
            hang_timeout=_seconds(options, "hang_timeout", where, DEFAULT_HANG_TIMEOUT, 0.0),
            grace=_seconds(options, "grace", where, DEFAULT_GRACE, None),
            checkpoint=checkpoint,
            resume_args=resume_args,
        ),
        params,
    )


def shell_script_index(command: Sequence[str]) -> int | None:
    """The index of the script in a command a shell runs (`sh -c SCRIPT ...`, `bash -ec SCRIPT`,
    also after `env VAR=...`), or None for a command no shell reads."""
    i = 0
    if i < len(command) and Path(command[i]).name == "env":
        i += 1
        while i < len(command) and ("=" in command[i] or command[i].startswith("-")):
            i += 1
    if i >= len(command) or Path(command[i]).name not in SHELLS:
        return None
    for j in range(i + 1, len(command)):
        flag = command[j]
        if not flag.startswith("-") or flag.startswith("--") or flag == "-":
            return None  # a script file, not `-c`: its arguments are not parsed by the shell
        if "c" in flag[1:]:
            return j + 1 if j + 1 < len(command) else None
    return None


def _strings(
    options: Mapping[str, Any], key: str, where: str, required: bool = False
) -> tuple[str, ...]:
    value = options.get(key)
    if value is None and not required:
        return ()
    if not (isinstance(value, list) and all(isinstance(v, str) for v in value)) or (
        required and not value
    ):
        hint = f" (e.g. {value.split()!r})" if isinstance(value, str) else ""
        missing = "is required: " if value is None else ""
        raise TrainerError(
            f"{where}.{key} {missing}must be a {'non-empty ' if required else ''}list of "
            f"strings{hint}, but got {key}={value!r}"
        )
    return tuple(value)


def _check_template(part: str, where: str, known: Sequence[str]) -> None:
    try:
        fields = list(string.Formatter().parse(part))
    except ValueError as exc:
        raise TrainerError(
            f"{where}: {exc} in {part!r} (write a literal brace as {{{{ or }}}})"
        ) from None
    for _, name, spec, conversion in fields:
        if name is None:
            continue
        if name not in known:
            raise TrainerError(
                f"{where}: unknown placeholder {{{name}}} in {part!r} "
                f"(known: {', '.join('{' + k + '}' for k in known)})"
            )
        if spec or conversion:
            raise TrainerError(
                f"{where}: placeholders take no format or conversion, but got {part!r}"
            )


def _relative_file(
    options: Mapping[str, Any], key: str, where: str, default: str | None
) -> str | None:
    value = options.get(key, default)
    if value is None:
        return None
    if not isinstance(value, str) or not value or Path(value).is_absolute() or ".." in value:
        raise TrainerError(
            f"{where}.{key} must be a file name inside the trial's folder, but got {key}={value!r}"
        )
    return value


def _seconds(
    options: Mapping[str, Any], key: str, where: str, default: float, above: float | None
) -> float:
    value = options.get(key, default)
    ok = isinstance(value, int | float) and not isinstance(value, bool)
    if not ok or (above is not None and value <= above) or value < 0:
        bound = f"> {above:g}" if above is not None else ">= 0"
        raise TrainerError(f"{where}.{key} must be seconds {bound}, but got {key}={value!r}")
    return float(value)


def _params(table: Any, where: str) -> list[Param]:
    if not isinstance(table, dict):
        raise TrainerError(
            f"{where}.params must be a table of parameters, e.g. "
            f"{{ lr0 = {{ default = 0.01, low = 0, high = 1 }} }}, but got params={table!r}"
        )
    return [_param(name, spec, f"{where}.params.{name}") for name, spec in table.items()]


def _param(name: str, spec: Any, at: str) -> Param:
    """One `[trial.command.params]` entry; its kind follows from `default` (and `choices`)."""
    if not name.isidentifier():
        raise TrainerError(f"{at}: a parameter's name must be an identifier, but got {name!r}")
    if name in JOB_PLACEHOLDERS:
        raise TrainerError(f"{at}: {name!r} is a placeholder tune sets; name the parameter else")
    if not isinstance(spec, dict) or "default" not in spec:
        raise TrainerError(
            f"{at} must be a table with a default, e.g. {{ default = 0.01, low = 0, high = 1 }} "
            f'or {{ default = "SGD", choices = ["SGD", "Adam"] }}, but got {name}={spec!r}'
        )
    unknown = sorted(set(spec) - set(PARAM_KEYS))
    if unknown:
        raise TrainerError(f"unknown key {at}.{unknown[0]} (known: {', '.join(PARAM_KEYS)})")
    default, choices = spec["default"], spec.get("choices")
    kind = spec.get("kind", _kind_of(default, choices))
    if not isinstance(kind, str) or kind not in _KINDS:
        raise TrainerError(f"{at}.kind must be one of {', '.join(_KINDS)}, but got kind={kind!r}")
    if choices is not None and (
        kind != "choice"
        or not isinstance(choices, list)
        or not choices
        or not all(isinstance(c, str) for c in choices)
    ):
        raise TrainerError(f"{at}.choices must be a non-empty list of strings, got {choices=}")
    if kind == "choice" and choices is None:
        raise TrainerError(f"{at}: a choice needs choices = [...], but got {spec!r}")
    bounds = {k: spec[k] for k in ("low", "high") if k in spec}
    for key, bound in bounds.items():
        if (
            kind not in ("float", "int")
            or not isinstance(bound, int | float)
            or (isinstance(bound, bool))
        ):
            raise TrainerError(f"{at}.{key} bounds a number parameter, but got {key}={bound!r}")
    if "low" in bounds and "high" in bounds and bounds["low"] > bounds["high"]:
        raise TrainerError(f"{at}: low must not exceed high, but got {bounds}")
    for key in ("help", "group", "hyp"):
        if key in spec and not isinstance(spec[key], str):
            raise TrainerError(f"{at}.{key} must be a string, but got {key}={spec[key]!r}")
    if kind == "float" and isinstance(default, int) and not isinstance(default, bool):
        default = float(default)  # `default = 1` of a float parameter
    param = Param(
        name,
        _KINDS[kind],
        default,
        help=spec.get("help", ""),
        low=bounds.get("low"),
        high=bounds.get("high"),
        choices=tuple(choices or ()),
        hyp=spec.get("hyp"),
        group=spec.get("group", ""),
    )
    problem = param.problem(default)
    if problem is not None:
        raise TrainerError(f"{at}.default {problem}, but got default={default!r}")
    return param


def _kind_of(default: Any, choices: Any) -> str:
    if choices is not None:
        return "choice"
    if isinstance(default, bool):
        return "bool"
    if isinstance(default, int):
        return "int"
    if isinstance(default, float):
        return "float"
    return "str"
