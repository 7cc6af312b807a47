"""What users rely on in the deployment files: compose services and their order, the GPU
reservation, the health check, loopback-only publishing, no literal secrets, and every `tune`
command line in compose, Kubernetes, Slurm and the guide parsing against the real CLI.

No Docker engine, cluster or Slurm runs here: the files are parsed as their tools parse them,
the Slurm script is run by bash, and the command lines by the typer app (see test_compose_commands
for the commands actually running against PostgreSQL).
"""

from __future__ import annotations

import re
import subprocess
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
import yaml

from search.bookkeeping.storage import ENV_VAR, resolve_url
from tests.deploy import (
    COMPOSE_FILE,
    DOCKERFILE,
    DOCKERIGNORE,
    ENV_EXAMPLE,
    GUIDE,
    K8S_FILE,
    ROOT,
    SBATCH_FILE,
    MissingVariableError,
    click_errors,
    compose_variables,
    doc_tune_commands,
    interpolate,
    load_compose,
    parse_cli,
    sbatch_tune_lines,
    service_command,
)

ENV = {  # what a user's .env holds (values made up for the test)
    "POSTGRES_USER": "tune",
    "POSTGRES_PASSWORD": "s3cr3t-from-env",
    "POSTGRES_DB": "tunedb",
}
TUNE_SERVICES = ("init", "worker", "gpu-workers", "dashboard")


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    return load_compose()


@pytest.fixture(scope="module")
def k8s() -> list[dict[str, Any]]:
    return [doc for doc in yaml.safe_load_all(K8S_FILE.read_text()) if doc]


def _k8s_object(docs: list[dict[str, Any]], kind: str, name: str) -> dict[str, Any]:
    found = [d for d in docs if d["kind"] == kind and d["metadata"]["name"] == name]
    assert len(found) == 1, f"expected one {kind} {name!r} in {K8S_FILE.name}, found {len(found)}"
    return found[0]


# --- docker-compose.yml ---------------------------------------------------------------------


def test_services_start_in_order(compose: dict[str, Any]) -> None:
    services = compose["services"]
    assert {"postgres", "init", "worker", "dashboard"} <= set(services)
    assert services["init"]["depends_on"] == {"postgres": {"condition": "service_healthy"}}
    for name in ("worker", "gpu-workers", "dashboard"):
        assert services[name]["depends_on"] == {
            "postgres": {"condition": "service_healthy"},
            "init": {"condition": "service_completed_successfully"},
        }, name
    assert services["init"]["restart"] == "no"  # one shot
    assert services["worker"]["restart"] == "on-failure"  # a finished worker stays down


def test_postgres_is_pinned_persistent_and_health_checked(compose: dict[str, Any]) -> None:
    postgres = compose["services"]["postgres"]
    assert re.fullmatch(r"postgres:\d+\.\d+(-\w+)?", postgres["image"]), postgres["image"]
    volume = postgres["volumes"][0].split(":")
    assert volume[1] == "/var/lib/postgresql/data" and volume[0] in compose["volumes"]
    check = postgres["healthcheck"]
    assert check["test"][0] == "CMD-SHELL" and "pg_isready" in check["test"][1]
    # `$$` keeps the variables for the container's shell (compose would expand a single `$`).
    assert interpolate(check["test"][1], {}) == "pg_isready -U ${POSTGRES_USER} -d ${POSTGRES_DB}"
    assert set(postgres["environment"]) == set(ENV)
    for key, value in postgres["environment"].items():
        assert value.startswith(f"${{{key}:?"), f"{key} must come from .env, got {value!r}"


def test_worker_reserves_one_gpu_and_can_scale(compose: dict[str, Any]) -> None:
    worker = compose["services"]["worker"]
    devices = worker["deploy"]["resources"]["reservations"]["devices"]
    assert devices == [{"driver": "nvidia", "count": 1, "capabilities": ["gpu"]}]
    # --scale worker=N needs replicas that do not collide on a name or a host port.
    assert "container_name" not in worker and "ports" not in worker
    multi = compose["services"]["gpu-workers"]
    assert multi["profiles"] == ["multi-gpu"]  # not started by a plain `up`
    assert multi["deploy"]["resources"]["reservations"]["devices"][0]["count"] == "all"


