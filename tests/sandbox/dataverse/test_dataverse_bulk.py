"""CreateMultiple, UpdateMultiple, UpsertMultiple on leads: Dataverse semantics, all or nothing, only where the org
offers them; their server time (an assumed model) and what the request log keeps. BulkDelete refused."""

from __future__ import annotations

import json
import uuid
from typing import Any

import pytest
from dvhelpers import WebApi, error_of, new_applicant_id

from sandbox.dataverse import protection

LEAD = "Microsoft.Dynamics.CRM.lead"


def _lead(marker: str, **extra: Any) -> dict[str, Any]:
    return {"@odata.type": LEAD, "lastname": "Bulk", "subject": "Applicant", "uni_reference": marker, **extra}


def _by_marker(api: WebApi, marker: str) -> list[dict[str, Any]]:
    r = api.get(
        "leads",
        params={
            "$select": "firstname,lastname,uni_applicantid,telephone1",
            "$filter": f"uni_reference eq '{marker}'",
            "$orderby": "firstname",
        },
    )
    assert r.status_code == 200, r.text
    return r.json()["value"]


def _marker() -> str:
    return f"bulk-{uuid.uuid4().hex[:10]}"


def test_create_multiple_returns_ids_in_order(api: WebApi) -> None:
    marker = _marker()
    chosen = str(uuid.uuid4())
    targets = [_lead(marker, firstname="A"), _lead(marker, firstname="B", leadid=chosen), _lead(marker, firstname="C")]
    r = api.post("leads/Microsoft.Dynamics.CRM.CreateMultiple", {"Targets": targets})
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["@odata.context"] == f"{api.base}/$metadata#Microsoft.Dynamics.CRM.CreateMultipleResponse"
    assert len(body["Ids"]) == 3 and body["Ids"][1] == chosen
    stored = _by_marker(api, marker)
    assert [(row["firstname"], row["leadid"]) for row in stored] == list(zip("ABC", body["Ids"], strict=True))


@pytest.mark.parametrize(
    ("bad", "status", "code"),
    [
        ({"lastname": "x" * 51}, 400, "0x80044331"),  # too long
        ({"nope": 1}, 400, "0x80060888"),  # no such property
        ({"@odata.type": None}, 400, "0x80048d19"),  # every target needs @odata.type
        ({"@odata.type": "Microsoft.Dynamics.CRM.account"}, 400, "0x80040203"),
    ],
)
def test_create_multiple_is_all_or_nothing(api: WebApi, bad: dict[str, Any], status: int, code: str) -> None:
    marker = _marker()
    broken = {k: v for k, v in {**_lead(marker, firstname="B"), **bad}.items() if v is not None}
    targets = [_lead(marker, firstname="A"), broken, _lead(marker, firstname="C")]
    r = api.post("leads/Microsoft.Dynamics.CRM.CreateMultiple", {"Targets": targets})
    assert error_of(r)[:2] == (status, code)
    assert _by_marker(api, marker) == []


def test_create_multiple_rejects_a_duplicate_key_and_rolls_back(api: WebApi) -> None:
    marker = _marker()
    applicant = new_applicant_id()
    targets = [
        _lead(marker, firstname="A", uni_applicantid=applicant),
        _lead(marker, firstname="B", uni_applicantid=applicant.lower()),
    ]
    r = api.post("leads/Microsoft.Dynamics.CRM.CreateMultiple", {"Targets": targets})
    assert error_of(r)[:2] == (412, "0x80040237")
    assert _by_marker(api, marker) == []


@pytest.mark.parametrize(
    "body",
    [{}, {"Targets": []}, {"Targets": {"lastname": "x"}}, {"Targets": [_lead("x")], "Other": 1}, {"Targets": ["x"]}],
)
def test_malformed_bodies(api: WebApi, body: dict[str, Any]) -> None:
    r = api.post("leads/Microsoft.Dynamics.CRM.CreateMultiple", body)
    assert r.status_code == 400, r.text


