"""Parking: records that failed ``parking.max_failed_runs`` runs in a row are held back from re-sends until a
person releases them (``python -m d365.parking``)."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import sqlalchemy as sa

from d365.pipeline.ledger_schema import LeadState, LedgerStore, _now, create_tables, ledger_table, metadata

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
    ledger: LedgerStore, instance: str, max_failed_runs: int, *, run_id: str | None = None
) -> list[ParkedRecord]:
    """Park every applicant still FAILED after ``max_failed_runs`` runs in a row (0: never); the newly parked."""
    if max_failed_runs <= 0:
        return []
    create_tables(ledger.engine, metadata, [parked_table])
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
    ledger: LedgerStore, instance: str | None = None, applicant_ids: Iterable[int] | None = None
) -> list[ParkedRecord]:
    """Parked records (of one instance, or all), optionally only these applicants; by instance and id."""
    create_tables(ledger.engine, metadata, [parked_table])
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
    ledger: LedgerStore, *, instance: str | None = None, applicant_ids: Iterable[int] | None = None
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
