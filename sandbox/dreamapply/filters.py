"""Query-parameter parsing for the DreamApply API. Every bad value raises :class:`BadRequest` (HTTP 400).

Sandbox choices, documented:
- List parameters accept comma- and/or space-separated values and combine them with OR (reference §2.1).
- Cursors (``bySince``/``byUntil``) are a decimal ID or an ISO 8601 datetime (``2025-11-24T10:56:34+00:00``,
  ``...Z``, a naive time = UTC, or a bare date = midnight UTC). A ``+`` offset that arrived as a space
  (unencoded ``+`` in a query string) is accepted too.
- Unknown query parameters are ignored.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from datetime import UTC, datetime

_SPLIT = re.compile(r"[,\s]+")
_SPACE_OFFSET = re.compile(r" (\d{2}:?\d{2})$")


class BadRequest(Exception):
    """Answered as ``400`` with a plain-text body."""


def split_list(value: str) -> list[str]:
    return [v for v in _SPLIT.split(value.strip()) if v]


def parse_int(value: str, name: str, minimum: int | None = None) -> int:
    v = value.strip()
    if not v.isdigit() or not v.isascii():
        raise BadRequest(f"Invalid value for parameter {name}: expected an integer, got {value!r}")
    n = int(v)
    if minimum is not None and n < minimum:
        raise BadRequest(f"Invalid value for parameter {name}: must be at least {minimum}")
    return n


def parse_ids(value: str, name: str) -> set[int]:
    items = split_list(value)
    if not items:
        raise BadRequest(f"Invalid value for parameter {name}: empty list")
    return {parse_int(v, name) for v in items}


def parse_datetime(value: str, name: str) -> int:
    v = value.strip()
    v = _SPACE_OFFSET.sub(r"+\1", v)
    try:
        dt = datetime.fromisoformat(v + "T00:00:00" if len(v) == 10 else v)
    except ValueError:
        raise BadRequest(
            f"Invalid value for parameter {name}: expected an ISO 8601 datetime or an ID, got {value!r}"
        ) from None
    if dt.tzinfo is None:
        dt = dt.replace(tzinfo=UTC)
    return int(dt.timestamp())


def parse_cursor(value: str, name: str) -> tuple[str, int]:
    """``("id", n)`` or ``("ts", epoch)``."""
    v = value.strip()
    if not v:
        raise BadRequest(f"Invalid value for parameter {name}: empty")
    if v.isdigit() and v.isascii():
        return "id", int(v)
    return "ts", parse_datetime(v, name)


def parse_limit(value: str | None, cap: int, name: str = "limit") -> int:
    """``limit`` 1..cap; a larger value is a 400 (the reference calls these hard caps). Absent → cap."""
    if value is None:
        return cap
    n = parse_int(value, name, minimum=1)
    if n > cap:
        raise BadRequest(f"Invalid value for parameter {name}: must be between 1 and {cap}")
    return n


def parse_expand(value: str | None, allowed: Iterable[str]) -> set[str]:
    if value is None:
        return set()
    names = {v.lower() for v in split_list(value)}
    bad = names - set(allowed)
    if bad:
        raise BadRequest(f"Invalid value for parameter expand: {', '.join(sorted(bad))}")
    return names


def parse_citizenships(value: str) -> set[str]:
    out = set()
    for v in split_list(value):
        if len(v) != 2 or not v.isascii() or not v.isalpha():
            raise BadRequest(f"Invalid value for parameter byCitizenships: {v!r} is not an ISO 3166-1 alpha-2 code")
        out.add(v.upper())
    if not out:
        raise BadRequest("Invalid value for parameter byCitizenships: empty list")
    return out


def parse_strings(value: str, name: str) -> list[str]:
    items = split_list(value)
    if not items:
        raise BadRequest(f"Invalid value for parameter {name}: empty list")
    return items


def parse_events(value: str | None) -> set[str]:
    """``byEvents`` is required and comma-separated (event names contain spaces)."""
    if value is None:
        raise BadRequest("Missing required parameter byEvents (comma-separated list of event names)")
    names = {v.strip() for v in value.split(",") if v.strip()}
    if not names:
        raise BadRequest("Invalid value for parameter byEvents: empty list")
    return names
