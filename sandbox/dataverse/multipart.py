"""OData 4.0 ``multipart/mixed`` batch bodies: parse a request, serialize a response.

Only the wire format lives here; :mod:`sandbox.dataverse.batch` decides what the parts mean.

Parsing is strict about structure (a missing boundary, a part that is not ``application/http`` or a
missing closing delimiter is a :class:`BatchFormatError`) but tolerant about line endings: CRLF is
the standard, bare LF is accepted everywhere.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from http import HTTPStatus

CRLF = b"\r\n"

# The value may be quoted (request: ``boundary="batch_x"``) or bare (response: ``boundary=changesetresponse_x``).
_BOUNDARY_RE = re.compile(r"""(?:^|;)\s*boundary\s*=\s*(?:"([^"]+)"|([^\s;,"]+))""", re.IGNORECASE)
# Clients (and the reference's own example) leave spaces in the URL of a part's request line.
_REQUEST_LINE_RE = re.compile(rb"^([A-Za-z]+)[ \t]+(\S.*?)(?:[ \t]+(HTTP/\d(?:\.\d)?))?[ \t]*$")
_LINE_SPLIT_RE = re.compile(rb"\r?\n")
_METHODS = frozenset(("GET", "POST", "PATCH", "PUT", "DELETE", "HEAD", "OPTIONS", "MERGE"))


class BatchFormatError(ValueError):
    """The body is not a well-formed batch (answered with 400)."""


@dataclass
class Headers:
    """An ordered, case-insensitive header list (a part may repeat a header; the first one wins on lookup)."""

    items: list[tuple[str, str]] = field(default_factory=list)

    def get(self, name: str, default: str | None = None) -> str | None:
        low = name.lower()
        for key, value in self.items:
            if key.lower() == low:
                return value
        return default

    def __contains__(self, name: object) -> bool:
        return isinstance(name, str) and self.get(name) is not None

    def as_dict(self) -> dict[str, str]:
        out: dict[str, str] = {}
        for key, value in self.items:
            out.setdefault(key, value)
        return out


@dataclass
class HttpRequestPart:
    """One ``application/http`` part: its MIME headers plus the embedded HTTP request."""

    mime_headers: Headers
    method: str
    url: str
    headers: Headers
    body: bytes

    @property
    def content_id(self) -> str | None:
        value = self.mime_headers.get("Content-ID")
        if value is None:
            # Some clients put Content-ID on the embedded request instead of the MIME part.
            value = self.headers.get("Content-ID")
        return value.strip() if value is not None else None


@dataclass
class ChangeSetPart:
    """A nested ``multipart/mixed`` part: an atomic group of requests."""

    mime_headers: Headers
    boundary: str
    requests: list[HttpRequestPart]


BatchPart = HttpRequestPart | ChangeSetPart


def boundary_of(content_type: str | None) -> str | None:
    """The boundary parameter of a ``multipart/mixed`` Content-Type, quoted or not; None otherwise."""
    if not content_type:
        return None
    media_type = content_type.split(";", 1)[0].strip().lower()
    if media_type != "multipart/mixed":
        return None
    match = _BOUNDARY_RE.search(content_type[len(content_type.split(";", 1)[0]) :])
    if match is None:
        return None
    return match.group(1) or match.group(2)


def split_multipart(body: bytes, boundary: str) -> list[bytes]:
    """The raw parts (MIME headers + content) between the delimiters of one multipart level.

    The CRLF (or LF) in front of each delimiter belongs to the delimiter, so a part's content ends
    just before it. Text before the first delimiter (preamble) and after the closing one (epilogue)
    is ignored.
    """
    if not boundary or len(boundary) > 200:
        raise BatchFormatError("The multipart boundary is missing or invalid.")
    delim = re.compile(
        rb"(?:\A|\r?\n)--" + re.escape(boundary.encode("latin-1")) + rb"(--)?[ \t]*(?:\r?\n|\Z)",
    )
    parts: list[bytes] = []
    pos: int | None = None
    closed = False
    for match in delim.finditer(body):
        if pos is not None:
            parts.append(body[pos : match.start()])
        if match.group(1):
            closed = True
            break
        pos = match.end()
    if pos is None and not closed:
        raise BatchFormatError(f"The batch body does not contain the boundary '{boundary}'.")
    if not closed:
        raise BatchFormatError(f"The batch body is missing the closing delimiter '--{boundary}--'.")
    return parts


def _split_head(raw: bytes) -> tuple[list[bytes], bytes]:
    """Split ``raw`` into header lines and what follows the first empty line.

    Without an empty line everything is header lines and the rest is empty.
    """
    if raw.startswith((b"\r\n", b"\n")):
        # No header lines at all.
        return [], raw[2:] if raw.startswith(b"\r\n") else raw[1:]
    match = re.search(rb"\r?\n\r?\n", raw)
    if match is None:
        return [line for line in _LINE_SPLIT_RE.split(raw) if line], b""
    return _LINE_SPLIT_RE.split(raw[: match.start()]), raw[match.end() :]


def _parse_header_lines(lines: list[bytes], where: str) -> Headers:
    headers = Headers()
    for line in lines:
        if line[:1] in (b" ", b"\t") and headers.items:
            # Obsolete line folding: continue the previous header.
            key, value = headers.items[-1]
            headers.items[-1] = (key, value + " " + line.strip().decode("utf-8", "replace"))
            continue
        name, sep, value = line.partition(b":")
        if not sep or not name.strip():
            raise BatchFormatError(f"Malformed header line in {where}: {line[:100].decode('utf-8', 'replace')!r}.")
        headers.items.append((name.strip().decode("latin-1"), value.strip().decode("utf-8", "replace")))
    return headers


def _parse_http_part(mime_headers: Headers, content: bytes) -> HttpRequestPart:
    encoding = (mime_headers.get("Content-Transfer-Encoding") or "binary").strip().lower()
    if encoding not in ("binary", "8bit", "7bit"):
        raise BatchFormatError(f"Unsupported Content-Transfer-Encoding '{encoding}' in a batch part.")
    # Blank lines before the request line are tolerated.
    content = content.lstrip(b"\r\n")
    line_end = re.search(rb"\r?\n", content)
    if line_end is None:
        request_line, rest = content, b""
    else:
        request_line, rest = content[: line_end.start()], content[line_end.end() :]
    match = _REQUEST_LINE_RE.match(request_line)
    if match is None or match.group(1).decode("ascii").upper() not in _METHODS:
        shown = request_line[:200].decode("utf-8", "replace")
        raise BatchFormatError(f"The batch part does not start with a valid HTTP request line: {shown!r}.")
    method = match.group(1).decode("ascii").upper()
    url = match.group(2).decode("utf-8", "replace").replace(" ", "%20")
    header_lines, body = _split_head(rest)
    headers = _parse_header_lines(header_lines, "a batch request")
    # The CRLF before the next delimiter is already gone; trailing blank lines are padding, not body.
    body = body.rstrip(b"\r\n")
    return HttpRequestPart(mime_headers=mime_headers, method=method, url=url, headers=headers, body=body)


def _parse_part(raw: bytes, *, inside_changeset: bool) -> BatchPart:
    header_lines, content = _split_head(raw)
    mime_headers = _parse_header_lines(header_lines, "a batch part")
    content_type = (mime_headers.get("Content-Type") or "").strip()
    media_type = content_type.split(";", 1)[0].strip().lower()
    if media_type == "application/http":
        return _parse_http_part(mime_headers, content)
    if media_type == "multipart/mixed":
        if inside_changeset:
            raise BatchFormatError("A change set cannot contain another change set.")
        boundary = boundary_of(content_type)
        if boundary is None:
            raise BatchFormatError("The change set Content-Type has no boundary parameter.")
        requests: list[HttpRequestPart] = []
        for sub in split_multipart(content, boundary):
            part = _parse_part(sub, inside_changeset=True)
            assert isinstance(part, HttpRequestPart)
            requests.append(part)
        return ChangeSetPart(mime_headers=mime_headers, boundary=boundary, requests=requests)
    if not content_type:
        raise BatchFormatError("A batch part is missing its Content-Type header (expected application/http).")
    raise BatchFormatError(
        f"The batch part Content-Type '{content_type}' is not supported; use application/http or multipart/mixed."
    )


def parse_batch(content_type: str | None, body: bytes) -> list[BatchPart]:
    """Parse a ``$batch`` request body into top-level requests and change sets."""
    media_type = (content_type or "").split(";", 1)[0].strip().lower()
    if media_type != "multipart/mixed":
        raise BatchFormatError(
            "The batch request must have a Content-Type of multipart/mixed with a boundary parameter."
        )
    boundary = boundary_of(content_type)
    if boundary is None:
        raise BatchFormatError("The batch request Content-Type has no boundary parameter.")
    return [_parse_part(raw, inside_changeset=False) for raw in split_multipart(body, boundary)]


# -- serialization -----------------------------------------------------------------------------


def status_line(status: int) -> bytes:
    try:
        phrase = HTTPStatus(status).phrase
    except ValueError:
        phrase = "Unknown"
    return f"HTTP/1.1 {status} {phrase}".encode("ascii")


@dataclass
class HttpResponsePart:
    """One ``application/http`` response part."""

    status: int
    headers: list[tuple[str, str]]
    body: bytes = b""
    content_id: str | None = None

    def encode(self) -> bytes:
        mime = [b"Content-Type: application/http", b"Content-Transfer-Encoding: binary"]
        if self.content_id is not None:
            mime.append(f"Content-ID: {self.content_id}".encode())
        lines = [status_line(self.status)]
        lines.extend(f"{k}: {v}".encode() for k, v in self.headers)
        return CRLF.join(mime) + CRLF + CRLF + CRLF.join(lines) + CRLF + CRLF + self.body


@dataclass
class ChangeSetResponsePart:
    """A nested ``multipart/mixed`` response for one change set."""

    boundary: str
    parts: list[HttpResponsePart]

    def encode(self) -> bytes:
        head = f"Content-Type: multipart/mixed; boundary={self.boundary}".encode()
        return head + CRLF + CRLF + encode_multipart(self.boundary, [p.encode() for p in self.parts], final_crlf=False)


def encode_multipart(boundary: str, parts: list[bytes], *, final_crlf: bool = True) -> bytes:
    """``--b CRLF part CRLF --b CRLF part CRLF --b--`` (+ CRLF at the very end of the outer body)."""
    delim = b"--" + boundary.encode("ascii")
    out = bytearray()
    for part in parts:
        out += delim + CRLF + part + CRLF
    out += delim + b"--"
    if final_crlf:
        out += CRLF
    return bytes(out)
