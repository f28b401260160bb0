"""The real DAG: picklist options added on the fly (one InsertOptionValue + one PublishXml per run, none
when the option exists) and created leads owned per owner rule, with the contact owner as the fallback."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
from e2e.helpers import latest_run, leads_by_applicant, raw_applicants, settings_file

from d365.pipeline.ledger import LeadState, Ledger
from d365.pipeline.plan import CREATE, Operation

FALL, SPRING = 727000000, 727000001  # the sandbox's uni_academictermtype options
SUBMITTED = 727000002  # uni_leadstage


def plan_of(env: Any) -> tuple[dict[str, Any], list[Operation]]:
    folder = latest_run(env)
    meta = json.loads((folder / "plan" / "meta.json").read_text())
    ops = [
        Operation.from_json(json.loads(line))
        for line in (folder / "plan" / "operations.jsonl").read_text().splitlines()
    ]
    return meta, ops


def stats(env: Any) -> tuple[int, int]:
    s = env.client.get("/dataverse/stats")
    return s["insert_option_value_calls"], s["publish_xml_calls"]


def test_two_runs_needing_the_same_new_option_add_it_once_and_publish_once(sync_env: Any, tmp_path: Path) -> None:
    def terms(data: dict[str, Any]) -> None:
        # every "Fall semester" becomes the new label "Autumn term"; "Spring semester" is spelt differently but
        # matches its option (case-insensitive): never a duplicate
        data["data_mapping"]["uni_academictermtype"] = {
            "source": "term.type",
            "picklist": True,
            "on_missing_option": "add",
            "add_allowlist": ["autumn TERM"],
            "value_map": {"Fall semester": "Autumn term", "Spring semester": "SPRING semester"},
        }
        data["data_mapping"]["uni_leadstage"] = {
            "source": "lead.stage",
            "picklist": True,
            "on_missing_option": "ignore",
        }

    env = sync_env(settings=settings_file(tmp_path, terms), applicants=60)
    assert stats(env) == (0, 0)
    assert env.run().state == "success"
    assert stats(env) == (1, 1)
    meta, _ = plan_of(env)
    [added] = meta["picklist_options"]["added"]
    assert (added["attribute"], added["label"]) == ("uni_academictermtype", "Autumn term")
    autumn = added["value"]
    assert autumn not in (FALL, SPRING)

    leads = leads_by_applicant(env.leads())
    values = Counter(lead.get("uni_academictermtype") for lead in leads.values())
    assert values[autumn] > 1, values  # many leads needed it: one insert
    assert FALL not in values and values[SPRING] > 0
    assert env.reports()[-1]["outcomes"].get("failed", 0) == 0
    assert all("picklist" not in (q["reason"] or "") for q in env.reports()[-1]["quarantine"])

    # the second run needs the same option again (those applicants sent again): found in the metadata,
    # nothing added, and the payloads hash as in the first run (the option value was filled in before hashing)
    autumn_ids = sorted(a for a, lead in leads.items() if lead.get("uni_academictermtype") == autumn)
    assert env.run(applicant_ids=autumn_ids).state == "success"
    assert stats(env) == (1, 1)
    meta, ops = plan_of(env)
    assert meta["picklist_options"] == {}  # the transform matched the option: nothing pending
    assert sorted(op.applicant_id for op in ops if op.action == "unchanged") == autumn_ids
    assert env.run(full_resync=True).state == "success"  # and once more with every lead rewritten
    assert stats(env) == (1, 1)
    again = leads_by_applicant(env.leads())
    assert sorted(a for a, lead in again.items() if lead.get("uni_academictermtype") == autumn) == autumn_ids


def test_a_failed_insert_fails_only_the_leads_needing_the_option_and_the_next_run_retries_them(
    sync_env: Any, tmp_path: Path
) -> None:
    def terms(data: dict[str, Any]) -> None:
        data["data_mapping"]["uni_academictermtype"] = {
            "source": "term.type",
            "picklist": True,
            "on_missing_option": "add",
            "add_allowlist": ["*"],
            "value_map": {"Fall semester": "Autumn term"},
        }
        data["data_mapping"]["uni_leadstage"] = {
            "source": "lead.stage",
            "picklist": True,
            "on_missing_option": "ignore",
        }

    env = sync_env(settings=settings_file(tmp_path, terms), applicants=60)
    env.client.add_fault(kind="status", status=500, server="dataverse", method="POST", path="InsertOptionValue")
    assert env.run().state == "success"  # the other leads are written
    assert stats(env) == (0, 0)  # nothing added, nothing to publish
    report = env.reports()[-1]
    failed = report["outcomes"].get("failed", 0)
    assert failed > 1 and report["outcomes"]["created"] > 0
    first = leads_by_applicant(env.leads())
    assert all(lead.get("uni_academictermtype") != FALL for lead in first.values())
    instance = env.sandbox.endpoints.dreamapply_url.split("://", 1)[1]
    ledger = Ledger(env.ledger_url)
    try:
        failed_ids = ledger.ids_in_state(instance, LeadState.FAILED)
        reasons = {e.reason for e in ledger.entries(instance, failed_ids).values()}
    finally:
        ledger.dispose()
    assert len(failed_ids) == failed and not set(failed_ids) & set(first)
    listed = {f["applicant_id"] for f in report["failures"] if f["error_code"] == "before_load"}
    assert listed == set(failed_ids)  # the report names every failed applicant, not just the count
    [reason] = reasons
    assert reason.startswith("picklist: the option needed for uni_academictermtype could not be added (")
    assert "Autumn" not in reason

    env.client.clear_faults()
    assert env.run().state == "success"  # an incremental run retries the failed applicants
    assert stats(env) == (1, 1)
    leads = leads_by_applicant(env.leads())
    assert set(failed_ids) <= set(leads)
    [added] = plan_of(env)[0]["picklist_options"]["added"]
    assert {leads[a]["uni_academictermtype"] for a in failed_ids} == {added["value"]}


def _user_id(email: str) -> str:
    from d365.hooks.dynamics import DynamicsHook

    return DynamicsHook().find_systemuser(email=email)["systemuserid"]


@pytest.fixture
def owner_run(
    sync_env: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> tuple[Any, dict[int, str], dict[str, str]]:
    """One run with two owner rules (citizenship, then lead stage) and Anna as the fallback: the env, the
    expected owner per created applicant (from the leads' own columns) and the users' ids."""
    env = sync_env(applicants=80)
    raw = raw_applicants(env.client)
    common = [c for c, _ in Counter(a["citizenship"] for a in raw.values() if a.get("citizenship")).most_common(2)]

    def rules(data: dict[str, Any]) -> None:
        data["owner_rules"] = [
            {"when": {"citizenship": common}, "owner": {"domainname": "eva.lindqvist@university.example"}},
            {"when": {"lead_stage": ["submitted"]}, "owner": {"email": "bruno.costa@university.example"}},
        ]

    monkeypatch.setenv("D365_SYNC_SETTINGS", str(settings_file(tmp_path, rules)))
    users = {
        "anna": _user_id("anna.virtanen@university.example"),
        "bruno": _user_id("bruno.costa@university.example"),
        "eva": _user_id("eva.lindqvist@university.example"),
    }
    assert env.run().state == "success"
    expected: dict[int, str] = {}
    for aid, lead in leads_by_applicant(env.leads()).items():
        if lead.get("uni_citizenship") in common:
            expected[aid] = users["eva"]
        elif lead.get("uni_leadstage") == SUBMITTED:
            expected[aid] = users["bruno"]
        else:
            expected[aid] = users["anna"]
    return env, expected, users


def test_the_plan_gives_each_create_the_owner_of_the_first_matching_rule_or_the_fallback(owner_run: Any) -> None:
    env, expected, users = owner_run
    meta, ops = plan_of(env)
    creates = {op.applicant_id: op for op in ops if op.action == CREATE}
    assert set(creates) == set(expected)
    assert {aid: op.owner_id for aid, op in creates.items()} == expected  # the bind in each create's body
    assert all(op.body["ownerid@odata.bind"] == f"/systemusers({expected[aid]})" for aid, op in creates.items())
    used = Counter(expected.values())
    assert used[users["eva"]] > 0 and used[users["bruno"]] > 0 and used[users["anna"]] > 0, used
    # one resolution (preflight's record); the plan keeps no second copy of the owner ids
    preflight = json.loads((latest_run(env) / "preflight.json").read_text())
    assert preflight["owners"] == {"default": users["anna"], "rules": [users["eva"], users["bruno"]]}
    assert "owners" not in meta and "owner_id" not in meta
    assert all(op.owner_id is None and "ownerid@odata.bind" not in (op.body or {}) for op in ops if op.action != CREATE)


def test_created_leads_are_owned_per_rule(owner_run: Any) -> None:
    env, expected, _ = owner_run
    leads = leads_by_applicant(env.leads())
    assert {aid: leads[aid]["_ownerid_value"] for aid in expected} == expected
