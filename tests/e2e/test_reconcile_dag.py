"""The reconciliation DAG against the sandbox: leads deleted, deactivated or edited in the CRM are reported from
the ledger's hashes (no run files needed); with ``reconcile.recreate_deleted`` a deleted lead is recreated by the
next sync with the same lead id; more deleted leads than ``reconcile.max_deleted_fraction`` are refused."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

from e2e.conftest import REPO
from e2e.helpers import leads_by_applicant, settings_file

from d365.pipeline.ledger import LeadState, Ledger

RECONCILE_DAG = "reconcile_dreamapply_leads"


def run_reconcile(env: Any) -> tuple[Any, dict[str, Any]]:
    """One run of the reconcile DAG; (the DagRun, its reconcile.json)."""
    from airflow.models import DagBag

    bag = DagBag(dag_folder=str(REPO / "dags"))
    assert not bag.import_errors, bag.import_errors
    run = bag.get_dag(RECONCILE_DAG).test()
    latest = max(env.run_root.glob(f"{RECONCILE_DAG}/*/reconcile.json"), key=lambda p: p.stat().st_mtime)
    report = json.loads(latest.read_text())
    from d365.pipeline.reconcile import summary_text

    print("\n" + summary_text(report))
    return run, report


def reconcile(env: Any) -> dict[str, Any]:
    run, report = run_reconcile(env)
    assert run.state == "success", run.state
    return report


def crm_patch(env: Any, lead_id: str, body: dict[str, Any]) -> None:
    r = env.client.http.patch(f"{env.client.admin_url}/dataverse/leads/{lead_id}", json=body)
    r.raise_for_status()


def ledger_entry(env: Any, instance: str, aid: int) -> Any:
    ledger = Ledger(env.ledger_url)
    try:
        return ledger.entries(instance, [aid])[aid]
    finally:
        ledger.dispose()


def test_reconcile_reports_deleted_deactivated_and_edited_leads(sync_env: Any) -> None:
    env = sync_env(applicants=60)
    assert env.run().state == "success"
    # the sync's run files are not needed (retention deletes them): the ledger's hashes are enough
    shutil.rmtree(env.run_root / "dreamapply_to_dynamics365")
    clean = reconcile(env)
    assert clean["checked"] == len(env.leads()) > 3
    assert clean["counts"] == {"deleted": 0, "deactivated": 0, "edited": 0, "not_checked": 0, "marked_for_resend": 0}
    assert {"firstname", "emailaddress1", "uni_applicantid"} <= set(clean["columns_compared"])

    leads = leads_by_applicant(env.leads())
    gone, off, edited, restored, other = sorted(leads)[:5]
    env.client.delete(f"/dataverse/leads/{leads[gone]['leadid']}")
    crm_patch(env, leads[off]["leadid"], {"statecode": 2, "statuscode": 6})
    crm_patch(env, leads[edited]["leadid"], {"firstname": "Edited In CRM"})
    # edited and set back: the values hash to what was sent again; a column the sync does not send is no drift
    crm_patch(env, leads[restored]["leadid"], {"lastname": "Changed"})
    crm_patch(env, leads[restored]["leadid"], {"lastname": leads[restored]["lastname"]})
    crm_patch(env, leads[other]["leadid"], {"description": "a note by the admissions team"})

    report = reconcile(env)
    assert [d["applicant_id"] for d in report["deleted"]] == [gone]
    assert report["deleted"][0]["lead_id"] == leads[gone]["leadid"]
    assert [d["applicant_id"] for d in report["deactivated"]] == [off]
    assert [d["applicant_id"] for d in report["edited"]] == [edited]
    assert report["edited"][0]["lead_id"] == leads[edited]["leadid"]
    assert report["counts"]["marked_for_resend"] == 0 and report["refused"] is None
    # not configured to recreate: the ledger still says sent, the next sync leaves the lead deleted
    assert ledger_entry(env, report["instance"], gone).state is LeadState.SENT
    assert env.run().state == "success"
    assert gone not in leads_by_applicant(env.leads())


def test_reconcile_recreates_a_deleted_lead_when_configured(sync_env: Any, tmp_path: Path) -> None:
    def recreate(data: dict[str, Any]) -> None:
        data["reconcile"] = {"recreate_deleted": True}

    env = sync_env(settings=settings_file(tmp_path, recreate), applicants=60)
    assert env.run().state == "success"
    leads = leads_by_applicant(env.leads())
    gone = sorted(leads)[0]
    lead_id = leads[gone]["leadid"]
    env.client.delete(f"/dataverse/leads/{lead_id}")
    assert gone not in leads_by_applicant(env.leads())

    report = reconcile(env)
    assert [d["applicant_id"] for d in report["deleted"]] == [gone]
    assert report["marked_for_resend"] == [gone]
    entry = ledger_entry(env, report["instance"], gone)
    assert entry.state is LeadState.FAILED and entry.reason == "deleted in CRM" and entry.lead_id == lead_id

    assert env.run().state == "success"
    again = leads_by_applicant(env.leads())
    assert gone in again and again[gone]["leadid"] == lead_id  # recreated with the same deterministic id
    assert len(again) == len(leads)
    assert ledger_entry(env, report["instance"], gone).state is LeadState.SENT
    assert reconcile(env)["counts"]["deleted"] == 0


def test_reconcile_refuses_to_mark_more_than_the_allowed_share_as_deleted(sync_env: Any, tmp_path: Path) -> None:
    def recreate(data: dict[str, Any]) -> None:
        data["reconcile"] = {"recreate_deleted": True}

    env = sync_env(settings=settings_file(tmp_path, recreate), applicants=45)
    assert env.run().state == "success"
    leads = leads_by_applicant(env.leads())
    allowed = int(0.05 * len(leads))  # the default max_deleted_fraction
    gone = sorted(leads)[: allowed + 1]
    for aid in gone:
        env.client.delete(f"/dataverse/leads/{leads[aid]['leadid']}")

    run, report = run_reconcile(env)
    assert run.state == "failed"  # a person must look: a wrong read of the CRM looks exactly like this
    assert [d["applicant_id"] for d in report["deleted"]] == gone
    assert report["marked_for_resend"] == [] and f"{len(gone)} of {len(leads)} leads" in report["refused"]
    instance = report["instance"]
    assert all(ledger_entry(env, instance, aid).state is LeadState.SENT for aid in gone)  # nothing marked

    # the deletions were real: a person raises the share for one run, and the leads are marked for re-send
    def allow_more(data: dict[str, Any]) -> None:
        data["reconcile"] = {"recreate_deleted": True, "max_deleted_fraction": 0.5}

    settings_file(tmp_path, allow_more)
    report = reconcile(env)
    assert report["refused"] is None and report["marked_for_resend"] == gone
    assert all(ledger_entry(env, instance, aid).state is LeadState.FAILED for aid in gone)
