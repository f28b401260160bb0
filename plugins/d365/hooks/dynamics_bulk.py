"""Planned writes as Dataverse bulk messages where the org has them, ``$batch`` for the rest and as the fallback.

``write_operations`` has the contract of ``DynamicsHook.execute_batch``: one ``BatchResult`` per operation, in
order. What goes where (reference §5.3 and §12, Microsoft's "Use bulk operation messages"):

* **Upserts** (``PATCH <set>(<key>)`` without ``If-Match``/``If-None-Match``, a JSON body, no header but
  ``Prefer``/``Content-Type``, no query but ``$select``) are sent in groups of ``group_size`` as ``POST
  <set>/Microsoft.Dynamics.CRM.UpsertMultiple`` when ``messages`` holds ``UpsertMultiple``. Each target carries
  ``@odata.type`` (``Microsoft.Dynamics.CRM.<entity>``) and ``@odata.id`` (the operation's own ``<set>(<key>)``),
  and its body without the key's columns: with a key column in the body the service fails the create path
  (400 ``0x80040216``). The sync addresses leads by GUID, so that is ``leadid``, which its bodies never carry;
  the alternate-key column they do carry (``uni_applicantid``) is data there, not the addressing key.
* Two operations on the same record never share a request: the n-th write of a record (its ``<set>(<key>)``,
  case-insensitive) goes in round n, and rounds run one after the other (each: its UpsertMultiple groups, then
  one ``$batch`` of the rest), so the same record's writes keep their order whichever way each is sent.
* **Everything else** (``If-Match`` updates, ``DELETE``, any other request) goes through ``execute_batch``
  unchanged, as does every write when ``messages`` lacks ``UpsertMultiple``: then this is exactly
  ``execute_batch(operations, continue_on_error=True, idempotent=True)``, chunked at 1000.
* **A group that fails as a whole** (lead is a standard table: one bad record rolls the request back) with an
  error answer that is not a 429 (a 4xx, or a 5xx after the hook's retries) is sent again as
  ``execute_batch(group, continue_on_error=True)``, so one bad record costs only itself and its error (Dataverse's
  code, the operation's ``record``) comes from its own ``$batch`` part. The log names the group's status and code,
  never the message (it may quote a value of a record).
* **Transient faults** follow the hook's retry rules: a 429 is resent after the shared Retry-After pause, 5xx,
  timeouts and lying 2xx answers are resent because an upsert is safe to repeat (``idempotent=True``). A 429 or a
  transport failure that outlasts the retries is raised, as ``execute_batch`` raises it; the caller resends the
  whole slice (upserts again: nothing is written twice).

**Created or updated.** UpsertMultiple answers 204 without a body on the Web API (its reference: "The
UpsertMultipleResponse complex type is not returned"), so Dataverse does not say which targets it created. Those
operations get a ``BulkResult``: status 204 as answered, ``created`` None. Operations that went through ``$batch``
(the rest, and a fallen-back group) keep their 201/200 answers.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import requests

from d365.hooks.answers import Where, read_json
from d365.hooks.dynamics_batch import MAX_BATCH_OPERATIONS, BatchRequest, BatchResult
from d365.hooks.errors import DynamicsError, DynamicsMalformedAnswer, DynamicsThrottled
from d365.hooks.odata import GUID_RE

UPSERT_MULTIPLE = "UpsertMultiple"
# Microsoft's data-migration guidance for out-of-the-box tables such as lead: 200-300 records per request. A
# group that fails costs a $batch of the same size, so the lower end.
DEFAULT_GROUP_SIZE = 200
MAX_GROUP_SIZE = 1000

_TARGET_RE = re.compile(r"^([A-Za-z_][A-Za-z0-9_]*)\((.+)\)$")
_ALLOWED_HEADERS = frozenset({"prefer", "content-type"})


class WriterHook(Protocol):
    """What the writer uses of ``DynamicsHook`` (a protocol: ``dynamics.py`` imports this module)."""

    api_path: str

    @property
    def log(self) -> Any: ...

    def _request(
        self,
        method: str,
        path: str,
        *,
        json_body: Any = None,
        record: str | None = None,
        idempotent: bool | None = None,
        read: Callable[[requests.Response], None] | None = None,
    ) -> requests.Response: ...

    def _primary_id(self, entity_set: str) -> str: ...

    def _bump(self, name: str, amount: float = 1) -> None: ...

    def execute_batch(
        self, operations: Sequence[BatchRequest], *, continue_on_error: bool = True, idempotent: bool = True
    ) -> list[BatchResult]: ...


@dataclass
class BulkResult(BatchResult):
    """The answer to an operation that an ``UpsertMultiple`` request wrote: ``status`` is the request's (204),
    ``created`` None because the Web API does not say (see the module docstring)."""

    message: str = UPSERT_MULTIPLE
    created: bool | None = None


@dataclass(frozen=True)
class _Upsert:
    """An operation that may go into an UpsertMultiple request, with what its target needs."""

    index: int
    entity_set: str
    key: str  # the text between the parentheses of the url


def write_operations(
    hook: WriterHook,
    operations: Sequence[BatchRequest],
    *,
    entity: str,
    messages: frozenset[str],
    group_size: int = DEFAULT_GROUP_SIZE,
) -> list[BatchResult]:
    """Send ``operations`` (the sync's planned ``Operation``s, or any ``BatchRequest``) and return one result per
    operation, in order: upserts as UpsertMultiple groups where ``messages`` (``hook.bulk_messages(entity)``) holds
    ``UpsertMultiple``, everything else, and every failed group, as ``$batch`` with continue-on-error.

    :param entity: the table's logical name (``lead``): the targets' ``@odata.type``
    :param group_size: operations per UpsertMultiple request (1 to 1000)
    """
    if not 1 <= group_size <= MAX_GROUP_SIZE:
        raise ValueError(f"group_size must be between 1 and {MAX_GROUP_SIZE}, got {group_size}")
    results: list[BatchResult | None] = [None] * len(operations)
    if not operations:
        return []
    if UPSERT_MULTIPLE not in messages:  # exactly the $batch writer
        rounds: Iterator[list[int]] = iter([list(range(len(operations)))])
    else:
        rounds = _rounds(operations)
    primary_id = hook._primary_id  # the key column of a GUID-addressed target (from metadata once read)
    for round_indexes in rounds:
        upserts = [u for i in round_indexes if (u := _as_upsert(i, operations[i], messages)) is not None]
        chosen = {u.index for u in upserts}
        for group in _groups(upserts, group_size):
            ops = [operations[u.index] for u in group]
            for u, result in zip(group, _send_group(hook, entity, group, ops, primary_id), strict=True):
                results[u.index] = result
        rest = [i for i in round_indexes if i not in chosen]
        for start in range(0, len(rest), MAX_BATCH_OPERATIONS):
            chunk = rest[start : start + MAX_BATCH_OPERATIONS]
            answered = hook.execute_batch([operations[i] for i in chunk], continue_on_error=True, idempotent=True)
            for i, result in zip(chunk, answered, strict=True):
                results[i] = result
    assert all(r is not None for r in results)
    return results  # type: ignore[return-value]


def _identity_of(op: BatchRequest) -> str | None:
    """The record an operation addresses (``<set>(<key>)``, case-insensitive), None when its url names none."""
    path = (op.url or "").split("?", 1)[0].strip()
    match = _TARGET_RE.match(path)
    if match is None:
        return None
    return f"{match.group(1).lower()}({match.group(2).strip().lower()})"


def _rounds(operations: Sequence[BatchRequest]) -> Iterator[list[int]]:
    """Operation indexes in rounds where no record appears twice: the n-th write of a record goes in round n.
    An operation that names no record (a POST to the set, a query) goes in the first round."""
    seen: dict[str, int] = {}
    rounds: list[list[int]] = [[]]
    for index, op in enumerate(operations):
        identity = _identity_of(op)
        n = 0
        if identity is not None:
            n = seen.get(identity, 0)
            seen[identity] = n + 1
        if n == len(rounds):
            rounds.append([])
        rounds[n].append(index)
    yield from rounds


def _as_upsert(index: int, op: BatchRequest, messages: frozenset[str]) -> _Upsert | None:
    """The operation as an UpsertMultiple target, or None when it is anything but a plain upsert (or the org
    lacks UpsertMultiple)."""
    if UPSERT_MULTIPLE not in messages or op.method.upper() != "PATCH" or not isinstance(op.body, Mapping):
        return None
    if not op.url:
        return None
    headers = {k.lower(): v for k, v in (op.headers or {}).items()}
    if set(headers) - _ALLOWED_HEADERS:
        return None  # If-Match / If-None-Match (update or create only) or anything a target cannot carry
    if "prefer" in headers and headers["prefer"].replace(" ", "").lower() != "return=representation":
        return None
    path, _, query = op.url.strip().partition("?")
    if query and not all(part.startswith("$select=") for part in query.split("&")):
        return None
    match = _TARGET_RE.match(path)
    if match is None:
        return None
    return _Upsert(index, match.group(1), match.group(2).strip())


def _groups(upserts: list[_Upsert], size: int) -> Iterator[list[_Upsert]]:
    """Consecutive groups of at most ``size``, per entity set (a round holds every record once already)."""
    by_set: dict[str, list[_Upsert]] = {}
    for u in upserts:
        by_set.setdefault(u.entity_set, []).append(u)
    for members in by_set.values():
        for start in range(0, len(members), size):
            yield members[start : start + size]


def _key_columns(key: str, primary_id: str) -> set[str]:
    """The columns a key segment names: the primary id for a GUID, the names of an alternate key's parts."""
    text = key.strip().strip("{}")
    if GUID_RE.match(text):
        return {primary_id.lower()}
    names = set()
    for part in re.findall(r"([A-Za-z_][A-Za-z0-9_]*)\s*=", re.sub(r"'(?:[^']|'')*'", "''", key)):
        names.add(part.lower())
    return names


def _target(entity: str, u: _Upsert, body: Mapping[str, Any], primary_id: str) -> dict[str, Any]:
    keys = _key_columns(u.key, primary_id)
    target: dict[str, Any] = {
        "@odata.type": f"Microsoft.Dynamics.CRM.{entity}",
        "@odata.id": f"{u.entity_set}({u.key})",
    }
    for name, value in body.items():
        if name.lower() in keys or name in ("@odata.type", "@odata.id"):
            continue  # a key column in the body fails the create path (400 0x80040216)
        target[name] = value
    return target


def _span(ops: list[BatchRequest]) -> str:
    """What an error of the whole group calls it: its first and last records (applicant ids, never values)."""
    return f"{ops[0].record or '?'} to {ops[-1].record or '?'} ({len(ops)} operations)"


def _send_group(
    hook: WriterHook,
    entity: str,
    group: list[_Upsert],
    ops: list[BatchRequest],
    primary_id: Callable[[str], str],
) -> list[BatchResult]:
    entity_set = group[0].entity_set
    key_column = primary_id(entity_set)
    payload = {"Targets": [_target(entity, u, op.body or {}, key_column) for u, op in zip(group, ops, strict=True)]}
    path = f"{entity_set}/Microsoft.Dynamics.CRM.{UPSERT_MULTIPLE}"

    def check(answer: requests.Response) -> None:
        # Inside the retry loop: a 2xx that is not the action's answer (a proxy page) is resent like a 5xx.
        if answer.status_code == 204 and not answer.content.strip():
            return
        where = Where(DynamicsMalformedAnswer, "POST", hook.api_path + path, answer.status_code)
        if answer.status_code != 200 or not isinstance(
            read_json(answer.content, answer.headers.get("Content-Type"), where), dict
        ):
            raise where.fail("WrongShape", f"UpsertMultiple answered HTTP {answer.status_code} without its result")

    try:
        response = hook._request("POST", path, json_body=payload, idempotent=True, record=_span(ops), read=check)
    except (DynamicsThrottled, DynamicsMalformedAnswer):
        raise  # still throttled, or no trustworthy answer, after the hook's retries: the caller resends
    except DynamicsError as exc:
        if exc.status is None:
            raise  # nothing answered (timeout, connection) after the retries: as execute_batch would
        hook._bump("bulk_fallbacks")
        hook.log.warning(
            "Dynamics 365: UpsertMultiple of %d failed as a whole (HTTP %d, code %s); sending the group as $batch "
            "with continue-on-error",
            len(ops),
            exc.status,
            exc.code or "none",
        )
        return hook.execute_batch(ops, continue_on_error=True, idempotent=True)
    hook._bump("bulk_requests")
    hook._bump("bulk_operations", len(ops))
    hook.log.info("Dynamics 365: UpsertMultiple of %d -> HTTP %d", len(ops), response.status_code)
    return [BulkResult(operation=op, status=response.status_code, headers=dict(response.headers)) for op in ops]
