"""Bulk messages bound to ``leads``: ``CreateMultiple``, ``UpdateMultiple`` and ``UpsertMultiple``.

``POST leads/Microsoft.Dynamics.CRM.<Message>`` with ``{"Targets": [<lead>, …]}``, as the lead table
supports them (reference §5.3 and §12, Microsoft's "Use bulk operation messages" page and its Web API
reference of the actions):

* Only the messages ``SandboxConfig.lead_bulk_messages`` names (all three by default, the same list
  ``sdkmessagefilters`` serves, ``messages.py``); any other → 400 ``0x80040800`` "The '<Message>' method
  does not support entities of type 'lead'. MessageProcessorCache returned MessageProcessor.Empty." (the
  service's words for an unsupported message; the HTTP status for it on the Web API is [unverified]).

* Every target needs ``@odata.type`` naming ``Microsoft.Dynamics.CRM.lead``; a missing or other
  type → 400, nothing written.
* All or nothing (lead is a standard table): the targets run in order inside one transaction; the
  first failure rolls back every write of the request and its error is the answer (the same code
  and message as the single operation would give). Inside a ``$batch`` change set the change set's
  transaction is used.
* Two targets that address the same record (same ``leadid``, or same alternate-key values,
  compared case-insensitively) → 400 ``0x80040203`` before anything is written [unverified wording].
* ``CreateMultiple`` → 200 ``{"@odata.context": "…#Microsoft.Dynamics.CRM.CreateMultipleResponse",
  "Ids": [...]}`` in target order. A ``leadid`` in a target is used as the new row's id.
* ``UpdateMultiple``: each target names its row by ``leadid`` in the body or by ``@odata.id``
  (``leads(<guid>)`` or an alternate key); a missing row → 404 and nothing is written → 204.
* ``UpsertMultiple``: each target names its row by ``@odata.id`` (``leads(uni_applicantid='A-1')``,
  or ``leads(<guid>)``) or by ``leadid`` in the body. Update path: key columns in the body are
  ignored (like a PATCH by key). Create path: the key values come from ``@odata.id``; a key column
  also in the body → 400 ``0x80040216`` "An unexpected error occurred." (what the service answers,
  microsoft/PowerPlatform-DataverseClient-Python PR 127). → **204 No Content**: the Web API reference of
  the action says so ("The UpsertMultipleResponse complex type is not returned"), and the SDK PR saw 204
  on the update path. So a Web API client cannot tell which targets were created and which updated.
* Server time (service protection's execution time, ``protection.py``): one request that costs
  ``bulk_request_operations + targets run × bulk_target_operations`` operations of ``operation_ms``
  (defaults 1 and 0.25: an ASSUMPTION, not a measurement; a failed request costs the targets it ran,
  the failing one included). A bulk message is one request toward the request limit.
* The request log gets ``bulk`` (the message), ``targets`` (how many), ``target_types`` (each target's
  ``@odata.type``, None where missing) and ``target_ids`` (each target's ``@odata.id``, None where
  missing): what tests assert the client sent. Never a column value.
"""

from __future__ import annotations

import json
import urllib.parse
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any, TypeVar

from sandbox.dataverse import errors, odata
from sandbox.dataverse.metadata import KeyDef
from sandbox.dataverse.store import Transaction, norm

if TYPE_CHECKING:
    from sandbox.dataverse.leads import LeadOps
    from sandbox.dataverse.service import Request, SubResponse

MESSAGES = {
    "Microsoft.Dynamics.CRM.CreateMultiple": "CreateMultiple",
    "Microsoft.Dynamics.CRM.UpdateMultiple": "UpdateMultiple",
    "Microsoft.Dynamics.CRM.UpsertMultiple": "UpsertMultiple",
}
LEAD_TYPES = ("Microsoft.Dynamics.CRM.lead", "#Microsoft.Dynamics.CRM.lead")
Target = tuple[str, Any, KeyDef | None]
# The service's code for a message the table does not support (SdkEntityDoesNotSupportMessage) [3p].
MESSAGE_NOT_SUPPORTED = "0x80040800"
_T = TypeVar("_T")


class _Run:
    """How many targets a request has run so far (its server time)."""

    def __init__(self) -> None:
        self.done = 0

    def each(self, items: list[_T]) -> Iterator[_T]:
        for item in items:
            self.done += 1
            yield item


def handle(ops: LeadOps, req: Request, message: str) -> SubResponse:
    """Run one bulk message all-or-nothing and answer like the service (errors too, with their cost)."""
    config = ops.service.state.config
    facts = _log_facts(req, message)
    run = _Run()
    try:
        if message not in config.lead_bulk_messages:
            raise errors.ODataError(
                400,
                MESSAGE_NOT_SUPPORTED,
                f"The '{message}' method does not support entities of type 'lead'. MessageProcessorCache returned "
                "MessageProcessor.Empty.",
            )
        response = _run(ops, req, message, run)
    except errors.ODataError as exc:
        response = ops.service.error_response(exc)
    response.ops = max(1, facts["targets"])
    response.cost = config.bulk_request_operations + run.done * config.bulk_target_operations
    response.log = facts
    return response


