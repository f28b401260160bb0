"""The per-instance lock (``d365_sync_lock``): which run may read the cursors and write the ledger now. A lease
is taken, renewed and released with one conditional statement each, so two runs never both hold it, on SQLite and
PostgreSQL alike; ``generation`` only grows, and fences the writes of a run that lost its lock."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

import sqlalchemy as sa

from d365.pipeline.ledger_schema import Lease, _now_ms, _rowcount, lock_table


class LedgerLocks:
    """The lock's methods of ``Ledger`` (a mixin: it uses the ledger's engine and dialect-specific insert)."""

    engine: sa.Engine
    _insert: Callable[[sa.Table], Any]

    def acquire_lock(self, instance: str, run_id: str, *, ttl_seconds: float, now_ms: int | None = None) -> Lease:
        """Take the instance's lock for ``run_id`` if it is free, expired or already this run's; one atomic
        conditional upsert (``INSERT … ON CONFLICT DO UPDATE … WHERE``), so of two runs asking together exactly
        one gets it, on SQLite and PostgreSQL alike. A new holder gets the next ``generation``; the holder
        asking again (a retried task) keeps its generation and extends the expiry. Returns the row as it is
        now: ``held`` says whether ``run_id`` holds it."""
        now = _now_ms() if now_ms is None else now_ms
        expires = now + int(ttl_seconds * 1000)
        c = lock_table.c
        insert = self._insert(lock_table).values(
            instance=instance, run_id=run_id, generation=1, acquired_ms=now, renewed_ms=now, expires_ms=expires
        )
        ex = insert.excluded
        same = c.run_id == ex.run_id
        with self.engine.begin() as conn:
            conn.execute(
                insert.on_conflict_do_update(
                    index_elements=["instance"],
                    set_={
                        "run_id": ex.run_id,
                        "generation": sa.case((same, c.generation), else_=c.generation + 1),
                        "acquired_ms": sa.case((same, c.acquired_ms), else_=ex.acquired_ms),
                        "renewed_ms": ex.renewed_ms,
                        "expires_ms": ex.expires_ms,
                    },
                    where=sa.or_(c.run_id.is_(None), same, c.expires_ms <= now),
                )
            )
            return self._lease(conn, instance, run_id)

    def renew_lock(self, instance: str, run_id: str, *, ttl_seconds: float, generation: int | None = None) -> Lease:
        """Extend the lock's expiry if ``run_id`` still holds it (with ``generation``, if given). A lock that
        expired, or was released, but was not taken by another run since (same generation) is still this
        run's: nobody read the cursors in between (a failed task cleared after its run released the lock).
        Returns the row; ``held`` False means another run has taken it since."""
        now = _now_ms()
        c = lock_table.c
        if generation is None:
            condition = [c.instance == instance, c.run_id == run_id]
        else:
            condition = [
                c.instance == instance,
                c.generation == int(generation),
                sa.or_(c.run_id == run_id, c.run_id.is_(None)),
            ]
        with self.engine.begin() as conn:
            conn.execute(
                sa.update(lock_table)
                .where(*condition)
                .values(run_id=run_id, renewed_ms=now, expires_ms=now + int(ttl_seconds * 1000))
            )
            lease = self._lease(conn, instance, run_id)
        if generation is not None and lease.held and lease.generation != int(generation):
            return dataclasses.replace(lease, held=False)
        return lease

    def release_lock(self, instance: str | None, run_id: str) -> int:
        """Free the lock ``run_id`` holds (on every instance when ``instance`` is None); 0 if it held none.
        The row stays, so the generation keeps growing."""
        c = lock_table.c
        condition = [c.run_id == run_id] + ([c.instance == instance] if instance is not None else [])
        with self.engine.begin() as conn:
            result = conn.execute(sa.update(lock_table).where(*condition).values(run_id=None, expires_ms=0))
            return _rowcount(result, 0)

    def clear_lock(self, instance: str) -> str | None:
        """Free the lock whoever holds it (an operator's command for a run known to be dead). Returns the
        run that held it."""
        holder = self.lock_holder(instance)
        if holder is None or holder.run_id is None:
            return None
        with self.engine.begin() as conn:
            conn.execute(
                sa.update(lock_table)
                .where(lock_table.c.instance == instance, lock_table.c.run_id == holder.run_id)
                .values(run_id=None, expires_ms=0)
            )
        return holder.run_id

    def lock_holder(self, instance: str) -> Lease | None:
        """The instance's lock row (``run_id`` None: free), or None when no run ever took it."""
        with self.engine.connect() as conn:
            lease = self._lease(conn, instance, None)
        return None if lease.generation == 0 else lease

    def locks(self) -> list[Lease]:
        with self.engine.connect() as conn:
            instances = [r[0] for r in conn.execute(sa.select(lock_table.c.instance).order_by(lock_table.c.instance))]
            return [self._lease(conn, i, None) for i in instances]

    @staticmethod
    def _lease(conn: sa.Connection, instance: str, run_id: str | None) -> Lease:
        c = lock_table.c
        row = conn.execute(
            sa.select(c.run_id, c.generation, c.acquired_ms, c.renewed_ms, c.expires_ms).where(c.instance == instance)
        ).first()
        if row is None:
            return Lease(instance, None, 0, 0, 0, 0, held=False)
        return Lease(
            instance=instance,
            run_id=row.run_id,
            generation=int(row.generation),
            acquired_ms=int(row.acquired_ms),
            renewed_ms=int(row.renewed_ms),
            expires_ms=int(row.expires_ms),
            held=run_id is not None and row.run_id == run_id,
        )
