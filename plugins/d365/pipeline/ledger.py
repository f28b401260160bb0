"""The sync ledger: applicant → lead id, payload hash, state, last sync and last error; plus the cursors.

It is an optimisation and an audit trail, not the source of truth (lead ids are derived, see
``identity``): unchanged payloads cost zero writes, per-record failures are retried next run, consent
and erasure actions are recorded. Cursors advance only when the caller says the load has committed.

SQLite is the embedded default; any SQLAlchemy URL works (PostgreSQL in production:
``postgresql+psycopg2://user@host/db``). Writes are bulk upserts (``INSERT … ON CONFLICT``), which
both dialects support.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Sequence
from typing import Any

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql, sqlite

from d365.pipeline.ledger_carryover import (
    LAST_FULL_EXTRACT_ROWS,
    carried_ids,
    carried_table,
    last_full_extract_rows,
    quality_table,
    record_full_extract_rows,
    save_carried,
)
from d365.pipeline.ledger_lock import LedgerLocks
from d365.pipeline.ledger_parking import ParkedRecord, park_failing, parked_records, parked_table, release_parked
from d365.pipeline.ledger_schema import (
    LeadState,
    Lease,
    LedgerEntry,
    LedgerUpdate,
    LockLost,
    _now,
    _now_ms,
    _rowcount,
    create_tables,
    cursor_table,
    ledger_table,
    lock_table,
    metadata,
)

# The ledger's public names, wherever they are defined (ledger_schema, ledger_lock, ledger_parking,
# ledger_carryover): callers import them from here.
__all__ = [
    "LAST_FULL_EXTRACT_ROWS",
    "LEDGER_URL_ENV",
    "LeadState",
    "Lease",
    "Ledger",
    "LedgerEntry",
    "LedgerUpdate",
    "LockLost",
    "ParkedRecord",
    "carried_ids",
    "carried_table",
    "cursor_table",
    "default_ledger_url",
    "last_full_extract_rows",
    "ledger_table",
    "lock_table",
    "metadata",
    "park_failing",
    "parked_records",
    "parked_table",
    "quality_table",
    "record_full_extract_rows",
    "release_parked",
    "save_carried",
]

log = logging.getLogger(__name__)


class Ledger(LedgerLocks):
    """Ledger rows and cursors of every instance in one database (SQLite or PostgreSQL); the lock is ``LedgerLocks``."""

    CURSOR_NAMES = ("applicant_id", "journal_event_id")

    def __init__(self, url: str, *, create: bool = True) -> None:
        self.url = url
        self.engine = sa.create_engine(url, future=True, pool_pre_ping=True)
        if self.engine.dialect.name == "sqlite":
            # Several task processes may share the file: wait for locks instead of failing.
            sa.event.listen(self.engine, "connect", _sqlite_pragmas)
        if create:
            create_tables(self.engine, metadata)
            _add_missing_columns(self.engine, (ledger_table,))

    def dispose(self) -> None:
        self.engine.dispose()

    # -- cursors ---------------------------------------------------------------------------
    def cursors(self, instance: str) -> dict[str, int]:
        with self.engine.connect() as conn:
            rows = conn.execute(
                sa.select(cursor_table.c.name, cursor_table.c.value).where(cursor_table.c.instance == instance)
            ).all()
        values = dict.fromkeys(self.CURSOR_NAMES, 0)
        values.update({name: int(value) for name, value in rows})
        return values

    def advance_cursors(self, instance: str, *, fence: tuple[str, int] | None = None, **values: int) -> dict[str, int]:
        """Move cursors forward (never back), after the load has committed.

        ``fence`` = (run id, lock generation): the cursors move only if that run still holds the instance's
        lock, checked in the same transaction (the lock row stays locked until it commits), else ``LockLost``."""
        unknown = set(values) - set(self.CURSOR_NAMES)
        if unknown:
            raise ValueError(f"unknown cursors: {sorted(unknown)}")
        now = _now()
        with self.engine.begin() as conn:
            if fence is not None:
                lc = lock_table.c
                touched = conn.execute(
                    sa.update(lock_table)
                    .where(lc.instance == instance, lc.run_id == fence[0], lc.generation == int(fence[1]))
                    .values(renewed_ms=_now_ms())
                )
                if _rowcount(touched, 0) != 1:
                    holder = self._lease(conn, instance, fence[0])
                    raise LockLost(
                        f"run {fence[0]} (lock generation {fence[1]}) no longer holds the lock of {instance} "
                        f"(now: run {holder.run_id}, generation {holder.generation}): the cursors do not move"
                    )
            for name, value in values.items():
                insert = self._insert(cursor_table).values(
                    instance=instance, name=name, value=int(value), updated_at=now
                )
                conn.execute(
                    insert.on_conflict_do_update(
                        index_elements=["instance", "name"],
                        set_={
                            "value": sa.func.max(cursor_table.c.value, insert.excluded.value)
                            if self.engine.dialect.name == "sqlite"
                            else sa.func.greatest(cursor_table.c.value, insert.excluded.value),
                            "updated_at": now,
                        },
                    )
                )
        return self.cursors(instance)

    def reset_cursors(self, instance: str) -> None:
        with self.engine.begin() as conn:
            conn.execute(sa.delete(cursor_table).where(cursor_table.c.instance == instance))

    # -- entries ---------------------------------------------------------------------------
    def entries(self, instance: str, applicant_ids: Iterable[int] | None = None) -> dict[int, LedgerEntry]:
        cols = ledger_table.c
        query = sa.select(
            cols.applicant_id,
            cols.lead_id,
            cols.state,
            cols.payload_hash,
            cols.adopted,
            cols.attempts,
            cols.last_error_code,
            cols.reason,
        ).where(cols.instance == instance)
        found: dict[int, LedgerEntry] = {}
        with self.engine.connect() as conn:
            if applicant_ids is None:
                chunks: Iterable[Sequence[int] | None] = [None]
            else:
                ids = sorted({int(i) for i in applicant_ids})
                chunks = [ids[i : i + 5000] for i in range(0, len(ids), 5000)]
            for chunk in chunks:
                q = query if chunk is None else query.where(cols.applicant_id.in_(chunk))
                for row in conn.execute(q):
                    found[int(row.applicant_id)] = LedgerEntry(
                        applicant_id=int(row.applicant_id),
                        lead_id=row.lead_id,
                        state=LeadState(row.state),
                        payload_hash=row.payload_hash,
                        adopted=bool(row.adopted),
                        attempts=int(row.attempts or 0),
                        last_error_code=row.last_error_code,
                        reason=row.reason,
                    )
        return found

    def ids_in_state(self, instance: str, *states: LeadState) -> list[int]:
        cols = ledger_table.c
        with self.engine.connect() as conn:
            rows = conn.execute(
                sa.select(cols.applicant_id)
                .where(cols.instance == instance, cols.state.in_([s.value for s in states]))
                .order_by(cols.applicant_id)
            )
            return [int(r.applicant_id) for r in rows]

    def record(
        self,
        instance: str,
        updates: Iterable[LedgerUpdate],
        *,
        run_id: str | None = None,
        version: int | None = None,
    ) -> int:
        """Bulk-upsert outcomes. A failure keeps the last good lead id and hash; attempts count failures.

        ``version`` is the writing run's lock generation (``acquire_lock``): a row written by a newer
        generation is left as it is (atomically, in the upsert's ``WHERE``), so a run that lost its lock cannot
        put an older payload over a newer one. Returns the number of rows written; ignored ones are logged."""
        now = _now()
        rows = []
        cleared: list[int] = []
        for u in updates:
            if u.clear_lead_id:
                cleared.append(int(u.applicant_id))
            failed = u.state is LeadState.FAILED
            rows.append(
                {
                    "instance": instance,
                    "applicant_id": int(u.applicant_id),
                    "lead_id": u.lead_id,
                    "state": u.state.value,
                    "reason": u.reason,
                    "payload_hash": u.payload_hash,
                    "adopted": bool(u.adopted),
                    "attempts": 1 if failed else 0,
                    "last_error_code": u.error_code if failed else None,
                    "last_error": u.error if failed else None,
                    "last_synced_at": now if u.synced else None,
                    "last_attempt_at": now,
                    "last_run_id": run_id,
                    "version": version,
                }
            )
        if not rows:
            return 0
        c = ledger_table.c
        current = _not_newer_than(c.version, version)
        written = 0
        with self.engine.begin() as conn:
            for start in range(0, len(rows), 2000):
                chunk = rows[start : start + 2000]
                insert = self._insert(ledger_table).values(chunk)
                ex = insert.excluded
                failed_now = ex.state == LeadState.FAILED.value
                result = conn.execute(
                    insert.on_conflict_do_update(
                        index_elements=["instance", "applicant_id"],
                        set_={
                            "state": ex.state,
                            "reason": ex.reason,
                            "lead_id": sa.func.coalesce(ex.lead_id, c.lead_id),
                            # a failure does not change what the lead holds
                            "payload_hash": sa.case((failed_now, c.payload_hash), else_=ex.payload_hash),
                            "adopted": sa.or_(c.adopted, ex.adopted),
                            # consecutive failed RUNS (parking counts them): the same run recording a failure
                            # again (per batch, a retried task) does not count twice; any other outcome resets
                            "attempts": sa.case(
                                (
                                    failed_now
                                    & (c.state == LeadState.FAILED.value)
                                    & (c.last_run_id == ex.last_run_id),
                                    c.attempts,
                                ),
                                (failed_now, c.attempts + 1),
                                else_=0,
                            ),
                            "last_error_code": ex.last_error_code,
                            "last_error": ex.last_error,
                            "last_synced_at": sa.func.coalesce(ex.last_synced_at, c.last_synced_at),
                            "last_attempt_at": ex.last_attempt_at,
                            "last_run_id": ex.last_run_id,
                            "version": sa.func.coalesce(ex.version, c.version),
                        },
                        where=current,
                    )
                )
                written += _rowcount(result, len(chunk))
            for start in range(0, len(cleared), 2000):
                conn.execute(
                    sa.update(ledger_table)
                    .where(c.instance == instance, c.applicant_id.in_(cleared[start : start + 2000]), current)
                    .values(lead_id=None)
                )
        if written < len(rows):
            log.warning(
                "ledger: %d of %d writes ignored, their rows were written by a newer run (lock generation > %s)",
                len(rows) - written,
                len(rows),
                version,
            )
        return written

    def scrub(self, instance: str, applicant_ids: Iterable[int], *, reason: str) -> int:
        """Erasure: keep only what proves the action happened (ids, state, time), drop everything else."""
        ids = [int(i) for i in applicant_ids]
        if not ids:
            return 0
        with self.engine.begin() as conn:
            result = conn.execute(
                sa.update(ledger_table)
                .where(ledger_table.c.instance == instance, ledger_table.c.applicant_id.in_(ids))
                .values(
                    state=LeadState.ERASED.value,
                    reason=reason,
                    payload_hash=None,
                    last_error=None,
                    last_error_code=None,
                    last_attempt_at=_now(),
                )
            )
            return int(result.rowcount or 0)

    def counts(self, instance: str) -> dict[str, int]:
        c = ledger_table.c
        with self.engine.connect() as conn:
            rows = conn.execute(
                sa.select(c.state, sa.func.count()).where(c.instance == instance).group_by(c.state)
            ).all()
        return {state: int(n) for state, n in rows}

    def _insert(self, table: sa.Table) -> Any:
        if self.engine.dialect.name == "postgresql":
            return postgresql.insert(table)
        if self.engine.dialect.name == "sqlite":
            return sqlite.insert(table)
        raise NotImplementedError(f"ledger supports SQLite and PostgreSQL, not {self.engine.dialect.name}")


def _not_newer_than(column: sa.Column[Any], version: int | None) -> sa.ColumnElement[bool]:
    """The row may be written by ``version``: unversioned writes always apply, and so do writes of a
    generation at least as new as the row's (the same run writes many times)."""
    if version is None:
        return sa.true()
    return sa.or_(column.is_(None), column <= int(version))


def _add_missing_columns(engine: sa.Engine, tables: Iterable[sa.Table]) -> None:
    """``create_all`` creates missing tables, never missing columns: add nullable columns a newer version
    of this module defines to a ledger created by an older one."""
    inspector = sa.inspect(engine)
    for table in tables:
        if not inspector.has_table(table.name):
            continue
        present = {col["name"] for col in inspector.get_columns(table.name)}
        missing = [col for col in table.columns if col.name not in present]
        if not missing:
            continue
        with engine.begin() as conn:
            for col in missing:
                if not col.nullable:
                    raise RuntimeError(f"ledger table {table.name} lacks the non-nullable column {col.name}")
                kind = col.type.compile(dialect=engine.dialect)
                conn.execute(sa.text(f'ALTER TABLE {table.name} ADD COLUMN "{col.name}" {kind}'))
                log.info("ledger: added column %s.%s", table.name, col.name)


def _sqlite_pragmas(dbapi_conn: Any, _record: Any) -> None:
    cur = dbapi_conn.cursor()
    cur.execute("PRAGMA journal_mode=WAL")
    cur.execute("PRAGMA busy_timeout=30000")
    cur.close()


LEDGER_URL_ENV = "D365_SYNC_LEDGER_URL"


def default_ledger_url() -> str:
    """``$D365_SYNC_LEDGER_URL``, else a SQLite file beside Airflow's own (``$AIRFLOW_HOME/d365_ledger.db``)."""
    import os
    from pathlib import Path

    url = os.environ.get(LEDGER_URL_ENV)
    if url:
        return url
    home = Path(os.environ.get("AIRFLOW_HOME") or Path.home() / "airflow").resolve()
    home.mkdir(parents=True, exist_ok=True)
    return f"sqlite:///{home / 'd365_ledger.db'}"
