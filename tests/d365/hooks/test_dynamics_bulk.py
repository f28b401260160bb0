"""Bulk messages against the sandbox over TLS: detection (``bulk_messages``) and the writer (``write_operations``):
UpsertMultiple groups, the ``$batch`` fallback of a group that fails as a whole, duplicate keys, what never goes
through bulk, retries, and no personal value in errors or logs. Operations are the sync's own planned requests
(``plan.final_requests``), so the bodies are what the load sends (mapped columns, a create's owner bind)."""

from __future__ import annotations

import logging
import uuid
from collections.abc import Callable
from typing import Any

import pytest

from d365.hooks.dynamics import BulkResult, DynamicsHook, write_operations
from d365.hooks.dynamics_batch import BatchOperation
from d365.hooks.dynamics_bulk import _rounds
from d365.hooks.errors import DynamicsThrottled, DynamicsValidationError
from d365.pipeline.identity import lead_id_for
from d365.pipeline.owners import OwnerIds
from d365.pipeline.plan import CREATE, ERASE, UPDATE, WITHDRAW, Operation, final_requests
from sandbox.client import SandboxClient
from sandbox.dataverse.users import stable_id

Private = Callable[..., tuple[DynamicsHook, SandboxClient]]
ALL = frozenset({"CreateMultiple", "UpdateMultiple", "UpsertMultiple"})
LEAD_TYPE = "Microsoft.Dynamics.CRM.lead"
OWNER = stable_id("user:anna.virtanen@university.example")
INSTANCE = "https://bulk-tests.example"
TOO_LONG_NAME = "Wolfeschlegelsteinhausenbergerdorff-Ó'Briain-Łukasiewicz-Montgomery"  # 66 > lastname's 50


def _body(applicant: int, marker: str) -> dict[str, Any]:
    """Mapped columns as the load sends them, the alternate-key column included (it is data when addressed by id)."""
    return {
        "firstname": f"Zoë{applicant}",
        "lastname": f"O'Brien-Łukasiewicz {applicant}",
        "emailaddress1": f"zoe.{applicant}@applicant.example",
        "subject": f"DreamApply applicant {applicant}",
        "uni_applicantid": str(applicant),
        "uni_reference": marker,
    }


def _planned(applicants: range, marker: str, action: str = CREATE, **bodies: dict[str, Any]) -> list[Operation]:
    ops = [
        Operation(
            applicant_id=a,
            action=action,
            lead_id=lead_id_for(INSTANCE, a),
            payload_hash=f"h{a}",
            body=bodies.get(str(a), _body(a, marker)),
        )
        for a in applicants
    ]
    return final_requests(ops, entity_set="leads", owners=OwnerIds(default=OWNER), owner_rules={})


def _privacy(applicant: int, action: str, method: str) -> Operation:
    op = Operation(
        applicant_id=applicant,
        action=action,
        lead_id=lead_id_for(INSTANCE, applicant),
        payload_hash="",
        body={"donotemail": True},
        method=method,
    )
    return final_requests([op], entity_set="leads", owners=OwnerIds(default=OWNER), owner_rules={})[0]


def _leads(client: SandboxClient, marker: str) -> list[dict[str, Any]]:
    return [row for row in client.get("/dataverse/leads") if row.get("uni_reference") == marker]


def _writes(client: SandboxClient, since: int) -> list[dict[str, Any]]:
    """The Dataverse requests after ``since`` that could write: POSTs (UpsertMultiple, $batch), PATCH, DELETE."""
    return [e for e in client.requests(server="dataverse", since=since) if e["method"] != "GET"]


def _logged(capfd: pytest.CaptureFixture[str]) -> str:
    """What the hook logged: it logs through Airflow's structlog to the console."""
    out = capfd.readouterr()
    return out.out + out.err


def _kind(entry: dict[str, Any]) -> str:
    return entry["path"].rsplit("/", 1)[-1].replace("Microsoft.Dynamics.CRM.", "")


