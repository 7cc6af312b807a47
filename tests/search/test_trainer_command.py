"""The command trainer (search/trainers/command.py): a user's script run per trial, its
evaluations reported, its process group always gone afterwards, its failures clear."""

from __future__ import annotations

import concurrent.futures
import ctypes
import dataclasses
import json
import os
import random
import signal
import sys
import threading
import time
from pathlib import Path
from typing import Any

import optuna
import pytest
import yaml

from search.bookkeeping.checkpoints import CheckpointStore
from search.running.trial_run import GracefulStop, Interrupted
from search.trainers import checkpoint_watch, make_trainer
from search.trainers.base import Evaluation, TrainerError, TrialJob
from search.trainers.command import CommandFailed, CommandTrainer, from_options
from search.trainers.command_protocol import (
    EvalLine,
    MetricsTail,
    TrainPoint,
    parse_metrics_line,
    parse_notes_line,
)
from tests.search.command_script import whole_step
from trainer.records import EvalLine as TuneEvalLine
from trainer.records import TrainLine

SCRIPT = Path(__file__).with_name("command_script.py")
PARAMS = {
    "lr0": {"default": 0.01, "low": 0, "high": 1},
    "lbox": {"default": 0.05, "low": 0, "group": "loss weight"},
    "optimizer": {"default": "SGD", "choices": ["SGD", "Adam"]},
    "warmup": {"default": 3},
    "nesterov": {"default": True},
}


def command_trainer(mode: str, **options: Any) -> CommandTrainer:
    table = {
        "command": [sys.executable, str(SCRIPT), mode, "--lr0", "{lr0}"],
        "params": PARAMS,
        **options,
    }
    return from_options(table, "trial.command")


def job(tmp_path: Path, epochs: int = 3, **values: Any) -> TrialJob:
    return TrialJob(
        values={"lr0": 0.1, **values}, data="shapes", epochs=epochs, eval_interval=1,
        out=tmp_path / "trial", seed=7, threads=1,
    )  # fmt: skip


def assert_group_gone(out: Path) -> None:
    pids = json.loads((out / "pids.json").read_text())
    with pytest.raises(ProcessLookupError):
        os.killpg(pids["pgid"], 0)
    for pid in (pids["pid"], pids["child"]):
        with pytest.raises(ProcessLookupError):
            os.kill(pid, 0)


# --- a script that behaves --------------------------------------------------------------------


def test_every_evaluation_is_reported_with_its_components_and_training_lines(
    tmp_path: Path,
) -> None:
    reported: list[Evaluation] = []
    trainer = command_trainer("ok")
    outcome = trainer.run(job(tmp_path), reported.append)

    assert [e.step for e in reported] == [1, 2, 3]
    assert [e.metric("mAP50_95") for e in reported] == pytest.approx([0.1, 0.2, 0.3])  # lr0=0.1
    assert all(set(e.losses) == {"box", "cls"} for e in reported)
    assert [e.iter for e in reported] == [3, 6, 9]
    # the notes' stdout lines are the training curve (the metrics file has none)
    first = reported[0].train
    assert [line["iter"] for line in first] == [1, 2, 3]
    assert set(first[0]) == {"epoch", "iter", "lr", "loss", "latency"}
    assert first[0]["lr"] == pytest.approx(0.1)
    assert outcome.metrics["mAP50_95"] == pytest.approx(0.3)
    assert outcome.summary["epochs_completed"] == 3
    point = reported[-1].to_point()
    assert point["eval"]["val_lbox"] == reported[-1].losses["box"]
    # every value of the trial, defaults included, in hyp.yaml
    hyp = yaml.safe_load((tmp_path / "trial" / "hyp.yaml").read_text())
    assert hyp == {"lr0": 0.1, "lbox": 0.05, "optimizer": "SGD", "warmup": 3, "nesterov": True}
    assert "epoch 3 / iter 9" in (tmp_path / "trial" / "command.log").read_text()


