"""tune's own calls through `tune proxy`: heartbeats and the study lock, as a gRPC service of
their own (`tune.ProxyControl`) beside Optuna's storage service, behind the same token.

Optuna's proxy carries the storage API and nothing else, and through it every storage call
returns what the database holds. What tune needs beyond it are these methods (JSON messages):

- `Heartbeat {trial_id}`: a real heartbeat row for a running trial (the database's clock);
- `TakeLock {study_id, holder, shared}` -> `{taken}`: a lease on the study lock held in the
  server (`Leases`), exclusive or shared, as PostgreSQL's advisory locks give the workers that
  use the database directly; a lease not to be had answers `taken: false` and the client tries
  again;
- `GiveBackLock {study_id, holder}`;
- `Sharers {study_id}` -> `{sharers}`: the shared leases held now, which a starting worker
  counts (`search/control/start_gate.py`).

A lease not given back within `LOCK_LEASE` seconds (its worker died holding it) lapses; leases
die with the server.
"""

from __future__ import annotations

import contextlib
import json
import random
import threading
import time
from collections.abc import Iterator
from typing import Any

import grpc
from optuna.storages import RDBStorage

SERVICE = "tune.ProxyControl"
LOCK_LEASE = 60.0  # seconds a taken study lock lasts when its holder never gives it back


def _encode(message: dict[str, Any]) -> bytes:
    return json.dumps(message).encode()


def _decode(data: bytes) -> dict[str, Any]:
    message = json.loads(data)
    if not isinstance(message, dict):
        raise ValueError(f"a {SERVICE} message must be an object, but got {message!r}")
    return message


# --- server side -------------------------------------------------------------------------------


class Leases:
    """Study locks held in the proxy: per study one exclusive lease or any number of shared ones.
    A lease lapses `lease` seconds after it was taken. An exclusive taker refused because of
    shared leases keeps new shared ones out for `writer_first` seconds from each try, so that a
    steady stream of starters cannot starve the reaper (it retries well within that)."""

    def __init__(self, lease: float = LOCK_LEASE, writer_first: float = 1.0) -> None:
        self._lease = lease
        self._writer_first = writer_first
        self._exclusive: dict[int, tuple[str, float]] = {}
        self._shared: dict[int, dict[str, float]] = {}
        self._writer_waits_until: dict[int, float] = {}
        self._mutex = threading.Lock()

    def take(self, study_id: int, holder: str, *, shared: bool = False) -> bool:
        now = time.monotonic()
        with self._mutex:
            exclusive = self._exclusive.get(study_id)
            if exclusive is not None and exclusive[0] != holder and exclusive[1] > now:
                return False
            sharers = self._live_sharers(study_id, now)
            if shared:
                if self._writer_waits_until.get(study_id, 0.0) > now:
                    return False
                sharers[holder] = now + self._lease
                return True
            if set(sharers) - {holder}:
                self._writer_waits_until[study_id] = now + self._writer_first
                return False
            self._exclusive[study_id] = (holder, now + self._lease)
            self._writer_waits_until.pop(study_id, None)
            return True

    def sharers(self, study_id: int) -> int:
        """Shared leases of the study now."""
        with self._mutex:
            return len(self._live_sharers(study_id, time.monotonic()))

    def give_back(self, study_id: int, holder: str) -> None:
        with self._mutex:
            if self._exclusive.get(study_id, ("",))[0] == holder:
                del self._exclusive[study_id]
            self._shared.get(study_id, {}).pop(holder, None)

    def _live_sharers(self, study_id: int, now: float) -> dict[str, float]:
        live = {h: until for h, until in self._shared.get(study_id, {}).items() if until > now}
        self._shared[study_id] = live
        return live

    @contextlib.contextmanager
    def held(self, study_id: int, holder: str = "proxy-reaper") -> Iterator[None]:
        while not self.take(study_id, holder):
            time.sleep(0.02)
        try:
            yield
        finally:
            self.give_back(study_id, holder)


def control_handler(rdb: RDBStorage, leases: Leases) -> grpc.GenericRpcHandler:
    """The `tune.ProxyControl` service for a gRPC server, on `rdb` and `leases`."""

    def heartbeat(request: dict[str, Any], context: grpc.ServicerContext) -> dict[str, Any]:
        rdb.record_heartbeat(int(request["trial_id"]))
        return {}

    def take_lock(request: dict[str, Any], context: grpc.ServicerContext) -> dict[str, Any]:
        shared = bool(request.get("shared"))
        taken = leases.take(int(request["study_id"]), str(request["holder"]), shared=shared)
        return {"taken": taken}

    def give_back_lock(request: dict[str, Any], context: grpc.ServicerContext) -> dict[str, Any]:
        leases.give_back(int(request["study_id"]), str(request["holder"]))
        return {}

    def sharers(request: dict[str, Any], context: grpc.ServicerContext) -> dict[str, Any]:
        return {"sharers": leases.sharers(int(request["study_id"]))}

    methods = {
        "Heartbeat": heartbeat,
        "TakeLock": take_lock,
        "GiveBackLock": give_back_lock,
        "Sharers": sharers,
    }
    return grpc.method_handlers_generic_handler(
        SERVICE,
        {
            name: grpc.unary_unary_rpc_method_handler(
                method, request_deserializer=_decode, response_serializer=_encode
            )
            for name, method in methods.items()
        },
    )


# --- client side -------------------------------------------------------------------------------


class ControlClient:
    """The `tune.ProxyControl` calls of a worker, on its channel to the proxy."""

    def __init__(self, channel: grpc.Channel) -> None:
        self._calls = {
            name: channel.unary_unary(
                f"/{SERVICE}/{name}", request_serializer=_encode, response_deserializer=_decode
            )
            for name in ("Heartbeat", "TakeLock", "GiveBackLock", "Sharers")
        }

    def heartbeat(self, trial_id: int) -> None:
        self._calls["Heartbeat"]({"trial_id": trial_id})

    def take_lock(self, study_id: int, holder: str, shared: bool) -> bool:
        request = {"study_id": study_id, "holder": holder, "shared": shared}
        return bool(self._calls["TakeLock"](request)["taken"])

    def give_back_lock(self, study_id: int, holder: str) -> None:
        self._calls["GiveBackLock"]({"study_id": study_id, "holder": holder})

    def sharers(self, study_id: int) -> int:
        return int(self._calls["Sharers"]({"study_id": study_id})["sharers"])


class ProxyLock:
    """The study lock for a worker behind the proxy (`StudyLock`'s back end there): a lease held
    in the server, exclusive or shared (`holders()`: the shared leases of the study, this one
    included)."""

    def __init__(self, control: ControlClient, study_id: int, holder: str, shared: bool) -> None:
        self._control = control
        self._study_id = study_id
        self._holder = holder
        self._shared = shared
        # each try is a request to the proxy: dozens of waiting workers polling every few ms
        # flooded it (64 workers on 2 cores: waits of a minute), so waits grow to half a second
        self._pause = 0.02

    def try_acquire(self, seconds: float) -> bool:
        end = time.monotonic() + seconds
        while not self._control.take_lock(self._study_id, self._holder, self._shared):
            if time.monotonic() >= end:
                return False
            time.sleep(self._pause * random.uniform(0.5, 1.5))
            self._pause = min(0.5, self._pause * 1.5)
        return True

    def holder(self) -> str:
        return "held through the proxy"

    def holders(self) -> int:
        return self._control.sharers(self._study_id)

    def release(self, held: bool) -> None:
        if held:
            with contextlib.suppress(Exception):  # a lease lost with the server lapses anyway
                self._control.give_back_lock(self._study_id, self._holder)
