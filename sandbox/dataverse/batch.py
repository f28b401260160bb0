"""``POST /api/data/v9.2/$batch``: OData 4.0 multipart batches with change sets, as Dataverse runs them.

Behaviour (reference §6):

* Parts run sequentially, in order, through ``DataverseService.dispatch``. At most 1000 operations
  per batch (operations inside change sets count); no nested batches; no GET inside a change set.
  These, and any malformed body, are rejected with a plain 400 OData error before anything runs.
* A change set is atomic: it runs inside ``service.begin()`` and is rolled back as soon as one of its
  operations fails. ``Content-ID`` values declared in a change set can be referenced later in the
  same change set as ``$n`` at the start of a URL (``$1``, ``$1/lastname``) or as the value of an
  ``…@odata.bind`` / ``@odata.id`` property in a JSON body. An undeclared reference fails that
  operation with 400 ``Content-ID Reference: '$n' does not exist in the batch context.``
* Without ``Prefer: odata.continue-on-error`` processing stops at the first failing operation; the
  outer status is that operation's status and the body holds only its response (wrapped in a
  change-set response when it failed inside a change set). With it the outer status is 200, every
  part is answered, a failed change set is rolled back and answered by a change-set response
  holding only the failing operation, and later parts still run.

Decisions on points the reference marks [unverified]:

* A failed change set is answered by a change-set response that holds only the failing operation
  (with its Content-ID), never the rolled-back successes.
* ``MSCRM.*`` and ``CallerObjectId`` headers sent on the outer ``$batch`` request are inherited by
  every operation that does not set the same header itself.
* In a body, ``$n`` resolves to the service-root-relative form (``/leads(<id>)``, like
  ``/systemusers(<id>)`` binds) for ``@odata.bind`` and to the absolute URL for ``@odata.id``; in a
  request URL it resolves to the absolute entity URL.
"""

from __future__ import annotations

import asyncio
import json
import logging
import re
import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol
from urllib.parse import urlsplit

from aiohttp import web
from multidict import CIMultiDict

from sandbox.dataverse.multipart import (
    BatchFormatError,
    BatchPart,
    ChangeSetPart,
    ChangeSetResponsePart,
    HttpRequestPart,
    HttpResponsePart,
    encode_multipart,
    parse_batch,
)
from sandbox.dataverse.protection import COST_KEY
from sandbox.httpcommon import CALLER_KEY, LOG_EXTRA, OPS_KEY, STATE_KEY

log = logging.getLogger(__name__)

MAX_OPERATIONS = 1000
API_ROOT = "/api/data/v9.2"
ERROR_CONTENT_TYPE = "application/json; odata.metadata=minimal"
# OData-level (request format) errors: the same code the core service uses for OData errors.
BATCH_ERROR_CODE = "0x80060888"

# Headers of a single-request response that make no sense inside a batch part (they belong to the
# outer HTTP response, or are transport-level).
_DROPPED_PART_HEADERS = frozenset(
    h.lower()
    for h in (
        "Content-Length",
        "Transfer-Encoding",
        "Connection",
        "Keep-Alive",
        "Date",
        "Server",
        "Set-Cookie",
        "Strict-Transport-Security",
        "x-ms-dop-hint",
        "x-ms-ratelimit-burst-remaining-xrm-requests",
        "x-ms-ratelimit-time-remaining-xrm-requests",
    )
)
# Per-request identifiers that the reference shows on error parts only.
_ERROR_ONLY_HEADERS = frozenset(("req_id", "x-ms-service-request-id"))
# OData system segments that start with '$' but are not Content-ID references.
_RESERVED_SEGMENTS = frozenset(
    ("batch", "metadata", "entity", "crossjoin", "all", "ref", "value", "count", "filter", "each", "root", "query")
)
_REFERENCE_RE = re.compile(r"^\$([A-Za-z0-9_.\-]+)(.*)$", re.DOTALL)


class _SubResponse(Protocol):
    status: int
    headers: dict[str, str]
    body: bytes | None


class _Service(Protocol):
    def begin(self) -> Any: ...

    def dispatch(
        self,
        method: str,
        url: str,
        headers: Mapping[str, str],
        body: bytes,
        caller: Any,
        txn: Any = None,
    ) -> _SubResponse: ...


@dataclass
class _Result:
    """A sub-response as the batch needs it (independent of the service's SubResponse class)."""

    status: int
    headers: dict[str, str]
    body: bytes

    @property
    def failed(self) -> bool:
        return self.status >= 400


class BatchRequestError(Exception):
    """The batch as a whole is rejected (plain OData error, nothing executed)."""

    def __init__(self, message: str, status: int = 400, code: str = BATCH_ERROR_CODE) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message