def test_training_lines_in_the_metrics_file_win_over_stdout(tmp_path: Path) -> None:
    reported: list[Evaluation] = []
    command_trainer("file", components=["box", "cls"]).run(job(tmp_path, 2), reported.append)
    assert [len(e.train) for e in reported] == [3, 3]
    assert {"lbox", "lcls", "latency"} <= set(reported[1].train[0])
    assert command_trainer("ok").components == ()  # undeclared: whatever the script reports


def test_a_checkpoint_saved_just_after_the_evaluation_line_is_waited_for(
    tmp_path: Path, quick_checkpoints: None
) -> None:
    saved: list[str] = []

    def report(evaluation: Evaluation) -> None:  # the search uploads the checkpoint here
        assert evaluation.checkpoint is not None
        saved.append(evaluation.checkpoint.read_text())

    command_trainer("late", checkpoint="last.pt").run(job(tmp_path, 2), report)
    assert saved == ["step 1", "step 2"]


# --- checkpoints written by another process: what is uploaded, and what a retry resumes from --


@pytest.fixture
def quick_checkpoints(monkeypatch: pytest.MonkeyPatch) -> None:
    """A shorter stability interval and wait, and the scripts' epochs long enough to rest in."""
    monkeypatch.setattr(checkpoint_watch, "STABLE_SECONDS", 0.2)
    monkeypatch.setattr(checkpoint_watch, "WAIT_SECONDS", 1.5)
    monkeypatch.setenv("SCRIPT_EPOCH_SECONDS", "0.4")


def checkpointing(mode: str) -> CommandTrainer:
    return command_trainer(mode, checkpoint="last.pt", resume_args=["--resume"])


@pytest.mark.parametrize("mode", ["chunks", "inplace", "renamed"])
def test_each_evaluation_uploads_its_own_step_whole(
    tmp_path: Path, mode: str, quick_checkpoints: None
) -> None:
    uploaded: list[int | None] = []

    def report(evaluation: Evaluation) -> None:
        assert evaluation.checkpoint is not None, f"no checkpoint at step {evaluation.step}"
        uploaded.append(whole_step(evaluation.checkpoint.read_text()))
        time.sleep(0.3)  # the upload takes a while; the script goes on writing meanwhile

    checkpointing(mode).run(job(tmp_path, 3), report)
    assert uploaded == [1, 2, 3]


def test_a_script_that_never_writes_its_checkpoint_uploads_none(
    tmp_path: Path, quick_checkpoints: None
) -> None:
    reported: list[Evaluation] = []
    checkpointing("never").run(job(tmp_path, 2), reported.append)
    assert [e.checkpoint for e in reported] == [None, None]


def test_a_checkpoint_named_by_a_study_without_one_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(CommandFailed, match=r"names checkpoint 'last.pt', but .*checkpoint"):
        command_trainer("renamed").run(job(tmp_path, 1), lambda e: None)


