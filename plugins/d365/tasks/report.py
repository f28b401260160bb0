"""The report task: counts from the run's files to the log, ``report.json``, the run note and the digest."""

from __future__ import annotations

import logging
from collections.abc import Iterable
from typing import Any

from d365.notifications import send_mail
from d365.pipeline.ledger import (
    LeadState,
)
from d365.pipeline.plan import (
    WITHDRAW,
    WRITES,
    Operation,
)
from d365.pipeline.report import build_report, quality_summary, summary_text
from d365.pipeline.runfiles import (
    COMMIT_PARKED,
    COMMIT_PRIVACY,
    EXTRACT_APPLICANTS,
    EXTRACT_META,
    LOAD_STATS,
    LOCK,
    PLAN_DRY_RUN,
    PLAN_OPERATIONS,
    PLAN_PARKED,
    REPORT,
    TIMINGS,
    TRANSFORM_OUTCOMES,
)
from d365.runtime.run_note import set_run_note
from d365.tasks.context import RunContext, _applicant_id, _load_results

log = logging.getLogger(__name__)


def _durations(rc: RunContext) -> dict[str, float]:
    durations = {row["step"]: row["seconds"] for row in rc.folder.read_jsonl(TIMINGS)}  # a retried step: last wins
    load = rc.folder.read_json(LOAD_STATS) or {}
    if isinstance(load.get("elapsed_seconds"), int | float):
        durations["load"] = round(float(load["elapsed_seconds"]), 3)
    return durations


def _log_summary(rc: RunContext, text: str) -> None:
    """The run summary, once, in the task log; run files named relative to the run folder (``quality/summary.md``),
    whose location is said once."""
    base = rc.folder.url.rstrip("/") + "/"
    log.info("run folder: %s", base)
    for line in text.replace(base, "").splitlines():
        log.info(line)


def report_step(rc: RunContext) -> dict[str, Any]:
    """Counts from the files of this run; to the log, report.json and the DAG run note."""
    if rc.dry_run:
        return _dry_run_report(rc)
    extract_meta = rc.folder.read_json(EXTRACT_META) or {}
    outcomes = list(rc.folder.read_jsonl(TRANSFORM_OUTCOMES))
    ops = [Operation.from_json(o) for o in rc.folder.read_jsonl(PLAN_OPERATIONS)]
    results = _load_results(rc)
    # erasures: the commit removed their lines from the run files and kept only counts and failures
    privacy = rc.folder.read_json(COMMIT_PRIVACY) or {}
    withdrawing = {op.applicant_id for op in ops if op.action == WITHDRAW}
    counts: dict[str, int] = _count(
        o["state"]
        for o in outcomes
        # a withdrawal is the applicant's one outcome, not also "skipped for consent"
        if not (o["state"] == LeadState.SKIPPED_CONSENT.value and _applicant_id(o.get("applicant_id")) in withdrawing)
    )
    for op in ops:
        if op.action in WRITES:
            outcome = results.get(op.applicant_id, {}).get("outcome", "failed")
            counts[outcome] = counts.get(outcome, 0) + 1
        else:
            counts[op.action] = counts.get(op.action, 0) + 1
    erase_failures = list(privacy.get("erase_failures") or [])
    counts["erased"] = counts.get("erased", 0) + int(privacy.get("erased", 0))
    counts["failed"] = counts.get("failed", 0) + len(erase_failures)
    failures = [
        {"applicant_id": aid, "error_code": r.get("error_code"), "error": r.get("error")}
        for aid, r in sorted(results.items())
        if r.get("outcome") == "failed"
    ]
    failures += erase_failures
    # failed before the load (e.g. a picklist option could not be added): the transform outcome says why
    failures += [
        {"applicant_id": o["applicant_id"], "error_code": "before_load", "error": o.get("reason")}
        for o in outcomes
        if o["state"] == LeadState.FAILED.value
    ]
    failures += [
        {"applicant_id": op.applicant_id, "error_code": "not_loaded", "error": "the load did not reach this record"}
        for op in ops
        if op.action in WRITES and op.applicant_id not in results
    ]
    quarantine = [
        {"applicant_id": o["applicant_id"], "reason": o.get("reason")}
        for o in outcomes
        if o["state"] == LeadState.QUARANTINED.value
    ]
    held = list((rc.folder.read_json(PLAN_PARKED) or {}).get("held") or [])
    counts["parked"] = counts.get("parked", 0) + len(held)  # held back: their one outcome this run
    report = build_report(
        dag_id=rc.dag_id,
        run_id=rc.run_id,
        outcomes=counts,
        extracted=int(extract_meta.get("counts", {}).get("total", 0)) or _lines(rc, EXTRACT_APPLICANTS),
        extract_counts=extract_meta.get("counts"),
        load_stats=rc.folder.read_json(LOAD_STATS) or {},
        failures=failures,
        quarantine=quarantine,
        carried=extract_meta.get("carried"),
        quality=quality_summary(rc.folder),
    )
    report["durations_seconds"] = _durations(rc)
    parking = rc.folder.read_json(COMMIT_PARKED) or {}
    report["parked"] = {
        "newly_parked": list(parking.get("newly_parked") or []),
        "held_back": held,
        "total": parking.get("total"),
        "max_failed_runs": rc.settings.parking.max_failed_runs,
        "release": "python -m d365.parking release <applicant ids> | --all",
    }
    report["lock"] = rc.folder.read_json(LOCK)  # the sync lock: generation, how long this run waited, for whom
    rc.folder.write_json(REPORT, report)
    text = summary_text(report)
    _log_summary(rc, text)
    report["note_set_via"] = set_run_note(rc.dag_id, rc.run_id, text)
    from d365.pipeline.digest import send_digest

    report["digest_sent"] = send_digest(rc.settings, report, send_mail)  # one mail per run with record-level failures
    return report["outcomes"]


def _dry_run_report(rc: RunContext) -> dict[str, Any]:
    """A dry run's report: the plan (nothing was loaded or committed), in the log, report.json and the note."""
    from d365.pipeline.dry_run import summary_text as dry_run_text

    summary = rc.folder.read_json(PLAN_DRY_RUN) or {"dry_run": True, "counts": {}}
    report = {"dag_id": rc.dag_id, "run_id": rc.run_id, **summary, "outcomes": {}}
    rc.folder.write_json(REPORT, report)
    text = dry_run_text(summary)
    _log_summary(rc, text)
    report["note_set_via"] = set_run_note(rc.dag_id, rc.run_id, text)
    return {"dry_run": True, **summary.get("counts", {})}


def _lines(rc: RunContext, name: str) -> int:
    return sum(1 for _ in rc.folder.read_jsonl(name))


def _count(states: Iterable[str]) -> dict[str, int]:
    counts: dict[str, int] = {}
    for state in states:
        counts[state] = counts.get(state, 0) + 1
    return counts
