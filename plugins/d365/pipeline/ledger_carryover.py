"""What a run leaves the next one beside the cursors: the applicants the journal named that it could not read
(carried) and the size of the last full extract (for ``quality.max_drop_fraction``)."""

from __future__ import annotations

from collections.abc import Iterable

import sqlalchemy as sa

from d365.pipeline.ledger_schema import LedgerStore, _now, create_tables, metadata

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


def last_full_extract_rows(ledger: LedgerStore, instance: str) -> int | None:
    """Rows of the last full extract (first load or resync) that passed the quality checks, or None."""
    create_tables(ledger.engine, metadata, [quality_table])
    with ledger.engine.connect() as conn:
        value = conn.execute(
            sa.select(quality_table.c.value).where(
                quality_table.c.instance == instance, quality_table.c.name == LAST_FULL_EXTRACT_ROWS
            )
        ).scalar()
    return None if value is None else int(value)


def record_full_extract_rows(ledger: LedgerStore, instance: str, rows: int) -> None:
    create_tables(ledger.engine, metadata, [quality_table])
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


def carried_ids(ledger: LedgerStore, instance: str) -> dict[int, int]:
    """applicant id → runs in a row that could not read it, for the applicants carried to the next run."""
    create_tables(ledger.engine, metadata, [carried_table])
    c = carried_table.c
    with ledger.engine.connect() as conn:
        rows = conn.execute(sa.select(c.applicant_id, c.attempts).where(c.instance == instance)).all()
    return {int(aid): int(attempts) for aid, attempts in rows}


def save_carried(
    ledger: LedgerStore, instance: str, carry: Iterable[int], resolved: Iterable[int], *, run_id: str | None = None
) -> None:
    """After a run's load: forget the ``resolved`` (read now, or purged) and keep ``carry`` (one more attempt
    for those already carried), in one transaction. Call it before the cursors move."""
    create_tables(ledger.engine, metadata, [carried_table])
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
