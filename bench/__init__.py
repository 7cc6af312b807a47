"""Benchmarks of `tune` (not tests): each module runs with `uv run python -m bench.NAME [--quick]`.

What they share lives here: the machine they ran on (cores, load average, GPU), percentiles,
a plain-text table, and writing results as JSON under `bench/results/`. Results go into
docs/benchmarks.md by hand, with the command that produced them.
"""

from __future__ import annotations

import json
import math
import os
import platform
import statistics
import sys
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

RESULTS_DIR = Path(__file__).parent / "results"


def load_average() -> tuple[float, float, float]:
    """The 1, 5 and 15 minute load averages (the machine is shared: say how busy it was)."""
    try:
        return os.getloadavg()
    except OSError:
        return (math.nan, math.nan, math.nan)


def machine() -> dict[str, Any]:
    """Where a benchmark ran: host, cores, Python and library versions, GPU if any."""
    info: dict[str, Any] = {
        "host": platform.node(),
        "cores": os.cpu_count(),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "load_average_at_write": load_average(),
        "started": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
    }
    for name in ("torch", "optuna", "sqlalchemy"):
        module = sys.modules.get(name)
        if module is not None:
            info[name] = getattr(module, "__version__", "?")
    torch = sys.modules.get("torch")
    if torch is not None and torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name(0)
    return info


def percentile(values: Sequence[float], q: float) -> float:
    """The q-th percentile (0..100) by linear interpolation; NaN for no values."""
    if not values:
        return math.nan
    ordered = sorted(values)
    position = (len(ordered) - 1) * q / 100.0
    low = math.floor(position)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (position - low)


def median(values: Sequence[float]) -> float:
    """The median, NaN for no values."""
    return statistics.median(values) if values else math.nan


def table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    """A Markdown table (prints readably in a terminal and pastes into docs/benchmarks.md)."""

    def cell(value: Any) -> str:
        if isinstance(value, float):
            if math.isnan(value):
                return "-"
            return f"{value:.4g}" if abs(value) < 1000 else f"{value:.0f}"
        return str(value)

    lines = ["| " + " | ".join(headers) + " |", "|" + "|".join(" --- " for _ in headers) + "|"]
    lines += ["| " + " | ".join(cell(v) for v in row) + " |" for row in rows]
    return "\n".join(lines)


def write_results(name: str, payload: dict[str, Any], out_dir: Path | None = None) -> Path:
    """Write `payload` as `<out_dir>/<name>.json` (default bench/results/) and return the path."""
    folder = out_dir or RESULTS_DIR
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{name}.json"
    path.write_text(json.dumps(payload, indent=2, sort_keys=True, default=str) + "\n")
    return path


class PeriodicSampler:
    """Calls `read()` every `interval` seconds in a thread while in the `with` block and keeps
    every reading (`None`: no reading this time)."""

    def __init__(self, read: Callable[[], float | None], interval: float) -> None:
        self.samples: list[float] = []
        self._read = read
        self._interval = interval
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    @property
    def peak(self) -> float:
        return max(self.samples, default=0)

    def __enter__(self) -> PeriodicSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=30)

    def _run(self) -> None:
        while not self._stop.is_set():
            value = self._read()
            if value is not None:
                self.samples.append(value)
            self._stop.wait(self._interval)


class ConnectionSampler(PeriodicSampler):
    """Counts the `pg_stat_activity` rows of one database. It connects through `admin_url` (another
    database), so its own session is never counted."""

    def __init__(self, admin_url: str, database: str, interval: float = 0.25) -> None:
        import sqlalchemy as sa

        self._engine = sa.create_engine(admin_url, isolation_level="AUTOCOMMIT", pool_size=1)
        query = sa.text("SELECT count(*) FROM pg_stat_activity WHERE datname = :db")

        def count() -> float:
            with self._engine.connect() as conn:  # the pool's one connection, reused
                return int(conn.execute(query, {"db": database}).scalar_one())

        super().__init__(count, interval)

    def __exit__(self, *exc: object) -> None:
        super().__exit__(*exc)
        self._engine.dispose()