@pytest.mark.parametrize("mode", ["chunks", "inplace", "renamed", "never"])
def test_a_retry_after_a_sigkill_resumes_from_a_whole_checkpoint_of_the_stored_step(
    tmp_path: Path, mode: str, quick_checkpoints: None
) -> None:
    seed = random.randrange(1 << 30)
    instant = random.Random(seed).uniform(0.0, 1.4)  # after its start; 4 epochs take over 1.6 s
    study = optuna.create_study()
    trial = study.ask()
    store = CheckpointStore(tmp_path / "artifacts")
    stored_evals: list[int] = []

    def report(evaluation: Evaluation) -> None:  # as the objective: the evaluation, then its file
        stored_evals.append(evaluation.step)
        if evaluation.checkpoint is not None:
            store.upload(trial, evaluation.checkpoint, evaluation.step)

    first = job(tmp_path / "first", 4)

    def kill() -> None:
        pgid = first.out / "pgid"
        deadline = time.monotonic() + 60
        while not pgid.is_file() or not pgid.read_text():  # the script has started
            assert time.monotonic() < deadline, "the script never started"
            time.sleep(0.01)
        time.sleep(instant)
        os.killpg(int(pgid.read_text()), signal.SIGKILL)

    killer = threading.Thread(target=kill)
    killer.start()
    with pytest.raises(CommandFailed, match="killed by SIGKILL"):
        checkpointing(mode).run(first, report)
    killer.join()

    # the retry, as a worker runs it: the stored checkpoint, if any, restored into its folder
    retry = job(tmp_path / "retry", 4)
    stored = store.restore(study.trials[0], retry.out / "last.pt")
    retry = dataclasses.replace(retry, resume=stored is not None)
    resumed: list[int] = []
    checkpointing(mode).run(retry, lambda e: resumed.append(e.step))  # exit 4 on a torn file
    where = f"mode {mode}, killed at {instant:.2f} s (seed {seed}), evaluations {stored_evals}"
    if mode == "never":
        assert stored is None, where
    # killed before its first evaluation, a trial has nothing to resume from
    assert stored is None or stored in stored_evals, where
    if stored is not None:
        assert int((retry.out / "resumed.txt").read_text()) == stored, where
    assert resumed == list(range((stored or 0) + 1, 5)), where


def test_placeholders_env_and_registry(tmp_path: Path) -> None:
    trainer = from_options(
        {
            "command": ["train", "--out={out}", "{optimizer}", "{nesterov}", "{{literal}}"],
            "params": PARAMS,
            "checkpoint": "last.pt",
            "resume_args": ["--resume", "{resume}"],
        },
        "trial.command",
    )
    j = job(tmp_path, optimizer="Adam")
    out = str((tmp_path / "trial").resolve())
    assert trainer.argv(j) == ["train", f"--out={out}", "Adam", "true", "{literal}"]
    resumed = TrialJob(**{**j.__dict__, "resume": True})
    assert trainer.argv(resumed)[-2:] == ["--resume", "1"]
    env = trainer.env(j)
    assert env["TUNE_METRICS"] == f"{out}/metrics.jsonl" and env["TUNE_SEED"] == "7"
    assert env["TUNE_HYP"] == f"{out}/hyp.yaml" and env["OMP_NUM_THREADS"] == "1"
    assert trainer.checkpoint == "last.pt"
    kinds = {p.name: p.kind for p in trainer.params}
    assert kinds == {
        "lr0": "float", "lbox": "float", "optimizer": "choice", "warmup": "int", "nesterov": "bool"
    }  # fmt: skip
    assert trainer.params.in_group("loss weight") == ("lbox",)
    assert make_trainer("command", {"command": ["x"]}).name == "command"


# --- stopped: pruned, the worker stopping -------------------------------------------------------


def test_a_pruned_trial_ends_the_process_group(tmp_path: Path) -> None:
    def report(evaluation: Evaluation) -> None:
        if evaluation.step == 2:
            raise optuna.TrialPruned("pruned at step 2")

    with pytest.raises(optuna.TrialPruned):
        command_trainer("slow").run(job(tmp_path), report)
    assert_group_gone(tmp_path / "trial")
    if sys.platform.startswith("linux"):
        # the worker adopts orphans only while a command runs (process_group.py)
        flag = ctypes.c_int(-1)
        ctypes.CDLL(None).prctl(37, ctypes.byref(flag), 0, 0, 0)  # PR_GET_CHILD_SUBREAPER
        assert flag.value == 0


def test_a_worker_stop_signal_ends_a_group_that_ignores_sigterm(tmp_path: Path) -> None:
    stop = GracefulStop()
    stop.install()
    seen: list[int] = []

    def report(evaluation: Evaluation) -> None:
        seen.append(evaluation.step)
        if len(seen) == 1:  # the worker's SIGTERM arrives while the command trains
            threading.Timer(0.1, os.kill, (os.getpid(), signal.SIGTERM)).start()

    started = time.monotonic()
    try:
        with pytest.raises(Interrupted), stop.interruptible():
            command_trainer("stubborn", grace=0.5).run(job(tmp_path), report)
    finally:
        stop.restore()
    assert_group_gone(tmp_path / "trial")  # SIGKILL after the grace period
    assert time.monotonic() - started < 10


