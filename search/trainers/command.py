"""Any script as a trainer (`[trial] trainer = "command"`, options in `[trial.command]`,
validated by `command_options.py`).

tune writes the trial's values to `OUT/hyp.yaml` (and substitutes them into the command, a
template), starts the command in its own process group (`process_group.py`), follows its metrics
file and stdout (`command_protocol.py`), and reports each evaluation. A prune or a worker stop
(an exception from `report`, or `Interrupted` from the worker's signal handler) ends the group,
SIGTERM then SIGKILL; so do a hang (no output and no metrics line for `hang_timeout` seconds) and
the end of the command: when `run` returns or raises, nothing it started is left. A non-zero exit
is a failed trial whose reason has the exit status and the command's last lines. The protocol,
for users, is `docs/own-trainer.md`.
"""

from __future__ import annotations

import contextlib
import json
import os
import shlex
import signal
import string
import time
from collections import deque
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import yaml

from search.trainers import process_group
from search.trainers.base import Evaluation, ReportFn, TrainerError, TrialJob, TrialOutcome
from search.trainers.checkpoint_watch import SNAPSHOT_NAME, CheckpointWatch
from search.trainers.command_options import (
    JOB_PLACEHOLDERS,
    CommandOptions,
    parse_options,
    shell_script_index,
)
from search.trainers.command_protocol import (
    EvalLine,
    MetricsLineError,
    MetricsTail,
    TrainPoint,
    parse_metrics_line,
    parse_notes_line,
)
from trainer.params import ParamRegistry

HYP_FILE, LOG_FILE, SUMMARY_FILE = "hyp.yaml", "command.log", "summary.json"
DEFAULT_SEED = 0  # `{seed}` when the search sets none
# the worker's own, which a trial's script needs none of: the storage URL (it may carry a
# password) and the proxy's token (`search/bookkeeping/proxy_auth.py`)
_WORKER_SECRETS = ("TUNE_STORAGE", "TUNE_PROXY_TOKEN", "TUNE_PROXY_TOKEN_FILE")
# The reader thread gets this long to catch up with stdout lines printed before an evaluation
# (a script that prints no notes lines costs it once, at its first evaluation)
STDOUT_WAIT = 2.0
_POLL = 0.05  # seconds between looks at the output and the metrics file
_TAIL_LINES, _TAIL_CHARS = 8, 300  # of the output, in a failure's reason (stored: 500 chars)


class CommandFailed(RuntimeError):
    """The command ended a trial badly: a non-zero exit, a signal, a hang, a broken metrics
    line. The message is the trial's stored reason."""