@dataclass
class BatchOutcome:
    status: int
    boundary: str
    body: bytes
    continue_on_error: bool
    operations: int = 0
    cost: float = 0.0  # simulated server time in operations (protection.py): a bulk part costs less per target
    part_statuses: list[int] = field(default_factory=list)
    # "<METHOD> <path below the Web API root>" of each operation, in order (no query: $filter may hold data)
    part_requests: list[str] = field(default_factory=list)


# -- helpers ------------------------------------------------------------------------------------


def error_body(code: str, message: str) -> bytes:
    return json.dumps({"error": {"code": code, "message": message}}, ensure_ascii=False).encode("utf-8")


def _error_result(status: int, code: str, message: str) -> _Result:
    return _Result(status=status, headers={"Content-Type": ERROR_CONTENT_TYPE}, body=error_body(code, message))


def wants_continue_on_error(prefer: str | None) -> bool:
    """``Prefer: odata.continue-on-error`` (also ``continue-on-error``, ``=true``; ``=false`` disables)."""
    if not prefer:
        return False
    for item in prefer.split(","):
        name, _, value = item.strip().partition("=")
        if name.strip().lower() in ("odata.continue-on-error", "continue-on-error"):
            return value.strip().strip('"').lower() in ("", "true")
    return False


def _is_batch_url(url: str) -> bool:
    path = urlsplit(url).path if "://" in url else url.split("?", 1)[0]
    return path.rstrip("/").lower().endswith("/$batch") or path.lower() == "$batch"


def validate(parts: list[BatchPart]) -> int:
    """Reject what Dataverse refuses before running anything; returns the operation count."""
    count = 0
    for part in parts:
        if isinstance(part, ChangeSetPart):
            for req in part.requests:
                if req.method == "GET":
                    raise BatchRequestError(
                        "GET requests are not allowed inside a change set. Move the GET request out of the change set."
                    )
                if _is_batch_url(req.url):
                    raise BatchRequestError("Nested batch requests are not supported.")
            count += len(part.requests)
        else:
            if _is_batch_url(part.url):
                raise BatchRequestError("Nested batch requests are not supported.")
            count += 1
    if count > MAX_OPERATIONS:
        raise BatchRequestError(
            f"The batch contains {count} requests, which exceeds the maximum of {MAX_OPERATIONS} requests per batch."
        )
    return count


def _normalize_url(url: str) -> str:
    """Absolute URLs and server-relative paths pass; a path relative to the service root gets the root."""
    if "://" in url or url.startswith("/"):
        return url
    return f"{API_ROOT}/{url}"


def _service_relative(entity_url: str) -> str:
    """``https://org/api/data/v9.2/leads(x)`` → ``/leads(x)``."""
    path = urlsplit(entity_url).path if "://" in entity_url else entity_url
    idx = path.lower().find(API_ROOT)
    if idx >= 0:
        path = path[idx + len(API_ROOT) :]
    return path if path.startswith("/") else "/" + path


class _UnknownReference(Exception):
    def __init__(self, token: str) -> None:
        super().__init__(token)
        self.token = token


def _resolve_token(value: str, ids: Mapping[str, str]) -> tuple[str, str] | None:
    """(entity_url, rest) when ``value`` starts with a declared ``$id``; None when it is no reference."""
    match = _REFERENCE_RE.match(value)
    if match is None:
        return None
    token, rest = match.group(1), match.group(2)
    if token in ids:
        return ids[token], rest
    if token.lower() in _RESERVED_SEGMENTS:
        return None
    raise _UnknownReference("$" + token)


def _resolve_url(url: str, ids: Mapping[str, str]) -> str:
    """``$1`` / ``$1/lastname`` (also written after the service root) → the entity URL (+ the rest)."""
    candidate = url
    idx = url.find(API_ROOT + "/$")
    if idx >= 0 and (idx == 0 or "://" in url[:idx]):
        candidate = url[idx + len(API_ROOT) + 1 :]
    resolved = _resolve_token(candidate, ids)
    if resolved is None:
        return _normalize_url(url)
    entity_url, rest = resolved
    return entity_url + rest


def _resolve_body(body: bytes, ids: Mapping[str, str]) -> bytes:
    """Replace ``$n`` values of ``…@odata.bind`` / ``@odata.id`` properties; other bodies pass unchanged."""
    if b"$" not in body:
        return body
    try:
        doc = json.loads(body)
    except (ValueError, UnicodeDecodeError):
        return body
    changed = False

    def convert(value: Any, relative: bool) -> Any:
        nonlocal changed
        if isinstance(value, list):
            return [convert(v, relative) for v in value]
        if not isinstance(value, str):
            return value
        resolved = _resolve_token(value, ids)
        if resolved is None:
            return value
        changed = True
        entity_url, rest = resolved
        return (_service_relative(entity_url) if relative else entity_url) + rest

    def walk(node: Any) -> Any:
        if isinstance(node, dict):
            out = {}
            for key, value in node.items():
                if key.endswith("@odata.bind"):
                    out[key] = convert(value, relative=True)
                elif key == "@odata.id":
                    out[key] = convert(value, relative=False)
                else:
                    out[key] = walk(value)
            return out
        if isinstance(node, list):
            return [walk(v) for v in node]
        return node

    new_doc = walk(doc)
    if not changed:
        return body
    return json.dumps(new_doc, ensure_ascii=False, separators=(",", ":")).encode("utf-8")


