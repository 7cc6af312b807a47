"""The command lines the deployment files run, run for real against PostgreSQL.

No Docker engine or Slurm runs here, so the containers' processes are started directly: the
`init` service's command, then two processes of the `worker` service's command (what
`docker compose up --scale worker=2` starts), each as `tune ARGS` (the image's entrypoint), with
TUNE_STORAGE built from the compose file's own template. The Slurm script is run by bash as two
array tasks. Training is the fast fake from tests/search/fake_trainer.py (the workers' test hook,
$TUNE_TRAINER_MODULE), and the study is studies/smoke.toml (a budget of 6 trials).
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Mapping
from pathlib import Path

import optuna
import pytest
import sqlalchemy as sa
from optuna.trial import TrialState

from search.bookkeeping.storage import ENV_VAR
from tests.deploy import ROOT, SBATCH_FILE, interpolate, load_compose, service_command

pytestmark = [pytest.mark.postgres, pytest.mark.slow]

STUDY = "smoke"
BUDGET = 6  # studies/smoke.toml [budget] n_trials
TUNE = Path(sys.executable).with_name("tune")  # the console script, the image's ENTRYPOINT
TIMEOUT = 240


def _compose_env(pg_url: str) -> dict[str, str]:
    """What a user's .env would hold to reach the test database (trust auth: any password)."""
    url = sa.make_url(pg_url)
    return {
        "POSTGRES_USER": url.username or "postgres",
        "POSTGRES_PASSWORD": "unused-with-trust-auth",
        "POSTGRES_HOST": url.host or "127.0.0.1",
        "POSTGRES_PORT": str(url.port or 5432),
        "POSTGRES_DB": url.database or "",
        "TUNE_STUDY": STUDY,
    }


def _process_env(extra: Mapping[str, str]) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k != ENV_VAR}
    env.update(
        PYTHONPATH=str(ROOT),  # so that the workers can import the fake trainer from tests/
        TUNE_TRAINER_MODULE="tests.search.fake_trainer",
        FAKE_STEP_SECONDS="0.05",
        OMP_NUM_THREADS="1",
    )
    env.update(extra)
    return env


def _run_all(runs: list[tuple[list[str], dict[str, str]]], cwd: Path) -> list[str]:
    """Start the (command, environment) pairs together, wait for all, return their outputs.

    Every one must exit 0; none is left running, whatever happens.
    """
    processes = [
        subprocess.Popen(
            command,
            env=env,
            cwd=cwd,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            start_new_session=True,
        )
        for command, env in runs
    ]
    outputs = []
    try:
        for (command, _), process in zip(runs, processes, strict=True):
            output, _ = process.communicate(timeout=TIMEOUT)
            outputs.append(output)
            assert process.returncode == 0, f"{command} exited {process.returncode}:\n{output}"
    finally:
        for process in processes:
            if process.poll() is None:
                process.kill()
                process.wait()
    return outputs


def _assert_study_finished(pg_url: str) -> None:
    study = optuna.load_study(study_name=STUDY, storage=pg_url)
    trials = study.get_trials(deepcopy=False)
    states = [t.state for t in trials]
    finished = states.count(TrialState.COMPLETE) + states.count(TrialState.PRUNED)
    assert finished == BUDGET, [s.name for s in states]
    assert TrialState.RUNNING not in states and TrialState.WAITING not in states
    assert len({t.number for t in trials}) == len(trials)
    # The baseline enqueued by the init command is trial 0, with the hand-tuned values.
    assert trials[0].params["lcls"] == 0.5 and trials[0].params["lbox"] == 0.05


def test_compose_init_then_two_workers_finish_the_study(pg_url: str, tmp_path: Path) -> None:
    compose = load_compose()
    services = compose["services"]
    user_env = _compose_env(pg_url)
    storage = interpolate(services["worker"]["environment"][ENV_VAR], user_env)
    env = _process_env({ENV_VAR: storage})

    init = [str(TUNE), *service_command(services["init"], user_env)]
    worker = [str(TUNE), *service_command(services["worker"], user_env)]
    assert init[1:] == ["launch", "--study", STUDY, "--workers", "0"]
    assert worker[1:] == ["worker", "--study", STUDY]

    (init_output,) = _run_all([(init, env)], tmp_path)
    assert "unused-with-trust-auth" not in init_output  # the password is masked in output
    study = optuna.load_study(study_name=STUDY, storage=pg_url)
    assert [t.state for t in study.get_trials()] == [TrialState.WAITING]  # baseline, no worker

    outputs = _run_all([(worker, env), (worker, env)], tmp_path)
    _assert_study_finished(pg_url)
    for output in outputs:
        assert "unused-with-trust-auth" not in output


