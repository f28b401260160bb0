"""``$batch``: the multipart format (build/parse, no network) and execute_batch against the sandbox."""

from __future__ import annotations

import json
import re
from collections.abc import Callable

import pytest

from d365.hooks.dynamics import DynamicsHook, entity_path
from d365.hooks.dynamics_batch import (
    BatchOperation,
    ResponsePart,
    boundary_of,
    build_batch,
    map_batch_results,
    parse_batch_response,
)
from d365.hooks.errors import DynamicsError, DynamicsThrottled, DynamicsValidationError
from sandbox import Sandbox
from sandbox.client import SandboxClient

Private = Callable[..., tuple[DynamicsHook, SandboxClient]]


def lf_to_crlf(text: str) -> bytes:
    return text.replace("\n", "\r\n").encode()


@pytest.fixture
def hook(dynamics_hook: DynamicsHook) -> DynamicsHook:
    """The shared-sandbox hook from conftest, under a short local name."""
    return dynamics_hook


@pytest.fixture
def uid(dynamics_uid: str) -> str:
    return dynamics_uid


# -- building ----------------------------------------------------------------------------------------------
def test_build_plain_parts_exact_format() -> None:
    ops = [
        BatchOperation("PATCH", "leads(uni_applicantid='A-1')", {"lastname": "Lee", "firstname": "Zoë"}),
        BatchOperation("GET", "leads?$select=fullname&$filter=uni_applicantid eq 'A-1'"),
    ]
    plan, body = build_batch(ops, boundary="batch_b1")
    assert plan.content_type == 'multipart/mixed; boundary="batch_b1"'
    assert b"\n" not in body.replace(b"\r\n", b"")  # CRLF only
    text = body.decode("utf-8")
    assert text == (
        "--batch_b1\r\n"
        "Content-Type: application/http\r\n"
        "Content-Transfer-Encoding: binary\r\n"
        "Content-ID: 1\r\n"
        "\r\n"
        "PATCH /api/data/v9.2/leads(uni_applicantid='A-1') HTTP/1.1\r\n"
        "Content-Type: application/json; type=entry\r\n"
        "\r\n"
        '{"lastname":"Lee","firstname":"Zoë"}\r\n'
        "--batch_b1\r\n"
        "Content-Type: application/http\r\n"
        "Content-Transfer-Encoding: binary\r\n"
        "Content-ID: 2\r\n"
        "\r\n"
        "GET /api/data/v9.2/leads?$select=fullname&$filter=uni_applicantid%20eq%20'A-1' HTTP/1.1\r\n"
        "\r\n"
        "\r\n"
        "--batch_b1--\r\n"
    )


def test_build_changeset_per_write_operation() -> None:
    ops = [
        BatchOperation("PATCH", "leads(uni_applicantid='A-1')", {"lastname": "A"}, {"If-Match": "*"}),
        BatchOperation("GET", "WhoAmI"),
        BatchOperation("DELETE", "leads(0f8fad5b-d9cb-469f-a165-70867728950e)"),
    ]
    plan, body = build_batch(ops, changeset_per_operation=True, boundary="batch_b2")
    assert plan.changesets == [True, False, True]
    text = body.decode()
    changesets = re.findall(r'Content-Type: multipart/mixed; boundary="(changeset_[0-9a-f-]+)"', text)
    assert len(changesets) == 2 and changesets[0] != changesets[1]
    for cs in changesets:
        assert text.count(f"--{cs}\r\n") == 1 and text.count(f"--{cs}--\r\n") == 1
    assert "If-Match: *\r\n" in text
    # the GET sits outside any change set
    get_at = text.index("GET /api/data/v9.2/WhoAmI")
    assert text.rfind("--batch_b2\r\nContent-Type: application/http", 0, get_at) > text.index(f"--{changesets[0]}--")


def test_build_limits_and_bad_input() -> None:
    with pytest.raises(ValueError, match="1000"):
        build_batch([BatchOperation("GET", "WhoAmI")] * 1001)
    with pytest.raises(ValueError):
        build_batch([])
    with pytest.raises(ValueError):
        build_batch([BatchOperation("GET", "WhoAmI", headers={"X-Bad": "a\r\nInjected: 1"})])
    with pytest.raises(ValueError):
        build_batch([BatchOperation("MERGE", "leads")])


