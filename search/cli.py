"""The `tune` command line. Thin by design: each command parses its options and makes one library
call; the work lives in `trainer/` and `search/`.
"""

from __future__ import annotations

import inspect
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import typer

# Typer vendors Click; its exception classes are not re-exported (only BadParameter is)
from typer._click.exceptions import ClickException, NoArgsIsHelpError
from typer.core import TyperGroup

from trainer.config import TRAIN_PARAMS  # light: no torch
from trainer.params import Param

if TYPE_CHECKING:
    from search.running.launch import ConfirmResult, LaunchResult  # lazily at run time (optuna)


def _fail(message: str, code: int = 2) -> typer.Exit:
    """Print one clear line to stderr and return the exit to raise."""
    typer.secho(f"error: {message}", err=True, fg=typer.colors.RED)
    return typer.Exit(code)


class _OneLineErrors(TyperGroup):
    """The command group, with the parser's mistakes (an option out of its range, a missing or
    unknown option) reported like every other mistake: one `error: ...` line, exit 2.

    Typer draws those in a box of several lines, which scripts and log readers had to treat apart.
    `--help` and a bare `tune` (which prints the help) are unchanged.
    """

    def main(
        self,
        args: Sequence[str] | None = None,
        prog_name: str | None = None,
        complete_var: str | None = None,
        standalone_mode: bool = True,
        windows_expand_args: bool = True,
        **extra: Any,
    ) -> Any:
        call = (args, prog_name, complete_var)
        if not standalone_mode:
            return super().main(*call, False, windows_expand_args, **extra)
        try:
            code = super().main(*call, False, windows_expand_args, **extra)
        except NoArgsIsHelpError as exc:
            exc.show()
            sys.exit(exc.exit_code)
        except ClickException as exc:
            ctx = getattr(exc, "ctx", None)  # usage errors know the command they belong to
            where = ctx.command_path if ctx is not None else "tune"
            _fail(f"{exc.format_message()} (see `{where} --help`)", exc.exit_code)
            sys.exit(exc.exit_code)
        except typer.Abort:
            typer.echo("Aborted!", err=True)
            sys.exit(1)
        # without standalone mode, Typer returns the code of a `typer.Exit` instead of exiting
        sys.exit(code if isinstance(code, int) else 0)


