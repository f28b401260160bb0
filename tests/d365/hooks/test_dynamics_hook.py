"""DynamicsHook against the sandbox Dataverse: real HTTP over verified TLS, faults injected server-side."""

from __future__ import annotations

import threading
import uuid
from collections.abc import Callable
from typing import Any

import pytest

from d365.hooks.dynamics import DynamicsHook, entity_path
from d365.hooks.dynamics_batch import BatchOperation
from d365.hooks.errors import (
    DynamicsConflict,
    DynamicsMalformedAnswer,
    DynamicsNotFound,
    DynamicsValidationError,
)
from sandbox import Sandbox
from sandbox.client import SandboxClient

API_ROOT = "/api/data/v9.2/"
Private = Callable[..., tuple[DynamicsHook, SandboxClient]]


def admin(sandbox: Sandbox) -> SandboxClient:
    return SandboxClient(sandbox.info())


def stored(client: SandboxClient, applicant_id: str) -> list[dict[str, Any]]:
    return client.get("/dataverse/leads", applicant_id=applicant_id)


def header(entry: dict[str, Any], name: str) -> str | None:
    return {k.lower(): v for k, v in entry["headers"].items()}.get(name.lower())


@pytest.fixture
def hook(dynamics_hook: DynamicsHook) -> DynamicsHook:
    """The shared-sandbox hook from conftest, under a short local name."""
    return dynamics_hook


@pytest.fixture
def uid(dynamics_uid: str) -> str:
    return dynamics_uid


