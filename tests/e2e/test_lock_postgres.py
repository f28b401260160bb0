"""One sync at a time per DreamApply instance, with the ledger on PostgreSQL.

A scheduled-like run and a backfill-like run of the real DAG start together, each ``dag.test()`` in its own
process (tasks of one Airflow run in separate processes too), against one sandbox and one PostgreSQL ledger.
While the first run to get the lock is inside its load (its ``$batch`` held back by a latency fault),
DreamApply time moves on: applicants it is sending are edited and a day of activity is simulated. The other run
must wait for the lock, then read the cursors the first one committed, so that every lead ends with the
current values and the cursors never pass a change that was not sent. Without the lock both runs would extract
the same old data before any edit and the edits would never reach Dynamics.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from e2e.helpers import accepted_live, leads_by_applicant, nfc, raw_applicants

from d365.pipeline.ledger import Ledger, ledger_table
from sandbox.client import SandboxClient, airflow_connections

REPO = Path(__file__).resolve().parents[2]
DAG_ID = "dreamapply_to_dynamics365"
PG_ADMIN = os.environ.get("D365_TEST_PG_ADMIN_URL", "postgresql+psycopg2://postgres@127.0.0.1:5432/postgres")
BATCH_DELAY_SECONDS = 6  # how long the first load's $batch is held: time to edit DreamApply meanwhile

# One DAG run with dag.test() in this process; prints the run's id and state as the last line.
RUNNER = """
import json, sys
from datetime import datetime
from airflow.models import DagBag