def test_only_post_and_only_qualified_names(api: WebApi) -> None:
    assert api.get("leads/Microsoft.Dynamics.CRM.CreateMultiple").status_code == 405
    assert api.post("leads/CreateMultiple", {"Targets": [_lead("x")]}).status_code == 404


def test_update_multiple(api: WebApi) -> None:
    marker = _marker()
    ids = api.post(
        "leads/Microsoft.Dynamics.CRM.CreateMultiple",
        {"Targets": [_lead(marker, firstname=n, telephone1="1") for n in "ABC"]},
    ).json()["Ids"]
    r = api.post(
        "leads/Microsoft.Dynamics.CRM.UpdateMultiple",
        {
            "Targets": [
                {"@odata.type": LEAD, "leadid": ids[0], "telephone1": "+3725550100"},
                {"@odata.type": LEAD, "@odata.id": f"leads({ids[2]})", "telephone1": None},
            ]
        },
    )
    assert r.status_code == 204, r.text
    assert [row["telephone1"] for row in _by_marker(api, marker)] == ["+3725550100", "1", None]


@pytest.mark.parametrize(
    ("second", "status"),
    [
        ({"leadid": str(uuid.uuid4())}, 404),  # a missing row
        ({}, 400),  # no leadid: which row?
        ("same", 400),  # the same row twice
        ({"lastname": "y" * 51}, 400),
    ],
)
def test_update_multiple_is_all_or_nothing(api: WebApi, second: Any, status: int) -> None:
    marker = _marker()
    ids = api.post(
        "leads/Microsoft.Dynamics.CRM.CreateMultiple", {"Targets": [_lead(marker, firstname=n) for n in "AB"]}
    ).json()["Ids"]
    first = {"@odata.type": LEAD, "leadid": ids[0], "telephone1": "changed"}
    other = {"@odata.type": LEAD, "leadid": ids[0] if second == "same" else ids[1], "telephone1": "also"}
    if second != "same":
        other.update(second)
        if "leadid" not in second and not second.get("lastname"):
            other.pop("leadid")
    r = api.post("leads/Microsoft.Dynamics.CRM.UpdateMultiple", {"Targets": [first, other]})
    assert r.status_code == status, r.text
    assert [row["telephone1"] for row in _by_marker(api, marker)] == [None, None]


def _upsert_target(applicant: str, **values: Any) -> dict[str, Any]:
    return {"@odata.type": LEAD, "@odata.id": f"leads(uni_applicantid='{applicant}')", **values}


def test_upsert_multiple_creates_and_updates_by_alternate_key(api: WebApi) -> None:
    marker = _marker()
    existing_applicant, new_applicant = new_applicant_id(), new_applicant_id()
    existing = api.create(
        {"lastname": "Old", "firstname": "A", "uni_applicantid": existing_applicant, "uni_reference": marker}
    )
    r = api.post(
        "leads/Microsoft.Dynamics.CRM.UpsertMultiple",
        {
            "Targets": [
                _upsert_target(existing_applicant, lastname="Updated"),
                _upsert_target(new_applicant, firstname="B", lastname="New", subject="s", uni_reference=marker),
            ]
        },
    )
    # The Web API answers 204 without an UpsertMultipleResponse: nothing says which target was created.
    assert (r.status_code, r.content) == (204, b""), r.text
    rows = _by_marker(api, marker)
    assert [(row["lastname"], row["uni_applicantid"]) for row in rows] == [
        ("Updated", existing_applicant),
        ("New", new_applicant),
    ]
    assert rows[0]["leadid"] == existing and rows[1]["leadid"] != existing