@pytest.fixture
def private(dynamics_private: Private) -> Callable[..., tuple[DynamicsHook, SandboxClient, int]]:
    """A hook on its own sandbox, authenticated, with the request-log position after that."""

    def make(**sandbox_overrides: Any) -> tuple[DynamicsHook, SandboxClient, int]:
        hook, client = dynamics_private(**sandbox_overrides)
        hook.whoami()
        return hook, client, client.last_seq()

    return make


# -- detection -------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("offered", "detected"),
    [
        (("CreateMultiple", "UpdateMultiple", "UpsertMultiple"), ALL),
        ((), frozenset()),
        (("CreateMultiple", "UpdateMultiple"), ALL),  # UpsertMultiple is available where both are
        (("UpsertMultiple",), frozenset({"UpsertMultiple"})),
        (("CreateMultiple",), frozenset({"CreateMultiple"})),
    ],
    ids=["all", "none", "create-and-update", "upsert-only", "create-only"],
)
def test_bulk_messages_reads_sdkmessagefilters(private: Any, offered: tuple[str, ...], detected: frozenset) -> None:
    hook, client, seq = private(lead_bulk_messages=offered)
    assert hook.bulk_messages("lead") == detected
    asked = client.requests(server="dataverse", since=seq)
    assert [e["path"] for e in asked] == ["/api/data/v9.2/sdkmessagefilters"] * 3
    assert all("primaryobjecttypecode" in e["query"] and "sdkmessageid/name" in e["query"] for e in asked)
    assert hook.bulk_messages("contact") == ALL  # another table of the same org


def test_bulk_messages_without_read_access_means_none(private: Any, capfd: pytest.CaptureFixture[str]) -> None:
    hook, client, _ = private()
    client.add_fault(kind="status", status=403, server="dataverse", path="sdkmessagefilters", nth=1)
    assert hook.bulk_messages("lead") == frozenset()
    assert "cannot read sdkmessagefilters (HTTP 403): bulk messages are not used for lead" in _logged(capfd)


# -- the writer --------------------------------------------------------------------------------------------
def test_a_group_with_one_invalid_record_falls_back_to_batch(
    private: Any, caplog: pytest.LogCaptureFixture, capfd: pytest.CaptureFixture[str]
) -> None:
    """MUST SHOW: 100 upserts, one invalid. One UpsertMultiple (all or nothing: rolled back), then the group as one
    $batch with continue-on-error: the 99 valid leads written once, the invalid one reported with Dataverse's code
    and its applicant id, no personal value in any error or log line."""
    hook, client, seq = private()
    marker = f"bulk-{uuid.uuid4().hex[:8]}"
    bad = _body(1037, marker) | {"lastname": TOO_LONG_NAME}
    ops = _planned(range(1000, 1100), marker, **{"1037": bad})
    caplog.set_level(logging.DEBUG, logger="d365")
    caplog.set_level(logging.DEBUG, logger="airflow")
    results = write_operations(hook, ops, entity="lead", messages=ALL, group_size=100)
    logged = caplog.text + _logged(capfd)

    assert [r.operation for r in results] == ops
    failed = [r for r in results if not r.ok]
    assert len(failed) == 1 and failed[0].operation.record == "1037"
    error = failed[0].error
    assert isinstance(error, DynamicsValidationError)
    assert (failed[0].status, error.code, error.record) == (400, "0x80044331", "1037")
    assert {r.status for r in results if r.ok} == {201}  # the $batch parts say "created"

    stored = _leads(client, marker)
    assert sorted(int(row["uni_applicantid"]) for row in stored) == [a for a in range(1000, 1100) if a != 1037]
    assert {row["leadid"] for row in stored} == {op.lead_id for op in ops if op.applicant_id != 1037}
    assert {row["_ownerid_value"] for row in stored} == {OWNER}

    upsert, batch = _writes(client, seq)
    assert (_kind(upsert), upsert["status"], upsert["error_code"]) == ("UpsertMultiple", 400, "0x80044331")
    assert upsert["targets"] == 100 and upsert["target_types"] == [LEAD_TYPE] * 100
    assert upsert["target_ids"] == [f"leads({op.lead_id})" for op in ops]
    assert (_kind(batch), batch["status"], batch["continue_on_error"]) == ("$batch", 200, True)
    assert batch["part_requests"] == [f"PATCH leads({op.lead_id})" for op in ops]
    assert sorted(batch["part_statuses"]) == [201] * 99 + [400]

    personal_columns = ("firstname", "lastname", "emailaddress1")
    personal = [TOO_LONG_NAME, *[(op.body or {})[name] for op in ops for name in personal_columns]]
    said = [str(error), error.message, logged]
    assert not [value for value in personal if any(value in text for text in said)]
    assert "UpsertMultiple of 100 failed as a whole (HTTP 400, code 0x80044331)" in logged
    assert hook.stats["bulk_fallbacks"] == 1


