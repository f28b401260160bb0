"""$batch: multipart parsing and serialization, change-set atomicity, Content-ID references, error modes.

The first half runs the batch engine against a tiny in-memory fake service (no HTTP); the second
half drives the real sandbox over verified TLS with an MSAL token.
"""

from __future__ import annotations

import asyncio
import email
import email.policy
import json
import re
import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from types import SimpleNamespace
from typing import Any

import pytest
import requests
from dvhelpers import authed_session

from sandbox.client import SandboxClient
from sandbox.dataverse.batch import (
    MAX_OPERATIONS,
    BatchExecutor,
    BatchRequestError,
    validate,
    wants_continue_on_error,
)
from sandbox.dataverse.multipart import (
    BatchFormatError,
    ChangeSetPart,
    HttpRequestPart,
    boundary_of,
    parse_batch,
)

ORG = "https://org.example"
ROOT = f"{ORG}/api/data/v9.2"

# -- helpers: build request bodies and read response bodies ------------------------------------


def op(
    method: str, url: str, body: Any = None, headers: Mapping[str, str] | None = None, content_id: str | None = None
):
    return {"method": method, "url": url, "body": body, "headers": dict(headers or {}), "content_id": content_id}


def _encode_op(o: dict[str, Any], nl: str) -> str:
    lines = ["Content-Type: application/http", "Content-Transfer-Encoding: binary"]
    if o["content_id"] is not None:
        lines.append(f"Content-ID: {o['content_id']}")
    lines += ["", f"{o['method']} {o['url']} HTTP/1.1"]
    headers = dict(o["headers"])
    if o["body"] is not None:
        headers.setdefault("Content-Type", "application/json; type=entry")
    lines += [f"{k}: {v}" for k, v in headers.items()]
    lines.append("")
    body = "" if o["body"] is None else (o["body"] if isinstance(o["body"], str) else json.dumps(o["body"]))
    lines.append(body)
    return nl.join(lines)


def build_batch(items: list[Any], *, nl: str = "\r\n", quote: bool = True) -> tuple[str, bytes]:
    """items: op dicts (top level) or lists of op dicts (change sets). Returns (content type, body)."""
    boundary = f"batch_{uuid.uuid4()}"
    chunks: list[str] = []
    for item in items:
        if isinstance(item, list):
            cs = f"changeset_{uuid.uuid4()}"
            inner = "".join(f"--{cs}{nl}{_encode_op(o, nl)}{nl}" for o in item) + f"--{cs}--{nl}"
            chunks.append(f"--{boundary}{nl}Content-Type: multipart/mixed; boundary={cs}{nl}{nl}{inner}")
        else:
            chunks.append(f"--{boundary}{nl}{_encode_op(item, nl)}{nl}")
    body = "".join(chunks) + f"--{boundary}--{nl}"
    b = f'"{boundary}"' if quote else boundary
    return f"multipart/mixed; boundary={b}", body.encode()


@dataclass
class Part:
    status: int
    reason: str
    headers: dict[str, str]
    body: bytes
    content_id: str | None = None


def parse_response(content_type: str, body: bytes) -> list[Part | list[Part]]:
    """Read a batch response with the stdlib email parser, checking CRLF and boundary shapes on the way."""
    assert re.fullmatch(r"multipart/mixed; boundary=batchresponse_[0-9a-f-]{36}", content_type), content_type
    assert b"\n" not in body.replace(b"\r\n", b""), "bare LF in the batch response"
    # Nested change-set boundaries are unquoted on the wire (the email parser would hide that).
    for line in re.findall(rb"Content-Type: multipart/mixed[^\r]*", body):
        assert re.fullmatch(rb"Content-Type: multipart/mixed; boundary=changesetresponse_[0-9a-f-]{36}", line), line
    msg = email.message_from_bytes(
        b"Content-Type: " + content_type.encode() + b"\r\n\r\n" + body, policy=email.policy.HTTP
    )
    assert msg.is_multipart()
    out: list[Part | list[Part]] = []
    for sub in msg.get_payload():
        if sub.get_content_type() == "multipart/mixed":
            out.append([_http_part(p) for p in sub.get_payload()])
        else:
            out.append(_http_part(sub))
    return out