# --- failures: each a clear reason, the group gone ----------------------------------------------


def test_a_killed_command_is_a_failure_naming_the_signal(tmp_path: Path) -> None:
    reported: list[Evaluation] = []
    with pytest.raises(CommandFailed, match="killed by SIGKILL"):
        command_trainer("selfkill").run(job(tmp_path), reported.append)
    assert [e.step for e in reported] == [1]  # what it wrote before it died is kept
    assert_group_gone(tmp_path / "trial")  # its child too


def test_a_hung_command_is_killed_after_its_timeout(tmp_path: Path) -> None:
    with pytest.raises(CommandFailed, match=r"nothing .* for 1 s .*hang_timeout.*loading data"):
        command_trainer("hang", hang_timeout=1, grace=0.5).run(job(tmp_path), lambda e: None)
    assert_group_gone(tmp_path / "trial")


def test_a_crash_is_a_failure_with_the_exit_code_and_last_lines(tmp_path: Path) -> None:
    with pytest.raises(CommandFailed) as info:
        command_trainer("crash").run(job(tmp_path), lambda e: None)
    message = str(info.value)
    assert message.startswith("the command exited with code 3;")
    assert "RuntimeError: CUDA error: an illegal memory access" in message
    assert len(message) < 500  # the stored reason's limit (objective.describe_error)
    assert_group_gone(tmp_path / "trial")


# --- bad input ------------------------------------------------------------------------------------


def test_an_unparsable_metrics_line_is_quoted_with_its_number(tmp_path: Path) -> None:
    with pytest.raises(CommandFailed, match=r"metrics.jsonl line 2 is not JSON.*oops"):
        command_trainer("badline").run(job(tmp_path), lambda e: None)


def test_a_command_that_does_not_exist(tmp_path: Path) -> None:
    trainer = from_options({"command": ["no-such-trainer-xyz", "{out}"]}, "trial.command")
    with pytest.raises(TrainerError, match="cannot start 'no-such-trainer-xyz': No such file"):
        trainer.run(TrialJob({}, "shapes", 1, 1, tmp_path / "trial"), print)


def test_unknown_or_out_of_range_values_of_a_trial(tmp_path: Path) -> None:
    trainer = command_trainer("ok")
    with pytest.raises(TrainerError, match=r"lr0 must be in \[0, 1\], but got lr0=2.0"):
        trainer.run(job(tmp_path, lr0=2.0), print)
    with pytest.raises(TrainerError, match=r"lobj is not a parameter .*valid: lr0, lbox"):
        trainer.run(job(tmp_path, lobj=1.0), print)


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({}, r"trial.command.command is required: must be a non-empty list of strings"),
        ({"command": "python train.py"}, r"e.g. \['python', 'train.py'\]"),
        ({"command": ["x", "--lr={lr}"]}, r"command\[1\]: unknown placeholder \{lr\}.*\{hyp\}"),
        ({"command": ["x", "{lr0:.3f}"], "params": PARAMS}, r"no format or conversion"),
        ({"command": ["x", "{out"]}, r"command\[1\]: .* literal brace"),
        ({"command": ["x"], "timeout": 3}, r"unknown key trial.command.timeout \(known: comm"),
        ({"command": ["x"], "hang_timeout": 0}, r"hang_timeout must be seconds > 0, .*=0"),
        ({"command": ["x"], "grace": -1}, r"grace must be seconds >= 0"),
        ({"command": ["x"], "metrics": "/tmp/m.jsonl"}, r"metrics must be a file name inside"),
        ({"command": ["x"], "resume_args": ["--resume"]}, r"resume_args needs .*checkpoint"),
        ({"command": ["x"], "params": {"lr0": 0.01}}, r"params.lr0 must be a table with a def"),
        (
            {"command": ["x"], "params": {"lr0": {"default": 2, "low": 0, "high": 1}}},
            r"trial.command.params.lr0.default must be in \[0, 1\], but got default=2",
        ),
        (
            {"command": ["x"], "params": {"o": {"default": "SGDX", "choices": ["SGD", "Adam"]}}},
            r"params.o.default must be one of \{SGD, Adam\}, but got default='SGDX'",
        ),
        ({"command": ["x"], "params": {"out": {"default": 1}}}, r"'out' is a placeholder"),
        ({"command": ["x"], "params": {"a": {"default": 1, "lo": 0}}}, r"unknown key .*a.lo"),
        ({"command": ["x"], "params": {"a": {"default": True, "low": 0}}}, r"a.low bounds a num"),
    ],
)
def test_bad_options_are_one_clear_error(options: dict[str, Any], message: str) -> None:
    with pytest.raises(TrainerError, match=message):
        from_options(options, "trial.command")