class CommandTrainer:
    """Runs `options.command` once per trial (see the module docstring)."""

    name = "command"

    def __init__(self, options: CommandOptions, params: ParamRegistry) -> None:
        self.options = options
        self.params = params
        self.components = options.components
        self.checkpoint = options.checkpoint

    def prepare(self, job: TrialJob) -> None:
        """Nothing to share between trials: each is a process of its own."""

    def argv(self, job: TrialJob) -> list[str]:
        """The command line for `job`, placeholders filled (resume arguments appended).

        A value is data, never shell: it stays inside the argument its placeholder is in, and in
        the script of `sh -c SCRIPT` (`shell_script_index`) it is quoted for the shell. A value
        no argument can hold (a NUL byte) fails the trial."""
        fill = self._placeholders(job)
        for name, value in fill.items():
            if "\0" in value:
                raise TrainerError(f"{{{name}}} cannot be a command-line argument: {value!r}")
        script = shell_script_index(self.options.command)
        quoted = (
            {name: shlex.quote(value) for name, value in fill.items()}
            if script is not None
            else fill
        )
        extra = self.options.resume_args if job.resume else ()
        return [
            _substitute(part, quoted if i == script else fill)
            for i, part in enumerate((*self.options.command, *extra))
        ]

    def env(self, job: TrialJob) -> dict[str, str]:
        """The command's environment: the worker's, plus `TUNE_<PLACEHOLDER>` for each job
        placeholder."""
        fill = self._placeholders(job)
        env = {**os.environ, **{f"TUNE_{k.upper()}": fill[k] for k in JOB_PLACEHOLDERS}}
        for secret in _WORKER_SECRETS:
            env.pop(secret, None)
        env["PYTHONUNBUFFERED"] = "1"  # a Python script's lines arrive as printed, not at exit
        if job.threads is not None:
            # the worker's share of the cores: torch, numpy and OpenMP read it at start
            env["OMP_NUM_THREADS"] = str(job.threads)
        return env

    def _placeholders(self, job: TrialJob) -> dict[str, str]:
        out = Path(job.out).resolve()
        return {
            "hyp": str(out / HYP_FILE),
            "out": str(out),
            "metrics": str(out / self.options.metrics),
            "data": _data_path(job.data),
            "epochs": str(job.epochs),
            "eval_interval": str(job.eval_interval),
            "seed": str(job.seed if job.seed is not None else DEFAULT_SEED),
            "device": job.device,
            "resume": "1" if job.resume else "0",
            "threads": str(job.threads if job.threads is not None else os.cpu_count() or 1),
            **{name: _format(value) for name, value in self._values(job).items()},
        }

    def _values(self, job: TrialJob) -> dict[str, Any]:
        values = {**self.params.defaults(), **job.values}
        try:
            self.params.check(values, "trial.command.params")
        except ValueError as exc:
            raise TrainerError(str(exc)) from None
        return values

    def run(self, job: TrialJob, report: ReportFn) -> TrialOutcome:
        out = Path(job.out)
        out.mkdir(parents=True, exist_ok=True)
        (out / HYP_FILE).write_text(yaml.safe_dump(self._values(job), sort_keys=False))
        metrics_path = out / self.options.metrics
        # the trial's folder: a metrics file left by an earlier attempt holds evaluations the
        # storage already has (a retry re-records them); the command starts a fresh one
        metrics_path.unlink(missing_ok=True)
        argv, env = self.argv(job), self.env(job)
        try:
            proc, reader = process_group.start(argv, env, out / LOG_FILE)
        except (FileNotFoundError, PermissionError) as exc:
            raise TrainerError(
                f"trial.command.command cannot start {argv[0]!r}: {exc.strerror} (command={argv!r})"
            ) from None
        try:
            watch = _Watch(self, job, report, proc, reader, MetricsTail(metrics_path))
            returncode, last = watch.follow()
        finally:
            process_group.end_group(proc, self.options.grace)
            reader.join(timeout=2.0)
        if returncode != 0:
            raise CommandFailed(f"{_exit_reason(returncode)}; {watch.tail()}")
        if last is None:
            raise CommandFailed(
                f"the command exited 0 without an evaluation line in {self.options.metrics} "
                f"(a line with mAP50_95); {watch.tail()}"
            )
        summary = _read_summary(out / SUMMARY_FILE)
        inference_ms = summary.get("inference_ms", last.metrics.get("inference_ms"))
        return TrialOutcome(
            metrics=dict(last.metrics),
            summary={"command": argv, "epochs_completed": last.step, **summary},
            inference_ms=float(inference_ms) if inference_ms is not None else None,
        )


