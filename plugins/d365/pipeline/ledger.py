"""The sync ledger: applicant → lead id, payload hash, state, last sync and last error; plus the cursors.

It is an optimisation and an audit trail, not the source of truth (lead ids are derived, see
``identity``): unchanged payloads cost zero writes, per-record failures are retried next run, consent
and erasure actions are recorded. Cursors advance only when the caller says the load has committed.

SQLite is the embedded default; any SQLAlchemy URL works (PostgreSQL in production:
``postgresql+psycopg2://user@host/db``). Writes are bulk upserts (``INSERT … ON CONFLICT``), which
both dialects support.
"""

from __future__ import annotations

import dataclasses
import enum
import logging
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql, sqlite

log = logging.getLogger(__name__)
metadata = sa.MetaData()

ledger_table = sa.Table(
    "d365_sync_ledger",
    metadata,
    sa.Column("instance", sa.String(255), primary_key=True),
    sa.Column("applicant_id", sa.BigInteger, primary_key=True, autoincrement=False),
    sa.Column("lead_id", sa.String(36), nullable=True),
    sa.Column("state", sa.String(32), nullable=False),
    sa.Column("reason", sa.Text, nullable=True),
    sa.Column("payload_hash", sa.String(64), nullable=True),
    sa.Column("adopted", sa.Boolean, nullable=False, default=False),
    sa.Column("attempts", sa.Integer, nullable=False, default=0),
    sa.Column("last_error_code", sa.String(64), nullable=True),
    sa.Column("last_error", sa.Text, nullable=True),
    sa.Column("last_synced_at", sa.DateTime(timezone=True), nullable=True),
    sa.Column("last_attempt_at", sa.DateTime(timezone=True), nullable=False),
    sa.Column("last_run_id", sa.String(255), nullable=True),
    # The writer's lock generation (``d365_sync_lock``): a write older than the row's is ignored, so a run that
    # lost its lock can never put an older payload over a newer one. NULL: written without a lock (reconcile).
    sa.Column("version", sa.BigInteger, nullable=True),
    sa.Index("ix_d365_sync_ledger_state", "instance", "state"),
)

cursor_table = sa.Table(
    "d365_sync_cursors",
    metadata,
    sa.Column("instance", sa.String(255), primary_key=True),
    sa.Column("name", sa.String(64), primary_key=True),
    sa.Column("value", sa.BigInteger, nullable=False),
    sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
)


# One row per DreamApply instance: which run may read the cursors and write the ledger now (``acquire_lock``).
# Released rows stay (run_id NULL) so that ``generation`` only ever grows; times are epoch milliseconds.
lock_table = sa.Table(
    "d365_sync_lock",
    metadata,
    sa.Column("instance", sa.String(255), primary_key=True),
    sa.Column("run_id", sa.String(255), nullable=True),
    sa.Column("generation", sa.BigInteger, nullable=False),
    sa.Column("acquired_ms", sa.BigInteger, nullable=False),
    sa.Column("renewed_ms", sa.BigInteger, nullable=False),
    sa.Column("expires_ms", sa.BigInteger, nullable=False),
)


class LockLost(RuntimeError):
    """The run no longer holds its instance's lock (``d365_sync_lock``): it must stop reading and writing."""


@dataclass(frozen=True)
class Lease:
    """The lock row of an instance as one caller saw it. ``held``: the caller's run holds it."""

    instance: str
    run_id: str | None  # the holder; None: free
    generation: int
    acquired_ms: int
    renewed_ms: int
    expires_ms: int
    held: bool

    @property
    def expires_at(self) -> datetime:
        return datetime.fromtimestamp(self.expires_ms / 1000, UTC)

    @property
    def acquired_at(self) -> datetime:
        return datetime.fromtimestamp(self.acquired_ms / 1000, UTC)

    def expired(self, now_ms: int | None = None) -> bool:
        return self.expires_ms <= (_now_ms() if now_ms is None else now_ms)


