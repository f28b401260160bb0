"""Creating the ledger's tables is safe when several processes do it at once on a new database (the first scheduled run
and a backfill start together): PostgreSQL's CREATE TABLE races on its type catalogue without the advisory lock."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import sqlalchemy as sa

REPO = Path(__file__).resolve().parents[3]
CREATORS = 6
# Each process waits for the same start instant, then opens the ledger, the pause store and the parking table, as
# the first tasks of concurrent runs do.
CREATE = """
import sys, time
start = float(sys.argv[2])
from d365.pause import PauseStore
from d365.pipeline.ledger import Ledger, parked_records
time.sleep(max(0.0, start - time.time()))
ledger = Ledger(sys.argv[1])
PauseStore(sys.argv[1]).dispose()
parked_records(ledger, "race.example")
ledger.dispose()
print("ok")
"""


@pytest.mark.slow
@pytest.mark.parametrize("round_", range(3))
def test_concurrent_first_runs_create_the_tables_once_without_an_error(
    fresh_postgres_database: str, round_: int
) -> None:
    import time

    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), str(REPO / "plugins")])}
    start = time.time() + 4  # every process has imported SQLAlchemy and the ledger by then
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", CREATE, fresh_postgres_database, str(start)],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for _ in range(CREATORS)
    ]
    outputs = [p.communicate(timeout=120) for p in procs]
    failed = [err[-1500:] for (out, err), p in zip(outputs, procs, strict=True) if p.returncode != 0]
    assert not failed, failed[0]
    assert all(out.strip() == "ok" for out, _ in outputs)
    engine = sa.create_engine(fresh_postgres_database)
    try:
        tables = set(sa.inspect(engine).get_table_names())
    finally:
        engine.dispose()
    from d365.pause import failures_table, pause_table
    from d365.pipeline.ledger_schema import metadata

    assert {*metadata.tables, failures_table.name, pause_table.name} <= tables