def _run(ops: LeadOps, req: Request, message: str, run: _Run) -> SubResponse:
    targets = _targets(req, message)
    own_txn = req.txn is None
    txn: Transaction = req.txn or ops.service.begin()
    try:
        if message == "CreateMultiple":
            ids = _create_multiple(ops, req, targets, txn, run)
        elif message == "UpdateMultiple":
            _update_multiple(ops, req, targets, txn, run)
            ids = None
        else:
            _upsert_multiple(ops, req, targets, txn, run)
            ids = None  # UpsertMultiple answers 204: no UpsertMultipleResponse on the Web API
    except BaseException:
        if own_txn:
            txn.rollback()
        raise
    if own_txn:
        txn.commit()
    if ids is None:
        return ops.service.empty_response(204)
    context = f"{ops.service.web_api_url}/$metadata#Microsoft.Dynamics.CRM.{message}Response"
    return ops.service.json_response(200, {"@odata.context": context, "Ids": ids})


def _log_facts(req: Request, message: str) -> dict[str, Any]:
    """What the request log keeps of a bulk request: the message and each target's type and id, no values."""
    try:
        body = json.loads(req.body) if req.body else None
    except (ValueError, UnicodeDecodeError):
        body = None
    targets = body.get("Targets") if isinstance(body, dict) else None
    items = targets if isinstance(targets, list) else []
    return {
        "bulk": message,
        "targets": len(items),
        "target_types": [item.get("@odata.type") if isinstance(item, dict) else None for item in items],
        "target_ids": [item.get("@odata.id") if isinstance(item, dict) else None for item in items],
    }


def _targets(req: Request, message: str) -> list[dict[str, Any]]:
    body = req.json_body()
    if not isinstance(body, dict):
        raise errors.payload_error("leads", f"The body of {message} must be a JSON object with a 'Targets' array.")
    for name in body:
        if name != "Targets":
            raise errors.payload_error(
                "leads",
                f"The parameter '{name}' in the request payload is not a valid parameter for the operation "
                f"'{message}'.",
            )
    targets = body.get("Targets")
    if not isinstance(targets, list) or not targets:
        raise errors.bad_request(
            f"{message} needs the parameter 'Targets': a non-empty array of lead entities.",
            code=errors.INVALID_ARGUMENT,
        )
    for index, item in enumerate(targets):
        if not isinstance(item, dict):
            raise errors.payload_error("leads", f"Targets[{index}] is not a JSON object.")
        kind = item.get("@odata.type")
        if kind is None:
            raise errors.payload_error(
                "leads",
                f"Targets[{index}] has no '@odata.type' annotation; every entity in Targets must name its type "
                "(Microsoft.Dynamics.CRM.lead).",
            )
        if kind not in LEAD_TYPES:
            raise errors.bad_request(
                f"Targets[{index}] is of type '{kind}', but {message} on leads takes Microsoft.Dynamics.CRM.lead "
                "entities.",
                code=errors.INVALID_ARGUMENT,
            )
    return targets


def _address(ops: LeadOps, item: dict[str, Any], index: int) -> Target | None:
    """The row a target names: its ``@odata.id`` (GUID or alternate key), else its ``leadid``; None if neither."""
    ref = item.get("@odata.id")
    if ref is not None:
        if not isinstance(ref, str):
            raise errors.payload_error("leads", f"The '@odata.id' of Targets[{index}] must be a string.")
        path = urllib.parse.urlsplit(ref).path
        marker = "/api/data/v9.2/"
        if marker in path:
            path = path.split(marker, 1)[1]
        segments = odata.split_path(path)
        if len(segments) != 1 or segments[0].name != ops.table.entity_set or not segments[0].args:
            raise errors.bad_request(
                f"The '@odata.id' of Targets[{index}] must address a lead, e.g. leads(uni_applicantid='A-1').",
                code=errors.INVALID_ARGUMENT,
            )
        return ops.parse_target(segments[0].args)
    lead_id = item.get("leadid")
    if lead_id is None:
        return None
    if not isinstance(lead_id, str) or not odata.is_guid(lead_id.strip("{}")):
        raise errors.payload_error("leads", f"The leadid of Targets[{index}] is not a valid GUID.")
    return ("id", lead_id.strip("{}").lower(), None)


def _identity(target: Target, existing: dict[str, Any] | None) -> tuple:
    """What two targets must not share: the row they reach, or (for a new row) the id or key values they create."""
    if existing is not None:
        return ("row", existing["leadid"])
    if target[0] == "id":
        return ("row", target[1])
    key = target[2]
    assert key is not None
    values = {name.lower(): value for name, value in target[1].items()}
    return ("key", key.schema_name, tuple(norm(values[a.lower()]) for a in key.key_attributes))


