"""The one registry of a run folder's file names (relative to the run folder), each named once with whether it may
hold personal data. Every module that reads or writes a run file imports its name from here, so retention's list
of report files (kept until ``retention.report_days``) is derived from the same declarations and cannot drift.

A file that may hold a name, e-mail address or phone is ``personal``: deleted after ``retention.personal_days``.
A report file holds counts, cursors, applicant ids, reasons and settings-derived metadata only (the privacy e2e
test scans them). Files not declared here count as personal (``retention.is_report_file``).
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class RunFile:
    """One file of a run folder: where it lives, whether it may hold personal data, and what it holds."""

    name: str
    personal: bool
    holds: str


REGISTRY: dict[str, RunFile] = {}


def _declare(name: str, *, personal: bool, holds: str) -> str:
    """Register ``name`` once (a second declaration is a programming error) and return it for the constant."""
    if name in REGISTRY:
        raise ValueError(f"run file {name!r} declared twice")
    REGISTRY[name] = RunFile(name, personal, holds)
    return name


# -- every run ------------------------------------------------------------------------------------
RUN_MARKER = _declare("run.json", personal=False, holds="created_at, dag id, run id: the run's age for retention")
TIMINGS = _declare("timings.jsonl", personal=False, holds="step durations")
REPORT = _declare("report.json", personal=False, holds="counts, applicant ids with error codes and reasons")

# -- the sync DAG (d365.tasks) -------------------------------------------------------------------
PREFLIGHT = _declare("preflight.json", personal=False, holds="lead-table metadata, owner GUIDs, instance")
LOCK = _declare("lock.json", personal=False, holds="the sync lock this run holds: generation, ttl, waits")
LOCK_WAITS = _declare("lock/waits.jsonl", personal=False, holds="run ids of the lock holders this run waited for")
EXTRACT_APPLICANTS = _declare("extract/applicants.jsonl", personal=True, holds="the extracted applicants")
EXTRACT_CATALOG = _declare("extract/catalog.json", personal=False, holds="DreamApply's courses, terms, consents")
EXTRACT_META = _declare(
    "extract/meta.json", personal=False, holds="cursors, counts, requested and erased applicant ids"
)
TRANSFORM_LEADS = _declare("transform/leads.jsonl", personal=True, holds="mapped lead payloads")
TRANSFORM_OUTCOMES = _declare("transform/outcomes.jsonl", personal=True, holds="one outcome per applicant")
QUALITY_QUARANTINE = _declare("quality/quarantine.jsonl", personal=True, holds="quarantined rows")
QUALITY_GX_RESULT = _declare("quality/gx_result.json", personal=True, holds="the Great Expectations result")
QUALITY_FIELD_ISSUES = _declare("quality/field_issues.jsonl", personal=True, holds="invalid values per field")
QUALITY_SUMMARY = _declare("quality/summary.md", personal=False, holds="counts per check, field and reason")
QUALITY_SUMMARY_JSON = _declare("quality/summary.json", personal=False, holds="counts per check, field and reason")
PLAN_OPERATIONS = _declare("plan/operations.jsonl", personal=True, holds="the planned requests with payloads")
PLAN_META = _declare("plan/meta.json", personal=False, holds="counts, target, picklist options")
PLAN_DRY_RUN = _declare("plan/dry_run.json", personal=False, holds="a dry run's plan: counts, owners, applicant ids")
PLAN_PARKED = _declare("plan/parked.json", personal=False, holds="parked applicant ids this run held back")
LOAD_RESULTS = _declare("load/results.jsonl", personal=True, holds="one result per sent request")
LOAD_STATS = _declare("load/stats.json", personal=False, holds="request, retry and throttle counters")
COMMIT_PRIVACY = _declare(
    "commit/privacy.json", personal=False, holds="erasure counts and failures (applicant ids, error codes)"
)
COMMIT_PARKED = _declare(
    "commit/parked.json", personal=False, holds="applicant ids parked by this run, error codes, how many are parked"
)

# -- the reconcile DAG -----------------------------------------------------------------------------
RECONCILE_REPORT = _declare(
    "reconcile.json", personal=False, holds="reconciliation: applicant and lead ids per kind of drift"
)
RETENTION_REPORT = _declare(
    "retention.json", personal=False, holds="what the retention sweep deleted (folder names and counts)"
)

# Files without personal data: kept until ``retention.report_days``.
REPORT_FILES: frozenset[str] = frozenset(name for name, f in REGISTRY.items() if not f.personal)
PERSONAL_FILES: frozenset[str] = frozenset(name for name, f in REGISTRY.items() if f.personal)
