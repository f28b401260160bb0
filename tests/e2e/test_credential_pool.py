"""The real DAG with a credential pool of two application users: preflight checks both and records the pool, the load
writes through both, every lead is created once and owned by the contact owner, whichever user sent it."""

from __future__ import annotations

import json
from collections import Counter
from typing import Any

import pytest
from e2e.helpers import leads_by_applicant

from d365.pipeline.settings import load_settings
from sandbox.client import airflow_connections

# the load's writes: $batch, or UpsertMultiple where the org supports it (the sandbox does; preflight records it)
WRITES = ("/api/data/v9.2/$batch", "/api/data/v9.2/leads/Microsoft.Dynamics.CRM.UpsertMultiple")


def test_a_two_user_pool_loads_through_both_users(sync_env: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("D365_SYNC_BATCH_SIZE", "5")  # enough batches for both users
    env = sync_env(applicants=60, extra_app_users=1)
    info = env.sandbox.info()
    pooled = airflow_connections(info, dynamics_pool=True)["AIRFLOW_CONN_DYNAMICS365_DEFAULT"]
    monkeypatch.setenv("AIRFLOW_CONN_DYNAMICS365_DEFAULT", json.dumps(pooled))
    users = {info["entra"]["client_id"]: env.sandbox.state.application_user_id}
    users.update({u["client_id"]: u["user_id"] for u in info["entra"]["extra_app_users"]})
    since = env.client.last_seq()

    run = env.run()
    assert run.state == "success", run.state

    [preflight] = env.run_root.glob("dreamapply_to_dynamics365/*/preflight.json")
    doc = json.loads(preflight.read_text())
    assert doc["target"]["pool"] == ["dynamics365_user2"]
    assert [u["client_id"] for u in doc["application_users"]] == list(users)

    leads = leads_by_applicant(env.leads())
    report = env.reports()[-1]
    assert report["outcomes"]["created"] == len(leads) > 10 and report["outcomes"]["failed"] == 0
    assert report["removed_users"] == []

    from d365.hooks.dynamics import DynamicsHook

    owner = load_settings().contact_owner
    assert owner is not None and owner.by == "email"
    owner_id = DynamicsHook().find_systemuser(email=owner.value)["systemuserid"]
    assert {lead["_ownerid_value"] for lead in leads.values()} == {owner_id}  # the contact owner, never an app user
    creators = Counter(lead["_createdby_value"] for lead in leads.values())
    assert set(creators) == set(users.values())  # both application users created leads

    log = env.client.requests(server="dataverse", since=since)
    written = Counter(e["user"] for e in log if e["path"] in WRITES and e["method"] == "POST" and e["status"] < 300)
    assert set(written) == set(users) and all(n > 0 for n in written.values())  # both users used
    members = {m["client_id"]: m for m in report["load"]["pool"]["members"]}
    assert {c: m["batches"] for c, m in members.items()} == dict(written)
    assert sum(m["operations"] for m in members.values()) == len(leads)