class LeadState(enum.StrEnum):
    """Where an applicant ended up. Every applicant a run touches ends in exactly one."""

    SENT = "sent"  # the lead holds the current payload (created, updated or unchanged)
    SKIPPED_CONSENT = "skipped_consent"  # never sent: the required consent is missing
    QUARANTINED = "quarantined"  # bad data; reason says why; retried when the applicant changes
    FAILED = "failed"  # Dynamics refused or could not be reached; retried next run
    WITHDRAWN = "withdrawn"  # consent withdrawn after sending; the configured action was applied
    ERASING = "erasing"  # right to be forgotten: the CRM action is done, the scrub of ledger and run files pending
    ERASED = "erased"  # right to be forgotten applied; personal data scrubbed


@dataclass(frozen=True)
class LedgerEntry:
    applicant_id: int
    lead_id: str | None
    state: LeadState
    payload_hash: str | None
    adopted: bool
    attempts: int
    last_error_code: str | None
    reason: str | None


@dataclass
class LedgerUpdate:
    """The outcome of one applicant in one run."""

    applicant_id: int
    state: LeadState
    lead_id: str | None = None
    payload_hash: str | None = None
    adopted: bool = False
    reason: str | None = None
    error_code: str | None = None
    error: str | None = None
    synced: bool = False  # the lead now holds payload_hash (sets last_synced_at)
    clear_lead_id: bool = False  # the lead is gone (deleted): forget its id instead of keeping the last one
    extra: dict[str, Any] = field(default_factory=dict)


class Ledger:
    CURSOR_NAMES = ("applicant_id", "journal_event_id")

    def __init__(self, url: str, *, create: bool = True) -> None:
        self.url = url
        self.engine = sa.create_engine(url, future=True, pool_pre_ping=True)
        if self.engine.dialect.name == "sqlite":
            # Several task processes may share the file: wait for locks instead of failing.
            sa.event.listen(self.engine, "connect", _sqlite_pragmas)
        if create:
            metadata.create_all(self.engine)
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

    # -- the per-instance lock -------------------------------------------------------------------
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


def _now() -> datetime:
    return datetime.now(UTC)


def _now_ms() -> int:
    return int(time.time() * 1000)


def _not_newer_than(column: sa.Column[Any], version: int | None) -> sa.ColumnElement[bool]:
    """The row may be written by ``version``: unversioned writes always apply, and so do writes of a
    generation at least as new as the row's (the same run writes many times)."""
    if version is None:
        return sa.true()
    return sa.or_(column.is_(None), column <= int(version))


def _rowcount(result: Any, default: int) -> int:
    count = getattr(result, "rowcount", None)
    return default if count is None or count < 0 else int(count)


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


# -- quality: the size of the last full extract (for quality.max_drop_fraction) -----------------------
# A table of its own: the cursor table's rows are all read as cursors by ``Ledger.cursors``.
quality_table = sa.Table(
    "d365_sync_quality",
    metadata,
    sa.Column("instance", sa.String(255), primary_key=True),
    sa.Column("name", sa.String(64), primary_key=True),
    sa.Column("value", sa.BigInteger, nullable=False),
    sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
)
LAST_FULL_EXTRACT_ROWS = "last_full_extract_rows"


def last_full_extract_rows(ledger: Ledger, instance: str) -> int | None:
    """Rows of the last full extract (first load or resync) that passed the quality checks, or None."""
    metadata.create_all(ledger.engine, tables=[quality_table])
    with ledger.engine.connect() as conn:
        value = conn.execute(
            sa.select(quality_table.c.value).where(
                quality_table.c.instance == instance, quality_table.c.name == LAST_FULL_EXTRACT_ROWS
            )
        ).scalar()
    return None if value is None else int(value)