def _http_part(sub: email.message.Message) -> Part:
    assert sub["Content-Type"] == "application/http"
    assert sub["Content-Transfer-Encoding"] == "binary"
    raw = sub.get_payload(decode=True)
    head, _, body = raw.partition(b"\r\n\r\n")
    lines = head.decode().split("\r\n")
    m = re.fullmatch(r"HTTP/1\.1 (\d{3}) (.+)", lines[0])
    assert m, lines[0]
    headers = dict(line.split(": ", 1) for line in lines[1:])
    return Part(int(m.group(1)), m.group(2), headers, body.rstrip(b"\r\n"), sub["Content-ID"])


def flat(parts: list[Part | list[Part]]) -> list[Part]:
    return [p for item in parts for p in (item if isinstance(item, list) else [item])]


# -- a tiny fake of DataverseService ------------------------------------------------------------


@dataclass
class FakeSub:
    status: int
    headers: dict[str, str]
    body: bytes | None


class FakeTxn:
    def __init__(self, svc: FakeService) -> None:
        self.svc = svc
        self.snapshot = dict(svc.leads)
        self.state = "open"

    def rollback(self) -> None:
        self.svc.leads = dict(self.snapshot)
        self.state = "rolled back"

    def commit(self) -> None:
        self.state = "committed"


class FakeService:
    """Leads only: POST leads, PATCH/GET/DELETE leads(<id>), GET leads; lastname max 50 chars."""

    def __init__(self) -> None:
        self.leads: dict[str, dict[str, Any]] = {}
        self.calls: list[tuple[str, str, dict[str, str], bytes, Any]] = []
        self.txns: list[FakeTxn] = []

    def begin(self) -> FakeTxn:
        txn = FakeTxn(self)
        self.txns.append(txn)
        return txn

    def _err(self, status: int, code: str, message: str) -> FakeSub:
        return FakeSub(status, {"Content-Type": "application/json; odata.metadata=minimal"}, _json(code, message))

    def dispatch(self, method, url, headers, body, caller, txn=None):  # type: ignore[no-untyped-def]
        self.calls.append((method, url, dict(headers), body, txn))
        path = url.split("/api/data/v9.2", 1)[-1]
        m = re.fullmatch(r"/leads(?:\(([0-9a-f-]{36})\))?(/\w+)?", path.split("?", 1)[0])
        if m is None:
            return self._err(404, "0x80060888", f"Resource not found for the segment '{path}'.")
        lead_id, prop = m.group(1), m.group(2)
        data = json.loads(body) if body else {}
        if len(data.get("lastname", "")) > 50:
            return self._err(400, "0x80044331", "A validation error occurred.  The length of the 'lastname' ...")
        if method == "POST" and lead_id is None:
            new_id = str(uuid.uuid4())
            self.leads[new_id] = data
            loc = f"{ROOT}/leads({new_id})"
            return FakeSub(204, {"OData-Version": "4.0", "OData-EntityId": loc}, None)
        if method == "PATCH" and lead_id:
            self.leads.setdefault(lead_id, {}).update(data)
            return FakeSub(204, {"OData-Version": "4.0", "OData-EntityId": f"{ROOT}/leads({lead_id})"}, None)
        if method == "PUT" and lead_id and prop:
            if lead_id not in self.leads:
                return self._err(404, "0x80040217", f"lead With Id = {lead_id} Does Not Exist")
            self.leads[lead_id][prop[1:]] = data["value"]
            return FakeSub(204, {"OData-Version": "4.0"}, None)
        if method == "GET":
            rows = [{"leadid": k, **v} for k, v in self.leads.items() if lead_id in (None, k)]
            return FakeSub(
                200,
                {"Content-Type": "application/json; odata.metadata=minimal", "OData-Version": "4.0"},
                json.dumps({"value": rows}).encode(),
            )
        return self._err(405, "0x80060888", f"The requested resource does not support http method '{method}'.")


def _json(code: str, message: str) -> bytes:
    return json.dumps({"error": {"code": code, "message": message}}).encode()


def run(svc: FakeService, items: list[Any], *, continue_on_error: bool = False, **kw: Any):  # type: ignore[no-untyped-def]
    content_type, body = build_batch(items, **kw)
    parts = parse_batch(content_type, body)
    validate(parts)
    executor = BatchExecutor(svc, "caller", org_url=ORG, continue_on_error=continue_on_error)
    outcome = asyncio.run(executor.run(parts))
    return outcome, parse_response(f"multipart/mixed; boundary={outcome.boundary}", outcome.body)


