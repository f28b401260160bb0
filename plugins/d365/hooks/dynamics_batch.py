"""Dataverse ``$batch``: build the OData 4.0 ``multipart/mixed`` request and read its answer.

Wire format as in the reference (§6.2/§6.3): CRLF line endings, ``batch_<uuid>``/``changeset_<uuid>``
boundaries, every part ``Content-Type: application/http`` + ``Content-Transfer-Encoding: binary``.

Mapping answers back to operations:

* Every part carries a batch-wide unique ``Content-ID`` (the operation's 1-based index). Inside change sets
  the header is mandatory and echoed by Dataverse; on top-level parts it is allowed and used when echoed.
  Without an echoed Content-ID, top-level answers are matched by order (they come back in order).
* ``continue_on_error=False``: Dataverse stops at the first failure and answers only that part (the outer
  status is the failing one). The failing operation is recognised by its Content-ID; operations before it
  ran (``executed=True`` but no answer), later ones did not (``executed=False``, ``status=None``).
* A change-set answer that holds only a failing operation means the others in it were rolled back.

Parsing tolerates quoted or bare boundaries, bare-LF line endings and missing blank lines.
"""

from __future__ import annotations

import json
import re
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol
from urllib.parse import quote, urlsplit

from d365.hooks.errors import DynamicsError, dynamics_error_from_response

MAX_BATCH_OPERATIONS = 1000
CRLF = "\r\n"
WRITE_METHODS = frozenset({"POST", "PATCH", "PUT", "DELETE"})

_BOUNDARY_RE = re.compile(r"""boundary\s*=\s*(?:"([^"]+)"|([^\s;,"]+))""", re.IGNORECASE)
_STATUS_LINE_RE = re.compile(rb"^HTTP/\d(?:\.\d)?\s+(\d{3})(?:\s+(.*))?$")
_BLANK_LINE_RE = re.compile(rb"\r?\n\r?\n")
_LINE_RE = re.compile(rb"\r?\n")
# Characters allowed unescaped in a part's request line (existing %-escapes are kept).
_URL_SAFE = "/:@!$&'()*+,;=?%~-._"


class BatchRequest(Protocol):
    """What the encoder reads of one request: any object with these attributes is sent as it is (the sync's
    planned ``Operation`` is one, so a planned request is never copied into another shape before it is sent).
    ``url`` is relative to ``/api/data/v9.2/``; ``record`` is what errors call the row (never a value of it)."""

    @property
    def method(self) -> str: ...
    @property
    def url(self) -> str | None: ...
    @property
    def body(self) -> Mapping[str, Any] | None: ...
    @property
    def headers(self) -> Mapping[str, str] | None: ...
    @property
    def record(self) -> str | None: ...


@dataclass
class BatchOperation:
    """One ad-hoc request of a batch (a ``BatchRequest``). ``url`` is relative to ``/api/data/v9.2/``
    (e.g. ``leads(<guid>)``)."""

    method: str
    url: str
    body: dict[str, Any] | None = None
    headers: dict[str, str] | None = None
    record: str | None = None  # what the caller calls this row (e.g. the applicant id), for errors


@dataclass
class BatchResult:
    """The answer to one operation.

    ``executed`` is False (and ``status``/``error`` None) when Dataverse never ran the operation (a batch
    stopped earlier, or a rolled-back change set): resend it. ``status`` is None with ``executed`` True for
    operations that ran before a stopping failure (Dataverse sends no answer for them).
    """

    operation: BatchRequest
    status: int | None
    headers: dict[str, str] = field(default_factory=dict)
    body: Any = None
    error: DynamicsError | None = None
    executed: bool = True

    @property
    def ok(self) -> bool:
        return self.executed and self.error is None


@dataclass
class ResponsePart:
    """One ``application/http`` answer inside a batch response."""

    status: int
    reason: str
    headers: dict[str, str]
    body: bytes
    content_id: str | None = None
    changeset: int | None = None  # index of the enclosing change-set answer among top-level parts
    top_index: int = 0  # position among the top-level parts of the response

    def header(self, name: str) -> str | None:
        low = name.lower()
        for key, value in self.headers.items():
            if key.lower() == low:
                return value
        return None

    def json(self) -> Any:
        text = self.body.strip()
        if not text:
            return None
        try:
            return json.loads(text)
        except (ValueError, UnicodeDecodeError):
            return None


@dataclass
class BatchPlan:
    """How operations were laid out: each top-level part is a list of operation indexes (>1 only in a change set)."""

    boundary: str
    parts: list[list[int]]
    changesets: list[bool]

    @property
    def content_type(self) -> str:
        return f'multipart/mixed; boundary="{self.boundary}"'


def _request_path(url: str, api_path: str) -> str:
    url = url.strip()
    if urlsplit(url).scheme:  # absolute URL: keep it
        return quote(url, safe=_URL_SAFE)
    return api_path.rstrip("/") + "/" + quote(url.lstrip("/"), safe=_URL_SAFE)