def test_groups_create_and_update_in_upsert_multiple(private: Any) -> None:
    """250 planned writes (creates and updates of existing leads) in groups of 100: three UpsertMultiple requests,
    every item typed and addressed, no $batch; the results say 204 and leave created unknown."""
    hook, client, seq = private()
    marker = f"bulk-{uuid.uuid4().hex[:8]}"
    first = write_operations(hook, _planned(range(1, 51), marker), entity="lead", messages=ALL)
    assert all(r.ok for r in first)
    seq = client.last_seq()
    updates = _planned(range(1, 51), marker, UPDATE, **{str(a): {"lastname": f"Renamed {a}"} for a in range(1, 51)})
    ops = updates + _planned(range(51, 251), marker)
    results = write_operations(hook, ops, entity="lead", messages=ALL, group_size=100)

    assert all(isinstance(r, BulkResult) and r.ok and r.status == 204 and r.created is None for r in results)
    writes = _writes(client, seq)
    assert [(_kind(e), e["status"], e["targets"]) for e in writes] == [
        ("UpsertMultiple", 204, n) for n in (100, 100, 50)
    ]
    assert all(e["target_types"] == [LEAD_TYPE] * e["targets"] for e in writes)
    assert [i for e in writes for i in e["target_ids"]] == [f"leads({op.lead_id})" for op in ops]
    stored = {int(row["uni_applicantid"]): row for row in _leads(client, marker)}
    assert len(stored) == 250
    assert [stored[a]["lastname"] for a in (1, 50)] == ["Renamed 1", "Renamed 50"]
    assert stored[51]["lastname"] == "O'Brien-Łukasiewicz 51" and stored[51]["_ownerid_value"] == OWNER
    assert hook.stats["bulk_requests"] == 4 and hook.stats["bulk_operations"] == 300


def test_the_key_column_never_goes_in_the_body(private: Any) -> None:
    """An upsert addressed by the alternate key whose body also holds the key column: the service fails the create
    path of such a target (400 0x80040216), so the writer leaves the column out and the create succeeds in bulk."""
    hook, client, seq = private()
    marker = f"bulk-{uuid.uuid4().hex[:8]}"
    ops = [
        BatchOperation(
            "PATCH",
            f"leads(uni_applicantid='K-{i}')",
            {"uni_applicantid": f"K-{i}", "lastname": f"Key {i}", "uni_reference": marker},
            {"Prefer": "return=representation"},
            record=f"K-{i}",
        )
        for i in range(3)
    ]
    results = write_operations(hook, ops, entity="lead", messages=ALL)
    assert [r.status for r in results] == [204] * 3
    assert [(_kind(e), e["status"]) for e in _writes(client, seq)] == [("UpsertMultiple", 204)]
    assert sorted(row["uni_applicantid"] for row in _leads(client, marker)) == ["K-0", "K-1", "K-2"]
    assert ops[0].body == {"uni_applicantid": "K-0", "lastname": "Key 0", "uni_reference": marker}  # not changed