def _entity_url_of(req: HttpRequestPart, result: _Result, org_url: str) -> str:
    """What a later ``$n`` stands for: the created/updated entity's URL."""
    for name in ("OData-EntityId", "Location"):
        for key, value in result.headers.items():
            if key.lower() == name.lower() and value:
                return value
    url = _normalize_url(req.url).split("?", 1)[0]
    return url if "://" in url else org_url.rstrip("/") + url


def _header(headers: Mapping[str, str], name: str) -> str | None:
    low = name.lower()
    for key, value in headers.items():
        if key.lower() == low:
            return value
    return None


def part_headers(method: str, result: _Result) -> list[tuple[str, str]]:
    """Sub-response headers in the order the reference shows (§6.3)."""
    rest = [(k, v) for k, v in result.headers.items() if k.lower() not in _DROPPED_PART_HEADERS]
    taken = {"content-type", "odata-version", "location", "odata-entityid", "req_id"}
    out: list[tuple[str, str]] = []
    if result.failed:
        out.append(("REQ_ID", _header(result.headers, "REQ_ID") or str(uuid.uuid4())))
        out.append(("Content-Type", _header(result.headers, "Content-Type") or ERROR_CONTENT_TYPE))
        out.append(("OData-Version", "4.0"))
        out.extend((k, v) for k, v in rest if k.lower() not in taken)
        return out
    content_type = _header(result.headers, "Content-Type")
    if content_type and result.body:
        out.append(("Content-Type", content_type))
    out.append(("OData-Version", "4.0"))
    entity_id = _header(result.headers, "OData-EntityId")
    location = _header(result.headers, "Location")
    if location is None and entity_id is not None and method == "POST":
        location = entity_id
    if location is not None:
        out.append(("Location", location))
    if entity_id is not None:
        out.append(("OData-EntityId", entity_id))
    out.extend((k, v) for k, v in rest if k.lower() not in taken and k.lower() not in _ERROR_ONLY_HEADERS)
    return out


def _response_part(req: HttpRequestPart, result: _Result, content_id: str | None) -> HttpResponsePart:
    return HttpResponsePart(
        status=result.status,
        headers=part_headers(req.method, result),
        body=result.body,
        content_id=content_id,
    )


# -- execution ----------------------------------------------------------------------------------


