"""Answers that lie, in turn, on every read whose "no data" would lose or duplicate an applicant.

A 200 that is a maintenance page (``html``), an error object (``json_error``), an empty (``empty``) or cut
(``cut``) body, a body re-encoded as cp1252 under a UTF-8 header (``wrong_encoding``), or JSON of the wrong
shape (DreamApply: an ID-keyed map of non-records; Dataverse: a collection without ``value``; the sandbox's
``/_sandbox/shape-faults``) is put, one kind after the other, on:

- the DreamApply applicants page, the journal and /purged-resources (the extract),
- the Dataverse lead lookup by e-mail (the plan, before any create),
- the Dataverse query of the nightly reconciliation.

Each time there are changes in the window (time advance, an edit, a new applicant whose e-mail matches a lead
already in the CRM, an erasure). The hooks retry the lying answer a few times, then the run fails: the cursors
stay where they were and nothing is written. After the faults are cleared one run recovers everything: every
consenting applicant has exactly one lead with the current values, the lead that already existed is adopted
(not duplicated), erasures are applied, the journal cursor reaches the last event and nothing is left
carried. A fault that cannot change an answer (cp1252 of a pure-ASCII body, e.g. the journal) must be harmless:
that run succeeds. Every fault is asserted to have fired, from the sandbox's own counters and request log.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from e2e.conftest import REPO
from e2e.helpers import accepted_live, leads_by_applicant, raw_applicants, settings_file

from d365.pipeline.ledger import LeadState, Ledger, carried_ids

GENERIC = ["html", "json_error", "empty", "cut", "wrong_encoding"]
SHAPE = {"dreamapply": "non_records", "dataverse": "no_value"}
# endpoint -> (server, path regex, the task a lying answer there fails)
ENDPOINTS = {
    "applicants": ("dreamapply", "^/api/v9/applicants$", "extract"),
    "journal": ("dreamapply", "^/api/v9/journal$", "extract"),
    "purged_resources": ("dreamapply", "^/api/v9/purged-resources$", "extract"),
    "lookup_by_email": ("dataverse", "^/api/data/v9.2/leads$", "plan"),
}
RECONCILE_DAG = "reconcile_dreamapply_leads"


# -- the environment ------------------------------------------------------------------------------------
def fast_retries(monkeypatch: pytest.MonkeyPatch) -> None:
    """The hooks' retries stay on (they are what is under test), with millisecond backoff."""
    from d365.hooks.dynamics import DynamicsHook

    conn = json.loads(os.environ["AIRFLOW_CONN_DREAMAPPLY_DEFAULT"])
    conn["extra"].update(max_retries=2, retry_wait_min=0.01, retry_wait_max=0.02)
    monkeypatch.setenv("AIRFLOW_CONN_DREAMAPPLY_DEFAULT", json.dumps(conn))
    monkeypatch.setattr(DynamicsHook, "backoff_base", 0.01)


def instance_of(env: Any) -> str:
    return env.sandbox.endpoints.dreamapply_url.split("://", 1)[1]


def with_ledger(env: Any, read: Callable[[Ledger], Any]) -> Any:
    ledger = Ledger(env.ledger_url)
    try:
        return read(ledger)
    finally:
        ledger.dispose()


def lead_versions(env: Any) -> dict[str, Any]:
    return {lead["leadid"]: lead.get("versionnumber") for lead in env.leads()}


def failed_tasks(run: Any) -> set[str]:
    from airflow.models.taskinstance import TaskInstance
    from airflow.utils.session import create_session

    with create_session() as session:
        rows = session.query(TaskInstance).filter(TaskInstance.run_id == run.run_id).all()
        return {ti.task_id for ti in rows if ti.state == "failed"}


# -- faults ---------------------------------------------------------------------------------------------
def add_fault(env: Any, server: str, path: str, kind: str, **firing: Any) -> None:
    if kind in SHAPE.values():
        env.client.post("/shape-faults", {"mode": kind, "server": server, "method": "GET", "path": path, **firing})
    else:
        env.client.add_fault(kind=kind, server=server, method="GET", path=path, **firing)


def clear_faults(env: Any) -> None:
    env.client.clear_faults()
    env.client.delete("/shape-faults")


def hits(env: Any, since: int) -> list[dict[str, Any]]:
    """Request-log entries a fault answered, with ``changed`` (False: the fault left the answer as it was)."""
    out = []
    for entry in env.client.requests(since=since):
        fault = entry.get("fault") or entry.get("shape_fault")
        if fault:
            out.append({"query": entry["query"], "changed": fault.get("changed", True)})
    return out


def fired(env: Any) -> int:
    rules = env.client.get("/faults")["rules"] + env.client.get("/shape-faults")["rules"]
    return sum(rule["fired"] for rule in rules)