def lead(last: str = "Lee", **extra: Any) -> dict[str, Any]:
    return {"firstname": "Ann", "lastname": last, **extra}


# -- unit tests: parsing -------------------------------------------------------------------------


def test_parse_reference_request_with_changeset_and_get() -> None:
    body = (
        b"--batch_AAA\r\n"
        b'Content-Type: multipart/mixed; boundary="changeset_BBB"\r\n'
        b"\r\n"
        b"--changeset_BBB\r\n"
        b"Content-Type: application/http\r\n"
        b"Content-Transfer-Encoding: binary\r\n"
        b"Content-ID: 1\r\n"
        b"\r\n"
        b"PATCH /api/data/v9.2/leads(uni_applicantid='A-1') HTTP/1.1\r\n"
        b"Content-Type: application/json; type=entry\r\n"
        b"If-Match: *\r\n"
        b"\r\n"
        b'{"firstname":"Ann"}\r\n'
        b"--changeset_BBB--\r\n"
        b"\r\n"
        b"--batch_AAA\r\n"
        b"Content-Type: application/http\r\n"
        b"Content-Transfer-Encoding: binary\r\n"
        b"\r\n"
        b"GET https://org.example/api/data/v9.2/leads?$select=fullname&$filter=uni_applicantid eq 'A-1' HTTP/1.1\r\n"
        b"\r\n"
        b"\r\n"
        b"--batch_AAA--\r\n"
    )
    parts = parse_batch('multipart/mixed; boundary="batch_AAA"', body)
    assert len(parts) == 2
    cs, get = parts
    assert isinstance(cs, ChangeSetPart) and isinstance(get, HttpRequestPart)
    (patch,) = cs.requests
    assert (patch.method, patch.url, patch.content_id) == ("PATCH", "/api/data/v9.2/leads(uni_applicantid='A-1')", "1")
    assert patch.headers.get("if-match") == "*"
    assert patch.body == b'{"firstname":"Ann"}'
    assert get.method == "GET" and get.url.endswith("$filter=uni_applicantid%20eq%20'A-1'")
    assert get.body == b"" and get.headers.items == []
    assert validate(parts) == 2


@pytest.mark.parametrize("nl", ["\r\n", "\n"])
@pytest.mark.parametrize("quote", [True, False])
def test_parse_tolerates_lf_and_unquoted_boundaries(nl: str, quote: bool) -> None:
    items = [op("POST", "/api/data/v9.2/leads", lead()), [op("POST", "leads", lead("X"), content_id="a")]]
    content_type, body = build_batch(items, nl=nl, quote=quote)
    parts = parse_batch(content_type, body)
    assert isinstance(parts[0], HttpRequestPart) and json.loads(parts[0].body) == lead()
    assert isinstance(parts[1], ChangeSetPart) and parts[1].requests[0].content_id == "a"


def test_boundary_of() -> None:
    assert boundary_of('multipart/mixed; boundary="batch_1"') == "batch_1"
    assert boundary_of("multipart/mixed;boundary=batch_2; charset=utf-8") == "batch_2"
    assert boundary_of("Multipart/Mixed; BOUNDARY=b3") == "b3"
    assert boundary_of("application/json") is None
    assert boundary_of("multipart/mixed") is None


@pytest.mark.parametrize(
    ("content_type", "body", "fragment"),
    [
        ("application/json", b"{}", "multipart/mixed"),
        ("multipart/mixed", b"--x\r\n", "boundary"),
        ('multipart/mixed; boundary="b"', b"no delimiters here", "does not contain the boundary"),
        (
            'multipart/mixed; boundary="b"',
            b"--b\r\nContent-Type: application/http\r\n\r\nGET /api/data/v9.2/leads HTTP/1.1\r\n\r\n",
            "closing delimiter",
        ),
        ('multipart/mixed; boundary="b"', b"--b\r\nContent-Type: text/plain\r\n\r\nhello\r\n--b--", "not supported"),
        (
            'multipart/mixed; boundary="b"',
            b"--b\r\nContent-Type: application/http\r\n\r\nnot http\r\n--b--",
            "request line",
        ),
        ('multipart/mixed; boundary="b"', b"--b\r\n\r\nGET /x HTTP/1.1\r\n\r\n--b--", "Content-Type"),
    ],
)
def test_malformed_bodies_are_rejected(content_type: str, body: bytes, fragment: str) -> None:
    with pytest.raises(BatchFormatError, match=re.escape(fragment)):
        parse_batch(content_type, body)


