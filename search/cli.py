"""The `tune` command line. Thin by design: each command parses its options and makes one library
call; the work lives in `trainer/` and `search/`.
"""

from __future__ import annotations

from pathlib import Path

import typer

app = typer.Typer(
    help="Hyperparameter search for YOLO-style detector training.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)


def _fail(message: str, code: int = 2) -> typer.Exit:
    """Print one clear line to stderr and return the exit to raise."""
    typer.secho(f"error: {message}", err=True, fg=typer.colors.RED)
    return typer.Exit(code)


@app.command()
def train(
    ctx: typer.Context,
    data: str = typer.Option("shapes", help="'shapes' (built-in) or a path to a YOLO data.yaml"),
    epochs: int = typer.Option(12, min=1),
    imgsz: int = typer.Option(128, min=32, help="input size, a multiple of 32"),
    batch: int = typer.Option(32, min=1),
    model: str = typer.Option("nano", help="nano | small | medium"),
    weights: str | None = typer.Option(None, help="local weights (.pt) to start from"),
    lcls: float = typer.Option(0.5, help="classification loss weight"),
    lobj: float = typer.Option(1.0, help="objectness loss weight"),
    lbox: float = typer.Option(0.05, help="box loss weight"),
    optimizer: str = typer.Option("SGD", help="SGD | Adam | AdamW"),
    lr: float = typer.Option(0.001),
    momentum: float = typer.Option(0.9),
    nesterov: bool = typer.Option(False),
    weight_decay: float = typer.Option(0.0005),
    milestones: str = typer.Option(
        "10000,20000,30000",
        help="MultiStepLR milestones: iterations, or fractions of the run (e.g. 0.6,0.85)",
    ),
    gamma: float = typer.Option(0.5),
    hyp: Path | None = typer.Option(
        None, help="a hyperparameter YAML (as written by 'tune best --export'); options override it"
    ),
    device: str = typer.Option("auto", help="auto | cpu | cuda | cuda:N"),
    seed: int = typer.Option(0),
    skip_bad: bool = typer.Option(False, help="skip bad samples with a warning instead of stopping"),
    resume: bool = typer.Option(False, help="continue from OUT/last.pt"),
    out: Path = typer.Option(Path("runs/train"), help="run directory"),
) -> None:
    """Train and evaluate one detector, printing the notes' log lines."""
    from click.core import ParameterSource

    from search.train_command import run_train

    values = dict(ctx.params)
    explicit = {k for k in values if ctx.get_parameter_source(k) == ParameterSource.COMMANDLINE}
    run_train(values, explicit)