class _Watch:
    """One run's reading of output and metrics, and its reports (on the calling thread, so
    that `report` and the worker's signal handler raise where `run` can end the group)."""

    def __init__(
        self,
        trainer: CommandTrainer,
        job: TrialJob,
        report: ReportFn,
        proc: Any,
        reader: process_group.OutputReader,
        tail: MetricsTail,
    ) -> None:
        self.options = trainer.options
        self.report = report
        self.proc = proc
        self.reader = reader
        self.metrics = tail
        self.checkpoints = (
            CheckpointWatch(Path(job.out) / trainer.checkpoint, Path(job.out) / SNAPSHOT_NAME)
            if trainer.checkpoint
            else None
        )
        self.output: deque[str] = deque(maxlen=_TAIL_LINES)
        self.from_file: list[dict[str, float | int]] = []
        self.from_stdout: list[dict[str, float | int]] = []
        self.file_has_training = False
        self.last: EvalLine | None = None
        self.last_iter = 0
        self.stdout_iter = 0  # the last iteration a notes line on stdout gave
        self.stdout_silent = False  # no notes line by the first evaluation
        self.last_activity = time.monotonic()
        self.last_report = time.monotonic()

    def follow(self) -> tuple[int, EvalLine | None]:
        """Until the command exits: report its evaluations; raise on a hang."""
        proc = self.proc
        while (returncode := proc.poll()) is None:
            self._step(final=False, running=True)
            idle = time.monotonic() - max(self.last_activity, self.reader.last_output)
            if idle > self.options.hang_timeout:
                raise CommandFailed(
                    f"the command printed nothing and wrote no metrics line for "
                    f"{self.options.hang_timeout:g} s (trial.command.hang_timeout): killed; "
                    f"{self.tail()}"
                )
            time.sleep(_POLL)
        # the last lines: output still in the pipe, the metrics written just before the exit
        process_group.end_group(proc, self.options.grace)
        self.reader.join(timeout=2.0)
        self._step(final=True, running=False)
        return returncode, self.last

    def _step(self, final: bool, running: bool) -> None:
        self._drain_output()
        lines = self.metrics.read(final=final)
        if lines:
            self.last_activity = time.monotonic()
        where = self.options.metrics
        for lineno, text in lines:
            try:
                parsed = parse_metrics_line(text, f"{where} line {lineno}", self.options.components)
            except MetricsLineError as exc:
                raise CommandFailed(str(exc)) from None
            if isinstance(parsed, TrainPoint):
                self._train(parsed)
            elif isinstance(parsed, EvalLine):
                self._evaluate(parsed, running)

    def _train(self, point: TrainPoint) -> None:
        # after a rewrite of the file (a resumed script keeping its earlier lines), lines read
        # before are not stored twice
        if self.metrics.rewritten and point.iter <= self.last_iter:
            return
        self.last_iter = max(self.last_iter, point.iter)
        self.file_has_training = True
        self.from_file.append(point.values)

    def _drain_output(self) -> None:
        for text in self.reader.drain():
            self.output.append(text)
            point = parse_notes_line(text)
            if point is not None:
                self.from_stdout.append(point.values)
                self.stdout_iter = max(self.stdout_iter, int(point.values["iter"]))

    def _wait_for_stdout(self, line: EvalLine) -> None:
        """Before an evaluation whose training lines come from stdout: its last lines were
        printed before the evaluation was written, but the reader thread may not have read them
        yet (a busy machine). Wait, briefly, for the output to reach the evaluation's iter."""
        if self.file_has_training or line.iter is None or self.stdout_silent:
            return  # the curve is the file's, or no position to wait for, or no stdout lines
        deadline = time.monotonic() + STDOUT_WAIT
        while self.stdout_iter < line.iter and time.monotonic() < deadline:
            time.sleep(_POLL)
            self._drain_output()
        # a script that has printed no notes line by its first evaluation prints none: not
        # waited for again
        self.stdout_silent = self.stdout_iter == 0

    def _evaluate(self, line: EvalLine, running: bool) -> None:
        if self.last is not None and line.step <= self.last.step:
            return  # reported already (the file was rewritten from its start)
        if running:
            self._wait_for_stdout(line)
        checkpoint = self._checkpoint(line)
        now = time.monotonic()
        pending = self.from_file if self.file_has_training else self.from_stdout
        # stdout and the file are two channels, read in turns: the evaluation's iter says which
        # training lines came before it
        train = [p for p in pending if line.iter is None or p["iter"] <= line.iter]
        later = [p for p in pending if line.iter is not None and p["iter"] > line.iter]
        evaluation = Evaluation(
            step=line.step,
            metrics=line.metrics,
            losses=line.losses,
            train=list(train),
            iter=line.iter,
            # the command's own split is unknown: its whole wall time counts as training
            seconds_training=now - self.last_report,
            checkpoint=checkpoint,
        )
        self.from_file, self.from_stdout = (later, []) if self.file_has_training else ([], later)
        self.last, self.last_report = line, now
        self.report(evaluation)

    def _checkpoint(self, line: EvalLine) -> Path | None:
        """The snapshot of this evaluation's checkpoint (`checkpoint_watch.py`), or None."""
        if line.checkpoint is not None and self.checkpoints is None:
            raise CommandFailed(
                f"{self.options.metrics}: the evaluation at step {line.step} names checkpoint "
                f"{line.checkpoint!r}, but trial.command.checkpoint (the file a retry resumes "
                "from) is not set"
            )
        if self.checkpoints is None:
            return None
        if line.checkpoint is not None:
            return self.checkpoints.named(line.checkpoint)
        return self.checkpoints.wait(self._gone_on)

    def _gone_on(self) -> bool:
        """Whether a checkpoint version seen from now on is not surely this evaluation's, whole:
        the command has failed (a killed writer leaves its file torn, and resting) or has
        written its next evaluation line. (After an exit 0 every write has landed.)"""
        if self.proc.poll() not in (None, 0):
            return True
        for text in self.metrics.peek():
            with contextlib.suppress(MetricsLineError):  # the main loop reports a bad line
                if isinstance(parse_metrics_line(text, "", self.options.components), EvalLine):
                    return True
        return False

    def tail(self) -> str:
        """The command's last output lines, newest kept whole, for a failure's reason."""
        self.output.extend(self.reader.drain())
        kept: list[str] = []
        for text in reversed(self.output):
            if sum(len(k) + 3 for k in kept) + len(text) > _TAIL_CHARS and kept:
                break
            kept.insert(0, text.strip()[-_TAIL_CHARS:])
        return "last output: " + " | ".join(kept) if kept else "no output"


