"""Fail points: named instants at which a chaos test may kill this process on purpose.

A worker dies at random instants in production (SIGKILL, OOM, a lost node). Killing it from
outside rarely lands in the few milliseconds that matter most, e.g. between creating a trial and
its first heartbeat, so the code names those instants and a test arms them (the technique of
FreeBSD's fail points and etcd's gofail):

    TUNE_FAILPOINTS="trial-created=0.2,eval-recorded=0.1"

kills the process with SIGKILL at `failpoint("trial-created")` with probability 0.2 per pass, and
so on. Unset (always, outside tests) a fail point costs one dictionary lookup.

Named points: `claim-taken` (the study lock is held, the trial not yet created),
`trial-created` (the trial is RUNNING, before its first heartbeat and placement),
`eval-recorded` (an evaluation is stored, its checkpoint not yet uploaded).
"""

from __future__ import annotations

import os
import random
import signal

ENV_VAR = "TUNE_FAILPOINTS"
POINTS = ("claim-taken", "trial-created", "eval-recorded")


def parse(spec: str) -> dict[str, float]:
    """`"name=probability,..."` as a mapping; one clear error for a bad entry."""
    armed: dict[str, float] = {}
    for entry in filter(None, (e.strip() for e in spec.split(","))):
        name, sep, value = entry.partition("=")
        if name not in POINTS:
            raise ValueError(
                f"${ENV_VAR}: unknown fail point {name!r} (known: {', '.join(POINTS)})"
            )
        try:
            probability = float(value) if sep else 1.0
        except ValueError:
            probability = -1.0
        if not 0.0 <= probability <= 1.0:
            raise ValueError(f"${ENV_VAR}: {name} needs a probability in [0, 1], but got {entry!r}")
        armed[name] = probability
    return armed


_armed = parse(os.environ.get(ENV_VAR, ""))
_random = random.Random()  # seeded from the OS: each worker process dies at its own instants


def failpoint(name: str) -> None:
    """Kill this process here with the probability `$TUNE_FAILPOINTS` gives `name`."""
    assert name in POINTS, name
    probability = _armed.get(name)
    if probability and _random.random() < probability:
        os.kill(os.getpid(), signal.SIGKILL)