# -- parsing ------------------------------------------------------------------------------------------------
PLAIN_RESPONSE = """--batchresponse_01346794-f2e2-4d45-8cc2-f97e09fe8916
Content-Type: application/http
Content-Transfer-Encoding: binary

HTTP/1.1 204 No Content
OData-Version: 4.0
Location: https://org.example/api/data/v9.2/tasks(d31ba648-c592-ed11-aad1-000d3a993550)
OData-EntityId: https://org.example/api/data/v9.2/tasks(d31ba648-c592-ed11-aad1-000d3a993550)


--batchresponse_01346794-f2e2-4d45-8cc2-f97e09fe8916
Content-Type: application/http
Content-Transfer-Encoding: binary

HTTP/1.1 200 OK
Content-Type: application/json; odata.metadata=minimal; odata.streaming=true
OData-Version: 4.0

{"@odata.context":"https://org.example/api/data/v9.2/$metadata#tasks(subject)","value":[{"subject":"Zoë's"}]}
--batchresponse_01346794-f2e2-4d45-8cc2-f97e09fe8916--
"""

CHANGESET_RESPONSE = """--batchresponse_f27ef42d
Content-Type: multipart/mixed; boundary=changesetresponse_64cc3fff

--changesetresponse_64cc3fff
Content-Type: application/http
Content-Transfer-Encoding: binary
Content-ID: 1

HTTP/1.1 204 No Content
OData-Version: 4.0


--changesetresponse_64cc3fff--
--batchresponse_f27ef42d
Content-Type: multipart/mixed; boundary="changesetresponse_77"

--changesetresponse_77
Content-Type: application/http
Content-Transfer-Encoding: binary
Content-ID: 3

HTTP/1.1 400 Bad Request
REQ_ID: 5ecd1cb3-1730-4ffc-909c-d44c22270026
Content-Type: application/json; odata.metadata=minimal

{"error":{"code":"0x80044331","message":"A validation error occurred."}}
--changesetresponse_77--
--batchresponse_f27ef42d--
"""


@pytest.mark.parametrize("crlf", [True, False], ids=["crlf", "lf-only"])
def test_parse_plain_response(crlf: bool) -> None:
    body = lf_to_crlf(PLAIN_RESPONSE) if crlf else PLAIN_RESPONSE.encode()
    parts = parse_batch_response("multipart/mixed; boundary=batchresponse_01346794-f2e2-4d45-8cc2-f97e09fe8916", body)
    assert [p.status for p in parts] == [204, 200]
    assert (
        parts[0]
        .header(
            "odata-entityid",
        )
        .endswith("tasks(d31ba648-c592-ed11-aad1-000d3a993550)")
    )
    assert parts[0].json() is None and parts[0].reason == "No Content"
    assert parts[1].json()["value"] == [{"subject": "Zoë's"}]
    assert [p.top_index for p in parts] == [0, 1] and parts[0].changeset is None


@pytest.mark.parametrize("crlf", [True, False], ids=["crlf", "lf-only"])
def test_parse_changeset_response_quoted_and_bare(crlf: bool) -> None:
    body = lf_to_crlf(CHANGESET_RESPONSE) if crlf else CHANGESET_RESPONSE.encode()
    parts = parse_batch_response('multipart/mixed; boundary="batchresponse_f27ef42d"', body)
    assert [(p.status, p.content_id, p.changeset) for p in parts] == [(204, "1", 0), (400, "3", 1)]
    assert parts[1].json()["error"]["code"] == "0x80044331"


def test_boundary_parsing() -> None:
    assert boundary_of('multipart/mixed; boundary="batch_1"') == "batch_1"
    assert boundary_of("multipart/mixed;boundary=batchresponse_2") == "batchresponse_2"
    assert boundary_of("multipart/mixed; charset=utf-8; BOUNDARY = x_3 ") == "x_3"
    assert boundary_of("application/json") is None
    with pytest.raises(ValueError):
        parse_batch_response("application/json", b"{}")


def test_parse_tolerates_missing_blank_lines_and_preamble() -> None:
    body = (
        b"preamble\r\n--b\r\nContent-Type: application/http\r\n\r\nHTTP/1.1 204 No Content\r\n--b\r\n"
        b'Content-Type: application/http\r\n\r\nHTTP/1.1 200 OK\r\n\r\n{"a":1}\r\n--b--\r\nepilogue'
    )
    parts = parse_batch_response("multipart/mixed; boundary=b", body)
    assert [(p.status, p.json()) for p in parts] == [(204, None), (200, {"a": 1})]


