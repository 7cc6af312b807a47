"""A PostgreSQL server of a test's own (or a bench's), which it may stop and start at will.

`initdb`/`pg_ctl` of the installed PostgreSQL on a free port in a temporary folder, run as the
`postgres` user when the tests run as root (PostgreSQL refuses root), so that stopping it
disturbs nobody else's database.
"""

from __future__ import annotations

import contextlib
import os
import pwd
import shutil
import socket
import subprocess
import tempfile
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import sqlalchemy as sa


class NoPostgres(RuntimeError):
    """No PostgreSQL server binaries are installed."""


def _pg_bin() -> Path | None:
    found = sorted(Path("/usr/lib/postgresql").glob("*/bin/pg_ctl"))
    if found:
        return found[-1].parent
    on_path = shutil.which("pg_ctl")
    return Path(on_path).parent if on_path else None


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class OwnPostgres:
    """A server `own_postgres_server` started (and that its user may stop and start again)."""

    bin: Path
    base: Path
    port: int
    as_postgres: list[str]
    options: tuple[str, ...] = ()  # more `-c name=value` settings of the server

    @property
    def admin_url(self) -> str:
        return f"postgresql+psycopg2://postgres@127.0.0.1:{self.port}/postgres"

    def pg_ctl(self, *args: str) -> None:
        cmd = [*self.as_postgres, str(self.bin / "pg_ctl"), "-D", str(self.base / "data"), "-w"]
        subprocess.run([*cmd, *args], check=True, capture_output=True, timeout=60)

    def start(self) -> None:
        settings = ("listen_addresses=127.0.0.1", "fsync=off", *self.options)
        options = f"-p {self.port} -k {self.base} " + " ".join(f"-c {s}" for s in settings)
        self.pg_ctl("-l", str(self.base / "server.log"), "-o", options, "start")

    def stop(self) -> None:
        self.pg_ctl("-m", "fast", "stop")  # closes every client connection, as a restart does

    def new_database(self) -> str:
        name = f"tune_test_{uuid.uuid4().hex[:12]}"
        engine = sa.create_engine(self.admin_url, isolation_level="AUTOCOMMIT")
        try:
            with engine.connect() as conn:
                conn.execute(sa.text(f'CREATE DATABASE "{name}"'))
        finally:
            engine.dispose()
        return self.admin_url.rsplit("/", 1)[0] + f"/{name}"


@contextlib.contextmanager
def own_postgres_server(tls: tuple[Path, Path] | None = None) -> Iterator[OwnPostgres]:
    """A fresh server for the block, removed afterwards (stopped first if it still runs); with
    `tls` (a PEM certificate and its key), a server that offers TLS."""
    pg_bin = _pg_bin()
    if pg_bin is None:
        raise NoPostgres("no PostgreSQL server binaries (initdb, pg_ctl) are installed")
    # PostgreSQL refuses to run as root; its folder must belong to the user that runs it
    as_postgres = ["runuser", "-u", "postgres", "--"] if os.geteuid() == 0 else []
    base = Path(tempfile.mkdtemp(prefix="tune-pg-"))
    if as_postgres:
        user = pwd.getpwnam("postgres")
        os.chown(base, user.pw_uid, user.pw_gid)
    options: tuple[str, ...] = ()
    if tls is not None:  # the server reads its key only when it is its own and private
        for source, name in zip(tls, ("server.crt", "server.key"), strict=True):
            shutil.copy(source, base / name)
            (base / name).chmod(0o600)
            if as_postgres:
                os.chown(base / name, user.pw_uid, user.pw_gid)
        options = ("ssl=on", f"ssl_cert_file={base / 'server.crt'}",
                   f"ssl_key_file={base / 'server.key'}")  # fmt: skip
    server = OwnPostgres(pg_bin, base, free_port(), as_postgres, options)
    try:
        subprocess.run(
            [*as_postgres, str(pg_bin / "initdb"), "-D", str(base / "data"), "-U", "postgres",
             "-A", "trust", "--no-sync", "-E", "UTF8"],
            check=True, capture_output=True, timeout=120,
        )  # fmt: skip
        server.start()
        yield server
    finally:
        with contextlib.suppress(subprocess.CalledProcessError):  # not running: a test failed
            server.pg_ctl("-m", "immediate", "stop")
        shutil.rmtree(base, ignore_errors=True)