def _exit_reason(returncode: int) -> str:
    if returncode < 0:
        try:
            name = signal.Signals(-returncode).name
        except ValueError:
            name = f"signal {-returncode}"
        # SIGKILL from nobody in tune: most often the kernel's out-of-memory killer
        hint = " (out of memory?)" if returncode == -signal.SIGKILL else ""
        return f"the command was killed by {name}{hint}"
    return f"the command exited with code {returncode}"


def _read_summary(path: Path) -> dict[str, Any]:
    """The command's own `summary.json`, when it writes one (tune train does)."""
    try:
        summary = json.loads(path.read_text())
    except (FileNotFoundError, json.JSONDecodeError):
        return {}
    return summary if isinstance(summary, dict) else {}


def _format(value: Any) -> str:
    """A value as a command-line argument: TOML/YAML spelling for booleans, round-trip floats."""
    if isinstance(value, bool):
        return "true" if value else "false"
    return repr(value) if isinstance(value, float) else str(value)


def _substitute(template: str, fill: Mapping[str, str]) -> str:
    return "".join(
        literal + (fill[name] if name is not None else "")
        for literal, name, _, _ in string.Formatter().parse(template)
    )


def from_options(options: Mapping[str, Any], where: str) -> CommandTrainer:
    """`[trial.command]` as a trainer (`command_options.py`); a `TrainerError` naming the first
    bad key and value."""
    return CommandTrainer(*parse_options(options, where))


def _data_path(data: str) -> str:
    """What the command is given as `{data}`: a data.yaml path, also for tune's built-in
    `shapes` (generated on first use), which a user's script would not know by name."""
    if data != "shapes":
        return data
    from trainer.shapes import shapes_yaml  # numpy and PIL, no torch

    return str(shapes_yaml())
