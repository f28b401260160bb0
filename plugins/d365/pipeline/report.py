"""The run summary: one line per outcome, the same text in the task log, the DAG run note and report.json.

With a credential pool (several application users, ``d365.hooks.dynamics_pool``) the summary says how many users
carried the load and how much each sent, and names every user taken out of the pool during the load with the
reason (``user dynamics365_user2 removed from the pool: AADSTS7000215 invalid client secret``): the load finished on
the others, but that user's secret or role needs fixing. ``report.json`` lists them under ``removed_users``
(connection id, client id, error code, reason; never a secret).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from d365.pipeline.runfiles import QUALITY_SUMMARY_JSON

# The order in which outcomes are shown; every applicant of a run lands in exactly one of these.
# ``erased`` applicants are not in the extract (DreamApply purged them): ``accounted_for`` is the extract
# plus the erasures of the run.
OUTCOMES = (
    "created",
    "updated",
    "adopted",
    "unchanged",
    "skipped_consent",
    "quarantined",
    "failed",
    "parked",
    "not_selected",
    "updates_off",
    "withdrawn",
    "erased",
)
LABELS = {
    "created": "created",
    "updated": "updated",
    "adopted": "adopted (existing lead, same email)",
    "unchanged": "unchanged (no write)",
    "skipped_consent": "skipped for consent",
    "quarantined": "quarantined",
    "failed": "failed (retried next run)",
    "parked": "parked (failed too many runs in a row; not sent until released)",
    "not_selected": "not selected (send all new is off)",
    "updates_off": "not updated (automatic updates are off)",
    "withdrawn": "consent withdrawn (lead flagged, deactivated or deleted)",
    "erased": "erased (right to be forgotten)",
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
    quality: Mapping[str, Any] | None = None,
    carried: list[int] | None = None,
) -> dict[str, Any]:
    """``quality``: the transform's ``quality/summary.json`` (``quality_summary`` of the run folder), so the note
    links the GX summary and result; without one the report has no quality section.
    ``carried``: applicant ids the journal named that could not be read, carried to the next run."""
    counts = {k: int(outcomes.get(k, 0)) for k in OUTCOMES}
    report = {
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
        "carried_to_next_run": sorted(carried or []),
        "removed_users": removed_users(load_stats),
    }
    if quality:
        files = quality.get("files") or {}
        report["quality"] = {
            "ok": quality.get("ok"),
            "invalid_rows": quality.get("invalid_rows"),
            "quarantined": counts.get("quarantined", 0),
            "batch_failures": [f"{b['check']}: {b['detail']}" for b in quality.get("batch") or [] if not b.get("ok")],
            "summary": files.get("summary"),
            "gx_result": files.get("gx_result"),
            "quarantine_file": files.get("quarantine"),
            # field → reason code → rows: invalid values dropped / sent as entered (per field policy), no values
            "field_issues": quality.get("field_issues") or {},
            "field_issues_file": files.get("field_issues"),
        }
    return report


def removed_users(load_stats: Mapping[str, Any] | None) -> list[dict[str, Any]]:
    """The application users the load took out of its pool (``load/stats.json``'s ``pool.removed``)."""
    pool = (load_stats or {}).get("pool") or {}
    return [dict(r) for r in pool.get("removed") or [] if isinstance(r, Mapping)]


def removed_user_line(removed: Mapping[str, Any]) -> str:
    """``user dynamics365_user2 removed from the pool: AADSTS7000215 invalid client secret (client <id>)``."""
    code = f"{removed['error_code']} " if removed.get("error_code") else ""
    client = f" (client {removed['client_id']})" if removed.get("client_id") else ""
    return f"user {removed.get('connection_id')} removed from the pool: {code}{removed.get('reason') or ''}{client}"


def _pool_lines(report: Mapping[str, Any]) -> list[str]:
    pool = (report.get("load") or {}).get("pool") or {}
    members = [m for m in pool.get("members") or [] if isinstance(m, Mapping)]
    lines = []
    if len(members) > 1:
        lines.append(
            f"application users: {len(members)} (requests: "
            + ", ".join(f"{m.get('connection_id')} {m.get('requests', 0)}" for m in members)
            + ")"
        )
    lines += [removed_user_line(r) for r in report.get("removed_users") or []]
    return lines


def quality_summary(folder: Any) -> dict[str, Any] | None:
    """The run's ``quality/summary.json`` from its run folder (anything with ``read_json``, e.g.
    ``d365.pipeline.runfolder.RunFiles``), or None (never raises: the report is written whatever)."""
    try:
        found = folder.read_json(QUALITY_SUMMARY_JSON)
    except Exception:
        return None
    return found if isinstance(found, dict) else None


def summary_text(report: Mapping[str, Any]) -> str:
    out = report["outcomes"]
    head = "DreamApply → Dynamics 365" + (" (dry run: nothing written)" if report.get("dry_run") else "")
    parts = [f"{LABELS[k]}: {out[k]}" for k in OUTCOMES if out.get(k) or k in ("created", "updated", "unchanged")]
    lines = [head, f"applicants extracted: {report['extracted']}", *parts]
    if report.get("carried_to_next_run"):  # named by the journal, not readable this run: fetched first next run
        lines.append(f"carried to next run: {len(report['carried_to_next_run'])}")
    load = report.get("load") or {}
    if load:
        lines.append(
            "Dynamics requests: {requests}, retries: {retries}, throttled: {throttled}".format(
                requests=load.get("requests", 0), retries=load.get("retries", 0), throttled=load.get("throttled", 0)
            )
        )
    lines += _pool_lines(report)
    quality = report.get("quality") or {}
    if quality.get("summary"):
        stopped = "" if quality.get("ok", True) else " (quality gate FAILED: nothing written)"
        lines.append(
            f"quality: {quality.get('quarantined', 0)} quarantined{stopped}, see {quality['summary']}"
            + (f" (GX result: {quality['gx_result']})" if quality.get("gx_result") else "")
        )
    if quality.get("field_issues"):  # per field: rows, by reason code
        lines.append(
            "field issues: "
            + "; ".join(
                f"{name} {sum(codes.values())} ({', '.join(f'{c} {n}' for c, n in codes.items())})"
                for name, codes in quality["field_issues"].items()
            )
        )
    throttle = (load.get("throttle") or {}) if load else {}
    if throttle.get("retry_after_waits") or throttle.get("pacing_waits"):
        lines.append(
            f"throttling waits: {throttle.get('retry_after_waits', 0)} Retry-After, "
            f"{throttle.get('pacing_waits', 0)} pacing"
        )
    parked = report.get("parked") or {}
    if parked.get("newly_parked") or parked.get("held_back") or parked.get("total"):
        lines.append(
            f"parked: {len(parked.get('newly_parked') or [])} new after {parked.get('max_failed_runs')} failed runs "
            f"in a row, {parked.get('total') if parked.get('total') is not None else '?'} in all; "
            "list / release: python -m d365.parking list | release <ids>"
        )
    durations = report.get("durations_seconds") or {}
    if durations:
        lines.append("durations: " + ", ".join(f"{step} {seconds:.1f} s" for step, seconds in durations.items()))
    return "\n".join(lines)
