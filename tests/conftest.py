"""Shared fixtures: a throw-away PostgreSQL database per test, and torch kept to one thread."""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator

import pytest
import torch
from PIL import Image

# read before any test module is imported (conftest comes first)
_PRISTINE = (Image.open, torch.save)

PG_ADMIN_URL = os.environ.get(
    "TUNE_TEST_PG", "postgresql+psycopg2://postgres@127.0.0.1:5432/postgres"
)


def _require_postgres() -> bool:
    return os.environ.get("TUNE_REQUIRE_POSTGRES") == "1"


@pytest.fixture(autouse=True)
def _one_torch_thread() -> None:
    # The machines have 2 cores; tests that train share them with the PostgreSQL server and
    # with worker subprocesses.
    torch.set_num_threads(1)


@pytest.fixture(autouse=True)
def _ultralytics_patches_undone() -> Iterator[None]:
    # Importing ultralytics (the adapter's and the export's tests, some at collection) replaces
    # PIL.Image.open and torch.save process-wide; a worker that runs Ultralytics may keep them,
    # but tests of tune's own trainer in this process must see the libraries as they are.
    yield
    Image.open, torch.save = _PRISTINE


@pytest.fixture(autouse=True)
def _artifacts_in_tmp(
    tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Checkpoints that workers upload go to a temporary artifact store, never the working folder.
    monkeypatch.setenv("TUNE_ARTIFACTS", str(tmp_path_factory.mktemp("artifacts")))


@pytest.fixture
def pg_url() -> Iterator[str]:
    """URL of a fresh, empty PostgreSQL database, dropped after the test.

    Skips with a reason when no server answers, unless TUNE_REQUIRE_POSTGRES=1 (CI), where the
    missing server is a failure.
    """
    import sqlalchemy as sa

    admin = sa.create_engine(PG_ADMIN_URL, isolation_level="AUTOCOMMIT")
    name = f"tune_test_{uuid.uuid4().hex[:12]}"
    try:
        with admin.connect() as conn:
            conn.execute(sa.text(f'CREATE DATABASE "{name}"'))
    except sa.exc.OperationalError as exc:
        admin.dispose()
        message = f"PostgreSQL is not reachable at {PG_ADMIN_URL}: {exc.orig}"
        if _require_postgres():
            pytest.fail(message + " (TUNE_REQUIRE_POSTGRES=1)")
        pytest.skip(message)
    url = PG_ADMIN_URL.rsplit("/", 1)[0] + f"/{name}"
    try:
        yield url
    finally:
        with admin.connect() as conn:
            conn.execute(sa.text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()
