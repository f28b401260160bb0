"""Decide, per mapped applicant, what the load must do: create, update, adopt, or nothing.

Inputs are the mapped leads, the ledger and what Dynamics already holds for applicants the ledger does
not know (leads carrying the applicant's id in the alternate-key column, or an existing lead with the
same email). The rules, in order:

1. The ledger says the lead already holds this exact payload (same hash) → ``unchanged`` (no request).
2. The ledger knows the lead id → ``update`` (unless automatic updates are off and the applicant was not
   explicitly requested → ``updates_off``).
3. Dynamics has a lead with this applicant's id in the key column → ``update`` of that lead.
4. Dynamics has a lead with the same email (DreamApply's own matching rule) that belongs to no other
   applicant → ``adopt`` it (update it with the mapping; its owner is kept).
5. Otherwise → ``create`` with the deterministic lead id (``identity.lead_id_for``), owned by the contact
   owner; new applicants are only sent when ``send_all_new`` is on or they were requested.

Every write is ``PATCH leads(<id>)``, an upsert, so replaying a plan after a crash is harmless.
Two applicants sharing one email never share a lead: only the lowest applicant id may adopt it.
An applicant the ledger marks ``erased`` is never sent again (``erased``, no request), even if it reappears.

Consent withdrawal and erasure (``privacy``) add ``withdraw`` and ``erase`` writes: a ``PATCH`` that only
updates (``If-Match: *``, never creates) or a ``DELETE`` (``Operation.method``); ``erased`` is the erasure of
an applicant without a lead (recorded by the commit, no request).

**Final requests.** ``final_requests`` turns every write into the request the load sends as it is: method,
URL (the entity set preflight resolved, ``d365.pipeline.target``, and the lead id key), headers and body. It is
the one place a lead gets an owner: a create binds ``ownerid@odata.bind`` to ``/systemusers(<id>)`` of the
first matching owner rule, else of the contact owner (``owner_for_create``: the only fallback; the ids were
resolved once, by preflight, ``owners.resolve_owners``). Updates, adoptions, withdrawals and erasures never
carry an owner: the lead keeps the one it has. A create nobody can own stops the plan (``PlanError``).

**The payload hash excludes the owner.** ``payload_hash`` is the transform's hash of the mapped columns
(``mapping.payload_hash``), taken before the owner is bound: an owner change in the settings is not a change of
the lead, so it does not re-send every lead (and the owner only ever applies to creates anyway).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass, field, fields
from typing import Any

from d365.pipeline.identity import lead_id_for
from d365.pipeline.ledger import LeadState, LedgerEntry
from d365.pipeline.mapping_result import MappedLead
from d365.pipeline.owners import OwnerIds

CREATE = "create"
UPDATE = "update"
ADOPT = "adopt"
UNCHANGED = "unchanged"
NOT_SELECTED = "not_selected"  # new applicant, send_all_new off, not requested
UPDATES_OFF = "updates_off"  # known lead, automatic updates off, not requested
WITHDRAW = "withdraw"  # consent withdrawn after sending: flag, deactivate or delete the lead (privacy.py)
ERASE = "erase"  # right to be forgotten: delete, anonymise or flag the lead (privacy.py)
ERASED = "erased"  # erased applicant without a lead to act on, or erased earlier: no request
UPSERTS = (CREATE, UPDATE, ADOPT)
PRIVACY_WRITES = (WITHDRAW, ERASE)
WRITES = (*UPSERTS, *PRIVACY_WRITES)

OWNER_BIND = "ownerid@odata.bind"  # a create's owner: ``/systemusers(<systemuserid>)``
UPSERT_HEADERS = {"Prefer": "return=representation"}  # the answer says whether the lead was created
UPDATE_ONLY_HEADERS = {"If-Match": "*"}  # withdraw / erase: never re-create a lead that is gone


class PlanError(ValueError):
    """The plan cannot give a write its final request (a create without an owner): nothing is written."""


@dataclass
class ExistingLead:
    lead_id: str
    applicant_key: str | None = None  # value of the alternate-key column, if any
    email: str | None = None
    createdon: str | None = None


@dataclass
class Operation:
    """One applicant's planned outcome; for a write, after ``final_requests``, the request exactly as sent:
    the hook's ``$batch`` encoder reads ``method``, ``url``, ``headers``, ``body`` and ``record`` from it as it is
    (``hooks.dynamics_batch.BatchRequest``), so the plan file holds the wire request, not a draft of it.

    ``body`` is the final body (a create's includes ``ownerid@odata.bind``; None for a ``DELETE``);
    ``payload_hash`` is the hash of the mapped columns only (the module docstring says why the owner is left out).
    """

    applicant_id: int
    action: str
    lead_id: str | None
    payload_hash: str
    body: dict[str, Any] | None = field(default_factory=dict)
    adopted: bool = False
    method: str = "PATCH"  # "DELETE" for a withdrawal or erasure that deletes the lead
    reason: str | None = None  # withdraw / erase / erased: what was done and why (goes to the ledger)
    url: str | None = None  # the request's target below the Web API root: ``<entity set>(<lead id>)...``
    headers: dict[str, str] = field(default_factory=dict)

    @property
    def record(self) -> str:
        """What an error names: the applicant id (never a value of the lead)."""
        return str(self.applicant_id)

    @property
    def owner_id(self) -> str | None:
        """The systemuserid a create binds as its owner (None for every other operation)."""
        bind = (self.body or {}).get(OWNER_BIND)
        if isinstance(bind, str) and bind.startswith("/systemusers(") and bind.endswith(")"):
            return bind[len("/systemusers(") : -1]
        return None

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> Operation:
        """Known fields only: a plan written by an older version loads, and the load's checks then refuse it
        (a plan of the version before ``body`` was called ``payload`` loads as it was written)."""
        known = {f.name for f in fields(cls)}
        values = {k: v for k, v in data.items() if k in known}
        if "body" not in data and isinstance(data.get("payload"), dict):
            values["body"] = data["payload"]
        return cls(**values)


def needs_lookup(mapped: Iterable[MappedLead], entries: Mapping[int, LedgerEntry]) -> list[MappedLead]:
    """The applicants whose lead the ledger cannot name: only these cost Dynamics lookups (erased ones never)."""
    return [
        m
        for m in mapped
        if (e := entries.get(m.applicant_id)) is None or (not e.lead_id and e.state is not LeadState.ERASED)
    ]


def plan_operations(
    mapped: Iterable[MappedLead],
    entries: Mapping[int, LedgerEntry],
    *,
    instance: str,
    by_applicant_key: Mapping[str, ExistingLead] | None = None,
    by_email: Mapping[str, list[ExistingLead]] | None = None,
    send_all_new: bool = True,
    automatic_updates: bool = True,
    adopt_by_email: bool = True,
    requested: Iterable[int] = (),
    force: bool = False,
) -> list[Operation]:
    by_applicant_key = by_applicant_key or {}
    by_email = by_email or {}
    requested_ids = {int(i) for i in requested}
    claimed: set[str] = set()
    ops: list[Operation] = []
    for m in sorted(mapped, key=lambda x: int(x.applicant_id or 0)):
        aid = int(m.applicant_id or 0)
        entry = entries.get(aid)
        asked = aid in requested_ids
        known_id = entry.lead_id if entry is not None else None
        if entry is not None and entry.state is LeadState.ERASED:
            ops.append(Operation(aid, ERASED, known_id, "", reason="erased earlier: never sent again"))
            continue
        if known_id:
            if not force and entry is not None and entry.state is LeadState.SENT and entry.payload_hash == m.hash:
                ops.append(Operation(aid, UNCHANGED, known_id, m.hash))
                continue
            action = UPDATE if (automatic_updates or asked) else UPDATES_OFF
            ops.append(_op(aid, action, known_id, m, adopted=bool(entry and entry.adopted)))
            claimed.add(known_id)
            continue
        if not (send_all_new or asked):
            ops.append(Operation(aid, NOT_SELECTED, None, m.hash))
            continue
        own = by_applicant_key.get(str(aid))
        if own is not None and own.lead_id not in claimed:
            claimed.add(own.lead_id)
            ops.append(_op(aid, UPDATE, own.lead_id, m))
            continue
        adoptable = _adoptable(m, by_email, claimed) if adopt_by_email else None
        if adoptable is not None:
            claimed.add(adoptable.lead_id)
            ops.append(_op(aid, ADOPT, adoptable.lead_id, m, adopted=True))
            continue
        lead_id = lead_id_for(instance, aid)
        claimed.add(lead_id)
        ops.append(_op(aid, CREATE, lead_id, m))
    return ops


def _op(aid: int, action: str, lead_id: str, m: MappedLead, *, adopted: bool = False) -> Operation:
    body = dict(m.payload) if action in UPSERTS else {}
    return Operation(aid, action, lead_id, m.hash, body, adopted=adopted)


def owner_for_create(owners: OwnerIds, rule: int | None, applicant_id: int) -> str:
    """The owner of one created lead: the matched owner rule's user, else the contact owner (the one fallback).

    A matched rule without a resolved user, or no contact owner at all, is a ``PlanError``: a lead is never
    created with whatever owner Dynamics would pick (the application user the sync signs in as)."""
    if rule is not None:
        if 0 <= rule < len(owners.rules) and owners.rules[rule]:
            return str(owners.rules[rule])
        raise PlanError(f"applicant {applicant_id}: owner_rules[{rule}] matched but preflight resolved no owner for it")
    if owners.default:
        return owners.default
    raise PlanError(
        f"applicant {applicant_id} would be created without an owner: set contact_owner (the owner of created leads)"
    )


def final_requests(
    ops: Iterable[Operation], *, entity_set: str, owners: OwnerIds, owner_rules: Mapping[int, int]
) -> list[Operation]:
    """Give every write its final request (method, URL, headers, body); other operations pass unchanged.

    :param entity_set: the lead table's entity set as preflight resolved it (``LeadTarget.entity_set``)
    :param owners: the owner ids preflight resolved (``owners.resolve_owners``)
    :param owner_rules: applicant id → index of the first matching owner rule (the mapper's ``owner_rule``)
    """
    done: list[Operation] = []
    for op in ops:
        if op.action in WRITES:
            if not op.lead_id:
                raise PlanError(f"applicant {op.applicant_id}: a {op.action} without a lead id")
            body = dict(op.body or {})
            body.pop(OWNER_BIND, None)  # only a create is owned, and only as decided here
            if op.action in UPSERTS:
                op.method, op.url, op.headers = "PATCH", f"{entity_set}({op.lead_id})?$select=leadid", UPSERT_HEADERS
                if op.action == CREATE:
                    owner = owner_for_create(owners, owner_rules.get(op.applicant_id), op.applicant_id)
                    body[OWNER_BIND] = f"/systemusers({owner})"
            elif op.method == "DELETE":
                op.url, op.headers = f"{entity_set}({op.lead_id})", {}
            else:
                op.method, op.url, op.headers = "PATCH", f"{entity_set}({op.lead_id})", UPDATE_ONLY_HEADERS
            op.body = None if op.method == "DELETE" else body  # a DELETE sends no body
            op.headers = dict(op.headers)
        done.append(op)
    return done


def _adoptable(m: MappedLead, by_email: Mapping[str, list[ExistingLead]], claimed: set[str]) -> ExistingLead | None:
    if not m.email:
        return None
    candidates = [
        lead
        for lead in by_email.get(m.email.strip().lower(), [])
        if lead.lead_id not in claimed and lead.applicant_key in (None, "", str(m.applicant_id))
    ]
    if not candidates:
        return None
    # The oldest matching lead is the one people have been working with.
    return min(candidates, key=lambda lead: (lead.createdon or "", lead.lead_id))


def summarize(ops: Iterable[Operation]) -> dict[str, int]:
    counts: dict[str, int] = {}
    for op in ops:
        counts[op.action] = counts.get(op.action, 0) + 1
    return counts
