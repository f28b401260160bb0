"""The real DAG with a non-default target: ``settings.dynamics.connection_id: crm_test`` (its own app registration
in the sandbox's Entra ID) and an org whose lead table's entity set is ``uni_leads``, not ``leads``.

No ``dynamics365_default`` connection exists, and the sandbox answers ``leads`` with 404: a Dynamics call that
fell back to the default connection or the stock entity set name would fail the run. The leads must be found
where preflight looked, and the request log must show every call (preflight, picklist options, lookups, the
load's ``UpsertMultiple``/``$batch`` writes, the reconciliation) went to ``uni_leads`` with ``crm_test``'s credentials.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from e2e.helpers import autumn_term, leads_by_applicant, settings_file
from e2e.test_reconcile_dag import reconcile

from sandbox.client import airflow_connections

CLIENT_ID = "5a1e7c3b-9d2f-4b8a-a6c4-3f0e9d8b7a61"  # crm_test's app registration (not the sandbox default)
CLIENT_SECRET = "crm-test-sandbox-secret"
ENTITY_SET = "uni_leads"
WEB_API = "/api/data/v9.2/"


def crm_test(data: dict[str, Any]) -> None:
    data["dynamics"]["connection_id"] = "crm_test"
    autumn_term(data)  # the plan adds a picklist option: metadata writes go through the target too


def test_the_sync_writes_where_preflight_looked(sync_env: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    env = sync_env(
        settings=settings_file(tmp_path, crm_test),
        applicants=40,
        lead_entity_set=ENTITY_SET,
        client_id=CLIENT_ID,
        client_secret=CLIENT_SECRET,
    )
    conn = airflow_connections(env.sandbox.info())["AIRFLOW_CONN_DYNAMICS365_DEFAULT"]
    assert conn["login"] == CLIENT_ID
    monkeypatch.delenv("AIRFLOW_CONN_DYNAMICS365_DEFAULT")
    monkeypatch.setenv("AIRFLOW_CONN_CRM_TEST", json.dumps(conn))
    from airflow.sdk import BaseHook

    with pytest.raises(Exception, match="dynamics365_default"):  # a fallback to the default fails loudly
        BaseHook.get_connection("dynamics365_default")
    since = env.client.last_seq()

    run = env.run()
    assert run.state == "success", run.state

    # preflight recorded what it found, and the load found its leads there
    [preflight] = env.run_root.glob("dreamapply_to_dynamics365/*/preflight.json")
    target = json.loads(preflight.read_text())["target"]
    assert target == {
        "connection_id": "crm_test",
        "entity": "lead",
        "entity_set": ENTITY_SET,
        "primary_id": "leadid",
        "bulk_messages": ["CreateMultiple", "UpdateMultiple", "UpsertMultiple"],  # what the sandbox org offers
    }
    leads = leads_by_applicant(env.leads())
    report = env.reports()[-1]["outcomes"]
    assert report["created"] == len(leads) > 10 and report["failed"] == 0
    stats = env.client.get("/dataverse/stats")
    assert stats["insert_option_value_calls"] >= 1 and stats["publish_xml_calls"] == 1

    log = env.client.requests(server="dataverse", since=since)
    # the only calls without a token: the hook's tenant discovery (an anonymous GET of the service root, 401)
    anonymous = [e for e in log if e["user"] is None]
    assert {(e["method"], e["path"], e["status"]) for e in anonymous} <= {("GET", WEB_API, 401)}
    log = [e for e in log if e["user"] is not None]
    assert log and {e["user"] for e in log} == {CLIENT_ID}  # every other call carried crm_test's token
    assert all(e["status"] < 400 for e in log), [
        (e["method"], e["path"], e["status"]) for e in log if e["status"] >= 400
    ]
    paths = {e["path"].removeprefix(WEB_API).split("(")[0] for e in log}
    assert "leads" not in paths and ENTITY_SET in paths  # the plan's lookups: GET uni_leads?$filter=…
    assert any(p.startswith("EntityDefinitions") for p in paths) and "InsertOptionValue" in paths
    # the writes: UpsertMultiple on the entity set preflight found (the sandbox org offers it), else $batch parts
    bulk = [e for e in log if e["path"].startswith(WEB_API + ENTITY_SET + "/Microsoft.Dynamics.CRM.")]
    assert bulk and {e["path"] for e in bulk} == {WEB_API + ENTITY_SET + "/Microsoft.Dynamics.CRM.UpsertMultiple"}
    writes = [f"PATCH {target}" for e in bulk for target in e["target_ids"]]
    writes += [part for e in log if e["path"] == WEB_API + "$batch" for part in e["part_requests"]]
    assert len(writes) == len(leads)
    assert {w.split(" ")[0] for w in writes} == {"PATCH"}
    assert {w.split(" ", 1)[1].split("(")[0] for w in writes} == {ENTITY_SET}
    assert {w.split("(", 1)[1].split(")")[0] for w in writes} == {lead["leadid"] for lead in leads.values()}

    # the nightly reconciliation resolves the same target: it reads uni_leads with crm_test, finds no drift
    since = env.client.last_seq()
    checked = reconcile(env)
    assert checked["target"] == {k: v for k, v in target.items() if k != "bulk_messages"}  # it only reads
    assert checked["checked"] == len(leads) and checked["counts"]["deleted"] == 0
    log = [e for e in env.client.requests(server="dataverse", since=since) if e["user"] is not None]
    assert log and {e["user"] for e in log} == {CLIENT_ID} and all(e["status"] < 400 for e in log)
    assert any(e["path"] == WEB_API + ENTITY_SET for e in log)