def test_nested_changeset_is_rejected() -> None:
    body = (
        b"--b\r\nContent-Type: multipart/mixed; boundary=c1\r\n\r\n"
        b"--c1\r\nContent-Type: multipart/mixed; boundary=c2\r\n\r\n--c2--\r\n--c1--\r\n--b--\r\n"
    )
    with pytest.raises(BatchFormatError, match="change set cannot contain"):
        parse_batch("multipart/mixed; boundary=b", body)


def test_validation_rules() -> None:
    get_in_cs = parse_batch(*build_batch([[op("GET", "/api/data/v9.2/leads")]]))
    with pytest.raises(BatchRequestError, match="GET requests are not allowed inside a change set"):
        validate(get_in_cs)
    nested = parse_batch(*build_batch([op("POST", "/api/data/v9.2/$batch", "x")]))
    with pytest.raises(BatchRequestError, match="Nested batch"):
        validate(nested)
    ok = parse_batch(*build_batch([[op("POST", "leads", lead()) for _ in range(500)], *[op("GET", "leads")] * 500]))
    assert validate(ok) == MAX_OPERATIONS
    too_many = parse_batch(
        *build_batch([[op("POST", "leads", lead()) for _ in range(501)], *[op("GET", "leads")] * 500])
    )
    with pytest.raises(BatchRequestError, match=r"1001 requests.*maximum of 1000"):
        validate(too_many)


def test_prefer_parsing() -> None:
    assert wants_continue_on_error("odata.continue-on-error")
    assert wants_continue_on_error('odata.include-annotations="*", odata.continue-on-error')
    assert wants_continue_on_error("continue-on-error=true")
    assert not wants_continue_on_error("odata.continue-on-error=false")
    assert not wants_continue_on_error("return=representation")
    assert not wants_continue_on_error(None)


# -- unit tests: execution against the fake service ---------------------------------------------


def test_all_parts_succeed_and_serialize_like_the_reference() -> None:
    svc = FakeService()
    outcome, parts = run(svc, [op("POST", "/api/data/v9.2/leads", lead()), op("GET", f"{ROOT}/leads")])
    assert outcome.status == 200 and outcome.operations == 2 and outcome.part_statuses == [204, 200]
    create, get = parts
    assert isinstance(create, Part) and isinstance(get, Part)
    assert (create.status, create.reason) == (204, "No Content")
    assert list(create.headers) == ["OData-Version", "Location", "OData-EntityId"]
    assert create.headers["Location"] == create.headers["OData-EntityId"]
    assert re.fullmatch(rf"{re.escape(ROOT)}/leads\([0-9a-f-]{{36}}\)", create.headers["Location"])
    assert create.body == b""
    assert (get.status, get.reason) == (200, "OK")
    assert json.loads(get.body)["value"][0]["lastname"] == "Lee"
    # Byte-level shape: blank line after the part headers, CRLF before each delimiter, closing delimiter.
    text = outcome.body.decode()
    b = outcome.boundary
    assert text.startswith(f"--{b}\r\nContent-Type: application/http\r\nContent-Transfer-Encoding: binary\r\n\r\n")
    assert "HTTP/1.1 204 No Content\r\nOData-Version: 4.0\r\nLocation: " in text
    assert f"\r\n\r\n\r\n--{b}\r\n" in text  # 204: empty body between the header block and the delimiter
    assert text.endswith(f"}}\r\n--{b}--\r\n")


def test_first_failure_stops_without_continue_on_error() -> None:
    svc = FakeService()
    items = [op("POST", "leads", lead("A")), op("POST", "leads", lead("x" * 51)), op("POST", "leads", lead("C"))]
    outcome, parts = run(svc, items)
    assert outcome.status == 400 and outcome.operations == 2 and outcome.part_statuses == [204, 400]
    (only,) = parts
    assert isinstance(only, Part) and (only.status, only.reason) == (400, "Bad Request")
    assert list(only.headers) == ["REQ_ID", "Content-Type", "OData-Version"]
    assert only.headers["Content-Type"] == "application/json; odata.metadata=minimal"
    uuid.UUID(only.headers["REQ_ID"])
    assert json.loads(only.body)["error"]["code"] == "0x80044331"
    assert sorted(v["lastname"] for v in svc.leads.values()) == ["A"]  # C never ran


