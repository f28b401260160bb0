"""Reconciliation: the ledger against Dynamics 365, nightly (``reconcile_dreamapply_leads`` DAG).

Every ledger row with a lead (``SENT`` and ``WITHDRAWN``) is looked up by lead id, in chunks of
``LOOKUP_CHUNK`` ids per ``$filter`` (``leadid eq <guid> or …``, no ``statecode``
filter: inactive leads must be seen). Drift is reported per kind:

- ``deleted``: the lead no longer exists (SENT and WITHDRAWN rows; a withdrawal whose action deleted the
  lead is recorded with the lead id forgotten, so it is not looked up).
- ``deactivated``: ``statecode`` is not 0 (SENT rows only: a withdrawal may deactivate on purpose).
- ``edited``: the CRM's current values of the sent columns no longer hash to the ledger's ``payload_hash``
  (SENT rows only). The sync keeps no copy of what it sent (run files expire, see ``retention``): the
  payload is rebuilt from the lead's current values of the columns a payload may carry
  (``privacy.allowed_columns``), in the representation the mapping sends (``crm_candidates``: dates as
  ``YYYY-MM-DD``, instants as ``…Z``), and hashed with ``mapping.payload_hash``. A payload may leave an empty
  column out (a create) or send it as null (an update), so every way of including the empty columns is tried
  (at most ``MAX_CANDIDATES`` payloads per lead; more: ``not_checked``). No match: edited. Which columns
  changed is not known (the values were not kept, on purpose). Bind columns (``…@odata.bind``) and rows
  without a payload hash are not compared (``not_checked``).

``reconcile.max_deleted_fraction`` (default 0.05): when more than that share of the looked-up leads reads as
deleted, the read is not trusted (a query that answered "nothing" for a whole chunk looks exactly like mass
deletion): nothing is marked, the report says ``refused`` and the DAG fails so that a person looks.

``reconcile.recreate_deleted`` (default false): deleted SENT leads are marked ``FAILED`` in the ledger with
reason ``deleted in CRM`` (the lead id and payload hash kept), so the next sync re-sends them as an upsert
on the same deterministic lead id, which recreates the lead. Nothing else is changed in Dynamics.

The result goes to ``reconcile.json`` in the reconcile run's folder and to the log (a summary with applicant
and lead ids only, no personal data).
"""

from __future__ import annotations

import itertools
import logging
import math
from collections.abc import Iterable, Iterator, Mapping, Sequence
from datetime import UTC, datetime
from typing import Any

from d365.pipeline.ledger import LeadState, Ledger, LedgerUpdate
from d365.pipeline.mapping import payload_hash

log = logging.getLogger(__name__)

LOOKUP_CHUNK = 50
DELETED_REASON = "deleted in CRM"
SAMPLE = 50  # ids listed per kind in the log summary (the JSON report lists all)
MAX_CANDIDATES = 4096  # payloads tried per lead before it counts as not checked
DATE_ONLY = "date"
INSTANT = "datetime"
NUMBER = "number"


def column_kinds(attributes: Mapping[str, Any]) -> dict[str, str]:
    """column → ``date`` / ``datetime`` / ``number`` from the lead table's attribute metadata (``type``,
    ``format``, ``date_behavior``); other columns come back from Dataverse as they were sent."""
    kinds: dict[str, str] = {}
    for name, attr in attributes.items():
        kind = getattr(attr, "type", None)
        if kind == "DateTime":
            date_only = "DateOnly" in (getattr(attr, "format", None), getattr(attr, "date_behavior", None))
            kinds[name] = DATE_ONLY if date_only else INSTANT
        elif kind in ("Decimal", "Double", "Money"):
            kinds[name] = NUMBER
    return kinds