def test_storage_url_is_built_from_env(compose: dict[str, Any]) -> None:
    assert ENV_VAR == "TUNE_STORAGE"
    for name in TUNE_SERVICES:
        # Each names the build: a service with only `image: tune` would try to pull it.
        assert compose["services"][name]["build"] == "." and compose["services"][name]["image"]
        template = compose["services"][name]["environment"][ENV_VAR]
        url = sa.make_url(interpolate(template, ENV))
        assert (url.drivername, url.username, url.password) == (
            "postgresql+psycopg2",
            "tune",
            "s3cr3t-from-env",
        )
        assert (url.host, url.port, url.database) == ("postgres", 5432, "tunedb")
        remote = sa.make_url(interpolate(template, {**ENV, "POSTGRES_HOST": "db.internal"}))
        assert remote.host == "db.internal"  # a worker-only host points at the shared database
        with pytest.raises(MissingVariableError, match="POSTGRES_PASSWORD"):
            interpolate(template, {k: v for k, v in ENV.items() if k != "POSTGRES_PASSWORD"})


def test_cli_reads_the_storage_variable(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(ENV_VAR, "postgresql+psycopg2://u:p@h:5432/d")
    assert resolve_url(None) == "postgresql+psycopg2://u:p@h:5432/d"


def test_compose_command_lines_match_the_cli(compose: dict[str, Any]) -> None:
    services = compose["services"]
    commands = {name: service_command(services[name], ENV) for name in TUNE_SERVICES}
    assert commands["init"][:1] == ["launch"] and commands["init"][-2:] == ["--workers", "0"]
    assert commands["worker"][:1] == ["worker"]
    assert commands["gpu-workers"][:1] == ["launch"] and "--gpus" in commands["gpu-workers"]
    for name, args in commands.items():
        context = parse_cli(args)
        assert context.params.get("study", "") in ("loss-weights", ""), (name, context.params)
    init = parse_cli(commands["init"])
    assert init.params["workers"] == 0 and init.params["storage"] is None  # URL from the env
    dashboard = parse_cli(commands["dashboard"])
    assert dashboard.params["host"] == "0.0.0.0" and dashboard.params["port"] == 8080


def test_parse_cli_rejects_what_the_cli_rejects() -> None:
    # The check above can fail: an unknown option, a missing --study, a bad value.
    with pytest.raises(click_errors.NoSuchOption):
        parse_cli(["worker", "--study", "x", "--gpus", "0"])
    with pytest.raises(click_errors.MissingParameter):
        parse_cli(["worker"])
    with pytest.raises(click_errors.BadParameter):
        parse_cli(["launch", "--study", "x", "--workers", "-1"])
    with pytest.raises(click_errors.UsageError, match="no such tune command"):
        parse_cli(["serve"])


def test_compose_proxy_takes_its_token_and_tls_from_secret_files(compose: dict[str, Any]) -> None:
    services = compose["services"]
    proxy = services["proxy"]
    args = parse_cli(service_command(proxy, ENV))
    assert str(args.params["tls_cert"]).startswith("/run/secrets/")
    assert str(args.params["tls_key"]).startswith("/run/secrets/")
    for name in ("proxy", "proxied-worker"):
        env = services[name]["environment"]
        assert "TUNE_PROXY_TOKEN" not in env  # a value would sit in the file or in .env
        assert env["TUNE_PROXY_TOKEN_FILE"] == "/run/secrets/proxy_token"
        assert "proxy_token" in services[name]["secrets"]
    worker = services["proxied-worker"]["environment"]
    assert worker["TUNE_STORAGE"].startswith("grpcs://")  # TLS, verified against the proxy's cert
    assert worker["TUNE_PROXY_CA"] == "/run/secrets/proxy_tls_cert"
    assert "proxy_tls_key" not in services["proxied-worker"]["secrets"]
    for secret in compose["secrets"].values():
        assert re.fullmatch(r"\$\{TUNE_PROXY_\w+:-\./secrets/[\w.-]+\}", secret["file"]), secret
    assert "secrets/" in (ROOT / ".gitignore").read_text().split()
    assert "secrets/" in DOCKERIGNORE.read_text().split()


def test_dashboard_is_published_on_loopback_only(compose: dict[str, Any]) -> None:
    for name, service in compose["services"].items():
        for mapping in service.get("ports", []):
            published = interpolate(str(mapping), {})
            assert published.startswith("127.0.0.1:"), f"{name} publishes {published!r}"
    assert compose["services"]["dashboard"]["ports"] == ["127.0.0.1:8080:8080"]


def test_env_example_covers_every_required_variable() -> None:
    example = dict(
        line.split("=", 1)
        for line in ENV_EXAMPLE.read_text().splitlines()
        if line.strip() and not line.startswith("#")
    )
    used = compose_variables(load_compose())
    required = {name for name, op in used.items() if op in (None, ":?", "?")}
    assert required <= set(example), f"missing from .env.example: {required - set(example)}"
    assert set(example) <= set(used), f"unused in compose: {set(example) - set(used)}"
    assert re.fullmatch(r"<[^>]+>", example["POSTGRES_PASSWORD"])


# --- no literal secrets anywhere --------------------------------------------------------------

_PLACEHOLDER = re.compile(r"\$.*|<[^>]+>|[A-Z][A-Z_]*|\*+")
_URL_CREDENTIALS = re.compile(r"://[^:/@\s'\"]+:([^@\s'\"]+)@")
# `${POSTGRES_PASSWORD:?message}` is a requirement, not a value; `:-default` is a value.
_PASSWORD_SETTING = re.compile(r"(?i)password\w*\s*(?::(?!\?)|=)\s*[\"']?([^\s\"',}]+)")


@pytest.mark.parametrize(
    "path",
    [COMPOSE_FILE, ENV_EXAMPLE, K8S_FILE, SBATCH_FILE, DOCKERFILE, GUIDE],
    ids=lambda p: str(p.relative_to(ROOT)),
)
def test_no_literal_secrets(path: Path) -> None:
    text = path.read_text()
    for pattern in (_URL_CREDENTIALS, _PASSWORD_SETTING):
        for match in pattern.finditer(text):
            value = match.group(1)
            assert _PLACEHOLDER.fullmatch(value), f"{path.name}: literal secret {match.group(0)!r}"


def test_secret_scan_catches_a_literal() -> None:
    leaked = "TUNE_STORAGE=postgresql+psycopg2://tune:hunter2@db:5432/tune\nPASSWORD: hunter2"
    for pattern in (_URL_CREDENTIALS, _PASSWORD_SETTING):
        values = [m.group(1) for m in pattern.finditer(leaked)]
        assert values and not any(_PLACEHOLDER.fullmatch(v) for v in values)


# --- Dockerfile -------------------------------------------------------------------------------


def test_dockerfile_builds_from_the_lock_as_non_root() -> None:
    text = DOCKERFILE.read_text()
    instructions = [line for line in text.splitlines() if line and not line.startswith("#")]
    assert re.search(r"COPY --from=ghcr\.io/astral-sh/uv:\d+\.\d+\.\d+ ", text)
    assert "uv sync --frozen --no-dev" in text
    assert sum(line.startswith("FROM ") for line in instructions) == 2  # builder + runtime
    base = re.search(r"ARG PYTHON_IMAGE=(\S+)", text)
    assert base and re.fullmatch(r"python:3\.11\.\d+-slim-\w+", base.group(1))
    users = [line.split()[1] for line in instructions if line.startswith("USER ")]
    assert users and users[-1] not in ("root", "0")
    assert instructions[-2:] == ['ENTRYPOINT ["tune"]', 'CMD ["--help"]']
    for line in instructions:  # what the build copies exists in the repository
        if line.startswith("COPY ") and "--from=" not in line:
            for source in line.split()[1:-1]:
                if not source.startswith("--"):
                    assert (ROOT / source).exists(), f"Dockerfile copies missing {source}"


def test_dockerignore_keeps_local_state_out() -> None:
    ignored = set(DOCKERIGNORE.read_text().split())
    assert {".env", ".venv", ".git", "*.db", "runs"} <= ignored
    assert not {"uv.lock", "pyproject.toml", "studies", "search", "trainer"} & ignored


# --- Kubernetes -------------------------------------------------------------------------------


def test_k8s_worker_job_is_indexed_with_one_gpu_each(k8s: list[dict[str, Any]]) -> None:
    job = _k8s_object(k8s, "Job", "tune-workers")
    spec = job["spec"]
    assert spec["completionMode"] == "Indexed"
    assert spec["completions"] == spec["parallelism"] >= 1
    pod = spec["template"]["spec"]
    if pod["restartPolicy"] == "Never":
        assert spec["backoffLimitPerIndex"] >= 1
    else:
        assert pod["restartPolicy"] == "OnFailure" and spec["backoffLimit"] >= 1
    (container,) = pod["containers"]
    assert container["resources"]["limits"]["nvidia.com/gpu"] == 1
    args = parse_cli(container["args"])
    assert container["args"][0] == "worker"
    assert args.params["threads"] == int(container["resources"]["requests"]["cpu"])


def test_k8s_storage_url_comes_from_the_secret(k8s: list[dict[str, Any]]) -> None:
    secret = _k8s_object(k8s, "Secret", "tune-storage")
    for value in secret["stringData"].values():
        assert "<password>" in value, f"the committed Secret must be a placeholder, got {value!r}"
        assert sa.make_url(value).query["sslmode"] == "require"  # across hosts: encrypted
    proxy = _k8s_object(k8s, "Deployment", "tune-proxy")
    init = _k8s_object(k8s, "Job", "tune-init")
    for workload in (init, proxy):
        (container,) = workload["spec"]["template"]["spec"]["containers"]
        env = {item["name"]: item for item in container["env"]}
        assert "value" not in env[ENV_VAR]
        ref = env[ENV_VAR]["valueFrom"]["secretKeyRef"]
        assert ref["name"] == "tune-storage" and ref["key"] in secret["stringData"]


def _mounted_secrets(pod: dict[str, Any], container: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """mount path -> the secret volume mounted there."""
    volumes = {v["name"]: v.get("secret") for v in pod["volumes"]}
    return {
        m["mountPath"]: volumes[m["name"]]
        for m in container.get("volumeMounts", [])
        if volumes[m["name"]] is not None
    }


def test_k8s_workers_reach_the_proxy_with_its_token_over_verified_tls(
    k8s: list[dict[str, Any]],
) -> None:
    proxy = _k8s_object(k8s, "Deployment", "tune-proxy")
    assert proxy["spec"]["replicas"] == 1 and proxy["spec"]["strategy"]["type"] == "Recreate"
    pod = proxy["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    args = parse_cli(container["args"])
    assert args.params["port"] == 13000
    mounted = _mounted_secrets(pod, container)
    env = {item["name"]: item.get("value") for item in container["env"]}
    token_dir = env["TUNE_PROXY_TOKEN_FILE"].rsplit("/", 1)[0]
    assert mounted[token_dir]["secretName"] == "tune-proxy-token"
    assert mounted[str(args.params["tls_cert"].parent)]["secretName"] == "tune-proxy-tls"
    service = _k8s_object(k8s, "Service", "tune-proxy")
    assert service["spec"]["ports"][0]["port"] == 13000

    worker_pod = _k8s_object(k8s, "Job", "tune-workers")["spec"]["template"]["spec"]
    (worker,) = worker_pod["containers"]
    env = {item["name"]: item for item in worker["env"]}
    assert env[ENV_VAR]["value"] == "grpcs://tune-proxy:13000"  # no database URL, TLS
    assert "TUNE_PROXY_TOKEN" not in env  # a file from the Secret, never a value
    mounted = _mounted_secrets(worker_pod, worker)
    token_dir = env["TUNE_PROXY_TOKEN_FILE"]["value"].rsplit("/", 1)[0]
    assert mounted[token_dir]["secretName"] == "tune-proxy-token"
    ca_dir, ca_file = env["TUNE_PROXY_CA"]["value"].rsplit("/", 1)
    ca = mounted[ca_dir]
    # the certificate only: a worker never holds the proxy's key
    assert ca["secretName"] == "tune-proxy-tls" and ca["items"] == [
        {"key": "tls.crt", "path": ca_file}
    ]


def test_k8s_init_job_creates_the_study_and_is_applied_first(k8s: list[dict[str, Any]]) -> None:
    init = _k8s_object(k8s, "Job", "tune-init")
    (container,) = init["spec"]["template"]["spec"]["containers"]
    context = parse_cli(container["args"])
    assert container["args"][0] == "launch" and context.params["workers"] == 0
    # The two-step apply in the file's header selects objects by this label.
    components = [doc["metadata"]["labels"]["app.kubernetes.io/component"] for doc in k8s]
    assert sorted(components) == ["init", "proxy", "proxy", "secret", "worker"]
    header = K8S_FILE.read_text()
    for component in ("init", "proxy", "worker"):
        assert f"-l app.kubernetes.io/component={component}" in header


# --- Slurm ------------------------------------------------------------------------------------


def _sbatch_directives(text: str) -> dict[str, str]:
    directives = {}
    for line in text.splitlines():
        if line.startswith("#SBATCH "):
            key, _, value = line.removeprefix("#SBATCH ").partition("=")
            directives[key] = value
    return directives


def test_sbatch_is_an_array_of_one_gpu_workers() -> None:
    text = SBATCH_FILE.read_text()
    subprocess.run(["bash", "-n", str(SBATCH_FILE)], check=True)
    directives = _sbatch_directives(text)
    assert re.fullmatch(r"\d+-\d+(%\d+)?", directives["--array"])
    assert directives["--gres"] == "gpu:1"
    (args,) = sbatch_tune_lines(text)
    assert args[0] == "worker"
    slurm_env = {"TUNE_STUDY": "loss-weights", "SLURM_CPUS_PER_TASK": "8"}
    context = parse_cli([interpolate(a, slurm_env) for a in args])
    assert "--gpu" not in args  # Slurm sets CUDA_VISIBLE_DEVICES itself
    assert context.params["storage"] is None  # the URL comes from the environment
    assert context.params["threads"] == 8  # the task's CPUs, not the node's


def test_sbatch_takes_the_url_from_the_environment(tmp_path: Path) -> None:
    text = SBATCH_FILE.read_text()
    code = [line for line in text.splitlines() if not line.lstrip().startswith("#")]
    assert not any(re.search(rf"\b{ENV_VAR}=", line) for line in code), "URL written in script"
    # Submitted without TUNE_STORAGE, the task stops at once and says why.
    result = subprocess.run(
        ["bash", str(SBATCH_FILE)],
        env={"PATH": "/usr/bin:/bin", "SLURM_ARRAY_TASK_ID": "0"},
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert result.returncode != 0 and ENV_VAR in result.stderr
    # Pointed at a proxy without its token, it stops too, before the worker starts.
    result = subprocess.run(
        ["bash", str(SBATCH_FILE)],
        env={"PATH": "/usr/bin:/bin", ENV_VAR: "grpcs://proxy-host:13000"},
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert result.returncode == 2 and "TUNE_PROXY_TOKEN_FILE" in result.stderr


# --- the guide --------------------------------------------------------------------------------


def test_guide_commands_match_the_cli() -> None:
    commands = doc_tune_commands(GUIDE.read_text())
    used = {args[0] for args in commands}
    assert {"launch", "worker", "status", "dashboard"} <= used, used
    for args in commands:
        try:
            parse_cli(args)
        except click_errors.ClickException as exc:
            pytest.fail(f"docs/deployment.md: `tune {' '.join(args)}`: {exc.format_message()}")