def _encode_request(op: BatchRequest, api_path: str, content_id: str) -> str:
    method = op.method.upper()
    if not op.url:
        raise ValueError(f"batch operation {content_id} ({op.record or 'no record'}) has no url")
    lines = [
        "Content-Type: application/http",
        "Content-Transfer-Encoding: binary",
        f"Content-ID: {content_id}",
        "",
        f"{method} {_request_path(op.url, api_path)} HTTP/1.1",
    ]
    headers = dict(op.headers or {})
    body = ""
    if op.body is not None:
        if not any(k.lower() == "content-type" for k in headers):
            headers["Content-Type"] = "application/json; type=entry"
        body = json.dumps(op.body, ensure_ascii=False, separators=(",", ":"))
    for key, value in headers.items():
        if "\r" in f"{key}{value}" or "\n" in f"{key}{value}":
            raise ValueError(f"header {key!r} of a batch operation contains a line break")
        lines.append(f"{key}: {value}")
    lines.append("")
    lines.append(body)
    return CRLF.join(lines)


def build_batch(
    operations: Sequence[BatchRequest],
    *,
    changeset_per_operation: bool = False,
    api_path: str = "/api/data/v9.2/",
    boundary: str | None = None,
) -> tuple[BatchPlan, bytes]:
    """The multipart body for ``operations`` (at most 1000) and the plan to map answers back.

    With ``changeset_per_operation`` every write gets its own change set (GETs are never allowed in one).
    """
    if not operations:
        raise ValueError("a batch needs at least one operation")
    if len(operations) > MAX_BATCH_OPERATIONS:
        raise ValueError(f"a batch holds at most {MAX_BATCH_OPERATIONS} operations, got {len(operations)}")
    boundary = boundary or f"batch_{uuid.uuid4()}"
    chunks: list[str] = []
    plan = BatchPlan(boundary=boundary, parts=[], changesets=[])
    for index, op in enumerate(operations):
        method = op.method.upper()
        if method not in WRITE_METHODS | {"GET"}:
            raise ValueError(f"unsupported method in a batch: {op.method!r}")
        content_id = str(index + 1)
        encoded = _encode_request(op, api_path, content_id)
        if changeset_per_operation and method in WRITE_METHODS:
            cs = f"changeset_{uuid.uuid4()}"
            chunks.append(
                f"--{boundary}{CRLF}"
                f'Content-Type: multipart/mixed; boundary="{cs}"{CRLF}{CRLF}'
                f"--{cs}{CRLF}{encoded}{CRLF}--{cs}--{CRLF}"
            )
            plan.changesets.append(True)
        else:
            chunks.append(f"--{boundary}{CRLF}{encoded}{CRLF}")
            plan.changesets.append(False)
        plan.parts.append([index])
    chunks.append(f"--{boundary}--{CRLF}")
    return plan, "".join(chunks).encode("utf-8")


# -- parsing ---------------------------------------------------------------------------------------------
def boundary_of(content_type: str | None) -> str | None:
    """The boundary parameter of a multipart Content-Type, quoted or not."""
    if not content_type:
        return None
    match = _BOUNDARY_RE.search(content_type)
    if match is None:
        return None
    return match.group(1) if match.group(1) is not None else match.group(2)


def _split_multipart(body: bytes, boundary: str) -> list[bytes]:
    """The parts between ``--boundary`` delimiter lines (preamble/epilogue dropped, CRLF or LF)."""
    delim = re.compile(rb"(?:^|\r?\n)--" + re.escape(boundary.encode()) + rb"(--)?[ \t]*(?=\r?\n|$)")
    parts: list[bytes] = []
    last_end: int | None = None
    for match in delim.finditer(body):
        if last_end is not None:
            chunk = body[last_end : match.start()]
            parts.append(re.sub(rb"^\r?\n", b"", chunk, count=1))
        if match.group(1):  # closing delimiter
            return parts
        last_end = match.end()
    if last_end is not None:  # no closing delimiter: keep what came (tolerant)
        chunk = body[last_end:]
        parts.append(re.sub(rb"^\r?\n", b"", chunk, count=1))
    return parts


def _split_head(chunk: bytes) -> tuple[dict[str, str], bytes]:
    """Headers (until the first blank line) and the rest of a MIME part or HTTP message."""
    if re.match(rb"^\r?\n", chunk):  # no headers at all
        return {}, re.sub(rb"^\r?\n", b"", chunk, count=1)
    match = _BLANK_LINE_RE.search(chunk)
    if match is None:
        head, rest = chunk, b""
    else:
        head, rest = chunk[: match.start()], chunk[match.end() :]
    headers: dict[str, str] = {}
    for raw in _LINE_RE.split(head):
        line = raw.decode("utf-8", "replace")
        if ":" in line:
            key, _, value = line.partition(":")
            headers.setdefault(key.strip(), value.strip())
    return headers, rest


def _get(headers: dict[str, str], name: str) -> str | None:
    low = name.lower()
    for key, value in headers.items():
        if key.lower() == low:
            return value
    return None