def test_hook_identity_and_lazy_constructor(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("AIRFLOW_CONN_DYNAMICS365_DEFAULT", raising=False)
    hook = DynamicsHook(timeout=5, max_retries=2)  # no connection needed until first use
    assert (hook.conn_name_attr, hook.default_conn_name, hook.conn_type, hook.hook_name) == (
        "dynamics365_conn_id",
        "dynamics365_default",
        "dynamics365",
        "Dynamics 365",
    )
    assert hook.dynamics365_conn_id == "dynamics365_default" and hook.timeout == 5 and hook.max_retries == 2


# -- identity ------------------------------------------------------------------------------------------------
def test_whoami_dop_hint_and_standard_headers(hook: DynamicsHook, sandbox: Sandbox) -> None:
    client = admin(sandbox)
    who = hook.whoami()
    seq = client.last_seq()
    assert who["UserId"] == hook.whoami()["UserId"]
    assert hook.dop_hint == 48
    (entry,) = client.requests(server="dataverse", since=seq)
    assert header(entry, "OData-Version") == "4.0" and header(entry, "OData-MaxVersion") == "4.0"
    assert header(entry, "Accept") == "application/json"
    assert header(entry, "If-None-Match") == "null"


# -- writes ----------------------------------------------------------------------------------------------
def test_upsert_by_alternate_key_create_then_update(hook: DynamicsHook, sandbox: Sandbox, uid: str) -> None:
    client = admin(sandbox)
    applicant = f"O'Brien-{uid}"
    key = {"uni_applicantid": applicant}
    # The key column in the payload is stripped (Dataverse would prefer a body value over the URL's on create).
    first = hook.upsert(
        "leads",
        key,
        {"lastname": "O'Brien", "subject": "Applicant", "uni_applicantid": "WRONG"},
        record=applicant,
        return_representation=True,
    )
    assert (first.status, first.created) == (201, True)
    assert first.entity_id and first.etag
    second = hook.upsert("leads", key, {"firstname": "Siobhán"}, return_representation=True)
    assert (second.status, second.created, second.entity_id) == (200, False, first.entity_id)
    assert second.etag != first.etag
    plain = hook.upsert("leads", key, {"firstname": "Siobhán"})
    assert (plain.status, plain.created) == (204, None)
    rows = stored(client, applicant)
    assert len(rows) == 1
    assert (rows[0]["uni_applicantid"], rows[0]["lastname"], rows[0]["firstname"]) == (applicant, "O'Brien", "Siobhán")
    # read back the way the plan looks leads up (by the key column's values)
    again = hook.query_in("leads", "uni_applicantid", [applicant], select=["lastname", "uni_applicantid"]).rows
    assert [(r["uni_applicantid"], r["lastname"]) for r in again] == [(applicant, "O'Brien")]
    assert hook.query_in("leads", "uni_applicantid", [f"missing-{uid}"]).rows == []


def test_upsert_by_guid_and_conditional_headers(hook: DynamicsHook, uid: str) -> None:
    guid = str(uuid.uuid4())
    created = hook.upsert(
        "leads", guid, {"lastname": "Guid", "subject": "s", "uni_applicantid": f"G-{uid}"}, return_representation=True
    )
    assert (created.status, created.created, created.entity_id) == (201, True, guid)
    updated = hook.upsert("leads", guid, {"firstname": "Ann"})
    assert (updated.status, updated.entity_id) == (204, guid)
    with pytest.raises(DynamicsConflict) as conflict:  # create-only on an existing row
        hook.upsert("leads", guid, {"firstname": "Bob"}, if_none_match="*", record=f"G-{uid}")
    assert conflict.value.status == 412 and conflict.value.record == f"G-{uid}"
    with pytest.raises(DynamicsNotFound):  # update-only on a missing row
        hook.upsert("leads", str(uuid.uuid4()), {"firstname": "Bob"}, if_match="*")


def test_validation_error_is_typed(hook: DynamicsHook, uid: str) -> None:
    applicant = f"V-{uid}"
    with pytest.raises(DynamicsValidationError) as caught:
        hook.upsert("leads", {"uni_applicantid": applicant}, {"firstname": "x" * 60, "lastname": "L"}, record=applicant)
    err = caught.value
    assert (err.status, err.code, err.record, err.method) == (400, "0x80044331", applicant, "PATCH")
    assert err.path == f"{API_ROOT}leads(uni_applicantid='{applicant}')"
    assert "firstname" in err.message and "?" not in err.path
    assert not err.retryable


def test_delete_in_a_batch_then_already_gone(hook: DynamicsHook, uid: str) -> None:
    """The sync deletes leads (erasure, withdrawal) as ``$batch`` operations; a repeated delete answers 404."""
    applicant, lead_id = f"C-{uid}", str(uuid.uuid4())
    hook.upsert("leads", lead_id, {"lastname": "Created", "subject": "s", "uni_applicantid": applicant})

    def found() -> list[str]:
        return [r["lastname"] for r in hook.query_in("leads", "uni_applicantid", [applicant], select=["lastname"]).rows]

    assert found() == ["Created"]
    delete = BatchOperation("DELETE", entity_path("leads", lead_id), record=applicant)
    (gone,) = hook.execute_batch([delete])
    assert gone.ok and gone.status == 204
    (again,) = hook.execute_batch([delete])  # already gone: a typed "not found" the load counts as deleted
    assert again.status == 404 and isinstance(again.error, DynamicsNotFound) and again.error.record == applicant
    assert found() == []


def test_parallel_upserts_from_threads(hook: DynamicsHook, sandbox: Sandbox, uid: str) -> None:
    failures: list[BaseException] = []

    def work(n: int) -> None:
        try:
            for i in range(5):
                hook.upsert("leads", {"uni_applicantid": f"T-{uid}-{n}-{i}"}, {"lastname": f"T{n}", "subject": "t"})
        except BaseException as exc:
            failures.append(exc)

    hook.whoami()
    before = hook.stats["requests"]
    threads = [threading.Thread(target=work, args=(n,)) for n in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not failures
    assert hook.stats["requests"] - before == 40
    rows = admin(sandbox).get("/dataverse/leads")
    assert len([r for r in rows if str(r.get("uni_applicantid")).startswith(f"T-{uid}-")]) == 40


# -- answers are checked before use (a 200 is not yet data) ------------------------------------------------
LYING_200 = [
    ("html", "HtmlPage"),
    ("json_error", "ErrorObject"),
    ("empty", "EmptyBody"),
    ("cut", "InvalidJson"),
    ("wrong_encoding", "WrongEncoding"),
]
LEADS = "^/api/data/v9.2/leads$"


def fired(client: SandboxClient) -> list[int]:
    return [rule["fired"] for rule in client.get("/faults")["rules"]]


def _leads_to_find(client: SandboxClient, uid: str) -> str:
    """Two leads whose names are outside ASCII (so a cp1252 body differs), found by an email filter."""
    client.post(
        "/dataverse/leads",
        [
            {"lastname": "Müller", "firstname": "Zoë", "subject": "s", "emailaddress1": f"zoe-{uid}-{i}@example.org"}
            for i in range(2)
        ],
    )
    return f"emailaddress1 eq 'zoe-{uid}-0@example.org' or emailaddress1 eq 'zoe-{uid}-1@example.org'"


@pytest.mark.parametrize(("kind", "code"), LYING_200)
def test_query_retries_a_lying_200_inside_the_hook(
    hook: DynamicsHook, sandbox_client: SandboxClient, uid: str, kind: str, code: str
) -> None:
    flt = _leads_to_find(sandbox_client, uid)
    select = ["leadid", "lastname", "firstname", "emailaddress1"]
    expected = list(hook.query("leads", select=select, filter=flt))
    assert len(expected) == 2
    seq = sandbox_client.last_seq()
    retries = hook.stats["retries"]
    sandbox_client.add_fault(kind=kind, server="dataverse", method="GET", path=LEADS, times=1)
    assert list(hook.query("leads", select=select, filter=flt)) == expected
    assert hook.stats["retries"] == retries + 1 and fired(sandbox_client) == [1]
    faulted = [e for e in sandbox_client.requests(server="dataverse", since=seq) if e.get("fault")]
    assert len(faulted) == 1 and faulted[0]["fault"].get("changed", True), "the fault must have altered the answer"


@pytest.mark.parametrize(("kind", "code"), LYING_200)
def test_query_never_reads_a_lying_200_as_no_rows(
    make_dynamics_hook: Callable[..., DynamicsHook],
    sandbox: Sandbox,
    sandbox_client: SandboxClient,
    uid: str,
    kind: str,
    code: str,
) -> None:
    flt = _leads_to_find(sandbox_client, uid)
    hook = make_dynamics_hook(sandbox.info(), hook_kwargs={"max_retries": 2})
    hook.whoami()
    sandbox_client.add_fault(kind=kind, server="dataverse", method="GET", path=LEADS)
    with pytest.raises(DynamicsMalformedAnswer) as caught:
        list(hook.query("leads", select=["leadid", "lastname", "emailaddress1"], filter=flt))
    err = caught.value
    assert err.code == code and err.status == 200 and err.retryable
    assert (err.method, err.path) == ("GET", "/api/data/v9.2/leads")
    assert uid not in str(err) and "Müller" not in str(err) and "$filter" not in str(err)  # no query, no body
    assert fired(sandbox_client) == [3]


def test_a_collection_without_value_is_not_an_empty_result(
    hook: DynamicsHook, sandbox_client: SandboxClient, uid: str
) -> None:
    flt = _leads_to_find(sandbox_client, uid)
    sandbox_client.post("/shape-faults", {"mode": "no_value", "path": LEADS, "times": 1})
    try:
        retries = hook.stats["retries"]
        assert len(list(hook.query("leads", select=["leadid"], filter=flt))) == 2
        assert hook.stats["retries"] == retries + 1
        sandbox_client.post("/shape-faults", {"mode": "no_value", "path": LEADS})
        hook.max_retries = 1
        with pytest.raises(DynamicsMalformedAnswer, match="without 'value'") as caught:
            list(hook.query("leads", select=["leadid"], filter=flt))
        assert caught.value.code == "WrongShape" and caught.value.retryable
        assert [r["fired"] for r in sandbox_client.get("/shape-faults")["rules"]] == [1, 2]
    finally:
        sandbox_client.delete("/shape-faults")


@pytest.mark.parametrize(
    ("path", "read"),
    [
        ("WhoAmI$", lambda h: h.whoami()),
        ("EntityDefinitions", lambda h: h.get_entity_metadata("lead")),
        (LEADS, lambda h: h.query_in("leads", "uni_applicantid", ["00000000"])),
    ],
    ids=["whoami", "metadata", "lookup"],
)
@pytest.mark.parametrize("kind", ["html", "json_error", "empty"])
def test_reads_refuse_a_lying_200(
    dynamics_private: Private, path: str, read: Callable[[DynamicsHook], Any], kind: str
) -> None:
    hook, client = dynamics_private(hook_kwargs={"max_retries": 1})
    hook.whoami()
    client.add_fault(kind=kind, server="dataverse", method="GET", path=path)
    with pytest.raises(DynamicsMalformedAnswer) as caught:
        read(hook)  # never {}, no rows ("not found") or an empty metadata
    assert caught.value.retryable and caught.value.status == 200
    assert fired(client) == [2]


def test_batch_answer_that_is_not_multipart(dynamics_private: Private) -> None:
    hook, client = dynamics_private(hook_kwargs={"max_retries": 1})
    hook.whoami()
    ops = [
        BatchOperation("PATCH", entity_path("leads", {"uni_applicantid": f"B-{i}"}), {"lastname": "B", "subject": "s"})
        for i in range(2)
    ]
    client.add_fault(kind="html", server="dataverse", method="POST", path="batch", times=1)
    results = hook.execute_batch(ops)  # idempotent upserts: resent once, then the real answer
    assert all(r.ok for r in results) and hook.stats["retries"] == 1
    client.clear_faults()
    client.add_fault(kind="json_error", server="dataverse", method="POST", path="batch")
    seq = client.last_seq()
    with pytest.raises(DynamicsMalformedAnswer, match="not multipart") as caught:
        hook.execute_batch(ops, idempotent=False)  # may have run: never resent
    assert caught.value.path == "/api/data/v9.2/$batch" and caught.value.retryable
    assert len(client.requests(server="dataverse", since=seq)) == 1


def test_odata_shapes() -> None:
    from d365.hooks.answers import Where, odata_collection, read_json

    where = Where(DynamicsMalformedAnswer, "GET", "/api/data/v9.2/leads", 200)
    assert odata_collection({"value": [{"a": 1}], "@odata.nextLink": "https://x/next"}, where)["value"] == [{"a": 1}]
    for bad in ({}, {"value": None}, {"value": {}}, {"value": ["row"]}, {"value": [], "@odata.nextLink": 3}, []):
        with pytest.raises(DynamicsMalformedAnswer):
            odata_collection(bad, where)
    assert read_json('{"value": ["é"]}'.encode(), "application/json; charset=utf-8", where) == {"value": ["é"]}
    assert read_json(b'\xef\xbb\xbf{"a": 1}', "application/json", where) == {"a": 1}  # a BOM is tolerated
    for body, ctype, code in [
        ('{"a": "é"}'.encode("cp1252"), "application/json; charset=utf-8", "WrongEncoding"),
        (b"  \n", "application/json", "EmptyBody"),
        (b"<html>", "application/json", "HtmlPage"),
        (b'{"a": 1}', "text/html", "HtmlPage"),
        (b'{"a": ', "application/json", "InvalidJson"),
        (b"null", "application/json", "WrongShape"),
        (b'{"error": {"code": "0x80040216", "message": "x@example.org"}}', "application/json", "ErrorObject"),
    ]:
        with pytest.raises(DynamicsMalformedAnswer) as caught:
            read_json(body, ctype, where)
        assert caught.value.code == code and "example.org" not in str(caught.value)