def test_two_writes_of_one_record_never_share_a_request(private: Any) -> None:
    """The same lead twice (in any letter case) goes in two requests, in plan order: the later write wins."""
    hook, client, seq = private()
    marker = f"bulk-{uuid.uuid4().hex[:8]}"
    ops = _planned(range(1, 5), marker)
    again = _planned(range(2, 3), marker, UPDATE, **{"2": {"lastname": "Second write"}})[0]
    again.url = f"leads({again.lead_id.upper()})?$select=leadid"  # the same record, written differently
    results = write_operations(hook, [*ops, again], entity="lead", messages=ALL)
    assert all(r.ok and r.status == 204 for r in results)
    writes = _writes(client, seq)
    assert [(_kind(e), e["status"], e["targets"]) for e in writes] == [
        ("UpsertMultiple", 204, 4),
        ("UpsertMultiple", 204, 1),
    ]
    stored = {row["uni_applicantid"]: row["lastname"] for row in _leads(client, marker)}
    assert stored["2"] == "Second write" and len(stored) == 4


def test_update_only_and_delete_never_go_through_bulk(private: Any) -> None:
    hook, client, _ = private()
    marker = f"bulk-{uuid.uuid4().hex[:8]}"
    assert all(r.ok for r in write_operations(hook, _planned(range(1, 3), marker), entity="lead", messages=ALL))
    seq = client.last_seq()
    withdraw, erase = _privacy(1, WITHDRAW, "PATCH"), _privacy(2, ERASE, "DELETE")
    assert withdraw.headers == {"If-Match": "*"} and erase.method == "DELETE"
    ops = [*_planned(range(3, 6), marker), withdraw, erase]
    results = write_operations(hook, ops, entity="lead", messages=ALL)
    assert [(type(r).__name__, r.status) for r in results] == [("BulkResult", 204)] * 3 + [("BatchResult", 204)] * 2
    upsert, batch = _writes(client, seq)
    assert (_kind(upsert), upsert["targets"]) == ("UpsertMultiple", 3)
    assert batch["part_requests"] == [f"PATCH leads({withdraw.lead_id})", f"DELETE leads({erase.lead_id})"]
    stored = {row["uni_applicantid"]: row for row in _leads(client, marker)}
    assert sorted(stored) == ["1", "3", "4", "5"] and stored["1"]["donotemail"] is True


@pytest.mark.parametrize("messages", [frozenset(), frozenset({"CreateMultiple", "UpdateMultiple"})])
def test_without_upsert_multiple_the_writer_is_execute_batch(private: Any, messages: frozenset[str]) -> None:
    hook, client, seq = private()
    marker = f"bulk-{uuid.uuid4().hex[:8]}"
    again = _planned(range(1, 2), marker, UPDATE, **{"1": {"lastname": "Again"}})
    ops = _planned(range(1, 6), marker) + again  # the same lead twice: one $batch runs them in order
    results = write_operations(hook, ops, entity="lead", messages=messages)
    assert [(type(r).__name__, r.status) for r in results] == [("BatchResult", 201)] * 5 + [("BatchResult", 200)]
    [batch] = _writes(client, seq)
    assert (_kind(batch), batch["continue_on_error"], len(batch["part_requests"])) == ("$batch", True, 6)
    assert len(_leads(client, marker)) == 5


def test_rounds_keep_each_records_writes_in_order() -> None:
    """No network: the n-th write of a record goes in round n; what names no record goes in the first."""
    ops = [
        BatchOperation("PATCH", "leads(a)", {}),
        BatchOperation("POST", "leads", {}),
        BatchOperation("DELETE", "LEADS(A)"),
        BatchOperation("PATCH", "leads(b)?$select=leadid", {}),
        BatchOperation("POST", "leads", {}),
        BatchOperation("PATCH", "leads(a)", {}),
    ]
    assert list(_rounds(ops)) == [[0, 1, 3, 4], [2], [5]]


