"""The study lock on PostgreSQL: a session advisory lock, exclusive or shared.

The server releases it when the holding process dies (its session ends), so a killed worker never
leaves the study locked. Keys: (`NAMESPACE`, study id), the same in both modes.
"""

from __future__ import annotations

import sqlalchemy as sa
from optuna.storages import RDBStorage

NAMESPACE = 0x74756E65  # "tune": first key of the PostgreSQL advisory lock
_LOCK_NOT_AVAILABLE = "55P03"  # PostgreSQL: lock_timeout expired


class AdvisoryLock:
    """One process's hold on the study's advisory lock, on a connection of its own."""

    def __init__(self, storage: RDBStorage, study_id: int, shared: bool) -> None:
        self._keys = {"a": NAMESPACE, "b": study_id}
        self._shared = shared
        self._conn: sa.Connection | None = storage.engine.connect()

    def try_acquire(self, seconds: float) -> bool:
        """Wait up to `seconds` for the lock (a blocking wait: the lock passes on at once)."""
        conn = self._connection()
        try:
            conn.execute(
                sa.text("SELECT set_config('lock_timeout', :t, true)"),
                {"t": f"{round(seconds * 1000)}ms"},
            )
            conn.execute(sa.text(f"SELECT {self._advisory('lock')}(:a, :b)"), self._keys)
            conn.commit()  # the session-level lock outlives the transaction
            return True
        except sa.exc.OperationalError as exc:
            if getattr(exc.orig, "pgcode", None) != _LOCK_NOT_AVAILABLE:
                raise
            conn.rollback()
            return False

    def holder(self) -> str:
        """Who holds the lock now, for a line saying what a wait waits for."""
        conn = self._connection()
        pid = conn.execute(
            sa.text(
                "SELECT pid FROM pg_locks WHERE locktype = 'advisory' AND granted "
                "AND classid = :a AND objid = :b"
            ),
            self._keys,
        ).scalar()
        conn.rollback()
        return f"held by PostgreSQL server process {pid}"

    def holders(self) -> int:
        """The granted shared advisory locks on the study's key (`pg_locks` is the lock
        manager's state, not a snapshot: a lock granted a moment ago is counted)."""
        conn = self._connection()
        count = conn.execute(
            sa.text(
                "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND granted "
                "AND mode = 'ShareLock' AND classid = :a AND objid = :b AND objsubid = 2"
            ),
            self._keys,
        ).scalar_one()
        conn.rollback()
        return int(count)

    def release(self, held: bool) -> None:
        """Unlock (when `held`) and give the connection back."""
        if self._conn is None:
            return
        conn, self._conn = self._conn, None
        try:
            if held:
                conn.execute(sa.text(f"SELECT {self._advisory('unlock')}(:a, :b)"), self._keys)
                conn.commit()
        except sa.exc.DBAPIError:
            # the server went away, and a session lock goes with its session: nothing to
            # release; drop the broken connection instead of returning it to the pool
            conn.invalidate()
        finally:
            conn.close()

    def _connection(self) -> sa.Connection:
        if self._conn is None:
            raise RuntimeError("the advisory lock's connection is closed")
        return self._conn

    def _advisory(self, verb: str) -> str:
        return f"pg_advisory_{verb}_shared" if self._shared else f"pg_advisory_{verb}"
