"""The real DAGs: a dry run (its own DAG) prints the plan and writes nothing; manual sends by applicant ID, tracker code
or academic term send exactly those applicants and leave the cursors where they were."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from e2e.helpers import accepted_live, autumn_term, latest_run, leads_by_applicant, raw_applicants, settings_file

from d365.pipeline.ledger import Ledger


def option_calls(env: Any) -> tuple[int, int]:
    s = env.client.get("/dataverse/stats")
    return s["insert_option_value_calls"], s["publish_xml_calls"]


def instance_of(env: Any) -> str:
    return json.loads((latest_run(env) / "preflight.json").read_text())["instance"]


def summary_instance(folder: Any) -> str:
    return json.loads((folder / "preflight.json").read_text())["instance"]


def ledger_rows(env: Any) -> dict[str, int]:
    """Row counts of every ledger table (entries, cursors, quality history)."""
    engine = sa.create_engine(env.ledger_url)
    try:
        meta = sa.MetaData()
        meta.reflect(engine)
        with engine.connect() as conn:
            return {
                name: conn.execute(sa.select(sa.func.count()).select_from(table)).scalar_one()
                for name, table in meta.tables.items()
            }
    finally:
        engine.dispose()


def cursors(env: Any) -> dict[str, int]:
    ledger = Ledger(env.ledger_url)
    try:
        return ledger.cursors(instance_of(env))
    finally:
        ledger.dispose()


def test_dry_run_prints_the_plan_and_writes_nothing(sync_env: Any, tmp_path: Path, capsys: Any) -> None:
    env = sync_env(settings=settings_file(tmp_path, autumn_term), applicants=60)
    # the dry-run DAG: no schedule, no load, no commit; a conf saying otherwise cannot make it a real send
    run = env.run(dag_id="dreamapply_to_dynamics365_dry_run", dry_run=False)
    assert run.state == "success", run.state
    folder = latest_run(env)
    summary = json.loads((folder / "plan" / "dry_run.json").read_text())
    report = json.loads((folder / "report.json").read_text())
    text = (folder / "report.json").read_text()
    print("\n--- dry run on the sandbox sample (60 applicants) ---")
    from d365.pipeline.dry_run import summary_text

    print(summary_text(summary))

    assert report["dry_run"] is True and report["counts"] == summary["counts"]
    assert summary["counts"]["create"] > 0 and summary["writes"] == summary["counts"]["create"]
    assert sum(summary["creates_per_owner"].values()) == summary["counts"]["create"]
    # "Rejected" too when a rejected applicant is in the sample (invalid phones etc. no longer withhold one)
    autumn, rejected = (
        {"attribute": "uni_academictermtype", "label": "Autumn term"},
        {"attribute": "uni_leadstage", "label": "Rejected"},
    )
    assert autumn in summary["picklist_options_would_add"]
    assert all(o in (autumn, rejected) for o in summary["picklist_options_would_add"])
    assert "DRY RUN" in summary_text(summary) and "Autumn term" in text
    # the load estimate from the org's limits and what preflight measured (d365.pipeline.estimate)
    estimate = summary["load_estimate"]
    assert estimate["writes"] == summary["writes"] and estimate["users"] == 1
    assert estimate["binding_limit"] in ("requests", "execution time", "concurrency")
    from d365.hooks.throttle import ThrottleSettings

    # measured over preflight's reads, not the throttle's starting guess
    assert 0 < estimate["request_ms_measured"] != ThrottleSettings().initial_estimate_ms
    assert estimate["record_ms_assumed"] == 10
    assert estimate["seconds"] > 0 and estimate["text"] in summary_text(summary)
    assert estimate["text"].startswith(f"load estimate: {summary['writes']:,} writes in about ")
    # nothing written: no lead, no option inserted or published, no load or commit, ledger and cursors unchanged
    assert env.leads() == []
    assert option_calls(env) == (0, 0)
    assert not (folder / "load" / "results.jsonl").exists()
    assert not (folder / "commit").exists()
    assert cursors(env) == {"applicant_id": 0, "journal_event_id": 0}
    rows = ledger_rows(env)
    assert rows.pop("d365_sync_lock") == 1  # the dry run took the sync lock (it read the cursors) ...
    assert all(n == 0 for n in rows.values()), rows
    lock_row = Ledger(env.ledger_url).lock_holder(summary_instance(folder))
    assert lock_row is not None and lock_row.run_id is None  # ... and released it at its end

    # the real run afterwards creates what the dry run announced
    assert env.run().state == "success"
    assert len(env.leads()) == summary["counts"]["create"]
    assert option_calls(env) == (len(summary["picklist_options_would_add"]), 1)  # inserts, one publish


def test_manual_send_of_two_applicant_ids_creates_exactly_those(sync_env: Any) -> None:
    env = sync_env(applicants=60)
    two = sorted(accepted_live(raw_applicants(env.client)))[:2]
    run = env.run(applicant_ids=two)
    assert run.state == "success", run.state
    leads = leads_by_applicant(env.leads())
    print(f"\nmanual send of applicants {two}: leads {sorted(leads)}")
    assert sorted(leads) == two
    assert env.reports()[-1]["outcomes"]["created"] == 2
    assert cursors(env) == {"applicant_id": 0, "journal_event_id": 0}  # a manual send does not move the cursors


def test_tracker_and_term_selection_send_the_matching_applicants_only(sync_env: Any) -> None:
    env = sync_env(applicants=60)
    ds = env.sandbox.state.dreamapply.ds
    live = accepted_live(raw_applicants(env.client))
    by_tracker: dict[str, set[int]] = {}
    for a in ds.applicants.values():
        for tid, _ in a.trackers or ():
            by_tracker.setdefault(ds.catalog.trackers[tid].code, set()).add(a.id)
    code = max(by_tracker, key=lambda c: len(by_tracker[c] & live))
    by_term: dict[int, set[int]] = {}
    for app in ds.applications.values():
        by_term.setdefault(app.term_id, set()).add(app.applicant_id)
    term = max((t for t in by_term if not by_term[t] <= by_tracker[code]), key=lambda t: len(by_term[t] & live))

    assert env.run(tracker_codes=[code]).state == "success"
    sent = set(leads_by_applicant(env.leads()))
    print(f"\ntracker {code}: applicants {sorted(by_tracker[code])}, leads for {sorted(sent)}")
    assert sent and sent <= by_tracker[code]
    assert sent == by_tracker[code] & live - quarantined(env)

    assert env.run(academic_term_ids=[term]).state == "success"
    after = set(leads_by_applicant(env.leads()))
    print(f"academic term {term}: applicants {sorted(by_term[term])}, new leads for {sorted(after - sent)}")
    assert after - sent and after - sent <= by_term[term]
    assert after <= by_tracker[code] | by_term[term]
    assert cursors(env) == {"applicant_id": 0, "journal_event_id": 0}


def quarantined(env: Any) -> set[int]:
    """Applicants the latest run did not send (quarantine or consent), by its report."""
    report = env.reports()[-1]
    return {int(q["applicant_id"]) for q in report.get("quarantine") or []} | {
        int(f["applicant_id"]) for f in report.get("failures") or []
    }