# --- the protocol --------------------------------------------------------------------------------


def test_tune_own_metrics_lines_are_the_protocol() -> None:
    train = TrainLine(1, 5, 0.01, 1.2, 0.4, 0.3, 0.2, 0.05).to_dict()
    evaluation = TuneEvalLine(2, 10, 0.5, 0.3, 0.4, 0.3, 0.2, 0.9).to_dict()
    point = parse_metrics_line(json.dumps(train), "line 1")
    assert isinstance(point, TrainPoint) and point.values == train
    parsed = parse_metrics_line(json.dumps(evaluation), "line 2", ("box", "obj", "cls"))
    assert parsed == EvalLine(
        step=2,
        metrics={"mAP50": 0.5, "mAP50_95": 0.3, "val_loss": 0.9},  # the weighted total: a metric
        losses={"box": 0.4, "obj": 0.3, "cls": 0.2},
        iter=10,
    )
    notes = parse_notes_line(TrainLine(6, 1073, 0.001, 1.00232, 0, 0, 0, 0.03125).log_line())
    assert notes is not None and notes.values == {
        "epoch": 6, "iter": 1073, "lr": 0.001, "loss": 1.00232, "latency": 0.03125
    }  # fmt: skip
    assert parse_notes_line("eval epoch 1 / iter 5 mAP50 0.1 mAP50-95 0.05") is None