def _reject_repeats(identities: list[tuple]) -> None:
    seen: dict[tuple, int] = {}
    for index, identity in enumerate(identities):
        if identity in seen:
            raise errors.bad_request(
                f"Targets[{index}] addresses the same lead as Targets[{seen[identity]}]; a bulk request must not "
                "contain the same record twice.",
                code=errors.INVALID_ARGUMENT,
            )
        seen[identity] = index


def _payload(item: dict[str, Any]) -> dict[str, Any]:
    return {name: value for name, value in item.items() if name not in ("@odata.type", "@odata.id")}


def _create_multiple(
    ops: LeadOps, req: Request, targets: list[dict[str, Any]], txn: Transaction, run: _Run
) -> list[str]:
    for index, item in enumerate(targets):
        if "@odata.id" in item:
            raise errors.bad_request(
                f"Targets[{index}] carries '@odata.id'; CreateMultiple creates new rows (use UpsertMultiple to address "
                "existing ones).",
                code=errors.INVALID_ARGUMENT,
            )
    ids = []
    for item in run.each(targets):
        changes = ops.validate(_payload(item), "create")
        row = ops.insert_row(changes, req.caller, txn, duplicate_detection=req.duplicate_detection)
        ids.append(row["leadid"])
    return ids


def _update_multiple(ops: LeadOps, req: Request, targets: list[dict[str, Any]], txn: Transaction, run: _Run) -> None:
    resolved = []
    for index, item in enumerate(targets):
        target = _address(ops, item, index)
        if target is None:
            raise errors.bad_request(
                f"Targets[{index}] names no lead: UpdateMultiple needs the leadid (or '@odata.id') in every target.",
                code=errors.INVALID_ARGUMENT,
            )
        if "@odata.id" in item and "leadid" in item and target != ("id", str(item["leadid"]).strip("{}").lower(), None):
            raise errors.bad_request(
                f"The leadid of Targets[{index}] does not match its '@odata.id'.", code=errors.INVALID_ARGUMENT
            )
        existing = ops.find(target)
        if existing is None:
            raise ops.not_found(target)
        resolved.append((item, target, existing))
    _reject_repeats([_identity(target, existing) for _, target, existing in resolved])
    for item, target, existing in run.each(resolved):
        body = {k: v for k, v in _payload(item).items() if k != "leadid"}
        if target[0] == "key":
            body = _without_key_columns(body, target)
        changes = ops.validate(body, "update")
        ops._apply_update(None, existing, changes, req.caller, txn, duplicate_detection=req.duplicate_detection)


def _upsert_multiple(ops: LeadOps, req: Request, targets: list[dict[str, Any]], txn: Transaction, run: _Run) -> None:
    resolved = []
    for index, item in enumerate(targets):
        target = _address(ops, item, index)
        if target is None:
            raise errors.bad_request(
                f"Targets[{index}] names no lead: UpsertMultiple needs '@odata.id' (an alternate key or leads(<id>)) "
                "or the leadid in every target.",
                code=errors.INVALID_ARGUMENT,
            )
        resolved.append((item, target, ops.find(target)))
    _reject_repeats([_identity(target, existing) for _, target, existing in resolved])
    for item, target, existing in run.each(resolved):
        body = _payload(item)
        if existing is not None:
            if "@odata.id" not in item:
                body.pop("leadid", None)  # the leadid named the row
            if target[0] == "key":
                body = _without_key_columns(body, target)
            changes = ops.validate(body, "update")
            ops._apply_update(None, existing, changes, req.caller, txn, duplicate_detection=req.duplicate_detection)
        else:
            if target[0] == "key":
                key_columns = {a.lower() for a in target[2].key_attributes}  # type: ignore[union-attr]
                if any(name.lower() in key_columns for name in body):
                    # The service fails the create path when a key column is in the body as well as in @odata.id.
                    raise errors.ODataError(400, errors.UNEXPECTED, "An unexpected error occurred.")
                body.update({name.lower(): value for name, value in target[1].items()})
            else:
                if "leadid" in body and str(body["leadid"]).strip("{}").lower() != target[1]:
                    raise errors.bad_request(
                        "The leadid in the request body does not match the id in '@odata.id'.",
                        code=errors.INVALID_ARGUMENT,
                    )
                body["leadid"] = target[1]
            changes = ops.validate(body, "create")
            ops.insert_row(changes, req.caller, txn, duplicate_detection=req.duplicate_detection)


def _without_key_columns(body: dict[str, Any], target: Target) -> dict[str, Any]:
    key_columns = {a.lower() for a in target[2].key_attributes}  # type: ignore[union-attr]
    return {name: value for name, value in body.items() if name.lower() not in key_columns}
