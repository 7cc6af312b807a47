"""Database connections across hosts can be encrypted: libpq's `sslmode` and certificate paths
pass through the storage URL (or libpq's `PGSSL*` environment) to every connection tune makes,
the proxy's included.

A PostgreSQL server of the test's own offers TLS with a self-signed certificate; the server's
own statistics (`pg_stat_ssl`) say whether each connection is encrypted. The shared test server
offers no TLS, so a URL that requires it fails there with one clear line.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import optuna
import pytest
import sqlalchemy as sa

from search.bookkeeping.proxy import connect
from search.bookkeeping.storage import StorageError, open_storage
from tests.search.certificates import self_signed
from tests.search.own_postgres import NoPostgres, OwnPostgres, own_postgres_server
from tests.search.reliability_support import PROXY_TOKEN, Proxy, fast_env, free_port, make_study

pytestmark = [pytest.mark.postgres, pytest.mark.slow]


@pytest.fixture(scope="module")
def tls_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[OwnPostgres, Path]]:
    cert, key = self_signed(tmp_path_factory.mktemp("pg-tls"))
    try:
        with own_postgres_server(tls=(cert, key)) as server:
            yield server, cert
    except NoPostgres as exc:
        pytest.skip(str(exc))


def _encrypted(engine: sa.Engine) -> set[bool]:
    """Whether the client connections to the engine's database are encrypted, as the server
    sees them (this one's and those of its pool included): {True} when all are."""
    with engine.connect() as conn:
        rows = conn.execute(
            sa.text(
                "SELECT s.ssl FROM pg_stat_ssl s JOIN pg_stat_activity a USING (pid) "
                "WHERE a.datname = current_database() AND a.backend_type = 'client backend'"
            )
        ).scalars()
        return set(rows)


def test_sslmode_in_the_url_or_the_environment_encrypts_every_connection(
    tls_server: tuple[OwnPostgres, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    server, cert = tls_server
    url = server.new_database()
    plain = open_storage(f"{url}?sslmode=disable", create_schema=True)
    assert _encrypted(plain.engine) == {False}
    plain.engine.dispose()
    verified = f"{url}?sslmode=verify-full&sslrootcert={cert}"
    rdb = open_storage(verified)
    assert _encrypted(rdb.engine) == {True}
    rdb.engine.dispose()
    monkeypatch.setenv("PGSSLMODE", "require")  # libpq's own variable, for URLs without it
    rdb = open_storage(url)
    assert _encrypted(rdb.engine) == {True}
    rdb.engine.dispose()


def test_a_url_that_requires_tls_fails_clearly_on_a_server_without_it(pg_url: str) -> None:
    with pytest.raises(StorageError) as failed:
        open_storage(f"{pg_url}?sslmode=require")
    assert "server does not support SSL" in str(failed.value)
    assert "\n" not in str(failed.value)


def test_the_proxy_talks_to_the_database_encrypted(
    tls_server: tuple[OwnPostgres, Path],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    server, cert = tls_server
    url = server.new_database()
    verified = f"{url}?sslmode=verify-full&sslrootcert={cert}"
    make_study(verified, n_trials=1, epochs=1)
    port = free_port()
    proxy = Proxy(verified, port, fast_env(tmp_path), tmp_path / "proxy.log").start()
    try:
        assert str(cert) in proxy.text()  # the URL it serves, certificate path and all
        monkeypatch.setenv("TUNE_PROXY_TOKEN", PROXY_TOKEN)
        study = optuna.load_study(study_name="smoke", storage=connect(f"grpc://127.0.0.1:{port}"))
        assert study.study_name == "smoke"
        checker = sa.create_engine(f"{url}?sslmode=require")
        try:
            # the proxy's connections (its pool, its reaper) and this one
            assert _encrypted(checker) == {True}
        finally:
            checker.dispose()
    finally:
        proxy.stop()