def crm_candidates(value: Any, kind: str | None) -> list[Any]:
    """The payload values that leave ``value`` in the CRM: Dataverse answers instants as ``…Z`` without
    fractions (the mapping sends the same; a date sent into a date-and-time column comes back at midnight UTC)
    and numbers as JSON numbers (the mapping may have sent ``3`` for ``3.0``)."""
    if value is None:
        return [None]
    if kind in (DATE_ONLY, INSTANT) and isinstance(value, str):
        text = value.strip()
        try:
            parsed = datetime.fromisoformat(text.replace("Z", "+00:00"))
        except ValueError:
            return [value]
        if kind == DATE_ONLY or (len(text) == 10 and "T" not in text):
            return [parsed.date().isoformat()]
        instant = (parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)).astimezone(UTC).replace(microsecond=0)
        found = [instant.strftime("%Y-%m-%dT%H:%M:%SZ")]
        if (instant.hour, instant.minute, instant.second) == (0, 0, 0):
            found.append(instant.date().isoformat())
        return found
    if kind == NUMBER and isinstance(value, int | float) and not isinstance(value, bool):
        number = float(value)
        return [value, int(number)] if number.is_integer() and isinstance(value, float) else [value]
    return [value]


def payload_matches(
    row: Mapping[str, Any],
    columns: Sequence[str],
    expected_hash: str,
    kinds: Mapping[str, str] | None = None,
) -> bool | None:
    """Whether the CRM's current values of ``columns`` hash to ``expected_hash`` for some payload that could
    have been sent (each empty column left out or sent as null; each value in each of its representations).
    None: too many combinations to try (``MAX_CANDIDATES``)."""
    kinds = kinds or {}
    present: dict[str, list[Any]] = {}
    empty: list[str] = []
    for column in sorted(set(columns)):
        value = row.get(column)
        if value is None or value == "":
            empty.append(column)
        else:
            present[column] = crm_candidates(value, kinds.get(column))
    combos = math.prod(len(v) for v in present.values()) * 2 ** len(empty)
    if combos > MAX_CANDIDATES:
        return None
    names = list(present)
    for included in _empty_subsets(empty):
        nulls = dict.fromkeys(included)
        for values in itertools.product(*(present[n] for n in names)):
            if payload_hash({**dict(zip(names, values, strict=True)), **nulls}) == expected_hash:
                return True
    return False


def _empty_subsets(empty: list[str]) -> Iterator[tuple[str, ...]]:
    """Every subset of the empty columns, the likely ones first: all sent as null (an update), none (a create
    that left them out), then the rest."""
    yield tuple(empty)
    if empty:
        yield ()
    for size in range(1, len(empty)):
        yield from itertools.combinations(empty, size)


def _chunks(values: list[str], size: int) -> Iterator[list[str]]:
    for start in range(0, len(values), size):
        yield values[start : start + size]


def fetch_leads(
    dyn: Any, entity_set: str, primary_id: str, lead_ids: Iterable[str], columns: Iterable[str]
) -> tuple[dict[str, dict[str, Any]], int]:
    """lead id (lower case) → row, for the ids that exist; and the number of requests."""
    select = sorted({primary_id, "statecode", "statuscode", *columns})
    rows: dict[str, dict[str, Any]] = {}
    requests = 0
    for chunk in _chunks(sorted({i.lower() for i in lead_ids}), LOOKUP_CHUNK):
        flt = " or ".join(f"{primary_id} eq {i}" for i in chunk)  # GUID literals: compared as Edm.Guid
        requests += 1
        for row in dyn.query(entity_set, select=select, filter=flt):
            rows[str(row[primary_id]).lower()] = row
    return rows, requests