class BatchExecutor:
    """Runs parsed parts against the service and builds the multipart response."""

    def __init__(
        self,
        service: _Service,
        caller: Any,
        *,
        org_url: str,
        continue_on_error: bool,
        inherited_headers: Mapping[str, str] | None = None,
    ) -> None:
        self.service = service
        self.caller = caller
        self.org_url = org_url
        self.continue_on_error = continue_on_error
        self.inherited = dict(inherited_headers or {})
        self.operations = 0
        self.cost = 0.0
        self.part_statuses: list[int] = []
        self.part_requests: list[str] = []

    def _run(self, req: HttpRequestPart, txn: Any, ids: Mapping[str, str]) -> _Result:
        self.operations += 1
        self.cost += 1.0
        self.part_requests.append(f"{req.method} {_web_api_path(req.url)}")
        try:
            url = _resolve_url(req.url, ids)
            body = _resolve_body(req.body, ids)
        except _UnknownReference as exc:
            result = _error_result(
                400, BATCH_ERROR_CODE, f"Content-ID Reference: '{exc.token}' does not exist in the batch context."
            )
            self.part_statuses.append(result.status)
            return result
        headers: CIMultiDict[str] = CIMultiDict()
        for key, value in self.inherited.items():
            if key not in req.headers:
                headers[key] = value
        for key, value in req.headers.items:
            headers.add(key, value)
        try:
            sub = self.service.dispatch(req.method, url, headers, body, self.caller, txn=txn)
            self.operations += max(0, getattr(sub, "ops", 1) - 1)  # a bulk message counts its targets
            cost = getattr(sub, "cost", None)
            self.cost += (cost if cost is not None else max(1, getattr(sub, "ops", 1))) - 1.0
            result = _Result(status=int(sub.status), headers=dict(sub.headers or {}), body=sub.body or b"")
        except Exception:  # a sandbox bug must not take the whole batch down
            log.exception("batch operation %s %s raised", req.method, url)
            result = _error_result(500, "0x80040216", "An unexpected error occurred.")
        self.part_statuses.append(result.status)
        return result

    def run_request(self, req: HttpRequestPart) -> tuple[HttpResponsePart, _Result]:
        result = self._run(req, None, {})
        return _response_part(req, result, req.content_id), result

    def run_changeset(self, cs: ChangeSetPart) -> tuple[ChangeSetResponsePart, _Result | None]:
        """Run a change set atomically; returns its response part and the failing result, if any."""
        boundary = f"changesetresponse_{uuid.uuid4()}"
        ids: dict[str, str] = {}
        parts: list[HttpResponsePart] = []
        txn = self.service.begin()
        done = False
        try:
            for req in cs.requests:
                result = self._run(req, txn, ids)
                part = _response_part(req, result, req.content_id)
                if result.failed:
                    txn.rollback()
                    done = True
                    return ChangeSetResponsePart(boundary, [part]), result
                parts.append(part)
                if req.content_id:
                    ids[req.content_id] = _entity_url_of(req, result, self.org_url)
            txn.commit()
            done = True
            return ChangeSetResponsePart(boundary, parts), None
        finally:
            if not done:
                txn.rollback()

    async def run(self, parts: list[BatchPart]) -> BatchOutcome:
        boundary = f"batchresponse_{uuid.uuid4()}"
        encoded: list[bytes] = []
        status = 200
        for index, part in enumerate(parts):
            if index:
                # Let other requests progress between top-level parts (never inside a change set).
                await asyncio.sleep(0)
            if isinstance(part, ChangeSetPart):
                response, failure = self.run_changeset(part)
            else:
                response, result = self.run_request(part)
                failure = result if result.failed else None
            if failure is not None and not self.continue_on_error:
                status = failure.status
                encoded = [response.encode()]
                break
            encoded.append(response.encode())
        return BatchOutcome(
            status=status,
            boundary=boundary,
            body=encode_multipart(boundary, encoded),
            continue_on_error=self.continue_on_error,
            operations=self.operations,
            cost=self.cost,
            part_statuses=self.part_statuses,
            part_requests=self.part_requests,
        )


def _web_api_path(url: str) -> str:
    """``https://org/api/data/v9.2/leads(x)?$select=a`` → ``leads(x)`` (for the request log)."""
    path = urlsplit(url).path
    return path.split("/api/data/v9.2/", 1)[1] if "/api/data/v9.2/" in path else path.lstrip("/")


def _inherited_headers(headers: Mapping[str, str]) -> dict[str, str]:
    return {k: v for k, v in headers.items() if k.lower().startswith("mscrm.") or k.lower() == "callerobjectid"}


def _json_error(status: int, code: str, message: str) -> web.Response:
    return web.Response(
        status=status,
        body=error_body(code, message),
        headers={
            "Content-Type": ERROR_CONTENT_TYPE,
            "OData-Version": "4.0",
            "REQ_ID": str(uuid.uuid4()),
        },
    )


async def handle_batch(request: web.Request) -> web.StreamResponse:
    state = request.app[STATE_KEY]
    extra = request.get(LOG_EXTRA)
    if extra is None:
        extra = {}
        request[LOG_EXTRA] = extra
    request[OPS_KEY] = 0
    request[COST_KEY] = 0.0
    body = await request.read()
    try:
        parts = parse_batch(request.headers.get("Content-Type"), body)
        validate(parts)
    except (BatchFormatError, BatchRequestError) as exc:
        code = getattr(exc, "code", BATCH_ERROR_CODE)
        status = getattr(exc, "status", 400)
        extra.update({"error_code": code, "ops": 0})
        return _json_error(status, code, str(exc))

    continue_on_error = wants_continue_on_error(request.headers.get("Prefer"))
    executor = BatchExecutor(
        state.dataverse,
        request.get(CALLER_KEY),
        org_url=state.endpoints.org_url,
        continue_on_error=continue_on_error,
        inherited_headers=_inherited_headers(request.headers),
    )
    outcome = await executor.run(parts)
    request[OPS_KEY] = outcome.operations
    request[COST_KEY] = outcome.cost
    extra["ops"] = outcome.operations
    extra["part_statuses"] = outcome.part_statuses
    extra["part_requests"] = outcome.part_requests
    if continue_on_error:
        extra["continue_on_error"] = True
    req_id = str(uuid.uuid4())
    headers = {
        "Content-Type": f"multipart/mixed; boundary={outcome.boundary}",
        "OData-Version": "4.0",
        "REQ_ID": req_id,
        "x-ms-service-request-id": req_id,
    }
    if continue_on_error:
        headers["Preference-Applied"] = "odata.continue-on-error"
    return web.Response(status=outcome.status, body=outcome.body, headers=headers)
