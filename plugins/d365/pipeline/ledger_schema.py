"""The ledger's tables (ledger rows, cursors, the per-instance lock) and the values read from and written to them:
a lead's state, a ledger entry, one run's outcome for an applicant, a lease on the lock."""

from __future__ import annotations

import enum
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Protocol

import sqlalchemy as sa

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


class LedgerStore(Protocol):
    """What the side tables' functions (parking, carry-over) need of a ``Ledger``: its engine and its dialect's
    upsert. A protocol, so that those modules need not import ``ledger`` (which re-exports them)."""

    engine: sa.Engine

    def _insert(self, table: sa.Table) -> Any: ...


def _now() -> datetime:
    return datetime.now(UTC)


def _now_ms() -> int:
    return int(time.time() * 1000)


def _rowcount(result: Any, default: int) -> int:
    count = getattr(result, "rowcount", None)
    return default if count is None or count < 0 else int(count)


# pg_advisory_xact_lock key that serialises schema creation: the first runs on a new PostgreSQL database start at
# once (a scheduled run and a backfill), and two CREATE TABLEs of one name race ("pg_type_typname_nsp_index").
SCHEMA_LOCK_KEY = 0x0D365_5C4E


def create_tables(engine: sa.Engine, md: sa.MetaData, tables: Sequence[sa.Table] | None = None) -> None:
    """``create_all`` safe against other processes creating the same tables at the same moment: on PostgreSQL
    under a transaction-scoped advisory lock (the second creator then finds the tables); on SQLite, whose file
    lock serialises the statements but not the check before them, a lost race ("already exists") is checked again."""
    for attempt in (1, 2):
        try:
            with engine.begin() as conn:
                if conn.dialect.name == "postgresql":
                    conn.execute(sa.text("SELECT pg_advisory_xact_lock(:key)"), {"key": SCHEMA_LOCK_KEY})
                md.create_all(conn, tables=tables)
            return
        except sa.exc.OperationalError as exc:
            if attempt == 2 or "already exists" not in str(exc.orig):
                raise
