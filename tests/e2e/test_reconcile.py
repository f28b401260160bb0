"""The reconciliation DAG against the sandbox: leads deleted, deactivated or edited in the CRM are reported;
with ``reconcile.recreate_deleted`` a deleted lead is recreated by the next sync with the same lead id."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from e2e.conftest import REPO
from e2e.helpers import leads_by_applicant
from e2e.test_picklists_owners import settings_file

from d365.pipeline.ledger import LeadState, Ledger

RECONCILE_DAG = "reconcile_dreamapply_leads"


def reconcile(env: Any) -> dict[str, Any]:
    from airflow.models import DagBag

    bag = DagBag(dag_folder=str(REPO / "dags"))
    assert not bag.import_errors, bag.import_errors
    run = bag.get_dag(RECONCILE_DAG).test()
    assert run.state == "success", run.state
    latest = max(env.run_root.glob(f"{RECONCILE_DAG}/*/reconcile.json"), key=lambda p: p.stat().st_mtime)
    report = json.loads(latest.read_text())
    from d365.pipeline.reconcile import summary_text

    print("\n" + summary_text(report))
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
    clean = reconcile(env)
    assert clean["checked"] == len(env.leads()) > 3
    assert clean["counts"] == {"deleted": 0, "deactivated": 0, "edited": 0, "not_checked": 0, "marked_for_resend": 0}

    leads = leads_by_applicant(env.leads())
    gone, off, edited = sorted(leads)[:3]
    env.client.delete(f"/dataverse/leads/{leads[gone]['leadid']}")
    crm_patch(env, leads[off]["leadid"], {"statecode": 2, "statuscode": 6})
    crm_patch(env, leads[edited]["leadid"], {"firstname": "Edited In CRM"})

    report = reconcile(env)
    assert [d["applicant_id"] for d in report["deleted"]] == [gone]
    assert report["deleted"][0]["lead_id"] == leads[gone]["leadid"]
    assert [d["applicant_id"] for d in report["deactivated"]] == [off]
    assert [(d["applicant_id"], d["columns"]) for d in report["edited"]] == [(edited, ["firstname"])]
    assert report["counts"]["marked_for_resend"] == 0
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