def record_full_extract_rows(ledger: Ledger, instance: str, rows: int) -> None:
    metadata.create_all(ledger.engine, tables=[quality_table])
    now = _now()
    insert = ledger._insert(quality_table).values(
        instance=instance, name=LAST_FULL_EXTRACT_ROWS, value=int(rows), updated_at=now
    )
    with ledger.engine.begin() as conn:
        conn.execute(
            insert.on_conflict_do_update(
                index_elements=["instance", "name"], set_={"value": int(rows), "updated_at": now}
            )
        )


# -- parking: records that failed ``parking.max_failed_runs`` runs in a row wait for a person ------------------
# A table of its own (not a new state): the row stays FAILED with its error, the flag only holds back re-sends.
parked_table = sa.Table(
    "d365_sync_parked",
    metadata,
    sa.Column("instance", sa.String(255), primary_key=True),
    sa.Column("applicant_id", sa.BigInteger, primary_key=True, autoincrement=False),
    sa.Column("failed_runs", sa.Integer, nullable=False),
    sa.Column("last_error_code", sa.String(64), nullable=True),
    sa.Column("parked_at", sa.DateTime(timezone=True), nullable=False),
    sa.Column("run_id", sa.String(255), nullable=True),
)


@dataclass(frozen=True)
class ParkedRecord:
    instance: str
    applicant_id: int
    failed_runs: int
    last_error_code: str | None
    parked_at: datetime
    run_id: str | None

    def to_json(self) -> dict[str, Any]:
        return {
            "applicant_id": self.applicant_id,
            "failed_runs": self.failed_runs,
            "error_code": self.last_error_code,
            "parked_at": self.parked_at.isoformat(),
            "run_id": self.run_id,
        }


def park_failing(
    ledger: Ledger, instance: str, max_failed_runs: int, *, run_id: str | None = None
) -> list[ParkedRecord]:
    """Park every applicant still FAILED after ``max_failed_runs`` runs in a row (0: never); the newly parked."""
    if max_failed_runs <= 0:
        return []
    metadata.create_all(ledger.engine, tables=[parked_table])
    c, p = ledger_table.c, parked_table.c
    now = _now()
    with ledger.engine.begin() as conn:
        rows = conn.execute(
            sa.select(c.applicant_id, c.attempts, c.last_error_code)
            .where(
                c.instance == instance,
                c.state == LeadState.FAILED.value,
                c.attempts >= max_failed_runs,
                ~sa.exists().where(p.instance == instance, p.applicant_id == c.applicant_id),
            )
            .order_by(c.applicant_id)
        ).all()
        parked = [
            ParkedRecord(instance, int(r.applicant_id), int(r.attempts), r.last_error_code, now, run_id) for r in rows
        ]
        for start in range(0, len(parked), 2000):
            values = [
                {
                    "instance": instance,
                    "applicant_id": r.applicant_id,
                    "failed_runs": r.failed_runs,
                    "last_error_code": r.last_error_code,
                    "parked_at": now,
                    "run_id": run_id,
                }
                for r in parked[start : start + 2000]
            ]
            conn.execute(ledger._insert(parked_table).values(values).on_conflict_do_nothing())
    return parked


def parked_records(
    ledger: Ledger, instance: str | None = None, applicant_ids: Iterable[int] | None = None
) -> list[ParkedRecord]:
    """Parked records (of one instance, or all), optionally only these applicants; by instance and id."""
    metadata.create_all(ledger.engine, tables=[parked_table])
    p = parked_table.c
    query = sa.select(parked_table).order_by(p.instance, p.applicant_id)
    if instance is not None:
        query = query.where(p.instance == instance)
    ids = None if applicant_ids is None else sorted({int(i) for i in applicant_ids})
    found: list[ParkedRecord] = []
    with ledger.engine.connect() as conn:
        chunks: list[list[int] | None] = [None]
        if ids is not None:
            chunks = [ids[i : i + 5000] for i in range(0, len(ids), 5000)]
        for chunk in chunks:
            q = query if chunk is None else query.where(p.applicant_id.in_(chunk))
            for r in conn.execute(q):
                at = r.parked_at if r.parked_at.tzinfo else r.parked_at.replace(tzinfo=UTC)  # SQLite: naive
                found.append(
                    ParkedRecord(r.instance, int(r.applicant_id), int(r.failed_runs), r.last_error_code, at, r.run_id)
                )
    return found


