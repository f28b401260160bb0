"""The plan task (``d365.tasks.plan``) emits final requests and the load sends them as planned (sandbox Dataverse
over TLS, no DAG).

Owners come from preflight's one resolution (``preflight.json`` → ``owners``); the plan binds them to creates
(rule's user, else the contact owner); an update of an existing lead keeps the owner it has.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml
from airflow.sdk.exceptions import AirflowFailException

from d365.hooks.dynamics import DynamicsHook
from d365.operators.load_leads import LoadLeadsOperator
from d365.pipeline.identity import lead_id_for
from d365.pipeline.plan import CREATE, OWNER_BIND, UPDATE, Operation
from d365.pipeline.runfiles import (
    EXTRACT_META,
    PLAN_META,
    PLAN_OPERATIONS,
    PREFLIGHT,
    TRANSFORM_LEADS,
    TRANSFORM_OUTCOMES,
)
from d365.pipeline.settings import load_settings, parse_settings
from d365.tasks.context import RunContext
from d365.tasks.plan import plan_step
from sandbox.client import airflow_connections

INSTANCE = "plan.example"
SETTINGS_FILE = Path(__file__).resolve().parents[3] / "include" / "mappings" / "settings.yaml"
TARGET = {"connection_id": "dynamics365_default", "entity": "lead", "entity_set": "leads", "primary_id": "leadid"}


def lead_row(aid: int, owner_rule: int | None = None) -> dict[str, Any]:
    payload = {"lastname": f"Family {aid}", "subject": f"DreamApply applicant {aid}", "uni_applicantid": str(aid)}
    return {"applicant_id": aid, "payload": payload, "payload_hash": f"h{aid}", "owner_rule": owner_rule}


@pytest.fixture
def crm(make_sandbox: Callable[..., Any], tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Any:
    sb, client = make_sandbox(applicants=3)
    conn = airflow_connections(sb.info())["AIRFLOW_CONN_DYNAMICS365_DEFAULT"]
    monkeypatch.setenv("AIRFLOW_CONN_DYNAMICS365_DEFAULT", json.dumps(conn))
    monkeypatch.setenv("D365_SYNC_RUN_ROOT", "file://" + str(tmp_path / "runs"))
    return client


def run_context(tmp_path: Path, owners: dict[str, Any], rows: list[dict[str, Any]], **kwargs: Any) -> Any:
    settings = kwargs.pop("settings", None) or load_settings()
    rc = RunContext.create(
        "dag", "r1", kwargs.pop("params", {}), settings=settings, ledger_url=f"sqlite:///{tmp_path / 'l.db'}"
    )
    rc.folder.write_json(PREFLIGHT, {"instance": INSTANCE, "target": TARGET, "owners": owners})
    rc.folder.write_json(EXTRACT_META, {})
    rc.folder.write_jsonl(TRANSFORM_OUTCOMES, [])
    rc.folder.write_jsonl(TRANSFORM_LEADS, rows)
    return rc


def test_the_plan_binds_each_creates_owner_and_the_load_sends_it_as_planned(crm: Any, tmp_path: Path) -> None:
    hook = DynamicsHook()
    anna, bruno, eva = (
        hook.find_systemuser(email=f"{name}@university.example")["systemuserid"]
        for name in ("anna.virtanen", "bruno.costa", "eva.lindqvist")
    )
    # applicant 3 already has a lead (its key column says so), owned by Bruno
    crm.post("/dataverse/leads", [{"lastname": "Old", "subject": "x", "uni_applicantid": "3", "ownerid": bruno}])
    rc = run_context(tmp_path, {"default": anna, "rules": [eva]}, [lead_row(1, 0), lead_row(2), lead_row(3, 0)])

    plan_step(rc)
    ops = {op.applicant_id: op for op in map(Operation.from_json, rc.folder.read_jsonl(PLAN_OPERATIONS))}
    assert [ops[a].action for a in (1, 2, 3)] == [CREATE, CREATE, UPDATE]
    assert ops[1].body[OWNER_BIND] == f"/systemusers({eva})"  # rule 0's user
    assert ops[2].body[OWNER_BIND] == f"/systemusers({anna})"  # no rule: the contact owner
    assert OWNER_BIND not in ops[3].body  # an update never changes the owner
    assert ops[1].url == f"leads({lead_id_for(INSTANCE, 1)})?$select=leadid"
    meta = rc.folder.read_json(PLAN_META)
    assert meta["target"] == TARGET and "owners" not in meta and "owner_id" not in meta

    seq = crm.last_seq()
    LoadLeadsOperator(task_id="load", run_folder=rc.folder.url, instance=INSTANCE, ledger_url=rc.ledger_url).execute(
        {"run_id": "r1"}  # type: ignore[arg-type]
    )
    leads = {lead["uni_applicantid"]: lead for lead in crm.get("/dataverse/leads")}
    assert {aid: leads[aid]["_ownerid_value"] for aid in ("1", "2", "3")} == {"1": eva, "2": anna, "3": bruno}
    assert leads["3"]["lastname"] == "Family 3"  # updated, owner kept
    batches = [e for e in crm.requests(server="dataverse", since=seq) if e["path"].endswith("$batch")]
    assert len(batches) == 1 and batches[0]["status"] == 200


def test_a_create_nobody_owns_stops_the_plan_before_anything_is_written(crm: Any, tmp_path: Path) -> None:
    """No contact owner (allowed while send_all_new is off) and a manual send that creates: the plan refuses,
    it does not leave the owner to Dynamics (which would be the application user the sync signs in as)."""
    data = yaml.safe_load(SETTINGS_FILE.read_text(encoding="utf-8"))
    data.update(send_all_new=False, contact_owner=None)
    settings = parse_settings(data)
    rc = run_context(tmp_path, {"default": None, "rules": []}, [lead_row(1), lead_row(2)], settings=settings, params={})
    rc.params["applicant_ids"] = [2]
    with pytest.raises(AirflowFailException, match="applicant 2 would be created without an owner: set contact_owner"):
        plan_step(rc)
    assert not rc.folder.exists(PLAN_OPERATIONS)


# -- a failed lookup never turns into a create ------------------------------------------------------
def test_lead_lookup_fails_on_a_lying_answer_instead_of_finding_nothing(make_sandbox, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    import json

    import pytest

    from d365.hooks.dynamics import DynamicsHook
    from d365.hooks.errors import DynamicsMalformedAnswer
    from d365.pipeline.mapping_result import MappedLead
    from d365.pipeline.settings import load_settings
    from d365.tasks.plan import _lookup_existing
    from sandbox.client import airflow_connections

    sb, client = make_sandbox(applicants=5)
    conn = airflow_connections(sb.info())["AIRFLOW_CONN_DYNAMICS365_DEFAULT"]
    monkeypatch.setenv("AIRFLOW_CONN_DYNAMICS365_DEFAULT", json.dumps(conn))
    [lead_id] = client.post(
        "/dataverse/leads", [{"lastname": "Fair", "emailaddress1": "met@example.org", "subject": "x"}]
    )["ids"]
    unknown = [MappedLead(4242, {"lastname": "Met"}, email="met@example.org")]
    s = load_settings()
    dyn = DynamicsHook(max_retries=1)
    dyn.backoff_base = 0.01
    by_key: dict = {}
    by_email: dict = {}
    assert _lookup_existing(dyn, "leads", "leadid", s, unknown, by_key, by_email) == 2  # by key, then by e-mail
    assert [e.lead_id for e in by_email["met@example.org"]] == [lead_id]

    for kind in ("html", "json_error", "empty", "cut"):
        client.add_fault(kind=kind, server="dataverse", method="GET", path="^/api/data/v9.2/leads$", nth=2, times=99)
        by_email = {}
        with pytest.raises(DynamicsMalformedAnswer) as caught:  # never "no existing lead" (which would create)
            _lookup_existing(dyn, "leads", "leadid", s, unknown, {}, by_email)
        assert caught.value.retryable and "met@example.org" not in str(caught.value)
        assert [r["fired"] for r in client.get("/faults")["rules"]] == [2]
        client.clear_faults()


def test_a_lookup_row_without_a_lead_id_is_an_error() -> None:
    """The sandbox always answers the selected primary id; a stand-in lookup shows the row check itself."""
    import pytest

    from d365.hooks.dynamics_query import ValueLookup
    from d365.hooks.errors import DynamicsMalformedAnswer
    from d365.pipeline.mapping_result import MappedLead
    from d365.pipeline.settings import load_settings
    from d365.tasks.plan import _lookup_existing

    class Rows:
        def __init__(self, rows: list[dict]) -> None:
            self.rows = rows

        def query_in(self, entity_set: str, column: str, values: list[str], **_: object) -> ValueLookup:
            return ValueLookup(self.rows, 1)

    unknown = [MappedLead(7, {}, email="a@example.org")]
    for row in ({"emailaddress1": "a@example.org"}, {"leadid": "not-a-guid", "emailaddress1": "a@example.org"},
                {"leadid": "0f8fad5b-d9cb-469f-a165-70867728950e", "emailaddress1": 12}):  # fmt: skip
        with pytest.raises(DynamicsMalformedAnswer, match="lead lookup row"):
            _lookup_existing(Rows([row]), "leads", "leadid", load_settings(), unknown, {}, {})
