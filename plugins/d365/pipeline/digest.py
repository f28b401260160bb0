"""The per-run digest of record-level failures for the technical contact.

Built from ``report.json``: ``failures`` (applicant_id, error_code, error) and ``quarantine``
(applicant_id, reason), grouped by cause — the error code for failures, the reason for quarantines.
Only applicant IDs, codes and reasons: these are the texts the report already keeps free of names,
e-mails and phones; the sender passes the whole message through ``notifications.redact`` as well.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any


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
    """(subject, body) of the digest, or None when the run has no record-level failure or quarantine."""
    causes = group_causes(report)
    if not causes:
        return None
    failed = sum(len(c.applicant_ids) for c in causes if c.kind == "failed")
    quarantined = sum(len(c.applicant_ids) for c in causes if c.kind == "quarantined")
    dag_id, run_id = report.get("dag_id", "?"), report.get("run_id", "?")
    subject = f"[d365 sync] {failed} failed, {quarantined} quarantined applicants in run {run_id}"
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
    lines += [
        "",
        "How to retry: failed applicants are retried by the next scheduled run; to send some now, trigger the DAG",
        f"with params, e.g. `airflow dags trigger {dag_id} --conf '{{\"applicant_ids\": [123, 456]}}'`.",
        "The full list is in this run's report.json and quality/quarantine.jsonl.",
    ]
    return subject, "\n".join(lines)


def send_digest(settings: Any, report: Mapping[str, Any]) -> bool:
    """One digest mail for this run when it has record-level failures or quarantines (``alerts.digest``)."""
    if not settings.alerts.digest:
        return False
    message = build_digest(report, max_ids=settings.alerts.max_ids_per_cause)
    if message is None:
        return False
    from d365.notifications import send_mail

    subject, body = message
    return send_mail(settings, subject=subject, body=body)