bag = DagBag(dag_folder=sys.argv[1])
assert not bag.import_errors, bag.import_errors
run = bag.get_dag(sys.argv[2]).test(logical_date=datetime.fromisoformat(sys.argv[3]))
print("RUN " + json.dumps({"run_id": run.run_id, "state": getattr(run.state, "value", str(run.state))}))
"""


def _start_run(env: dict[str, str], home: Path, logical_date: str, log: Path) -> subprocess.Popen[str]:
    """A DAG run in a process of its own, with its own copy of the migrated Airflow metadata database."""
    home.mkdir()
    shutil.copy(Path(os.environ["AIRFLOW_HOME"]) / "airflow.db", home / "airflow.db")
    own = {
        **env,
        "AIRFLOW_HOME": str(home),
        "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": f"sqlite:///{home / 'airflow.db'}",
    }
    return subprocess.Popen(
        [sys.executable, "-c", RUNNER, str(REPO / "dags"), DAG_ID, logical_date],
        env=own,
        stdout=log.open("w"),
        stderr=subprocess.STDOUT,
        text=True,
    )


def _wait_for(
    condition: Callable[[], bool], procs: dict[str, subprocess.Popen[str]], timeout: float, what: str
) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return
        ended = [name for name, proc in procs.items() if proc.poll() is not None]
        assert not ended, f"the {ended} run ended before {what}"
        time.sleep(0.2)
    raise AssertionError(f"timed out waiting for {what}")


def _fired(client: SandboxClient) -> int:
    return sum(int(rule.get("fired", 0)) for rule in client.get("/faults")["rules"])


def _result(log: Path) -> dict[str, Any]:
    lines = [line for line in log.read_text().splitlines() if line.startswith("RUN ")]
    assert lines, log.read_text()[-4000:]
    return json.loads(lines[-1][4:])


def test_a_scheduled_run_and_a_backfill_started_together_never_interleave(
    airflow_db: str, make_sandbox, fresh_postgres_database: str, tmp_path: Path
) -> None:  # type: ignore[no-untyped-def]
    sb, client = make_sandbox(applicants=60, dreamapply_requests_per_minute=100_000)
    run_root = tmp_path / "runs"
    env = {
        **os.environ,
        **{k: json.dumps(v) for k, v in airflow_connections(sb.info(), requests_per_minute=100_000).items()},
        "D365_SYNC_LEDGER_URL": fresh_postgres_database,
        "D365_SYNC_RUN_ROOT": "file://" + str(run_root),
        "D365_SYNC_TASK_RETRIES": "0",
        "D365_SYNC_LOCK_POKE_SECONDS": "1",
        "D365_SYNC_LOCK_WAIT_SECONDS": "600",
    }
    env.pop("D365_SYNC_SETTINGS", None)
    # the first load's only write request ($batch, or UpsertMultiple where the org has it, as the sandbox does) is
    # held back: the run holding the lock sits in its load meanwhile
    client.add_fault(
        kind="latency", server="dataverse", path=r"\$batch|UpsertMultiple", seconds=BATCH_DELAY_SECONDS, times=1
    )
    raw_before = raw_applicants(client)

    logs = {"scheduled": tmp_path / "scheduled.log", "backfill": tmp_path / "backfill.log"}
    procs = {
        "scheduled": _start_run(env, tmp_path / "home-scheduled", "2026-12-06T02:00:00+00:00", logs["scheduled"]),
        "backfill": _start_run(env, tmp_path / "home-backfill", "2026-01-01T00:00:00+00:00", logs["backfill"]),
    }
    try:
        _wait_for(lambda: _fired(client) >= 1, procs, 240, "the first run's load")
        events_before = client.get("/dreamapply/stats")["last_event_id"]
        # DreamApply changes while the first run sends what it extracted: edits of applicants it is sending
        # (their new values must reach Dynamics) and a day of activity (new applicants, consents, offers ...)
        edited = sorted(
            aid
            for aid in accepted_live(raw_before)
            if nfc(raw_before[aid]["family"]) and len(nfc(raw_before[aid]["family"]) or "") <= 50
        )[:6]
        for aid in edited:
            client.edit_applicant(aid, family=f"Lockstep{aid}")
        client.post("/dreamapply/advance", {"hours": 24, "seed": 5})
        assert _fired(client) == 1 and all(p.poll() is None for p in procs.values()), "the first load ended early"
        for proc in procs.values():
            proc.wait(timeout=300)
    finally:
        for proc in procs.values():
            if proc.poll() is None:
                proc.kill()
    results = {name: _result(log) for name, log in logs.items()}
    assert all(r["state"] == "success" for r in results.values()), results

    # the lock was contended: one run waited for the other, by name, and took the next generation
    folder = {r["run_id"]: run_root / DAG_ID / re.sub(r"[^A-Za-z0-9._=-]+", "_", r["run_id"]) for r in results.values()}
    assert len(folder) == 2, results
    by_run = {run: json.loads((path / "lock.json").read_text()) for run, path in folder.items()}
    first, second = sorted(by_run, key=lambda run: by_run[run]["generation"])
    assert by_run[first]["waited_for"] == [] and by_run[first]["waited_seconds"] == 0
    assert by_run[second]["waited_for"] == [first], by_run[second]
    assert by_run[second]["waited_seconds"] >= BATCH_DELAY_SECONDS - 1
    assert by_run[second]["generation"] == by_run[first]["generation"] + 1
    waits = [json.loads(line) for line in (folder[second] / "lock" / "waits.jsonl").read_text().splitlines()]
    assert waits and {w["holder"] for w in waits} == {first}
    report = json.loads((folder[second] / "report.json").read_text())
    assert report["lock"]["waited_for"] == [first] and report["lock"]["generation"] == by_run[second]["generation"]
    # the lease lives as long as the DAG run may (dagrun_timeout, d365.timeouts)
    from d365.timeouts import dagrun_timeout

    assert {doc["ttl_seconds"] for doc in by_run.values()} == {dagrun_timeout().total_seconds()}

    # the second run read the cursors only after the first had committed them
    timings = {run: _timings(folder[run]) for run in by_run}
    commit_done = timings[first]["commit"]["started"] + timings[first]["commit"]["seconds"]
    assert timings[second]["extract"]["started"] >= commit_done
    meta = {run: json.loads((folder[run] / "extract" / "meta.json").read_text()) for run in by_run}
    assert meta[first]["cursors"]["journal_event_id"] <= events_before  # the first never saw the edits ...
    events_after = client.get("/dreamapply/stats")["last_event_id"]
    assert events_after > events_before
    # ... and the second started where the first stopped, and read up to the last change
    assert meta[second]["cursors"]["journal_event_id"] == events_after

    # no lost update: every lead carries the current DreamApply values; the edits went out as updates
    raw = raw_applicants(client)
    leads = leads_by_applicant(client.get("/dataverse/leads"))
    for aid in edited:
        assert leads[aid]["lastname"] == f"Lockstep{aid}", aid
    stale = [
        aid
        for aid, lead in leads.items()
        if (family := nfc(raw[aid]["family"])) and len(family) <= 50 and lead.get("lastname") != family
    ]
    assert stale == [], f"leads with an outdated last name: {stale}"
    second_results = {
        row["applicant_id"]: row["outcome"]
        for row in map(json.loads, (folder[second] / "load" / "results.jsonl").read_text().splitlines())
    }
    assert all(second_results.get(aid) == "updated" for aid in edited), second_results

    # the cursors never passed an unsent change, and the ledger rows of the edits carry the second generation
    ledger = Ledger(fresh_postgres_database)
    try:
        instance = json.loads((folder[second] / "preflight.json").read_text())["instance"]
        assert ledger.cursors(instance)["journal_event_id"] == events_after
        holder = ledger.lock_holder(instance)
        assert holder is not None and holder.run_id is None  # released
        with ledger.engine.connect() as conn:
            versions = dict(
                conn.execute(
                    sa.select(ledger_table.c.applicant_id, ledger_table.c.version).where(
                        ledger_table.c.applicant_id.in_(edited)
                    )
                ).all()
            )
        assert set(versions.values()) == {by_run[second]["generation"]}
    finally:
        ledger.dispose()


def _timings(folder: Path) -> dict[str, dict[str, float]]:
    rows = [json.loads(line) for line in (folder / "timings.jsonl").read_text().splitlines() if line.strip()]
    return {row["step"]: row for row in rows}