def test_upsert_multiple_key_in_body_fails_on_create_but_not_on_update(api: WebApi) -> None:
    """What the service does (SDK PR 127): the key column in the body breaks only the create path."""
    marker = _marker()
    known = new_applicant_id()
    api.create({"lastname": "Known", "uni_applicantid": known, "uni_reference": marker})
    update = _upsert_target(known, uni_applicantid=known, lastname="Known2")
    r = api.post("leads/Microsoft.Dynamics.CRM.UpsertMultiple", {"Targets": [update]})
    assert r.status_code == 204, r.text
    fresh = new_applicant_id()
    create = _upsert_target(fresh, uni_applicantid=fresh, lastname="Fresh", uni_reference=marker)
    r = api.post("leads/Microsoft.Dynamics.CRM.UpsertMultiple", {"Targets": [create]})
    assert error_of(r) == (400, "0x80040216", "An unexpected error occurred.")
    assert [row["lastname"] for row in _by_marker(api, marker)] == ["Known2"]


def test_upsert_multiple_rejects_the_same_key_twice(api: WebApi) -> None:
    marker = _marker()
    applicant = new_applicant_id()
    targets = [
        _upsert_target(applicant, lastname="One", uni_reference=marker),
        _upsert_target(applicant.lower(), lastname="Two", uni_reference=marker),
    ]
    status, code, message = error_of(api.post("leads/Microsoft.Dynamics.CRM.UpsertMultiple", {"Targets": targets}))
    assert (status, code) == (400, "0x80040203") and "Targets[1]" in message and "Targets[0]" in message
    assert _by_marker(api, marker) == []


def test_upsert_multiple_rolls_back_on_a_failing_target(api: WebApi) -> None:
    marker = _marker()
    known = new_applicant_id()
    api.create({"lastname": "Known", "uni_applicantid": known, "uni_reference": marker})
    targets = [
        _upsert_target(known, lastname="Changed"),
        _upsert_target(new_applicant_id(), lastname="N" * 51, uni_reference=marker),
    ]
    assert error_of(api.post("leads/Microsoft.Dynamics.CRM.UpsertMultiple", {"Targets": targets}))[:2] == (
        400,
        "0x80044331",
    )
    assert [row["lastname"] for row in _by_marker(api, marker)] == ["Known"]


def test_upsert_multiple_by_id_and_unknown_key(api: WebApi) -> None:
    marker = _marker()
    lead_id = str(uuid.uuid4())
    target = {"@odata.type": LEAD, "@odata.id": f"leads({lead_id})", "lastname": "ById", "uni_reference": marker}
    r = api.post("leads/Microsoft.Dynamics.CRM.UpsertMultiple", {"Targets": [target]})
    assert r.status_code == 204, r.text
    assert api.get(f"leads({lead_id})?$select=lastname").json()["lastname"] == "ById"
    bad = {"@odata.type": LEAD, "@odata.id": "leads(emailaddress1='a@b.example')", "lastname": "x"}
    status, code, message = error_of(api.post("leads/Microsoft.Dynamics.CRM.UpsertMultiple", {"Targets": [bad]}))
    assert (status, code) == (400, "0x80040203") and "not a defined key" in message
    nameless = {"@odata.type": LEAD, "lastname": "x"}
    assert api.post("leads/Microsoft.Dynamics.CRM.UpsertMultiple", {"Targets": [nameless]}).status_code == 400


def test_bulk_delete_is_refused_loudly(api: WebApi) -> None:
    lead_id = api.create({"lastname": "Keep"})
    body = {
        "JobName": "x",
        "QuerySet": [
            {
                "@odata.type": "Microsoft.Dynamics.CRM.QueryExpression",
                "EntityName": "lead",
                "Criteria": {"Conditions": [{"AttributeName": "leadid", "Operator": "In", "Values": [lead_id]}]},
            }
        ],
    }
    status, code, message = error_of(api.post("BulkDelete", body))
    assert (status, code) == (400, "0x80060888")
    assert message.startswith("The BulkDelete action") and "is not supported by the Dataverse sandbox" in message
    assert api.get(f"leads({lead_id})").status_code == 200