def test_continue_on_error_answers_every_part() -> None:
    svc = FakeService()
    items = [op("POST", "leads", lead("A")), op("POST", "leads", lead("x" * 51)), op("POST", "leads", lead("C"))]
    outcome, parts = run(svc, items, continue_on_error=True)
    assert outcome.status == 200 and outcome.part_statuses == [204, 400, 204]
    assert [p.status for p in flat(parts)] == [204, 400, 204]
    assert sorted(v["lastname"] for v in svc.leads.values()) == ["A", "C"]


def test_changeset_rolls_back_and_reports_only_the_failure() -> None:
    svc = FakeService()
    cs = [op("POST", "leads", lead("A"), content_id="1"), op("POST", "leads", lead("x" * 60), content_id="2")]
    outcome, parts = run(svc, [cs, op("POST", "leads", lead("Z"))])
    assert outcome.status == 400 and outcome.part_statuses == [204, 400]
    (changeset,) = parts
    assert isinstance(changeset, list) and len(changeset) == 1
    assert changeset[0].status == 400 and changeset[0].content_id == "2"
    assert svc.leads == {} and svc.txns[0].state == "rolled back"

    svc = FakeService()
    outcome, parts = run(svc, [cs, op("POST", "leads", lead("Z"))], continue_on_error=True)
    assert outcome.status == 200
    assert isinstance(parts[0], list) and [p.status for p in parts[0]] == [400]
    assert isinstance(parts[1], Part) and parts[1].status == 204
    assert [v["lastname"] for v in svc.leads.values()] == ["Z"]


def test_changeset_success_echoes_content_ids_and_resolves_references() -> None:
    svc = FakeService()
    cs = [
        op("POST", "leads", lead("A"), content_id="1"),
        op("PATCH", "$1", {"firstname": "Bea"}, content_id="2"),
        op("PUT", "$1/lastname", {"value": "Lowe"}, content_id="3"),
        op("POST", "leads", {"lastname": "B", "parent@odata.bind": "$1", "@odata.id": "$2"}, content_id="4"),
    ]
    outcome, parts = run(svc, [cs])
    assert outcome.status == 200, parts
    (changeset,) = parts
    assert isinstance(changeset, list)
    assert [(p.status, p.content_id) for p in changeset] == [(204, "1"), (204, "2"), (204, "3"), (204, "4")]
    first_url = changeset[0].headers["OData-EntityId"]
    first_id = re.search(r"\(([0-9a-f-]{36})\)", first_url).group(1)  # type: ignore[union-attr]
    assert svc.leads[first_id] == {"firstname": "Bea", "lastname": "Lowe"}
    urls = [c[1] for c in svc.calls]
    assert urls[1] == first_url and urls[2] == first_url + "/lastname"
    body = json.loads(svc.calls[3][3])
    assert body["parent@odata.bind"] == f"/leads({first_id})" and body["@odata.id"] == first_url
    assert all(c[4] is svc.txns[0] for c in svc.calls) and svc.txns[0].state == "committed"


def test_undeclared_content_id_reference() -> None:
    svc = FakeService()
    cs = [op("POST", "leads", lead("A"), content_id="1"), op("PATCH", "$2", {"firstname": "x"}, content_id="2")]
    outcome, parts = run(svc, [cs])
    assert outcome.status == 400
    (changeset,) = parts
    assert isinstance(changeset, list)
    err = json.loads(changeset[0].body)["error"]
    assert err["message"] == "Content-ID Reference: '$2' does not exist in the batch context."
    assert svc.leads == {}
    # References do not cross change-set boundaries, and top-level parts cannot use them either.
    outcome, _ = run(FakeService(), [[op("POST", "leads", lead(), content_id="1")], op("PATCH", "$1", {"a": 1})])
    assert outcome.status == 400 and outcome.part_statuses == [204, 400]


def test_outer_mscrm_headers_are_inherited_unless_the_part_overrides() -> None:
    svc = FakeService()
    content_type, body = build_batch(
        [op("POST", "leads", lead()), op("POST", "leads", lead(), headers={"MSCRM.SuppressDuplicateDetection": "true"})]
    )
    executor = BatchExecutor(
        svc,
        "caller",
        org_url=ORG,
        continue_on_error=False,
        inherited_headers={"MSCRM.SuppressDuplicateDetection": "false"},
    )
    asyncio.run(executor.run(parse_batch(content_type, body)))
    assert [c[2]["MSCRM.SuppressDuplicateDetection"] for c in svc.calls] == ["false", "true"]


