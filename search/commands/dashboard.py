"""optuna-dashboard on a tune storage: the live, browsable view of every study in it.

The dashboard has no login, so it binds to the loopback address unless told otherwise, and the
storage URL it prints has its password masked. It reads the same storage the workers write (and
the artifact folder, so files attached to trials can be opened there).
"""

from __future__ import annotations

import ipaddress
import os
from collections.abc import Callable, Mapping
from pathlib import Path

from search.bookkeeping.checkpoints import ARTIFACTS_ENV, DEFAULT_ARTIFACTS, artifacts_dir
from search.bookkeeping.storage import mask_url, open_storage, resolve_url

DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 8080


def is_loopback(host: str) -> bool:
    """Whether `host` only accepts connections from this machine."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def dashboard_url(host: str = DEFAULT_HOST, port: int = DEFAULT_PORT) -> str:
    """The address to open in a browser (a wildcard bind is opened through loopback)."""
    shown = "127.0.0.1" if host in ("0.0.0.0", "::", "") else host
    if ":" in shown:
        shown = f"[{shown}]"
    return f"http://{shown}:{port}/"


def dashboard_command(storage_url: str | None = None) -> str:
    """The command that opens the dashboard on a storage, for `tune launch` to print.

    The password of an explicit URL is masked (put it back, or set $TUNE_STORAGE instead).
    """
    if storage_url is None:
        return "tune dashboard"
    return f"tune dashboard --storage '{mask_url(storage_url)}'"


def artifact_folder(
    artifacts: Path | None = None, environ: Mapping[str, str] | None = None
) -> Path | None:
    """The artifact folder the dashboard serves: the workers' own
    (`search.bookkeeping.checkpoints`).

    `artifacts` (`--artifacts`) must exist. Else `$TUNE_ARTIFACTS`, the folder workers upload to,
    created when missing (a dashboard may start before the first checkpoint is uploaded). Else
    `tune-artifacts/` when it exists here, or None (no artifact store).
    """
    if artifacts is not None:
        if not Path(artifacts).is_dir():
            raise ValueError(f"artifacts must be an existing folder, but got {artifacts=}")
        return Path(artifacts)
    environ = os.environ if environ is None else environ
    if environ.get(ARTIFACTS_ENV):
        folder = artifacts_dir(environ[ARTIFACTS_ENV])
        folder.mkdir(parents=True, exist_ok=True)
        return folder
    return DEFAULT_ARTIFACTS if DEFAULT_ARTIFACTS.is_dir() else None


def serve(
    storage_url: str | None = None,
    host: str = DEFAULT_HOST,
    port: int = DEFAULT_PORT,
    artifacts: Path | None = None,
    echo: Callable[[str], None] = print,
) -> None:
    """Run optuna-dashboard on the storage until interrupted (blocks).

    `storage_url` resolves like every command (`--storage`, `$TUNE_STORAGE`, `sqlite:///tune.db`).
    `artifacts` is the folder artifact store (see `artifact_folder`: by default the workers'
    `$TUNE_ARTIFACTS`, else `tune-artifacts/` when it exists).
    Raises `search.bookkeeping.storage.StorageError` for a storage that can't be opened,
    `ValueError` for a bad port or a missing artifact folder, `OSError` when the port is taken.
    """
    import optuna_dashboard
    from optuna.artifacts import FileSystemArtifactStore

    if not 0 < port < 65536:
        raise ValueError(f"port must be in 1..65535, but got {port=}")
    artifacts = artifact_folder(artifacts)
    url = resolve_url(storage_url)
    storage = open_storage(url)  # fails early, in one line, for a missing or empty storage
    store = FileSystemArtifactStore(str(artifacts)) if artifacts is not None else None
    if not is_loopback(host):
        echo(
            f"warning: binding to {host}: the dashboard has no login, anyone who can reach this "
            "machine on that port can read and edit the studies"
        )
    where = f"; artifacts in {artifacts}" if artifacts is not None else ""
    echo(f"optuna-dashboard for {mask_url(url)}{where} at {dashboard_url(host, port)}")
    optuna_dashboard.run_server(storage, host=host, port=port, artifact_store=store)