def reconcile(
    *,
    ledger: Ledger,
    instance: str,
    dyn: Any,
    entity_set: str,
    primary_id: str,
    columns: Iterable[str],
    kinds: Mapping[str, str] | None = None,
    recreate_deleted: bool = False,
    max_deleted_fraction: float = 0.05,
    run_id: str | None = None,
) -> dict[str, Any]:
    """Compare the ledger with Dynamics (see the module docstring). ``columns``: what a payload may carry
    (``privacy.allowed_columns``); ``kinds``: ``column_kinds`` of the lead table. Raises nothing for drift;
    when the deleted share is over ``max_deleted_fraction`` the report's ``refused`` says why and nothing is
    marked (the DAG then fails the task, without retries: reading again in minutes gives the same answer)."""
    compared = sorted(c for c in set(columns) if "@" not in c)
    entries = {
        aid: e
        for aid, e in ledger.entries(instance).items()
        if e.lead_id and e.state in (LeadState.SENT, LeadState.WITHDRAWN)
    }
    sent = {aid: e for aid, e in entries.items() if e.state is LeadState.SENT}
    rows, requests = fetch_leads(dyn, entity_set, primary_id, [e.lead_id or "" for e in entries.values()], compared)

    deleted: list[dict[str, Any]] = []
    deactivated: list[dict[str, Any]] = []
    edited: list[dict[str, Any]] = []
    not_checked: list[int] = []
    for aid, e in sorted(entries.items()):
        row = rows.get(str(e.lead_id).lower())
        item = {"applicant_id": aid, "lead_id": e.lead_id, "ledger_state": e.state.value}
        if row is None:
            deleted.append(item)
            continue
        if e.state is not LeadState.SENT:
            continue
        if row.get("statecode") not in (0, None):
            deactivated.append({**item, "statecode": row.get("statecode"), "statuscode": row.get("statuscode")})
        if not e.payload_hash:
            not_checked.append(aid)
            continue
        match = payload_matches(row, compared, e.payload_hash, kinds)
        if match is None:
            not_checked.append(aid)
        elif not match:
            edited.append(item)

    refused = None
    allowed = math.floor(max_deleted_fraction * len(entries))
    if len(deleted) > allowed:
        refused = (
            f"{len(deleted)} of {len(entries)} leads read as deleted in the CRM, more than "
            f"reconcile.max_deleted_fraction ({max_deleted_fraction:g}, at most {allowed}): nothing was marked. "
            "A wrong answer from Dynamics looks like this; if the leads were really deleted, raise the setting "
            "for one run."
        )
        log.error("reconciliation refused: %s", refused)
    marked: list[int] = []
    if recreate_deleted and refused is None:
        marked = [d["applicant_id"] for d in deleted if d["ledger_state"] == LeadState.SENT.value]
        ledger.record(
            instance,
            [
                LedgerUpdate(
                    aid,
                    LeadState.FAILED,
                    reason=DELETED_REASON,
                    error_code="deleted_in_crm",
                    error="the lead was deleted in Dynamics 365; reconciliation marked it for re-send",
                )
                for aid in marked
            ],
            run_id=run_id,
        )
    return {
        "instance": instance,
        "checked": len(entries),
        "sent_checked": len(sent),
        "lookup_requests": requests,
        "columns_compared": compared,
        "counts": {
            "deleted": len(deleted),
            "deactivated": len(deactivated),
            "edited": len(edited),
            "not_checked": len(not_checked),
            "marked_for_resend": len(marked),
        },
        "recreate_deleted": recreate_deleted,
        "max_deleted_fraction": max_deleted_fraction,
        "refused": refused,
        "deleted": deleted,
        "deactivated": deactivated,
        "edited": edited,
        "not_checked": not_checked,
        "marked_for_resend": marked,
    }


def summary_text(report: Mapping[str, Any]) -> str:
    c = report["counts"]
    lines = [
        f"reconciliation of {report['checked']} leads ({report['instance']}): "
        f"{c['deleted']} deleted, {c['deactivated']} deactivated, {c['edited']} edited in the CRM"
        + (f", {c['not_checked']} not compared (no hash, or too many empty columns)" if c["not_checked"] else ""),
    ]
    if report.get("refused"):
        lines.append(f"  REFUSED: {report['refused']}")
    for kind in ("deleted", "deactivated", "edited"):
        items = report[kind]
        if items:
            shown = ", ".join(str(i["applicant_id"]) for i in items[:SAMPLE])
            lines.append(
                f"  {kind}: applicants {shown}" + (f" (+{len(items) - SAMPLE} more)" if len(items) > SAMPLE else "")
            )
    if report.get("refused"):
        return "\n".join(lines)  # nothing was marked
    if report["recreate_deleted"]:
        lines.append(f"  marked for re-send (recreated by the next sync): {c['marked_for_resend']}")
    elif c["deleted"]:
        lines.append("  deleted leads are not recreated (reconcile.recreate_deleted is false)")
    return "\n".join(lines)