# -- over the wire: the real sandbox ------------------------------------------------------------


@pytest.fixture(scope="module")
def web(sandbox: Any) -> Any:
    """(session, web API URL, admin client) for the shared sandbox, with an MSAL token."""
    http = authed_session(sandbox)
    return SimpleNamespace(http=http, api=sandbox.endpoints.web_api_url, admin=SandboxClient(sandbox.info()))


def post_batch(web: Any, items: list[Any], *, continue_on_error: bool = False) -> requests.Response:
    content_type, body = build_batch(items)
    headers = {"Content-Type": content_type}
    if continue_on_error:
        headers["Prefer"] = "odata.continue-on-error"
    return web.http.post(f"{web.api}/$batch", data=body, headers=headers)


def tag() -> str:
    return "bt" + uuid.uuid4().hex[:10]


def new_lead(prefix: str, n: int | str, **extra: Any) -> dict[str, Any]:
    return {"firstname": "Ann", "lastname": f"{prefix}-{n}", "subject": "Batch test", **extra}


def stored(web: Any, prefix: str) -> dict[str, dict[str, Any]]:
    """Leads whose lastname starts with prefix, by lastname (read through the Web API)."""
    r = web.http.get(
        f"{web.api}/leads",
        params={"$select": "leadid,firstname,lastname", "$filter": f"startswith(lastname,'{prefix}')"},
    )
    assert r.status_code == 200, r.text
    return {row["lastname"]: row for row in r.json()["value"] if row["lastname"].startswith(prefix)}


def test_wire_creates_and_upserts_all_succeed(web: Any) -> None:
    p = tag()
    ids = [str(uuid.uuid4()) for _ in range(2)]
    items = [
        op("POST", "/api/data/v9.2/leads", new_lead(p, 1)),
        op("POST", f"{web.api}/leads", new_lead(p, 2)),
        op("POST", "/api/data/v9.2/leads", new_lead(p, 3)),
        op("PATCH", f"/api/data/v9.2/leads({ids[0]})", new_lead(p, 4)),
        op("PATCH", f"{web.api}/leads({ids[1]})", new_lead(p, 5)),
        op("GET", f"/api/data/v9.2/leads({ids[0]})?$select=lastname"),
    ]
    r = post_batch(web, items)
    assert r.status_code == 200, r.text
    assert r.headers["OData-Version"] == "4.0"
    assert "Preference-Applied" not in r.headers
    parts = parse_response(r.headers["Content-Type"], r.content)
    assert all(isinstance(part, Part) for part in parts)
    assert [p_.status for p_ in flat(parts)] == [204] * 5 + [200]
    for create in flat(parts)[:3]:
        assert create.headers["Location"] == create.headers["OData-EntityId"]
        assert re.fullmatch(rf"{re.escape(web.api)}/leads\([0-9a-f-]{{36}}\)", create.headers["OData-EntityId"])
        assert create.body == b""
    for upsert, lead_id in zip(flat(parts)[3:5], ids, strict=True):
        assert upsert.headers["OData-EntityId"] == f"{web.api}/leads({lead_id})"
    assert json.loads(flat(parts)[5].body)["lastname"] == f"{p}-4"
    assert sorted(stored(web, p)) == [f"{p}-{n}" for n in range(1, 6)]
    entry = [e for e in web.admin.requests(server="dataverse") if e["path"].endswith("/$batch")][-1]
    assert entry["ops"] == 6 and entry["part_statuses"] == [204] * 5 + [200]


def test_wire_first_failure_stops_the_batch(web: Any) -> None:
    p = tag()
    items = [
        op("POST", "/api/data/v9.2/leads", new_lead(p, "a")),
        op("POST", "/api/data/v9.2/leads", new_lead(p, "b", lastname=p + "x" * 50)),
        op("POST", "/api/data/v9.2/leads", new_lead(p, "c")),
    ]
    r = post_batch(web, items)
    assert r.status_code == 400
    (only,) = parse_response(r.headers["Content-Type"], r.content)
    assert isinstance(only, Part) and (only.status, only.reason) == (400, "Bad Request")
    assert list(only.headers)[:3] == ["REQ_ID", "Content-Type", "OData-Version"]
    assert only.headers["Content-Type"] == "application/json; odata.metadata=minimal"
    error = json.loads(only.body)["error"]
    assert error["code"] == "0x80044331" and "'lastname'" in error["message"]
    assert sorted(stored(web, p)) == [f"{p}-a"]  # c never ran; a (outside a change set) stays