# -- mapping answers to operations -------------------------------------------------------------------------
def _part(
    status: int, content_id: str | None, top: int, changeset: int | None = None, body: bytes = b""
) -> ResponsePart:
    return ResponsePart(status, "", {}, body, content_id=content_id, changeset=changeset, top_index=top)


def test_map_stopped_batch() -> None:
    ops = [BatchOperation("PATCH", f"leads({i})", {}, record=f"r{i}") for i in range(4)]
    plan, _ = build_batch(ops)
    error_body = json.dumps({"error": {"code": "0x80044331", "message": "too long"}}).encode()
    results = map_batch_results(ops, plan, [_part(400, "3", 0, body=error_body)], stopped=True)
    assert [(r.status, r.executed, r.ok) for r in results] == [
        (None, True, True),
        (None, True, True),
        (400, True, False),
        (None, False, False),
    ]
    err = results[2].error
    assert isinstance(err, DynamicsValidationError) and err.record == "r2" and err.path == "leads(2)"
    with pytest.raises(DynamicsError):  # a stopping failure that names no operation cannot be mapped
        map_batch_results(ops, plan, [_part(400, None, 0, body=error_body)], stopped=True)


def test_map_in_order_without_content_ids_and_rolled_back_changesets() -> None:
    ops = [BatchOperation("PATCH", f"leads({i})", {}) for i in range(3)]
    plan, _ = build_batch(ops)
    parts = [
        _part(204, None, 0),
        _part(429, None, 1, body=b'{"error":{"code":"0x80072322","message":"x"}}'),
        _part(204, None, 2),
    ]
    results = map_batch_results(ops, plan, parts, stopped=False)
    assert [r.status for r in results] == [204, 429, 204]
    assert isinstance(results[1].error, DynamicsThrottled)
    # a change-set answer lacking an operation means it was rolled back: not executed
    results = map_batch_results(ops, plan, [_part(204, "1", 0), _part(204, "3", 2)], stopped=False)
    assert [(r.status, r.executed) for r in results] == [(204, True), (None, False), (204, True)]


# -- against the sandbox -------------------------------------------------------------------------------------
def _upserts(prefix: str, n: int) -> list[BatchOperation]:
    """Upserts by alternate key, built as a caller builds its requests: method, URL, body, record."""
    return [
        BatchOperation(
            "PATCH",
            entity_path("leads", {"uni_applicantid": f"{prefix}-{i}"}),
            {"lastname": f"O'Connor-Łukasiewicz 李 {i}", "subject": "Batch"},
            record=f"{prefix}-{i}",
        )
        for i in range(n)
    ]


def _stored_ids(sandbox: Sandbox, prefix: str) -> dict[str, dict]:
    rows = SandboxClient(sandbox.info()).get("/dataverse/leads")
    return {r["uni_applicantid"]: r for r in rows if str(r.get("uni_applicantid", "")).startswith(prefix + "-")}


def test_batch_of_25_upserts(hook: DynamicsHook, sandbox: Sandbox, uid: str) -> None:
    ops = _upserts(f"B25{uid}", 25)
    before = hook.stats["requests"]
    results = hook.execute_batch(ops)
    assert [r.status for r in results] == [204] * 25 and all(r.ok for r in results)
    assert hook.stats["requests"] - before in (1, 2)  # one $batch (+ the discovery probe on first use)
    stored = _stored_ids(sandbox, f"B25{uid}")
    assert len(stored) == 25
    assert stored[f"B25{uid}-7"]["lastname"] == "O'Connor-Łukasiewicz 李 7"
    # again: all updates now, still one request
    assert all(r.ok for r in hook.execute_batch(ops))
    assert len(_stored_ids(sandbox, f"B25{uid}")) == 25


