"""Shape checks for API answers: a success status is not yet data.

A proxy's maintenance page, a JSON error object sent with status 200, an empty or cut body, a body in another
encoding than it declares, a collection without its rows: each of these read as "no data" would move a cursor
past changes nobody saw, or make a lookup miss a lead that exists. Both hooks (DreamApply and Dataverse) pass
every body they hand on through these checks, inside their retry loops, so a lying answer is retried like a
503 and then fails with a :class:`~d365.hooks.errors.MalformedAnswer` naming the endpoint and the shape.

Messages never quote the body: it may hold names or e-mail addresses. Only a JSON error object's ``code``
is kept when it looks like a code (letters, digits, ``._:-``).
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from d365.hooks.errors import MalformedAnswer

HTML_PAGE = "HtmlPage"
ERROR_OBJECT = "ErrorObject"
EMPTY_BODY = "EmptyBody"
INVALID_JSON = "InvalidJson"
WRONG_ENCODING = "WrongEncoding"
WRONG_SHAPE = "WrongShape"

_HTML_TYPES = ("text/html", "application/xhtml+xml")
_UTF8_NAMES = frozenset({"utf-8", "utf8"})
_SAFE_CODE = re.compile(r"^[A-Za-z0-9_.:-]{1,64}$")
_CHARSET = re.compile(r"""charset\s*=\s*["']?([A-Za-z0-9_.:-]+)""", re.IGNORECASE)


@dataclass(frozen=True)
class Where:
    """Which answer is being checked: the error type to raise and what names it (method, path, status)."""

    error: type[MalformedAnswer]
    method: str
    path: str
    status: int | None = None

    def fail(self, code: str, message: str) -> MalformedAnswer:
        return self.error(message, status=self.status, code=code, method=self.method, path=self.path)


def _type_name(value: Any) -> str:
    return "null" if value is None else type(value).__name__


def read_json(content: bytes, content_type: str | None, where: Where) -> Any:
    """The JSON document of a body that must be one: an object or an array, strictly decoded.

    Raises ``where.error`` for an empty body, an HTML page, a body that is not valid in its declared charset
    (UTF-8 when none is declared; never decoded with replacement characters), invalid or cut JSON, a
    top-level value that is not an object or array, and a JSON error object (``{"error": ...}``).
    """
    if not content or not content.strip():
        raise where.fail(EMPTY_BODY, "empty body where JSON was expected")
    media = (content_type or "").split(";", 1)[0].strip().lower()
    head = content.lstrip()[:1]
    if media in _HTML_TYPES or head == b"<":
        raise where.fail(HTML_PAGE, f"an HTML page instead of JSON ({len(content)} bytes, {media or 'no type'})")
    match = _CHARSET.search(content_type or "")
    charset = match.group(1).lower() if match else "utf-8"
    try:
        text = content.decode("utf-8-sig" if charset in _UTF8_NAMES else charset, errors="strict")
    except UnicodeDecodeError as exc:
        raise where.fail(
            WRONG_ENCODING, f"body is not valid {charset} (byte {exc.start} of {len(content)}): wrong encoding"
        ) from None
    except LookupError:
        raise where.fail(WRONG_ENCODING, f"body declares an unknown charset {charset!r}") from None
    try:
        body = json.loads(text)
    except ValueError as exc:
        raise where.fail(
            INVALID_JSON, f"body is not complete JSON ({len(content)} bytes, {type(exc).__name__}: cut or garbled)"
        ) from None
    if not isinstance(body, dict | list):
        raise where.fail(WRONG_SHAPE, f"JSON {_type_name(body)} where an object or array was expected")
    if isinstance(body, dict) and "error" in body and isinstance(body["error"], dict | str):
        raise where.fail(ERROR_OBJECT, "a JSON error object instead of data" + _error_code(body["error"]))
    return body


def _error_code(error: Any) -> str:
    code = error.get("code") if isinstance(error, dict) else None
    if isinstance(code, str | int) and not isinstance(code, bool) and _SAFE_CODE.match(str(code)):
        return f" (code {code})"
    return ""


def id_map(body: Any, where: Where) -> dict[str, dict[str, Any]]:
    """A DreamApply ID-keyed collection as ``{id: record}``: a ``pages`` paginator dropped, a missing
    ``"id"`` filled in from the key. PHP encodes an empty map as ``[]``; a list is keyed by each item's id.

    Every item must be a record (a JSON object): a map holding strings, numbers or nulls is not a
    collection this client can read, and dropping those items would lose them silently.
    """
    if isinstance(body, list):
        out_list: dict[str, dict[str, Any]] = {}
        for position, item in enumerate(body):
            if not isinstance(item, dict) or _record_id(item.get("id")) is None:
                raise where.fail(
                    WRONG_SHAPE, f"a list holding a non-record ({_type_name(item)} at position {position})"
                )
            out_list[str(item["id"])] = item
        return out_list
    if not isinstance(body, dict):
        raise where.fail(WRONG_SHAPE, f"JSON {_type_name(body)} where an ID-keyed collection was expected")
    out: dict[str, dict[str, Any]] = {}
    for key, item in body.items():
        if key == "pages" and isinstance(item, dict):
            continue
        if not isinstance(item, dict):
            raise where.fail(
                WRONG_SHAPE, f"an ID-keyed map holding a non-record ({_type_name(item)} under key {_safe_key(key)})"
            )
        if "id" not in item:
            item = {**item, "id": int(key) if key.isdigit() else key}
        out[str(key)] = item
    return out


def _record_id(value: Any) -> int | str | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, int) or (isinstance(value, str) and value.strip()):
        return value
    return None


def _safe_key(key: str) -> str:
    """A map key for a message: IDs as they are, anything else only by its length (it could be a value)."""
    return key if key.isdigit() else f"<{len(key)} characters>"


def odata_collection(body: Any, where: Where) -> dict[str, Any]:
    """A Dataverse collection page: an object whose ``value`` is a list of objects (rows); an
    ``@odata.nextLink``, when present, is a string."""
    if not isinstance(body, dict):
        raise where.fail(WRONG_SHAPE, f"JSON {_type_name(body)} where an OData collection was expected")
    if "value" not in body:
        raise where.fail(WRONG_SHAPE, "an OData collection without 'value'")
    rows = body["value"]
    if not isinstance(rows, list):
        raise where.fail(WRONG_SHAPE, f"an OData collection whose 'value' is {_type_name(rows)}, not a list")
    for position, row in enumerate(rows):
        if not isinstance(row, dict):
            raise where.fail(WRONG_SHAPE, f"an OData collection row that is {_type_name(row)} (row {position})")
    link = body.get("@odata.nextLink")
    if link is not None and not isinstance(link, str):
        raise where.fail(WRONG_SHAPE, f"an @odata.nextLink that is {_type_name(link)}, not a URL")
    return body


def odata_entity(body: Any, where: Where, required: Iterable[str] = ()) -> dict[str, Any]:
    """A single Dataverse record or function answer: an object holding every ``required`` property."""
    if not isinstance(body, dict):
        raise where.fail(WRONG_SHAPE, f"JSON {_type_name(body)} where an OData entity was expected")
    missing = [name for name in required if body.get(name) in (None, "")]
    if missing:
        raise where.fail(WRONG_SHAPE, f"an OData entity without {', '.join(missing)}")
    return body
