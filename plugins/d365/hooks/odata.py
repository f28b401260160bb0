"""OData wire text for the Dataverse Web API: literals, key segments, query strings and ``In()`` filters.

Pure functions (no I/O), so every escaping rule is testable on its own. Strings are single-quoted with ``'``
doubled (the Dataverse reference, §2.6), GUIDs and numbers are bare; URL encoding happens once, here.
"""

from __future__ import annotations

import re
import uuid
from collections.abc import Iterable, Iterator, Mapping
from typing import Any
from urllib.parse import quote, unquote, unquote_plus, urlsplit

from d365.hooks.dynamics_auth import normalise_origin

GUID_RE = re.compile(r"^[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}$")
ENTITY_ID_RE = re.compile(r"\(([0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12})\)\s*$")
# A column's logical name: what may stand inside PropertyName='…' without escaping.
LOGICAL_NAME_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
# Characters kept literally in query values (OData syntax); everything else (space, &, +, #, non-ASCII) is escaped.
QUERY_SAFE = "$'(),:/@*=;!"
# Characters kept literally inside a key segment value; the OData quote ' stays readable.
KEY_SAFE = "'"
# Dataverse refuses GET URLs over 32 768 characters; a lookup stays at a quarter of that, so the server's
# @odata.nextLink (the same query plus a paging cookie) and proxies with the common 8 KB limit still carry it.
MAX_GET_URL = 32_768
LOOKUP_URL_BUDGET = 8_192
# Values per In() request: small enough that one slow chunk is cheap to retry.
LOOKUP_CHUNK = 50


def odata_literal(value: Any) -> str:
    """An OData literal: strings single-quoted with ``'`` doubled, GUIDs/numbers bare, booleans true/false."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, uuid.UUID):
        return str(value)
    if value is None:
        return "null"
    return "'" + str(value).replace("'", "''") + "'"


def key_segment(key: str | uuid.UUID | Mapping[str, Any]) -> str:
    """``(<guid>)`` for a primary key or ``(name='value',...)`` for an alternate key, URL-encoded."""
    if isinstance(key, Mapping):
        if not key:
            raise ValueError("an alternate key needs at least one column")
        parts = []
        for name, value in key.items():
            if value is None:
                raise ValueError(f"alternate key column {name!r} has no value")
            literal = odata_literal(value) if not isinstance(value, uuid.UUID) else str(value)
            parts.append(f"{name.lower()}={quote(literal, safe=KEY_SAFE)}")
        return "(" + ",".join(parts) + ")"
    text = str(key).strip().strip("{}")
    if not GUID_RE.match(text):
        raise ValueError(f"not a GUID: {key!r} (pass a dict for an alternate key)")
    return f"({text.lower()})"


def entity_path(entity_set: str, key: str | uuid.UUID | Mapping[str, Any]) -> str:
    """``leads(<guid>)`` or ``leads(uni_applicantid='O''Brien')``, relative to the Web API root."""
    return f"{entity_set}{key_segment(key)}"


def encode_query_value(value: Any) -> str:
    """One query option's value, URL-encoded with OData's syntax characters kept readable."""
    return quote(str(value), safe=QUERY_SAFE)


def query_string(params: Mapping[str, Any]) -> str:
    """``$select=…&$filter=…`` from the options that have a value, in the given order."""
    return "&".join(f"{name}={encode_query_value(value)}" for name, value in params.items() if value)


def page_key(url: str) -> tuple[str, str, str]:
    """A page URL compared by meaning: origin, decoded path and decoded query (encodings of one URL differ)."""
    parts = urlsplit(url)
    return normalise_origin(url), unquote(parts.path), unquote_plus(parts.query)


def in_filter(column: str, literals: Iterable[str], extra: str | None = None) -> str:
    """``Microsoft.Dynamics.CRM.In(PropertyName='col',PropertyValues=[…])``, and ``(extra)`` when given.

    ``literals`` are already OData literals (``odata_literal``); the column must be a logical name."""
    if not LOGICAL_NAME_RE.match(column):
        raise ValueError(f"not a column logical name: {column!r}")
    text = f"Microsoft.Dynamics.CRM.In(PropertyName='{column}',PropertyValues=[{','.join(literals)}])"
    return f"{text} and ({extra})" if extra else text


def in_filters(
    column: str,
    values: Iterable[Any],
    *,
    extra: str | None = None,
    max_values: int = LOOKUP_CHUNK,
    max_encoded: int,
) -> Iterator[str]:
    """``$filter`` texts covering every distinct value once: at most ``max_values`` values each, and each no
    longer than ``max_encoded`` characters once URL-encoded (what the GET URL has room for).

    A value too long to fit even alone is a ``ValueError`` that names the column, never the value."""
    if max_values <= 0:
        raise ValueError("max_values must be positive")
    seen: set[str] = set()
    literals: list[str] = []
    for value in values:
        if value is None or isinstance(value, bool | float):
            kind = type(value).__name__
            raise ValueError(f"an In() lookup on {column} takes text, integer or GUID values, not {kind}")
        literal = odata_literal(value)
        if literal not in seen:
            seen.add(literal)
            literals.append(literal)
    fixed = len(encode_query_value(in_filter(column, [], extra)))  # everything but the values
    chunk: list[str] = []
    size = fixed
    for literal in literals:
        width = len(encode_query_value(literal))
        if fixed + width > max_encoded:
            raise ValueError(
                f"a value of {column} is too long for a lookup URL ({width} characters encoded, room for "
                f"{max_encoded - fixed})"
            )
        grown = size + width + (1 if chunk else 0)
        if chunk and (len(chunk) >= max_values or grown > max_encoded):
            yield in_filter(column, chunk, extra)
            chunk, grown = [], fixed + width
        chunk.append(literal)
        size = grown
    if chunk:
        yield in_filter(column, chunk, extra)