@pytest.mark.parametrize("changesets", [False, True], ids=["plain", "changeset-per-op"])
def test_batch_continue_on_error(hook: DynamicsHook, sandbox: Sandbox, uid: str, changesets: bool) -> None:
    prefix = f"BC{uid}"
    ops = _upserts(prefix, 6)
    assert ops[3].body is not None
    ops[3].body["firstname"] = "y" * 60
    results = hook.execute_batch(ops, continue_on_error=True, changeset_per_operation=changesets)
    assert [r.status for r in results] == [204, 204, 204, 400, 204, 204]
    err = results[3].error
    assert isinstance(err, DynamicsValidationError) and err.code == "0x80044331" and err.record == f"{prefix}-3"
    assert sorted(_stored_ids(sandbox, prefix)) == sorted(f"{prefix}-{i}" for i in (0, 1, 2, 4, 5))


@pytest.mark.parametrize("changesets", [False, True], ids=["plain", "changeset-per-op"])
def test_batch_stops_on_error(hook: DynamicsHook, sandbox: Sandbox, uid: str, changesets: bool) -> None:
    prefix = f"BS{uid}"
    ops = _upserts(prefix, 6)
    assert ops[2].body is not None
    ops[2].body["firstname"] = "y" * 60
    results = hook.execute_batch(ops, continue_on_error=False, changeset_per_operation=changesets)
    assert [(r.status, r.executed) for r in results] == [
        (None, True),
        (None, True),
        (400, True),
        (None, False),
        (None, False),
        (None, False),
    ]
    assert isinstance(results[2].error, DynamicsValidationError) and results[2].error.record == f"{prefix}-2"
    assert all(r.error is None for i, r in enumerate(results) if i != 2)
    assert sorted(_stored_ids(sandbox, prefix)) == [f"{prefix}-0", f"{prefix}-1"]
    # the caller resends what did not run
    retry = hook.execute_batch([r.operation for r in results if not r.executed], continue_on_error=False)
    assert all(r.ok for r in retry)
    assert len(_stored_ids(sandbox, prefix)) == 5


def test_batch_with_reads_and_representation(hook: DynamicsHook, uid: str) -> None:
    key = f"BR{uid}"
    ops = [
        BatchOperation(
            "PATCH",
            f"leads(uni_applicantid='{key}')?$select=leadid",
            {"lastname": "Read Back", "subject": "s"},
            {"Prefer": "return=representation"},
        ),
        BatchOperation("GET", f"leads?$select=lastname&$filter=uni_applicantid eq '{key}'"),
        BatchOperation("GET", "WhoAmI"),
    ]
    results = hook.execute_batch(ops, changeset_per_operation=True)
    assert results[0].status == 201 and results[0].body["leadid"]
    assert results[1].status == 200 and results[1].body["value"][0]["lastname"] == "Read Back"
    assert results[2].body["UserId"]


def test_batch_too_many_operations(hook: DynamicsHook) -> None:
    with pytest.raises(ValueError, match="1000"):
        hook.execute_batch([BatchOperation("GET", "WhoAmI")] * 1001)
    assert hook.execute_batch([]) == []


@pytest.mark.slow  # over a second (real Retry-After waits, sleeps or a subprocess): make test runs it
def test_throttled_batch_is_retried(dynamics_private: Private) -> None:
    hook, client = dynamics_private()
    hook.whoami()
    seq = client.last_seq()
    client.add_fault(kind="status", status=429, retry_after=1, server="dataverse", path=r"\$batch", nth=1)
    results = hook.execute_batch(_upserts("T", 3))
    assert all(r.ok for r in results)
    statuses = [e["status"] for e in client.requests(server="dataverse", since=seq)]
    assert statuses == [429, 200]
    assert len(client.get("/dataverse/leads")) == 3


def test_non_idempotent_batch_is_not_resent_after_503(dynamics_private: Private) -> None:
    hook, client = dynamics_private()
    hook.whoami()
    client.add_fault(kind="status", status=503, server="dataverse", path=r"\$batch", nth=1)
    with pytest.raises(DynamicsError) as caught:
        hook.execute_batch([BatchOperation("POST", "leads", {"lastname": "X", "subject": "s"})], idempotent=False)
    assert caught.value.status == 503
    assert hook.stats["retries"] == 0
    # an idempotent batch is resent
    client.add_fault(kind="status", status=503, server="dataverse", path=r"\$batch", nth=1)
    assert all(r.ok for r in hook.execute_batch(_upserts("I", 2), idempotent=True))
    assert hook.stats["retries"] == 1