def test_bulk_message_inside_a_batch_changeset_rolls_back_with_it(api: WebApi) -> None:
    """A CreateMultiple that succeeded is undone when a later operation of its change set fails."""
    marker = _marker()
    create = json.dumps({"Targets": [_lead(marker, firstname="A"), _lead(marker, firstname="B")]})
    failing = json.dumps({"lastname": "z" * 51})
    parts = []
    for index, (url, payload) in enumerate(
        [("leads/Microsoft.Dynamics.CRM.CreateMultiple", create), ("leads", failing)], start=1
    ):
        parts.append(
            "--changeset_1\r\nContent-Type: application/http\r\nContent-Transfer-Encoding: binary\r\n"
            f"Content-ID: {index}\r\n\r\nPOST {api.base}/{url} HTTP/1.1\r\nContent-Type: application/json\r\n\r\n"
            f"{payload}\r\n"
        )
    body = (
        "--batch_1\r\nContent-Type: multipart/mixed; boundary=changeset_1\r\n\r\n"
        + "".join(parts)
        + "--changeset_1--\r\n--batch_1--\r\n"
    )
    r = api.http.post(
        f"{api.base}/$batch",
        data=body.encode(),
        headers=api.headers({"Content-Type": "multipart/mixed; boundary=batch_1"}),
    )
    assert r.status_code == 400, r.text
    assert _by_marker(api, marker) == []


# Simulated server time is slept for real and metered as wall time: one operation is long enough that a busy
# 2-core machine's scheduling delay (SLACK_MS) never reaches the next whole operation.
OP_MS = 300
SLACK_MS = 250


def _meter(sb: Any) -> dict[str, Any]:
    [meter] = protection.usage(sb.state).values()
    return meter


@pytest.mark.slow  # over a second (real Retry-After waits, sleeps or a subprocess): make test runs it
@pytest.mark.parametrize(("base", "per_target", "expected_ops"), [(1.0, 0.25, 2.0), (0.0, 1.0, 4.0), (2.0, 0.5, 4.0)])
def test_a_bulk_message_is_one_request_and_costs_its_configured_server_time(
    make_sandbox: Any, base: float, per_target: float, expected_ops: float
) -> None:
    """Four targets cost ``base + 4 × per_target`` operations of simulated server time, as one request."""
    sb, _ = make_sandbox(
        operation_ms=OP_MS, request_latency_ms=0, bulk_request_operations=base, bulk_target_operations=per_target
    )
    api = WebApi(sb)  # the token comes from the login server: this is the Dataverse server's only request
    r = api.post("leads/Microsoft.Dynamics.CRM.CreateMultiple", {"Targets": [_lead(_marker()) for _ in range(4)]})
    assert r.status_code == 200, r.text
    meter = _meter(sb)
    assert meter["requests"] == 1
    assert expected_ops * OP_MS <= meter["execution_ms"] < expected_ops * OP_MS + SLACK_MS