def test_an_org_that_refuses_the_message_costs_one_request_then_batch(private: Any) -> None:
    """Support detected earlier but gone (400 0x80040800): the group falls back and every record is written."""
    hook, client, seq = private(lead_bulk_messages=())
    marker = f"bulk-{uuid.uuid4().hex[:8]}"
    results = write_operations(hook, _planned(range(1, 11), marker), entity="lead", messages=ALL)
    assert [r.status for r in results] == [201] * 10
    assert [(_kind(e), e["status"]) for e in _writes(client, seq)] == [("UpsertMultiple", 400), ("$batch", 200)]
    assert len(_leads(client, marker)) == 10


@pytest.mark.slow  # over a second (real Retry-After waits, sleeps or a subprocess): make test runs it
def test_a_throttled_bulk_request_is_resent_after_retry_after_and_writes_once(private: Any) -> None:
    hook, client, seq = private()
    marker = f"bulk-{uuid.uuid4().hex[:8]}"
    client.add_fault(kind="status", status=429, retry_after=1, server="dataverse", path="UpsertMultiple$", nth=1)
    results = write_operations(hook, _planned(range(1, 21), marker), entity="lead", messages=ALL)
    assert all(isinstance(r, BulkResult) and r.ok for r in results)
    throttled, sent = _writes(client, seq)
    assert (_kind(throttled), throttled["status"], _kind(sent), sent["status"]) == (
        "UpsertMultiple",
        429,
        "UpsertMultiple",
        204,
    )
    assert sent["started"] - throttled["finished"] >= 0.95  # the whole Retry-After was waited
    stored = _leads(client, marker)
    assert sorted(int(row["uni_applicantid"]) for row in stored) == list(range(1, 21))
    assert hook.stats["throttled"] == 1 and "bulk_fallbacks" not in hook.stats


def test_a_transient_5xx_is_retried_not_fallen_back(private: Any) -> None:
    hook, client, seq = private()
    marker = f"bulk-{uuid.uuid4().hex[:8]}"
    client.add_fault(kind="status", status=503, server="dataverse", path="UpsertMultiple$", nth=1)
    results = write_operations(hook, _planned(range(1, 6), marker), entity="lead", messages=ALL)
    assert [r.status for r in results] == [204] * 5
    assert [(_kind(e), e["status"]) for e in _writes(client, seq)] == [("UpsertMultiple", 503), ("UpsertMultiple", 204)]
    assert len(_leads(client, marker)) == 5


def test_a_lying_answer_is_resent(private: Any) -> None:
    """A 200 maintenance page is no UpsertMultiple answer: resent (an upsert is safe to repeat), not trusted."""
    hook, client, seq = private()
    marker = f"bulk-{uuid.uuid4().hex[:8]}"
    client.add_fault(kind="html", server="dataverse", path="UpsertMultiple$", nth=1)
    results = write_operations(hook, _planned(range(1, 4), marker), entity="lead", messages=ALL)
    assert [r.status for r in results] == [204] * 3
    assert [_kind(e) for e in _writes(client, seq)] == ["UpsertMultiple", "UpsertMultiple"]


@pytest.mark.slow  # over a second (real Retry-After waits, sleeps or a subprocess): make test runs it
def test_throttling_that_outlasts_the_retries_is_raised(dynamics_private: Private) -> None:
    hook, client = dynamics_private(hook_kwargs={"max_retries": 1})
    hook.whoami()
    client.add_fault(kind="status", status=429, retry_after=1, server="dataverse", path="UpsertMultiple$", times=2)
    with pytest.raises(DynamicsThrottled):
        write_operations(hook, _planned(range(1, 3), "x"), entity="lead", messages=ALL)
    assert [e["path"] for e in client.requests(server="dataverse") if "$batch" in e["path"]] == []


def test_arguments(private: Any) -> None:
    hook, _, _ = private()
    with pytest.raises(ValueError, match="group_size"):
        write_operations(hook, [], entity="lead", messages=ALL, group_size=0)
    assert write_operations(hook, [], entity="lead", messages=ALL) == []
