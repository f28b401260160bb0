"""``sdkmessagefilters``: which SDK messages the org offers for which table, read-only, as the service serves it.

A client asks whether a table supports a bulk message with the query of Microsoft's "Use bulk operation
messages" page (reference §12)::

    GET sdkmessagefilters?$select=sdkmessagefilterid
        &$filter=sdkmessageid/name eq 'CreateMultiple' and primaryobjecttypecode eq 'lead'

(or with parameter aliases: ``…eq @message and primaryobjecttypecode eq @table&@message='CreateMultiple'
&@table='lead'``, the docs' own form). One row means supported, an empty ``value`` means not.

The sandbox serves a small catalogue: the ordinary messages (Create, Update, Delete, Retrieve,
RetrieveMultiple, Upsert, Assign, SetState) for lead, contact and account, and the bulk messages of lead
from ``SandboxConfig.lead_bulk_messages`` (all three by default; empty: an org without bulk support for lead).
contact and account always list CreateMultiple/UpdateMultiple/UpsertMultiple. ``sdkmessageid/name`` (the
message's name through the ``sdkmessageid`` lookup) is the one navigation path $filter and $orderby accept;
``$expand`` is refused like on every sandbox table. Ids are stable uuid5 values.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable
from typing import Any

from sandbox.dataverse import errors
from sandbox.dataverse.users import SimpleTable, stable_id

ORDINARY_MESSAGES = ("Create", "Update", "Delete", "Retrieve", "RetrieveMultiple", "Upsert", "Assign", "SetState")
ALL_BULK = ("CreateMultiple", "UpdateMultiple", "UpsertMultiple")
OTHER_TABLES = ("contact", "account")
MESSAGE_NAME_PATH = "sdkmessageid/name"

PROPERTIES: dict[str, str] = {
    "sdkmessagefilterid": "guid",
    "name": "string",
    "primaryobjecttypecode": "string",
    "secondaryobjecttypecode": "string",
    "availability": "int",
    "iscustomprocessingstepallowed": "bool",
    "isvisible": "bool",
    "_sdkmessageid_value": "guid",
    "createdon": "datetime",
    "modifiedon": "datetime",
    "versionnumber": "int",
}

_ALIAS_RE = re.compile(r"'(?:[^']|'')*'|@[A-Za-z_]\w*")


def build_filters(lead_bulk_messages: Iterable[str]) -> list[tuple[dict[str, Any], str]]:
    """The catalogue: each row with the name of its message (what ``sdkmessageid/name`` reads)."""
    tables = {"lead": (*ORDINARY_MESSAGES, *[m for m in ALL_BULK if m in set(lead_bulk_messages)])}
    tables.update({name: (*ORDINARY_MESSAGES, *ALL_BULK) for name in OTHER_TABLES})
    rows = []
    version = 2_009_000
    for table, messages in tables.items():
        for message in messages:
            version += 1
            rows.append(
                (
                    {
                        "sdkmessagefilterid": stable_id(f"sdkmessagefilter:{message}:{table}"),
                        "name": None,
                        "primaryobjecttypecode": table,
                        "secondaryobjecttypecode": "none",
                        "availability": 0,
                        "iscustomprocessingstepallowed": True,
                        "isvisible": True,
                        "_sdkmessageid_value": stable_id(f"sdkmessage:{message}"),
                        "createdon": "2024-01-15T09:00:00Z",
                        "modifiedon": "2024-01-15T09:00:00Z",
                        "versionnumber": version,
                    },
                    message,
                )
            )
    return rows


class MessageFilterTable(SimpleTable):
    """``sdkmessagefilters`` for the shared query engine, plus the ``sdkmessageid/name`` path."""

    def __init__(self, lead_bulk_messages: Iterable[str]) -> None:
        self.lead_bulk_messages = tuple(lead_bulk_messages)
        catalogue = build_filters(self.lead_bulk_messages)
        self.message_of = {row["sdkmessagefilterid"]: message for row, message in catalogue}
        super().__init__(
            "sdkmessagefilters", "sdkmessagefilter", "sdkmessagefilterid", PROPERTIES, [row for row, _ in catalogue]
        )

    def resolve(self, name: str) -> tuple[Callable[[Any], Any], str]:
        if name == MESSAGE_NAME_PATH:
            return (lambda row: self.message_of[row["sdkmessagefilterid"]]), "string"
        return super().resolve(name)


def resolve_aliases(query: dict[str, str]) -> dict[str, str]:
    """The query with ``@alias`` references in ``$filter`` replaced by their values (and the aliases removed).

    An alias that the filter uses but the query does not define → 400, as OData answers an unbound alias."""
    aliases = {name: value for name, value in query.items() if name.startswith("@")}
    if not aliases:
        return query
    out = {name: value for name, value in query.items() if not name.startswith("@")}
    text = out.get("$filter")
    if text:

        def substitute(match: re.Match[str]) -> str:
            token = match.group()
            if token.startswith("'"):
                return token  # a string literal: its text stays as it is
            if token not in aliases:
                raise errors.bad_request(f"The parameter alias '{token}' is not defined in the query.")
            return aliases[token]

        out["$filter"] = _ALIAS_RE.sub(substitute, text)
    return out
