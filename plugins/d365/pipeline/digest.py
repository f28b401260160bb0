"""The per-run digest of record-level failures for the technical contact.

Built from ``report.json``: ``failures`` (applicant_id, error_code, error) and ``quarantine``
(applicant_id, reason), grouped by cause — the error code for failures, the reason for quarantines.
Only applicant IDs, codes and reasons: these are the texts the report already keeps free of names,
e-mails and phones; the sender (``d365.notifications.send_mail``, wired in by the report task) passes the
whole message through ``notifications.redact`` as well.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Protocol


class SendMail(Protocol):
    """Sends one message to the technical contact; False when skipped or it failed (never raises)."""

    def __call__(self, settings: Any, *, subject: str, body: str) -> bool: ...


@dataclass(frozen=True)
class Cause:
    kind: str  # "failed" | "quarantined"
    cause: str
    applicant_ids: tuple[int | str, ...]
    reasons: tuple[str, ...]  # distinct reasons of this cause (at most a few shown)


def _key(value: Any) -> tuple[int, Any]:
    return (0, value) if isinstance(value, int) else (1, str(value))


def group_causes(report: Mapping[str, Any]) -> list[Cause]:
    """Failures by error code, quarantines by reason; largest groups first."""
    groups: dict[tuple[str, str], tuple[list[Any], dict[str, None]]] = {}
    for f in report.get("failures") or []:
        key = ("failed", str(f.get("error_code") or "unknown"))
        ids, reasons = groups.setdefault(key, ([], {}))
        ids.append(f.get("applicant_id"))
        if f.get("error"):
            reasons[str(f["error"])] = None
    for q in report.get("quarantine") or []:
        reason = str(q.get("reason") or "no reason recorded")
        key = ("quarantined", reason)
        ids, reasons = groups.setdefault(key, ([], {}))
        ids.append(q.get("applicant_id"))
    causes = [
        Cause(kind, cause, tuple(sorted(dict.fromkeys(ids), key=_key)), tuple(reasons))
        for (kind, cause), (ids, reasons) in groups.items()
    ]
    return sorted(causes, key=lambda c: (c.kind != "failed", -len(c.applicant_ids), c.cause))


def build_digest(report: Mapping[str, Any], *, max_ids: int = 200, max_reasons: int = 5) -> tuple[str, str] | None:
    """(subject, body) of the digest, or None when the run has no record-level failure, quarantine or newly
    parked record."""
    causes = group_causes(report)
    parked = report.get("parked") or {}
    newly_parked = list(parked.get("newly_parked") or [])
    if not causes and not newly_parked:
        return None
    failed = sum(len(c.applicant_ids) for c in causes if c.kind == "failed")
    quarantined = sum(len(c.applicant_ids) for c in causes if c.kind == "quarantined")
    dag_id, run_id = report.get("dag_id", "?"), report.get("run_id", "?")
    subject = f"[d365 sync] {failed} failed, {quarantined} quarantined applicants in run {run_id}"
    if newly_parked:
        subject += f", {len(newly_parked)} parked"
    lines = [
        f"Record-level problems of run {run_id} ({dag_id}), grouped by cause.",
        "Applicant IDs and reasons only; look an applicant up in DreamApply by its ID.",
        "",
        f"failed: {failed} (retried automatically next run)",
        f"quarantined: {quarantined} (fix the data in DreamApply; the applicant is sent once it passes)",
    ]
    for c in causes:
        label = "error code" if c.kind == "failed" else "reason"
        lines += ["", f"{c.kind.upper()} — {label}: {c.cause} — {len(c.applicant_ids)} applicant(s)"]
        shown = c.applicant_ids[:max_ids]
        more = len(c.applicant_ids) - len(shown)
        lines.append("  applicant IDs: " + ", ".join(str(i) for i in shown) + (f" … and {more} more" if more else ""))
        for reason in c.reasons[:max_reasons]:
            lines.append(f"  reason: {reason}")
        if len(c.reasons) > max_reasons:
            lines.append(f"  … and {len(c.reasons) - max_reasons} more reasons (report.json)")
    if newly_parked:
        lines += _parked_lines(parked, newly_parked, max_ids)
    lines += [
        "",
        "How to retry: failed applicants are retried by the next scheduled run; to send some now, trigger the DAG",
        f"with params, e.g. `airflow dags trigger {dag_id} --conf '{{\"applicant_ids\": [123, 456]}}'`.",
        "The full list is in this run's report.json and quality/quarantine.jsonl.",
    ]
    return subject, "\n".join(lines)


def _parked_lines(parked: Mapping[str, Any], newly_parked: list[Mapping[str, Any]], max_ids: int) -> list[str]:
    """The records this run parked: they wait for a person (fix the cause, then release them)."""
    by_code: dict[str, list[Any]] = {}
    for r in newly_parked:
        by_code.setdefault(str(r.get("error_code") or "unknown"), []).append(r.get("applicant_id"))
    lines = [
        "",
        f"PARKED — {len(newly_parked)} applicant(s) failed {parked.get('max_failed_runs')} runs in a row and are no "
        "longer sent (neither retried nor sent when they change) until someone releases them"
        + (f"; {parked['total']} parked in all" if parked.get("total") is not None else "")
        + ".",
    ]
    for code, ids in sorted(by_code.items(), key=lambda item: (-len(item[1]), item[0])):
        shown = sorted(ids, key=_key)[:max_ids]
        more = len(ids) - len(shown)
        lines.append(
            f"  error code {code}: " + ", ".join(str(i) for i in shown) + (f" … and {more} more" if more else "")
        )
    lines += [
        "  After fixing the cause (in DreamApply or the CRM), release them on a host that reaches the ledger:",
        "  `python -m d365.parking list`, then `python -m d365.parking release <applicant ids>` (or `--all`);",
        "  the next run sends them again.",
    ]
    return lines


def send_digest(settings: Any, report: Mapping[str, Any], send: SendMail) -> bool:
    """One digest mail for this run when it has record-level failures, quarantines or newly parked records
    (``alerts.digest``), through ``send`` (the runtime's ``d365.notifications.send_mail``, which redacts)."""
    if not settings.alerts.digest:
        return False
    message = build_digest(report, max_ids=settings.alerts.max_ids_per_cause)
    if message is None:
        return False
    subject, body = message
    return send(settings, subject=subject, body=body)
