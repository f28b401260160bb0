"""Reconciliation: the ledger against Dynamics 365, nightly (``reconcile_dreamapply_leads`` DAG).

Every ledger row with a lead (``SENT`` and ``WITHDRAWN``) is looked up by lead id, in chunks of
``LOOKUP_CHUNK`` ids per ``$filter`` (``leadid eq <guid> or …``, no ``statecode``
filter: inactive leads must be seen). Drift is reported per kind:

- ``deleted``: the lead no longer exists (SENT and WITHDRAWN rows; a withdrawal whose action deleted the
  lead is recorded with the lead id forgotten, so it is not looked up).
- ``deactivated``: ``statecode`` is not 0 (SENT rows only: a withdrawal may deactivate on purpose).
- ``edited``: a mapped column differs from what we sent (SENT rows only). What we sent is read from the run
  files, not re-mapped: the newest ``plan/operations.jsonl`` line of the sync DAG whose ``payload_hash`` is
  the ledger's (exactly the payload that reached Dynamics, whatever the mapping says today). Rows whose
  payload is no longer in the run files (retention, erasure scrubbing) are counted as ``not_checked``.
  Values are compared after normalisation (``None``/missing/empty string alike, numbers as numbers,
  timestamps as instants); bind columns (``…@odata.bind``) are not compared.

``reconcile.recreate_deleted`` (default false): deleted SENT leads are marked ``FAILED`` in the ledger with
reason ``deleted in CRM`` (the lead id and payload hash kept), so the next sync re-sends them as an upsert
on the same deterministic lead id, which recreates the lead. Nothing else is changed in Dynamics.

The result goes to ``reconcile.json`` in the reconcile run's folder and to the log (a summary with applicant
and lead ids only, no personal data).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterable, Iterator, Mapping
from datetime import datetime
from typing import Any

from d365.pipeline.ledger import LeadState, Ledger, LedgerUpdate

log = logging.getLogger(__name__)

LOOKUP_CHUNK = 50
DELETED_REASON = "deleted in CRM"
SAMPLE = 50  # ids listed per kind in the log summary (the JSON report lists all)


def sent_payloads(run_root: Any, dag_id: str, wanted: Mapping[int, str]) -> dict[int, dict[str, Any]]:
    """applicant id → the payload last sent with the ledger's hash (``wanted``: applicant id → hash), from
    the sync DAG's run folders (``plan/operations.jsonl``), newest folder first."""
    from airflow.sdk import ObjectStoragePath

    base = ObjectStoragePath(str(run_root).rstrip("/") + "/" + dag_id)
    if not base.exists():
        return {}
    folders = [p for p in base.iterdir() if p.is_dir()]
    folders.sort(key=lambda p: _mtime(p / "plan" / "operations.jsonl"), reverse=True)
    found: dict[int, dict[str, Any]] = {}
    for folder in folders:
        if len(found) == len(wanted):
            break
        ops = folder / "plan" / "operations.jsonl"
        if not ops.exists():
            continue
        with ops.open("r", encoding="utf-8") as fh:
            for line in fh:
                if not line.strip():
                    continue
                op = json.loads(line)
                aid = op.get("applicant_id")
                if aid in wanted and aid not in found and op.get("payload") and op.get("payload_hash") == wanted[aid]:
                    found[aid] = op["payload"]
    return found


def _mtime(path: Any) -> float:
    try:
        return float(path.stat().st_mtime)
    except (OSError, AttributeError):
        return 0.0


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


def _norm(value: Any) -> Any:
    if value is None or value == "":
        return None
    if isinstance(value, bool):
        return value
    if isinstance(value, int | float):
        return float(value)
    if isinstance(value, str):
        text = value.strip()
        if len(text) >= 10 and text[4:5] == "-" and text[7:8] == "-":
            try:
                parsed = datetime.fromisoformat(text.replace("Z", "+00:00"))
            except ValueError:
                return text
            return parsed.isoformat() if parsed.tzinfo or "T" in text else parsed.date().isoformat()
        return text
    return value


def differing_columns(sent: Mapping[str, Any], current: Mapping[str, Any]) -> list[str]:
    return sorted(
        column for column, value in sent.items() if "@" not in column and _norm(value) != _norm(current.get(column))
    )


def reconcile(
    *,
    ledger: Ledger,
    instance: str,
    dyn: Any,
    entity_set: str,
    primary_id: str,
    run_root: Any,
    sync_dag_id: str,
    recreate_deleted: bool = False,
    run_id: str | None = None,
) -> dict[str, Any]:
    entries = {
        aid: e
        for aid, e in ledger.entries(instance).items()
        if e.lead_id and e.state in (LeadState.SENT, LeadState.WITHDRAWN)
    }
    sent = {aid: e for aid, e in entries.items() if e.state is LeadState.SENT}
    payloads = sent_payloads(run_root, sync_dag_id, {aid: e.payload_hash or "" for aid, e in sent.items()})
    columns = {c for p in payloads.values() for c in p if "@" not in c}
    rows, requests = fetch_leads(dyn, entity_set, primary_id, [e.lead_id or "" for e in entries.values()], columns)

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
        payload = payloads.get(aid)
        if payload is None:
            not_checked.append(aid)
            continue
        changed = differing_columns(payload, row)
        if changed:
            edited.append({**item, "columns": changed})

    marked: list[int] = []
    if recreate_deleted:
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
        "counts": {
            "deleted": len(deleted),
            "deactivated": len(deactivated),
            "edited": len(edited),
            "not_checked": len(not_checked),
            "marked_for_resend": len(marked),
        },
        "recreate_deleted": recreate_deleted,
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
        + (f", {c['not_checked']} not compared (sent payload no longer in the run files)" if c["not_checked"] else ""),
    ]
    for kind in ("deleted", "deactivated", "edited"):
        items = report[kind]
        if items:
            shown = ", ".join(str(i["applicant_id"]) for i in items[:SAMPLE])
            lines.append(
                f"  {kind}: applicants {shown}" + (f" (+{len(items) - SAMPLE} more)" if len(items) > SAMPLE else "")
            )
    if report["recreate_deleted"]:
        lines.append(f"  marked for re-send (recreated by the next sync): {c['marked_for_resend']}")
    elif c["deleted"]:
        lines.append("  deleted leads are not recreated (reconcile.recreate_deleted is false)")
    return "\n".join(lines)