@pytest.mark.parametrize(
    ("line", "message"),
    [
        ("[1, 2]", r"line 4 must be a JSON object"),
        ('{"mAP50_95": 0.3}', r"line 4 is an evaluation line, which needs step"),
        ('{"step": 0, "mAP50_95": 0.3}', r"needs step"),
        ('{"step": 1, "mAP50_95": "high"}', r"mAP50_95 must be a number"),
        ('{"epoch": 1, "loss": 0.3}', r"training line .* needs an integer iter"),
        ('{"step": 1, "mAP50_95": 0.3, "val_lbxo": 1}', r"val_lbxo is not a declared component"),
    ],
)
def test_metrics_lines_that_break_the_protocol(line: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        parse_metrics_line(line, "metrics.jsonl line 4", ("box",))


def test_the_metrics_tail_waits_for_whole_lines_and_follows_a_rewrite(tmp_path: Path) -> None:
    path = tmp_path / "m.jsonl"
    tail = MetricsTail(path)
    assert tail.read() == []  # not there yet
    path.write_text('{"a": 1}\n{"b":')
    assert tail.read() == [(1, '{"a": 1}')]
    with path.open("a") as f:
        f.write(" 2}\n")
    assert tail.read() == [(2, '{"b": 2}')]
    replacement = tmp_path / "new"
    replacement.write_text('{"a": 1}\n{"c": 3}')
    os.replace(replacement, path)  # an atomic rewrite, as tune train's resume makes
    assert tail.read(final=True) == [(1, '{"a": 1}'), (2, '{"c": 3}')] and tail.rewritten
    tail.close()


# --- tune train itself as the command ------------------------------------------------------------


@pytest.mark.slow
def test_tune_train_as_a_command_matches_the_builtin_trainer(tmp_path: Path) -> None:
    from search.trainers.builtin import TuneTrainer
    from trainer.shapes import shapes_yaml

    tune = Path(sys.executable).with_name("tune")  # the console script beside the interpreter
    if not tune.is_file():
        pytest.skip(f"no tune console script beside {sys.executable}")
    data = str(shapes_yaml(tmp_path / "data", n_train=8, n_val=4))
    fixed = {"model": "nano", "imgsz": 64, "batch": 8}
    drawn = {"lr": 0.005, "lbox": 0.5, "lobj": 1.0, "lcls": 0.05, "optimizer": "Adam"}
    weight = {"default": 1.0, "low": 0, "group": "loss weight"}
    trainer = from_options(
        {
            "command": [
                str(tune), "train", "--data", "{data}", "--epochs", "{epochs}", "--out", "{out}",
                "--seed", "{seed}", "--device", "{device}",
                *[f"--{k}={v}" for k, v in fixed.items()],
                *[f"--{k}={{{k}}}" for k in drawn],
            ],
            "params": {
                "lr": {"default": 0.01, "low": 0, "high": 1},
                **{k: weight for k in ("lbox", "lobj", "lcls")},
                "optimizer": {"default": "SGD", "choices": ["SGD", "Adam", "AdamW"]},
            },
            "components": ["box", "obj", "cls"],
            "checkpoint": "last.pt",
            "resume_args": ["--resume"],
        },
        "trial.command",
    )  # fmt: skip

    def run(trainer: Any, values: dict[str, Any], out: str) -> list[Evaluation]:
        reported: list[Evaluation] = []
        j = TrialJob(values, data, epochs=2, eval_interval=1, out=tmp_path / out, seed=3, threads=1)
        outcome = trainer.run(j, reported.append)
        assert outcome.metrics["mAP50_95"] == reported[-1].metrics["mAP50_95"]
        return reported

    # side by side: the command's start (a fresh interpreter importing torch) costs most
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        command = pool.submit(run, trainer, drawn, "command")
        builtin = run(TuneTrainer(), {**drawn, **fixed}, "builtin")
        as_command = command.result()

    assert [e.step for e in as_command] == [e.step for e in builtin] == [1, 2]
    for c, b in zip(as_command, builtin, strict=True):
        assert c.metrics == pytest.approx(b.metrics, abs=1e-6)
        assert c.losses == pytest.approx(b.losses, abs=1e-6)
        assert c.iter == b.iter and [t["iter"] for t in c.train] == [t["iter"] for t in b.train]
        # the same training, line by line (the unweighted components too)
        for tc, tb in zip(c.train, b.train, strict=True):
            assert {k: tc[k] for k in ("loss", "lbox", "lobj", "lcls")} == pytest.approx(
                {k: tb[k] for k in ("loss", "lbox", "lobj", "lcls")}, abs=1e-6
            )
    assert (tmp_path / "command" / "last.pt").is_file()


# --- docs/own-trainer.md: its study file and example script, as a user copies them -------------

DOC = Path(__file__).parents[2] / "docs" / "own-trainer.md"


def doc_block(language: str, index: int = 0) -> str:
    return DOC.read_text().split(f"```{language}\n")[index + 1].split("```")[0]


def test_the_documented_example_runs_as_documented(tmp_path: Path) -> None:
    import tomllib

    script = tmp_path / "train.py"
    script.write_text(doc_block("python"))
    options = tomllib.loads(doc_block("toml", 1))["trial"]["command"]
    assert options["command"][:2] == ["python", "train.py"]
    options["command"][:2] = [sys.executable, str(script)]
    trainer = from_options(options, "trial.command")
    values = {"lr0": 0.02, "lbox": 0.1, "lcls": 0.3, "optimizer": "Adam"}
    reported: list[Evaluation] = []
    trainer.run(TrialJob(values, "shapes", 3, 1, tmp_path / "trial"), reported.append)

    assert [e.step for e in reported] == [1, 2, 3]
    assert all(0 < e.metric("mAP50_95") < 1 and set(e.losses) == {"box", "cls"} for e in reported)
    assert [t["iter"] for t in reported[1].train] == list(range(21, 41))
    assert trainer.params.in_group("loss weight") == ("lbox", "lcls")


# --- a command study through a real worker ----------------------------------------------------

STUDY = """
name = "{name}"

[budget]
n_trials = 1

[trial]
trainer = "command"
epochs = 2

[trial.command]
command = [{python}, {script}, "{{mode}}", "--lr0", "{{lr0}}"]
components = ["box", "cls"]
hang_timeout = 1
grace = 0.5

[trial.command.params]
mode = {{ default = "ok", choices = ["ok", "crash", "hang"] }}
lr0 = {{ default = 0.01, low = 0, high = 1 }}

[pruner]
type = "None"

[space]
mode = {{ choices = ["ok", "crash", "hang"] }}
lr0 = {{ low = 0.001, high = 0.5, log = true }}

[[baselines]]
label = "crashes"
mode = "crash"
lr0 = 0.1

[[baselines]]
label = "hangs"
mode = "hang"
lr0 = 0.1

[[baselines]]
label = "trains"
mode = "ok"
lr0 = 0.2
"""


@pytest.mark.slow
def test_a_command_study_through_a_worker_fails_crashes_and_hangs_clearly(tmp_path: Path) -> None:
    from optuna.trial import TrialState

    from search.bookkeeping import trial_record
    from search.bookkeeping.storage import open_storage
    from search.control.study_setup import prepare_study
    from search.running.worker import WorkerOptions, run_worker
    from search.study.study_file import load_study_file

    study_file = tmp_path / "command-study.toml"
    study_file.write_text(
        STUDY.format(
            name="command-study", python=json.dumps(sys.executable), script=json.dumps(str(SCRIPT))
        )
    )
    url = f"sqlite:///{tmp_path / 'tune.db'}"
    prepare_study(load_study_file(str(study_file)), open_storage(url, create_schema=True))

    # the worker holds the study file: the command it runs is its own, not the storage's
    stats = run_worker(
        str(study_file), url, WorkerOptions(runs_dir=tmp_path / "runs", threads=1, log=print)
    )

    assert stats.stopped_because == "budget"
    trials = optuna.load_study(study_name="command-study", storage=url).get_trials()
    states = {trial_record.read_baseline(t): t.state for t in trials}
    assert states == {
        "crashes": TrialState.FAIL, "hangs": TrialState.FAIL, "trains": TrialState.COMPLETE
    }, [trial_record.read_error(t) for t in trials]  # fmt: skip
    assert len(trials) == 3 and not [t for t in trials if t.state == TrialState.RUNNING]
    crashed, hung, trained = trials
    assert "exited with code 3" in (trial_record.read_error(crashed) or "")
    assert "illegal memory access" in (trial_record.read_error(crashed) or "")
    assert "printed nothing" in (trial_record.read_error(hung) or "")
    assert trained.value == pytest.approx(2 * 0.2)  # the script's mAP50_95 at step 2
    curve = trial_record.read_curve(trained)
    assert [p["eval"]["epoch"] for p in curve] == [1, 2]
    assert {"val_lbox", "val_lcls"} <= set(curve[-1]["eval"]) and len(curve[-1]["train"]) == 3
    for failed in (crashed, hung):
        assert_group_gone(tmp_path / "runs" / "command-study" / f"trial-{failed.number:04d}")