@pytest.mark.slow  # over a second (real Retry-After waits, sleeps or a subprocess): make test runs it
def test_a_bulk_message_costs_less_than_the_same_operations_in_a_batch(make_sandbox: Any) -> None:
    """The default model: 8 upserts as UpsertMultiple cost 1 + 8 × 0.25 = 3 operations, as a $batch 8."""
    sb, _ = make_sandbox(operation_ms=OP_MS / 2, request_latency_ms=0)
    api = WebApi(sb)
    marker = _marker()
    targets = [_upsert_target(new_applicant_id(), lastname="Cost", uni_reference=marker) for _ in range(8)]
    assert api.post("leads/Microsoft.Dynamics.CRM.UpsertMultiple", {"Targets": targets}).status_code == 204
    bulk_ms = _meter(sb)["execution_ms"]
    parts = []
    for index, item in enumerate(targets, start=1):
        body = json.dumps({k: v for k, v in item.items() if not k.startswith("@")} | {"lastname": "Again"})
        parts.append(
            f"--batch_1\r\nContent-Type: application/http\r\nContent-Transfer-Encoding: binary\r\n"
            f"Content-ID: {index}\r\n\r\nPATCH {api.base}/{item['@odata.id']} HTTP/1.1\r\n"
            f"Content-Type: application/json\r\n\r\n{body}\r\n"
        )
    r = api.http.post(
        f"{api.base}/$batch",
        data=("".join(parts) + "--batch_1--\r\n").encode(),
        headers=api.headers({"Content-Type": "multipart/mixed; boundary=batch_1"}),
    )
    assert r.status_code == 200, r.text
    batch_ms = _meter(sb)["execution_ms"] - bulk_ms
    assert 3 * OP_MS / 2 <= bulk_ms < 3 * OP_MS / 2 + SLACK_MS and 8 * OP_MS / 2 <= batch_ms < 8 * OP_MS / 2 + SLACK_MS
    assert [row["lastname"] for row in _by_marker(api, marker)] == ["Again"] * 8


@pytest.mark.slow  # over a second (real Retry-After waits, sleeps or a subprocess): make test runs it
def test_a_failed_bulk_message_costs_the_targets_it_ran(make_sandbox: Any) -> None:
    sb, _ = make_sandbox(operation_ms=OP_MS, request_latency_ms=0, bulk_request_operations=1, bulk_target_operations=1)
    api = WebApi(sb)
    marker = _marker()
    targets = [_lead(marker), _lead(marker, lastname="x" * 51), _lead(marker), _lead(marker)]
    assert error_of(api.post("leads/Microsoft.Dynamics.CRM.CreateMultiple", {"Targets": targets}))[1] == "0x80044331"
    # the base and two targets (the second one failed); a third target would cost one more OP_MS
    assert 3 * OP_MS <= _meter(sb)["execution_ms"] < 3 * OP_MS + SLACK_MS


def test_an_org_without_bulk_support_refuses_the_messages(make_sandbox: Any) -> None:
    sb, _ = make_sandbox(lead_bulk_messages=("CreateMultiple",))
    api = WebApi(sb)
    marker = _marker()
    status, code, message = error_of(
        api.post("leads/Microsoft.Dynamics.CRM.UpsertMultiple", {"Targets": [_upsert_target(new_applicant_id())]})
    )
    assert (status, code) == (400, "0x80040800")
    assert message.startswith("The 'UpsertMultiple' method does not support entities of type 'lead'.")
    assert api.post("leads/Microsoft.Dynamics.CRM.CreateMultiple", {"Targets": [_lead(marker)]}).status_code == 200
    sb.state.config.lead_bulk_messages = ()  # the org's support can change between two requests
    assert error_of(api.post("leads/Microsoft.Dynamics.CRM.CreateMultiple", {"Targets": [_lead(marker)]}))[:2] == (
        400,
        "0x80040800",
    )
    assert len(_by_marker(api, marker)) == 1


def test_the_request_log_keeps_each_targets_type_and_id_but_no_value(make_sandbox: Any) -> None:
    sb, admin = make_sandbox()
    api = WebApi(sb)
    applicant = new_applicant_id()
    targets = [_upsert_target(applicant, lastname="Secret-Lastname"), {"lastname": "No-Type"}]
    assert api.post("leads/Microsoft.Dynamics.CRM.UpsertMultiple", {"Targets": targets}).status_code == 400
    [entry] = [e for e in admin.requests("dataverse") if e["path"].endswith("UpsertMultiple")]
    assert entry["bulk"] == "UpsertMultiple" and entry["targets"] == 2
    assert entry["target_types"] == [LEAD, None]
    assert entry["target_ids"] == [f"leads(uni_applicantid='{applicant}')", None]
    assert entry["error_code"] == "0x80048d19"
    assert "Secret-Lastname" not in json.dumps(entry) and "No-Type" not in json.dumps(entry)