# -- changes in the window ------------------------------------------------------------------------------
class Window:
    """What one time window changes, remembered for the checks after recovery."""

    def __init__(self, env: Any) -> None:
        self.env = env
        self.edited: dict[int, dict[str, str]] = {}
        self.adopted: dict[int, tuple[str, str]] = {}  # applicant -> (lead already in the CRM, its e-mail)
        self.erased: list[int] = []

    def sent(self) -> list[int]:
        instance = instance_of(self.env)
        entries = with_ledger(self.env, lambda ledger: ledger.entries(instance))
        taken = {*self.edited, *self.erased, *self.adopted}
        return [aid for aid, e in sorted(entries.items()) if e.state is LeadState.SENT and aid not in taken]

    def open(self, k: int) -> None:
        client = self.env.client
        client.post("/dreamapply/advance", {"hours": 24, "seed": k, "rates": {"edits": 0.05, "new_applicants": 0.02}})
        sent = self.sent()
        edit, erase = sent[0], sent[-1]
        change = {"family": f"Fenster-{k}", "email": f"window{k}.{edit}@example.org"}
        client.http.patch(f"{client.admin_url}/dreamapply/applicants/{edit}", json=change).raise_for_status()
        self.edited[edit] = change
        client.post(f"/dreamapply/applicants/{erase}/erase", {"request_to_be_forgotten": True})
        self.erased.append(erase)
        # a new applicant (a name outside ASCII) whose e-mail a lead in the CRM already has: adopted, never twice
        email = f"zoë.window{k}@example.org"
        [aid] = client.post(
            "/dreamapply/applicants",
            [
                {
                    "given": "Zoë",
                    "family": f"Müller-{k}",
                    "email": email,
                    "citizenship": "EE",
                    "consents": {"1": "Accept"},
                }
            ],
        )["ids"]
        [lead_id] = client.post(
            "/dataverse/leads",
            [{"firstname": "Fair", "lastname": "Visitor", "emailaddress1": email, "subject": "Fair"}],
        )["ids"]
        self.adopted[aid] = (lead_id, email)


def assert_recovered(env: Any, window: Window) -> None:
    """Nothing lost, nothing duplicated, every change of every failed window applied, no cursor past a change."""
    instance = instance_of(env)
    raw = raw_applicants(env.client)
    all_leads = env.leads()
    leads = leads_by_applicant(all_leads)  # asserts one lead per applicant
    entries = with_ledger(env, lambda ledger: ledger.entries(instance))
    live = {aid for aid, a in raw.items() if not a["erased"]}
    assert live <= set(entries), f"applicants never handled: {sorted(live - set(entries))}"
    for aid in accepted_live(raw):
        assert entries[aid].state in (LeadState.SENT, LeadState.QUARANTINED), (aid, entries[aid].state)
        if entries[aid].state is LeadState.SENT:
            assert aid in leads, f"applicant {aid} is sent in the ledger but has no lead"
    for aid, change in window.edited.items():
        if aid in accepted_live(raw) and entries[aid].state is LeadState.SENT:
            assert leads[aid]["lastname"] == change["family"] and leads[aid]["emailaddress1"] == change["email"]
    for aid, (lead_id, email) in window.adopted.items():
        assert leads[aid]["leadid"] == lead_id, f"applicant {aid}: the existing lead was not adopted"
        assert [x["leadid"] for x in all_leads if (x.get("emailaddress1") or "") == email] == [lead_id]
    for aid in window.erased:
        assert entries[aid].state is LeadState.ERASED, (aid, entries[aid].state)
    cursors = with_ledger(env, lambda ledger: ledger.cursors(instance))
    assert cursors["journal_event_id"] == env.client.get("/dreamapply/stats")["last_event_id"]
    assert with_ledger(env, lambda ledger: carried_ids(ledger, instance)) == {}
    assert env.reports()[-1]["carried_to_next_run"] == []


# -- the sync: extract and lookup ------------------------------------------------------------------------
@pytest.mark.parametrize("endpoint", list(ENDPOINTS))
def test_a_lying_answer_fails_the_run_and_the_next_run_recovers_everything(
    sync_env: Any, monkeypatch: pytest.MonkeyPatch, endpoint: str
) -> None:
    server, path, task = ENDPOINTS[endpoint]
    env = sync_env(applicants=40)
    fast_retries(monkeypatch)
    assert env.run().state == "success"
    instance = instance_of(env)
    window = Window(env)
    for k, kind in enumerate([*GENERIC, SHAPE[server]], start=1):
        window.open(k)
        cursors = with_ledger(env, lambda ledger: ledger.cursors(instance))
        versions = lead_versions(env)
        seq = env.client.last_seq()
        # the lookup by key comes first and stays true: the lookup by e-mail (2nd query of leads) lies
        add_fault(env, server, path, kind, **({"nth": 2, "times": 10_000} if endpoint == "lookup_by_email" else {}))
        run = env.run()
        answered = hits(env, seq)
        assert answered and fired(env) == len(answered), f"{kind} on {endpoint} did not fire"
        if endpoint == "lookup_by_email":
            assert all("emailaddress1" in h["query"] for h in answered)
        clear_faults(env)
        if not any(h["changed"] for h in answered):  # cp1252 of a pure-ASCII body is the same body
            assert kind == "wrong_encoding" and run.state == "success"
            continue
        assert run.state == "failed", f"{kind} on {endpoint} was read as data"
        assert task in failed_tasks(run)
        assert len(answered) >= 2, "the hook did not retry the lying answer"
        assert with_ledger(env, lambda ledger: ledger.cursors(instance)) == cursors, "a cursor moved past a failed read"
        assert lead_versions(env) == versions, "the failed run wrote to Dynamics"

    assert env.run().state == "success"
    assert_recovered(env, window)


