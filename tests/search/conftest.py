"""Fixtures shared by the search tests."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.search.reliability_support import Worker


@pytest.fixture
def workers() -> Iterator[list[Worker]]:
    """Every worker a test starts; killed at the end if one still runs (a failed test)."""
    started: list[Worker] = []
    yield started
    for w in started:
        w.stop()
