"""Helpers shared by the deployment tests: the files users run, read the way their tools read them.

- `load_compose()` parses docker-compose.yml (YAML anchors resolved) and `interpolate()` expands
  `${VAR}`, `${VAR:-default}` and `${VAR:?message}` like docker compose does;
- `sbatch_tune_lines()` finds the `tune ...` command lines of the Slurm script;
- `parse_cli()` parses a `tune` command line with the real typer app, without running it, so an
  unknown subcommand or option, or a bad value, fails the same way it would for a user.
"""

from __future__ import annotations

import re
import shlex
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import typer
import yaml

# typer 0.2x vendors click as typer._click (there is no separate click package to import).
from typer._click import core as click_core
from typer._click import exceptions as click_errors
from typer.core import TyperGroup

ROOT = Path(__file__).resolve().parents[2]
COMPOSE_FILE = ROOT / "docker-compose.yml"
ENV_EXAMPLE = ROOT / ".env.example"
K8S_FILE = ROOT / "deploy" / "k8s" / "tune-workers.yaml"
SBATCH_FILE = ROOT / "deploy" / "slurm" / "tune-workers.sbatch"
DOCKERFILE = ROOT / "Dockerfile"
DOCKERIGNORE = ROOT / ".dockerignore"
GUIDE = ROOT / "docs" / "deployment.md"

# $$ | ${NAME} | ${NAME<op>ARG} | $NAME, with op one of :- - :? ?
_VARIABLE = re.compile(
    r"\$(?:(?P<escaped>\$)|\{(?P<braced>[A-Za-z_][A-Za-z0-9_]*)(?:(?P<op>:-|-|:\?|\?)"
    r"(?P<arg>[^}]*))?\}|(?P<named>[A-Za-z_][A-Za-z0-9_]*))"
)


class MissingVariableError(KeyError):
    """A `${VAR:?message}` whose variable is unset (or empty); compose refuses to start."""


def load_compose() -> dict[str, Any]:
    """docker-compose.yml as compose sees it before interpolation."""
    data = yaml.safe_load(COMPOSE_FILE.read_text())
    assert isinstance(data, dict), f"{COMPOSE_FILE} is not a mapping"
    return data


def interpolate(value: str, env: Mapping[str, str]) -> str:
    """Expand compose variables in `value` from `env` (compose's rules for the four forms)."""

    def expand(match: re.Match[str]) -> str:
        if match.group("escaped"):
            return "$"
        name = match.group("braced") or match.group("named")
        op, arg = match.group("op"), match.group("arg") or ""
        current = env.get(name)
        if op == ":-":
            return current if current else arg
        if op == "-":
            return arg if current is None else current
        if op in (":?", "?") and (current is None or (op == ":?" and not current)):
            raise MissingVariableError(f"{name}: {arg}")
        return current or ""

    return _VARIABLE.sub(expand, value)


def compose_variables(data: Any) -> dict[str, str | None]:
    """Every variable the values of a parsed compose file read (comments are not interpolated),
    with its operator (None for a plain `${VAR}`)."""
    found: dict[str, str | None] = {}
    if isinstance(data, dict):
        for value in data.values():
            for name, op in compose_variables(value).items():
                found.setdefault(name, op)
    elif isinstance(data, list):
        for value in data:
            for name, op in compose_variables(value).items():
                found.setdefault(name, op)
    elif isinstance(data, str):
        for match in _VARIABLE.finditer(data):
            name = match.group("braced") or match.group("named")
            if name:
                found.setdefault(name, match.group("op"))
    return found


def service_command(service: Mapping[str, Any], env: Mapping[str, str]) -> list[str]:
    """A compose service's command (exec form) with variables expanded."""
    command = service["command"]
    assert isinstance(command, list), f"use the exec form (a list) for commands, got {command!r}"
    return [interpolate(str(part), env) for part in command]


def sbatch_tune_lines(text: str) -> list[list[str]]:
    """The `tune ...` commands the Slurm script runs (not its comments), split like the shell."""
    lines = []
    for line in text.splitlines():
        stripped = line.strip()
        if stripped.startswith("#"):
            continue
        words = shlex.split(stripped) if stripped else []
        while words and words[0] in ("exec", "srun"):
            words = words[1:]
        if words and words[0] == "tune":
            lines.append(words[1:])
    return lines


def tune_click_group() -> TyperGroup:
    """The real `tune` command group, as click sees it."""
    from search.cli import app

    group = typer.main.get_command(app)
    assert isinstance(group, TyperGroup)
    return group


def parse_cli(args: list[str]) -> click_core.Context:
    """Parse `tune ARGS` with the real CLI without running it; raises click errors on misuse."""
    group = tune_click_group()
    assert args, "empty tune command line"
    command = group.commands.get(args[0])
    if command is None:
        raise click_errors.UsageError(
            f"no such tune command {args[0]!r}; have {sorted(group.commands)}"
        )
    return command.make_context(f"tune {args[0]}", list(args[1:]))


def doc_tune_commands(markdown: str) -> list[list[str]]:
    """`tune ...` (or `uv run tune ...`) command lines inside the fenced code blocks of a guide.

    Lines continued with a backslash are joined; `<placeholders>` become a dummy word, `$VAR`
    stays as a word (both are values, not options).
    """
    commands: list[list[str]] = []
    in_block = False
    pending = ""
    for raw in markdown.splitlines():
        if raw.lstrip().startswith("```"):
            in_block = not in_block
            continue
        if not in_block:
            continue
        line = pending + raw.strip()
        if line.endswith("\\"):
            pending = line[:-1] + " "
            continue
        pending = ""
        line = line.split(" #", 1)[0]
        line = re.sub(r"<[^>]+>", "PLACEHOLDER", line)
        for part in re.split(r"&&|;|\|", line):
            words = shlex.split(part, posix=True) if part.strip() else []
            while words and ("=" in words[0] and not words[0].startswith("-")):
                words = words[1:]  # VAR=value prefixes
            if words[:2] == ["uv", "run"]:
                words = words[2:]
                while words and words[0].startswith("-"):
                    words = words[1:]  # uv's own options (--frozen, --no-sync)
            for prefix in (["exec"], ["docker", "compose", "exec", "worker"]):
                if words[: len(prefix)] == prefix:
                    words = words[len(prefix) :]
            if words[:3] == ["docker", "compose", "run"]:
                # `docker compose run [--rm] SERVICE ARGS`: the image's entrypoint is `tune`
                words = words[3:]
                while words and words[0].startswith("-"):
                    words = words[1:]
                words = ["tune", *words[1:]]
            if words and words[0] == "tune" and len(words) > 1:
                commands.append(words[1:])
    return commands