def test_slurm_array_tasks_finish_the_study(pg_url: str, tmp_path: Path) -> None:
    env = _process_env({ENV_VAR: pg_url})
    # Once, before the array (the script's header): create the study and enqueue the baselines.
    _run_all([([str(TUNE), "launch", "--study", STUDY, "--workers", "0"], env)], tmp_path)

    def array_task(task_id: str) -> tuple[list[str], dict[str, str]]:
        task_env = {
            **env,
            # as after `source .venv/bin/activate`: `tune` on PATH
            "PATH": f"{TUNE.parent}{os.pathsep}{env.get('PATH', '')}",
            "TUNE_STUDY": STUDY,
            "SLURM_ARRAY_JOB_ID": "4242",
            "SLURM_ARRAY_TASK_ID": task_id,
            "SLURM_CPUS_PER_TASK": "1",
        }
        return ["bash", str(SBATCH_FILE)], task_env

    outputs = _run_all([array_task("0"), array_task("1")], tmp_path)
    assert "tune worker 1 on" in outputs[1]  # the script's own line, then the worker's
    _assert_study_finished(pg_url)


def test_compose_proxy_profile_serves_tls_and_refuses_a_worker_without_the_token(
    pg_url: str, tmp_path: Path
) -> None:
    """The proxy profile as compose runs it: the proxy's command with its secrets (a token file,
    a certificate and key, here in a folder of the test's own instead of /run/secrets), then two
    proxied workers finishing the study over TLS; a worker without the token gets nothing."""
    import secrets as token_maker
    import time

    from tests.search.certificates import self_signed
    from tests.search.reliability_support import free_port

    compose = load_compose()
    services = compose["services"]
    user_env = _compose_env(pg_url)
    folder = tmp_path / "run-secrets"
    folder.mkdir()
    cert, key = self_signed(folder, "proxy")
    (folder / "proxy_tls_cert").write_bytes(cert.read_bytes())
    (folder / "proxy_tls_key").write_bytes(key.read_bytes())
    (folder / "proxy_token").write_text(token_maker.token_hex(32) + "\n")
    port = str(free_port())

    def as_run_here(value: str) -> str:  # compose's /run/secrets and service name, here
        return (
            value.replace("/run/secrets/", f"{folder}/")
            .replace("proxy:13000", f"127.0.0.1:{port}")
            .replace("13000", port)
        )

    def service(name: str) -> tuple[list[str], dict[str, str]]:
        spec = services[name]
        assert set(spec["secrets"]) <= set(compose["secrets"])
        command = [str(TUNE), *(as_run_here(part) for part in service_command(spec, user_env))]
        environment = {
            k: as_run_here(interpolate(str(v), user_env)) for k, v in spec["environment"].items()
        }
        return command, _process_env(environment)

    storage = interpolate(services["init"]["environment"][ENV_VAR], user_env)
    init = [str(TUNE), *service_command(services["init"], user_env)]
    _run_all([(init, _process_env({ENV_VAR: storage}))], tmp_path)

    proxy_command, proxy_env = service("proxy")
    assert "--tls-cert" in proxy_command and "TUNE_PROXY_TOKEN" not in proxy_env
    assert proxy_env["TUNE_PROXY_TOKEN_FILE"] == str(folder / "proxy_token")
    log = tmp_path / "proxy.log"
    with log.open("w") as out:
        proxy = subprocess.Popen(proxy_command, env=proxy_env, cwd=tmp_path, stdout=out,
                                 stderr=subprocess.STDOUT, start_new_session=True)  # fmt: skip
    try:
        deadline = time.monotonic() + 60
        while "tune proxy for" not in log.read_text():
            assert proxy.poll() is None and time.monotonic() < deadline, log.read_text()
            time.sleep(0.2)
        assert f"at grpcs://0.0.0.0:{port}" in log.read_text()
        worker, worker_env = service("proxied-worker")
        assert worker_env[ENV_VAR].startswith("grpcs://")
        tokenless = {k: v for k, v in worker_env.items() if k != "TUNE_PROXY_TOKEN_FILE"}
        refused = subprocess.run(worker, env=tokenless, cwd=tmp_path, capture_output=True,
                                 text=True, timeout=TIMEOUT)  # fmt: skip
        assert refused.returncode == 1 and "refused no token" in refused.stderr, refused.stderr
        _run_all([(worker, worker_env), (worker, worker_env)], tmp_path)
        _assert_study_finished(pg_url)
    finally:
        proxy.terminate()
        proxy.wait(30)