def _parse_http_part(mime_headers: dict[str, str], content: bytes) -> ResponsePart:
    content = content.lstrip(b"\r\n")
    first, _, rest = content.partition(b"\n")
    match = _STATUS_LINE_RE.match(first.rstrip(b"\r").strip())
    if match is None:
        raise ValueError(f"batch answer part without an HTTP status line ({len(first)} bytes where it belongs)")
    if rest and re.match(rb"^\r?\n", rest):  # status line directly followed by the body
        headers, body = {}, re.sub(rb"^\r?\n", b"", rest, count=1)
    else:
        headers, body = _split_head(rest)
    content_id = _get(mime_headers, "Content-ID") or _get(headers, "Content-ID")
    return ResponsePart(
        status=int(match.group(1)),
        reason=(match.group(2) or b"").decode("latin-1").strip(),
        headers=headers,
        body=body.rstrip(b"\r\n"),
        content_id=content_id.strip() if content_id else None,
    )


def parse_batch_response(content_type: str | None, body: bytes) -> list[ResponsePart]:
    """Every ``application/http`` answer in a batch response, change-set answers flattened (in order).

    ``ValueError`` for an answer that is not a readable multipart (a proxy's page, a JSON error object, a cut
    body without any part): the hook raises it as a retryable ``DynamicsMalformedAnswer``. Messages carry no
    body text."""
    media = (content_type or "").split(";", 1)[0].strip().lower()
    if not media.startswith("multipart/"):
        raise ValueError(f"batch answer is not multipart (Content-Type {media or 'missing'}, {len(body)} bytes)")
    boundary = boundary_of(content_type)
    if not boundary:
        raise ValueError(f"batch answer without a multipart boundary (Content-Type {content_type!r})")
    result: list[ResponsePart] = []
    for top_index, chunk in enumerate(_split_multipart(body, boundary)):
        mime_headers, content = _split_head(chunk)
        part_type = (_get(mime_headers, "Content-Type") or "").lower()
        if part_type.startswith("multipart/"):
            inner = boundary_of(_get(mime_headers, "Content-Type"))
            if not inner:
                raise ValueError("change-set answer without a boundary")
            for sub in _split_multipart(content, inner):
                sub_headers, sub_content = _split_head(sub)
                part = _parse_http_part(sub_headers, sub_content)
                part.changeset = top_index
                part.top_index = top_index
                result.append(part)
        else:
            part = _parse_http_part(mime_headers, content)
            part.top_index = top_index
            result.append(part)
    if not result:
        raise ValueError(f"batch answer without any part ({len(body)} bytes)")
    return result


# -- mapping answers to operations -----------------------------------------------------------------------
def _result_for(op: BatchRequest, part: ResponsePart, default_retry_after: float) -> BatchResult:
    body = part.json()
    error = None
    if part.status >= 400:
        error = dynamics_error_from_response(
            part.status,
            part.headers,
            body,
            method=op.method.upper(),
            path=(op.url or "").split("?", 1)[0],
            record=op.record,
            default_retry_after=default_retry_after,
        )
    return BatchResult(operation=op, status=part.status, headers=dict(part.headers), body=body, error=error)


def map_batch_results(
    operations: Sequence[BatchRequest],
    plan: BatchPlan,
    parts: list[ResponsePart],
    *,
    stopped: bool,
    default_retry_after: float = 5.0,
) -> list[BatchResult]:
    """One result per operation. ``stopped``: the outer status was an error (no continue-on-error)."""
    n = len(operations)
    assigned: dict[int, ResponsePart] = {}
    part_of_op = {op_index: p for p, indexes in enumerate(plan.parts) for op_index in indexes}
    unmatched: list[ResponsePart] = []
    for part in parts:
        if part.content_id and part.content_id.isdigit() and 1 <= int(part.content_id) <= n:
            index = int(part.content_id) - 1
            if index not in assigned:
                assigned[index] = part
                continue
        unmatched.append(part)
    if stopped:
        if not assigned:
            raise DynamicsError(
                "the batch stopped at a failing operation that the answer does not identify (no Content-ID)",
                status=parts[0].status if parts else None,
                code=(dynamics_error_from_response(parts[0].status, parts[0].headers, parts[0].json()).code)
                if parts
                else "",
            )
        failing = min(assigned)
        failing_part = part_of_op[failing]
        results = []
        for index, op in enumerate(operations):
            if index in assigned:
                results.append(_result_for(op, assigned[index], default_retry_after))
            elif part_of_op[index] < failing_part:
                results.append(BatchResult(operation=op, status=None, executed=True))
            else:
                results.append(BatchResult(operation=op, status=None, executed=False))
        return results
    # Not stopped: answers come in order, one top-level answer per request part.
    for part in unmatched:
        if part.top_index < len(plan.parts):
            for index in plan.parts[part.top_index]:
                if index not in assigned:
                    assigned[index] = part
                    break
    results = []
    for index, op in enumerate(operations):
        part = assigned.get(index)
        if part is None:  # rolled back with its change set, or never answered
            results.append(BatchResult(operation=op, status=None, executed=False))
        else:
            results.append(_result_for(op, part, default_retry_after))
    return results