app = typer.Typer(
    cls=_OneLineErrors,
    help="Hyperparameter search for YOLO-style detector training.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)


def train(ctx: typer.Context, **values: Any) -> None:
    """Train and evaluate one detector, printing the notes' log lines."""
    from search.commands.train_command import run_train

    values = dict(ctx.params)
    # options the user typed override a --hyp file; those left at their defaults do not
    sources = {k: getattr(ctx.get_parameter_source(k), "name", "") for k in values}
    explicit = {k for k, source in sources.items() if source == "COMMANDLINE"}
    run_train(values, explicit)


def _train_signature() -> inspect.Signature:
    """`tune train`'s options: one per parameter of tune's trainer, derived from its registry
    (`TrainConfig`'s `param(...)` fields), so a new parameter is an option without a line here.
    Each defaults to None: the recipe's default applies, and a `--hyp` file is not overridden."""
    options = [
        inspect.Parameter("ctx", inspect.Parameter.POSITIONAL_OR_KEYWORD, annotation=typer.Context)
    ]
    for p in TRAIN_PARAMS:
        options.append(_train_option(p))
    options += [
        inspect.Parameter(
            "hyp",
            inspect.Parameter.KEYWORD_ONLY,
            default=typer.Option(
                None,
                help="a hyperparameter YAML (as written by 'tune best --export'); options "
                "override it",
            ),
            annotation=Path | None,
        ),
        inspect.Parameter(
            "resume",
            inspect.Parameter.KEYWORD_ONLY,
            default=typer.Option(False, help="continue from OUT/last.pt"),
            annotation=bool,
        ),
        inspect.Parameter(
            "out",
            inspect.Parameter.KEYWORD_ONLY,
            default=typer.Option(Path("runs/train"), help="run directory"),
            annotation=Path,
        ),
    ]
    return inspect.Signature(options)


def _train_option(p: Param) -> inspect.Parameter:
    """The `tune train` option of one parameter: its help, valid values and default."""
    if p.kind == "floats":
        default = ",".join(f"{m:g}" for m in p.default) or "none"
    else:
        default = str(p.default).lower() if isinstance(p.default, bool) else p.default
    valid = "" if p.kind in ("str", "bool") else f", {p.describe()}"
    help_text = f"{p.help}{valid}; default {default}"
    extra: dict[str, Any] = {}
    if p.kind == "int" and p.low is not None:
        extra["min"] = int(p.low) + (1 if p.low_open else 0)
    decls = (f"--{_dash(p.name)}/--no-{_dash(p.name)}",) if p.kind == "bool" else ()
    kind = _OPTION_TYPES[p.kind]
    return inspect.Parameter(
        p.name,
        inspect.Parameter.KEYWORD_ONLY,
        default=typer.Option(None, *decls, help=help_text, **extra),
        annotation=kind | None,
    )


# a parameter's kind -> the option's type (milestones are typed as "0.6,0.85")
_OPTION_TYPES: dict[str, type] = {
    "float": float,
    "int": int,
    "bool": bool,
    "choice": str,
    "str": str,
    "floats": str,
}


def _dash(name: str) -> str:
    return name.replace("_", "-")


train.__signature__ = _train_signature()  # type: ignore[attr-defined]
app.command()(train)


# --- search: launch, worker, status, best (search/running/launch.py, worker.py, status.py, best.py)

_STORAGE_HELP = "study storage URL; default $TUNE_STORAGE, else sqlite:///tune.db here"
_TRAINER_HELP = "for tests and soak runs only: a module with fit() (and load_data()) to train with"


def _search_errors() -> tuple[type[Exception], ...]:
    """The errors a search command reports as one line (no traceback)."""
    from search.bookkeeping.storage import StorageError
    from search.commands.best import NoBestTrialError
    from search.control.study_setup import LaunchError
    from search.running.worker import WorkerError

    return (ValueError, StorageError, LaunchError, WorkerError, NoBestTrialError)


@app.command()
def launch(
    study: str = typer.Option(..., help="a study name (studies/NAME.toml) or a study file"),
    storage: str | None = typer.Option(None, help=_STORAGE_HELP),
    workers: int | None = typer.Option(None, min=0, help="CPU workers (0: only create the study)"),
    gpus: str | None = typer.Option(None, help="one worker per GPU, e.g. 0,1"),
    n_trials: int | None = typer.Option(
        None, min=1, help="budget: finished trials for the whole study"
    ),
    budget_epochs: int | None = typer.Option(
        None, min=1, help="budget: training epochs summed over the whole study's trials"
    ),
    timeout: float | None = typer.Option(None, min=1, help="seconds to keep starting trials"),
    epochs: int | None = typer.Option(None, min=1, help="a trial's full length"),
    data: str | None = typer.Option(None, help="'shapes' or a path to a data.yaml"),
    seed: int | None = typer.Option(None, help="sampler seed"),
    runs_dir: Path = typer.Option(Path("runs/studies"), help="local run folders and worker logs"),
    progress_interval: float = typer.Option(5.0, min=0.1, hidden=True),
    trainer_module: str | None = typer.Option(None, hidden=True, help=_TRAINER_HELP),
) -> None:
    """Create/load a study, enqueue its baselines, run local workers until the budget is spent."""
    from search.running.launch import launch as run_launch
    from search.study.study_file import Overrides

    try:
        gpu_list = _parse_gpus(gpus, workers)
        result = run_launch(
            study,
            storage,
            workers=workers,
            gpus=gpu_list,
            overrides=Overrides(
                epochs=epochs,
                data=data,
                n_trials=n_trials,
                budget_epochs=budget_epochs,
                timeout=timeout,
                seed=seed,
            ),
            runs_dir=runs_dir,
            progress_interval=progress_interval,
            trainer_module=trainer_module,
        )
    except _search_errors() as exc:
        raise _fail(str(exc)) from None
    _exit_like(result)


@app.command()
def worker(
    study: str = typer.Option(..., help="the study's name (or its study file)"),
    storage: str | None = typer.Option(None, help=_STORAGE_HELP),
    gpu: int | None = typer.Option(None, min=0, help="train on GPU I (sets CUDA_VISIBLE_DEVICES)"),
    timeout: float | None = typer.Option(None, min=1, help="seconds to keep starting trials"),
    local_workers: int = typer.Option(1, min=1, help="workers on this machine (sets threads)"),
    worker_index: int | None = typer.Option(None, min=0, hidden=True),
    threads: int | None = typer.Option(None, min=1, help="torch threads (default cores / workers)"),
    runs_dir: Path = typer.Option(Path("runs/studies"), help="local run folders"),
    allow_command: str | None = typer.Option(
        None,
        help="a command trainer's study: run the command stored with it if its digest is this "
        "(tune launch prints it; else $TUNE_ALLOW_COMMAND, or give --study the study file)",
    ),
    trainer_module: str | None = typer.Option(None, hidden=True, help=_TRAINER_HELP),
) -> None:
    """Join an existing study (from any machine) and run trials until its budget is spent."""
    from search.running.worker import WorkerOptions, run_worker
    from search.trainers.builtin import TuneTrainer

    try:
        options = WorkerOptions(
            gpu=gpu,
            timeout=timeout,
            local_workers=local_workers,
            worker_index=worker_index,
            threads=threads,
            runs_dir=runs_dir,
            allow_command=allow_command,
        )
        fake = TuneTrainer(module=trainer_module) if trainer_module else None
        stats = run_worker(study, storage, options, trainer=fake)
    except _search_errors() as exc:
        raise _fail(str(exc), code=1) from None
    if stats.stopped_because == "interrupted":
        raise typer.Exit(130)


@app.command()
def status(
    study: str = typer.Option(..., help="the study's name"),
    storage: str | None = typer.Option(None, help=_STORAGE_HELP),
) -> None:
    """Trials by state, the best trial, baselines, running trials (host, age) and failures."""
    from search.bookkeeping.storage import load_study, open_storage
    from search.commands.status import format_status, study_status

    try:
        typer.echo(format_status(study_status(load_study(open_storage(storage), study))))
    except _search_errors() as exc:
        raise _fail(str(exc)) from None


@app.command()
def best(
    study: str = typer.Option(..., help="the study's name"),
    storage: str | None = typer.Option(None, help=_STORAGE_HELP),
    export: Path | None = typer.Option(
        None, help="write the best trial's values to this file, in --format"
    ),
    fmt: str | None = typer.Option(
        None,
        "--format",
        help="yolov5: a complete YOLOv5 hyp file, which `tune train --hyp` reads too (the default "
        "for tune's trainer); ultralytics: a cfg for `yolo train cfg=FILE` (the default for the "
        "Ultralytics trainer)",
    ),
) -> None:
    """The best trial's parameters; --export writes them as a file the target trainer takes."""
    from search.bookkeeping.storage import load_study, open_storage
    from search.commands.best import best_trial, export_best, format_best
    from search.confirm.standing import study_standing

    if fmt is not None and export is None:
        raise _fail("--format needs --export FILE")
    try:
        found = load_study(open_storage(storage), study)
        trial = best_trial(found)
        standing = study_standing(found, found.get_trials(deepcopy=False))  # read once for both
        typer.echo(format_best(found, trial, standing))
        if export is not None:
            typer.echo(export_best(found, trial, export, fmt, standing).describe(export))
    except _search_errors() as exc:
        raise _fail(str(exc)) from None


@app.command()
def confirm(
    study: str = typer.Option(..., help="the study's name"),
    storage: str | None = typer.Option(None, help=_STORAGE_HELP),
    top: int = typer.Option(3, help="the study's best sampled trials to retrain (at least 1)"),
    seeds: int = typer.Option(3, help="fresh seeds per trial, the same for each (at least 2)"),
    epochs: int | None = typer.Option(
        None, help="each run's length (default: the study's full length)"
    ),
    trial: list[int] | None = typer.Option(None, help="also confirm this trial (repeatable)"),
    workers: int | None = typer.Option(None, min=0, help="CPU workers (0: only enqueue the runs)"),
    gpus: str | None = typer.Option(None, help="one worker per GPU, e.g. 0,1"),
    runs_dir: Path = typer.Option(Path("runs/studies"), help="local run folders and worker logs"),
    progress_interval: float = typer.Option(5.0, min=0.1, hidden=True),
    trainer_module: str | None = typer.Option(None, hidden=True, help=_TRAINER_HELP),
) -> None:
    """Retrain the top trials and the best baseline with fresh seeds; state the gain with its
    spread. Resumable: run it again, or `tune worker --study NAME:confirm` on other machines."""
    from search.running.launch import confirm as run_confirm

    try:
        gpu_list = _parse_gpus(gpus, workers)
        result = run_confirm(
            study,
            storage,
            top=top,
            seeds=seeds,
            epochs=epochs,
            trials=tuple(trial or ()),
            workers=workers,
            gpus=gpu_list,
            runs_dir=runs_dir,
            progress_interval=progress_interval,
            trainer_module=trainer_module,
            out=typer.echo,
        )
    except _search_errors() as exc:
        raise _fail(str(exc)) from None
    _exit_like(result)


def _exit_like(result: LaunchResult | ConfirmResult) -> None:
    """launch and confirm: 130 when interrupted, 1 when a worker failed, else return."""
    if result.interrupted:
        raise typer.Exit(130)
    if not result.ok:
        raise typer.Exit(1)


def _parse_gpus(gpus: str | None, workers: int | None = None) -> list[int] | None:
    """`--gpus 0,1` as indices; a clear error for a bad list or for `--workers` beside it."""
    if gpus is not None and workers is not None:
        raise ValueError(f"give --workers or --gpus, not both, but got {workers=}, {gpus=}")
    if gpus is None:
        return None
    try:
        ids = [int(g) for g in gpus.split(",") if g.strip()]
    except ValueError:
        raise ValueError(f"--gpus must be GPU indices like 0,1, but got {gpus=}") from None
    if not ids or len(set(ids)) != len(ids) or min(ids) < 0:
        raise ValueError(f"--gpus must be distinct GPU indices like 0,1, but got {gpus=}")
    return ids


# --- report and dashboard (search/report/, search/commands/dashboard.py) --------------------------


@app.command()
def report(
    study: str = typer.Option(..., help="the study's name"),
    storage: str | None = typer.Option(None, help=_STORAGE_HELP),
    out: Path = typer.Option(Path("report.html"), "-o", "--out", help="the HTML file to write"),
    top: int = typer.Option(5, min=0, help="best trials shown besides the baselines"),
) -> None:
    """Write one self-contained HTML report (opens offline) comparing the study's trials."""
    from search.bookkeeping.storage import StorageError, load_study, open_storage
    from search.report import write_report

    try:
        path = write_report(load_study(open_storage(storage), study), out, top_k=top)
    except (ValueError, StorageError) as exc:
        raise _fail(str(exc)) from None
    typer.echo(f"wrote {path}")


@app.command()
def dashboard(
    storage: str | None = typer.Option(None, help=_STORAGE_HELP),
    host: str = typer.Option("127.0.0.1", help="address to bind (the dashboard has no login)"),
    port: int = typer.Option(8080, min=1, max=65535),
    artifacts: Path | None = typer.Option(
        None, help="artifact folder; default $TUNE_ARTIFACTS, else tune-artifacts/ if it exists"
    ),
) -> None:
    """Run optuna-dashboard on the study storage, bound to loopback unless --host says otherwise."""
    from search.bookkeeping.storage import StorageError
    from search.commands.dashboard import serve

    try:
        serve(storage, host=host, port=port, artifacts=artifacts, echo=typer.echo)
    except (ValueError, StorageError) as exc:
        raise _fail(str(exc)) from None
    except OSError as exc:
        raise _fail(f"cannot serve on {host}:{port}: {exc.strerror or exc}") from None


@app.command()
def proxy(
    storage: str | None = typer.Option(None, help=_STORAGE_HELP),
    host: str = typer.Option(
        "127.0.0.1", help="address to bind (workers connect to it); another than loopback wants TLS"
    ),
    port: int = typer.Option(13000, min=1, max=65535),
    tls_cert: Path | None = typer.Option(
        None, help="serve TLS with this PEM certificate (workers use grpcs://HOST:PORT)"
    ),
    tls_key: Path | None = typer.Option(None, help="the certificate's PEM private key"),
) -> None:
    """Serve the storage to many workers (`tune worker --storage grpc://HOST:PORT`) through
    Optuna's gRPC proxy: one bounded pool of database connections, heartbeats and reaping.
    Every call needs the token of $TUNE_PROXY_TOKEN or the file $TUNE_PROXY_TOKEN_FILE names."""
    from search.bookkeeping.storage import StorageError
    from search.control.proxy_server import serve

    try:
        serve(storage, host=host, port=port, tls_cert=tls_cert, tls_key=tls_key, echo=typer.echo)
    except StorageError as exc:
        raise _fail(str(exc)) from None
    except OSError as exc:
        raise _fail(str(exc)) from None