def test_wire_continue_on_error_runs_every_part(web: Any) -> None:
    p = tag()
    items = [
        op("POST", "/api/data/v9.2/leads", new_lead(p, "a")),
        op("POST", "/api/data/v9.2/leads", new_lead(p, "b", lastname=p + "x" * 50)),
        op("POST", "/api/data/v9.2/leads", new_lead(p, "c")),
    ]
    r = post_batch(web, items, continue_on_error=True)
    assert r.status_code == 200
    assert r.headers["Preference-Applied"] == "odata.continue-on-error"
    parts = flat(parse_response(r.headers["Content-Type"], r.content))
    assert [part.status for part in parts] == [204, 400, 204]
    assert sorted(stored(web, p)) == [f"{p}-a", f"{p}-c"]


def test_wire_changeset_failure_rolls_back(web: Any) -> None:
    p = tag()
    changeset = [
        op("POST", "/api/data/v9.2/leads", new_lead(p, "a"), content_id="1"),
        op("PATCH", f"/api/data/v9.2/leads({uuid.uuid4()})", new_lead(p, "b"), content_id="2"),
        op("POST", "/api/data/v9.2/leads", new_lead(p, "c", lastname=p + "x" * 50), content_id="3"),
    ]
    r = post_batch(web, [changeset, op("POST", "/api/data/v9.2/leads", new_lead(p, "z"))], continue_on_error=True)
    assert r.status_code == 200
    parts = parse_response(r.headers["Content-Type"], r.content)
    assert isinstance(parts[0], list) and [(x.status, x.content_id) for x in parts[0]] == [(400, "3")]
    assert isinstance(parts[1], Part) and parts[1].status == 204
    assert sorted(stored(web, p)) == [f"{p}-z"]

    r = post_batch(web, [changeset, op("POST", "/api/data/v9.2/leads", new_lead(p, "y"))])
    assert r.status_code == 400
    (only,) = parse_response(r.headers["Content-Type"], r.content)
    assert isinstance(only, list) and [(x.status, x.content_id) for x in only] == [(400, "3")]
    assert sorted(stored(web, p)) == [f"{p}-z"]


def test_wire_content_id_references(web: Any) -> None:
    p = tag()
    changeset = [
        op("POST", "/api/data/v9.2/leads", new_lead(p, "a"), content_id="1"),
        op("PATCH", "$1", {"firstname": "Changed"}, content_id="2"),
    ]
    r = post_batch(web, [changeset])
    assert r.status_code == 200, r.text
    (cs,) = parse_response(r.headers["Content-Type"], r.content)
    assert isinstance(cs, list) and [(x.status, x.content_id) for x in cs] == [(204, "1"), (204, "2")]
    assert stored(web, p)[f"{p}-a"]["firstname"] == "Changed"

    bad = [op("POST", "/api/data/v9.2/leads", new_lead(p, "b"), content_id="1"), op("PATCH", "$7", {}, content_id="2")]
    r = post_batch(web, [bad])
    assert r.status_code == 400
    (cs,) = parse_response(r.headers["Content-Type"], r.content)
    assert isinstance(cs, list)
    assert json.loads(cs[0].body)["error"]["message"] == (
        "Content-ID Reference: '$7' does not exist in the batch context."
    )
    assert f"{p}-b" not in stored(web, p)


def test_wire_rejected_batches(web: Any) -> None:
    get_in_changeset = post_batch(web, [[op("GET", "/api/data/v9.2/leads?$top=1")]])
    assert get_in_changeset.status_code == 400
    assert "GET requests are not allowed inside a change set" in get_in_changeset.json()["error"]["message"]

    too_many = post_batch(web, [op("GET", "/api/data/v9.2/WhoAmI")] * 1001)
    assert too_many.status_code == 400
    assert "maximum of 1000" in too_many.json()["error"]["message"]

    malformed = web.http.post(
        f"{web.api}/$batch", data=b"--x\r\nnonsense", headers={"Content-Type": "multipart/mixed; boundary=x"}
    )
    assert malformed.status_code == 400 and malformed.json()["error"]["message"]