# -- the nightly reconciliation --------------------------------------------------------------------------
def test_a_lying_reconciliation_query_marks_no_lead_deleted(
    sync_env: Any, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    from airflow.models import DagBag

    def recreate(data: dict[str, Any]) -> None:
        data["reconcile"] = {"recreate_deleted": True}  # a "no rows" read would mark every lead for re-send

    env = sync_env(settings=settings_file(tmp_path, recreate), applicants=30)
    fast_retries(monkeypatch)
    env.client.post(  # names outside ASCII in the rows reconciliation reads back
        "/dreamapply/applicants",
        [{"given": "Zoë", "family": f"Müller-{n}", "email": f"zoe{n}@example.org", "consents": {"1": "Accept"}}
         for n in range(3)],
    )  # fmt: skip
    assert env.run().state == "success"
    instance = instance_of(env)
    leads = leads_by_applicant(env.leads())
    gone = sorted(leads)[0]
    env.client.delete(f"/dataverse/leads/{leads[gone]['leadid']}")  # the one lead truly deleted in the CRM

    bag = DagBag(dag_folder=str(REPO / "dags"))
    dag = bag.get_dag(RECONCILE_DAG)
    dag.task_dict["reconcile"].retries = 0  # fail at once: the hook's own retries are what is under test
    states = with_ledger(env, lambda ledger: {a: e.state for a, e in ledger.entries(instance).items()})
    for kind in [*GENERIC, SHAPE["dataverse"]]:
        seq = env.client.last_seq()
        add_fault(env, "dataverse", "^/api/data/v9.2/leads$", kind)
        run = dag.test()
        answered = hits(env, seq)
        assert answered and fired(env) == len(answered), f"{kind} on the reconciliation query did not fire"
        clear_faults(env)
        assert any(h["changed"] for h in answered)
        assert run.state == "failed", f"{kind} on the reconciliation query was read as data"
        assert len(answered) >= 2, "the hook did not retry the lying answer"
        now = with_ledger(env, lambda ledger: {a: e.state for a, e in ledger.entries(instance).items()})
        assert now == states, "a failed read marked leads as deleted in the CRM"

    assert dag.test().state == "success"
    latest = max(env.run_root.glob(f"{RECONCILE_DAG}/*/reconcile.json"), key=lambda p: p.stat().st_mtime)
    report = json.loads(latest.read_text())
    assert [d["applicant_id"] for d in report["deleted"]] == [gone] and report["marked_for_resend"] == [gone]
    assert env.run().state == "success"
    again = leads_by_applicant(env.leads())
    assert set(again) == set(leads) and again[gone]["leadid"] == leads[gone]["leadid"]  # recreated, no duplicate


# -- applicants that stay unreadable are carried, not lost ----------------------------------------------
def test_applicants_the_journal_names_but_that_cannot_be_read_are_carried_to_the_next_run(
    sync_env: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    from d365.pipeline.report import summary_text

    env = sync_env(applicants=30)
    fast_retries(monkeypatch)
    assert env.run().state == "success"
    instance = instance_of(env)
    edited = Window(env).sent()[:2]
    before = leads_by_applicant(env.leads())
    for aid in edited:
        change = {"family": f"Carried-{aid}"}
        env.client.http.patch(f"{env.client.admin_url}/dreamapply/applicants/{aid}", json=change).raise_for_status()
    # the new-applicant scan (1st applicants request) is true; every range read of the changed ones is a page
    env.client.add_fault(
        kind="html", server="dreamapply", method="GET", path="^/api/v9/applicants$", nth=2, times=10_000
    )
    assert env.run().state == "success"  # the rest of the window went through
    assert fired(env) >= 3  # each range read tried by the hook, then given up for this run
    report = env.reports()[-1]
    assert report["carried_to_next_run"] == sorted(edited) and report["extract"]["carried"] == 2
    assert "carried to next run: 2" in summary_text(report)
    assert with_ledger(env, lambda ledger: carried_ids(ledger, instance)) == dict.fromkeys(edited, 1)
    now = leads_by_applicant(env.leads())
    assert all(now[aid]["lastname"] == before[aid]["lastname"] for aid in edited)  # not read: not written
    # the journal cursor moved past their events: safe, because they are carried
    cursors = with_ledger(env, lambda ledger: ledger.cursors(instance))
    assert cursors["journal_event_id"] == env.client.get("/dreamapply/stats")["last_event_id"]

    env.client.clear_faults()
    assert env.run().state == "success"
    after = leads_by_applicant(env.leads())
    assert [after[aid]["lastname"] for aid in edited] == [f"Carried-{aid}" for aid in edited]
    assert with_ledger(env, lambda ledger: carried_ids(ledger, instance)) == {}
    report = env.reports()[-1]
    assert report["carried_to_next_run"] == [] and report["extract"]["carried_read"] == 2