def release_parked(
    ledger: Ledger, *, instance: str | None = None, applicant_ids: Iterable[int] | None = None
) -> list[ParkedRecord]:
    """Release parked records (all of them when ``applicant_ids`` is None): their count of failed runs starts
    again at 0 and they stay FAILED, so the next run sends them again. Returns what was released."""
    released = parked_records(ledger, instance, applicant_ids)
    if not released:
        return []
    c, p = ledger_table.c, parked_table.c
    with ledger.engine.begin() as conn:
        by_instance: dict[str, list[int]] = {}
        for r in released:
            by_instance.setdefault(r.instance, []).append(r.applicant_id)
        for inst, ids in by_instance.items():
            for start in range(0, len(ids), 2000):
                chunk = ids[start : start + 2000]
                conn.execute(sa.delete(parked_table).where(p.instance == inst, p.applicant_id.in_(chunk)))
                conn.execute(
                    sa.update(ledger_table).where(c.instance == inst, c.applicant_id.in_(chunk)).values(attempts=0)
                )
    return released


# -- carried: applicants the journal named that a run could not read (``extract``) --------------------------
# Saved with the cursors (commit), read by the next extract, which fetches them first: the journal cursor may
# move past their events only because they are kept here. ``attempts``: runs in a row that could not read them.
carried_table = sa.Table(
    "d365_sync_carried",
    metadata,
    sa.Column("instance", sa.String(255), primary_key=True),
    sa.Column("applicant_id", sa.BigInteger, primary_key=True, autoincrement=False),
    sa.Column("attempts", sa.Integer, nullable=False, default=1),
    sa.Column("first_run_id", sa.String(255), nullable=True),
    sa.Column("last_run_id", sa.String(255), nullable=True),
    sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
)


def carried_ids(ledger: Ledger, instance: str) -> dict[int, int]:
    """applicant id → runs in a row that could not read it, for the applicants carried to the next run."""
    metadata.create_all(ledger.engine, tables=[carried_table])
    c = carried_table.c
    with ledger.engine.connect() as conn:
        rows = conn.execute(sa.select(c.applicant_id, c.attempts).where(c.instance == instance)).all()
    return {int(aid): int(attempts) for aid, attempts in rows}


def save_carried(
    ledger: Ledger, instance: str, carry: Iterable[int], resolved: Iterable[int], *, run_id: str | None = None
) -> None:
    """After a run's load: forget the ``resolved`` (read now, or purged) and keep ``carry`` (one more attempt
    for those already carried), in one transaction. Call it before the cursors move."""
    metadata.create_all(ledger.engine, tables=[carried_table])
    c = carried_table.c
    now = _now()
    keep = sorted({int(i) for i in carry})
    done = sorted({int(i) for i in resolved} - set(keep))
    with ledger.engine.begin() as conn:
        for start in range(0, len(done), 2000):
            conn.execute(
                sa.delete(carried_table).where(c.instance == instance, c.applicant_id.in_(done[start : start + 2000]))
            )
        for start in range(0, len(keep), 2000):
            rows = [
                {
                    "instance": instance,
                    "applicant_id": aid,
                    "attempts": 1,
                    "first_run_id": run_id,
                    "last_run_id": run_id,
                    "updated_at": now,
                }
                for aid in keep[start : start + 2000]
            ]
            insert = ledger._insert(carried_table).values(rows)
            conn.execute(
                insert.on_conflict_do_update(
                    index_elements=["instance", "applicant_id"],
                    set_={"attempts": c.attempts + 1, "last_run_id": insert.excluded.last_run_id, "updated_at": now},
                )
            )
