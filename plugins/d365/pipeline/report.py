"""The run summary: one line per outcome, the same text in the task log, the DAG run note and report.json."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

# The order in which outcomes are shown; every applicant of a run lands in exactly one of these.
OUTCOMES = (
    "created",
    "updated",
    "adopted",
    "unchanged",
    "skipped_consent",
    "quarantined",
    "failed",
    "not_selected",
    "updates_off",
)
LABELS = {
    "created": "created",
    "updated": "updated",
    "adopted": "adopted (existing lead, same email)",
    "unchanged": "unchanged (no write)",
    "skipped_consent": "skipped for consent",
    "quarantined": "quarantined",
    "failed": "failed (retried next run)",
    "not_selected": "not selected (send all new is off)",
    "updates_off": "not updated (automatic updates are off)",
}


def build_report(
    *,
    dag_id: str,
    run_id: str,
    outcomes: Mapping[str, int],
    extracted: int,
    extract_counts: Mapping[str, int] | None = None,
    load_stats: Mapping[str, Any] | None = None,
    failures: list[dict[str, Any]] | None = None,
    quarantine: list[dict[str, Any]] | None = None,
    dry_run: bool = False,
) -> dict[str, Any]:
    counts = {k: int(outcomes.get(k, 0)) for k in OUTCOMES}
    return {
        "dag_id": dag_id,
        "run_id": run_id,
        "dry_run": dry_run,
        "extracted": extracted,
        "outcomes": counts,
        "accounted_for": sum(counts.values()),
        "extract": dict(extract_counts or {}),
        "load": dict(load_stats or {}),
        # applicant ids and reasons only: no names, emails or phones leave the pipeline in reports
        "failures": failures or [],
        "quarantine": quarantine or [],
    }


def summary_text(report: Mapping[str, Any]) -> str:
    out = report["outcomes"]
    head = "DreamApply → Dynamics 365" + (" (dry run: nothing written)" if report.get("dry_run") else "")
    parts = [f"{LABELS[k]}: {out[k]}" for k in OUTCOMES if out.get(k) or k in ("created", "updated", "unchanged")]
    lines = [head, f"applicants extracted: {report['extracted']}", *parts]
    load = report.get("load") or {}
    if load:
        lines.append(
            "Dynamics requests: {requests}, retries: {retries}, throttled: {throttled}".format(
                requests=load.get("requests", 0), retries=load.get("retries", 0), throttled=load.get("throttled", 0)
            )
        )
    return "\n".join(lines)
