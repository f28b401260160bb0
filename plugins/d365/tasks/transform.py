"""The transform task: quality gate, consent, mapping; every applicant leaves as a payload or an outcome."""

from __future__ import annotations

import logging
from typing import Any

from airflow.sdk.exceptions import AirflowFailException

from d365.errors import PreflightError
from d365.pipeline.ledger import (
    Ledger,
)
from d365.pipeline.runfiles import (
    EXTRACT_APPLICANTS,
    EXTRACT_CATALOG,
    QUALITY_SUMMARY,
    TRANSFORM_LEADS,
    TRANSFORM_OUTCOMES,
)
from d365.tasks.context import RunContext

log = logging.getLogger(__name__)


def transform_step(rc: RunContext) -> dict[str, Any]:
    """Quality (Great Expectations), consent gate, mapping: every applicant leaves as a lead payload or an
    explained outcome (``triage``). A batch over the quality limits fails the task here, before any write:
    the plan and the load never run."""
    from d365.pipeline.fit import LeadSchema
    from d365.pipeline.ledger import last_full_extract_rows, record_full_extract_rows
    from d365.pipeline.mapping import check_catalog
    from d365.pipeline.triage import triage_applicants, write_artifacts

    s = rc.settings
    pre = rc.preflight()
    instance = pre["instance"]
    catalog = rc.folder.read_json(EXTRACT_CATALOG) or {}
    catalog_errors = check_catalog(s, catalog)
    if catalog_errors:
        raise PreflightError("settings do not match DreamApply: " + "; ".join(catalog_errors))
    schema = LeadSchema.from_metadata_json(pre["schema"])
    records = list(rc.folder.read_jsonl(EXTRACT_APPLICANTS))

    # A full extract (first load: both cursors still 0, or a resync) is checked against X-Count and the
    # previous full extract; incremental and manual runs have nothing to compare their size with.
    ledger = Ledger(rc.ledger_url)
    try:
        rc.hold_lock(ledger, "transform")
        cursors = ledger.cursors(instance)
        previous = last_full_extract_rows(ledger, instance)
    finally:
        ledger.dispose()
    full = not rc.requested_ids and (rc.full_resync or not any(cursors.values()))
    api_count = None
    if full and s.quality.check_api_count:
        from d365.hooks.dreamapply import DreamApplyHook

        api_count = DreamApplyHook(s.dreamapply.connection_id).count("/applicants")

    result = triage_applicants(
        records,
        catalog=catalog,
        settings=s,
        schema=schema,
        instance=instance,
        api_count=api_count,
        previous_full_count=previous if full else None,
        full_extract=full,
        add_options=True,  # allowed-but-missing picklist options: pending, the plan adds them
    )
    write_artifacts(rc.folder, result)
    rc.folder.write_jsonl(TRANSFORM_OUTCOMES, result.ledger_outcomes())
    counts = {k: v for k, v in result.counts().items() if k != "leads"}
    if not result.ok:
        rc.folder.write_jsonl(TRANSFORM_LEADS, [])  # nothing to plan, whatever runs next
        message = (
            "data quality gate failed, nothing was written to Dynamics: "
            + "; ".join(result.batch_failures)
            + f" (see {QUALITY_SUMMARY} in the run folder)"
        )
        log.error(message)
        raise AirflowFailException(message)  # retries cannot fix the data: fail the task at once
    rc.folder.write_jsonl(TRANSFORM_LEADS, (lead.to_dict() for lead in result.leads))
    if full and not rc.dry_run:  # a dry run leaves the ledger untouched
        ledger = Ledger(rc.ledger_url)
        try:
            record_full_extract_rows(ledger, instance, len(records))
        finally:
            ledger.dispose()
    log.info(
        "transform: %d lead payloads, %s; quality: %d of %d rows invalid (%s)",
        len(result.leads),
        counts,
        result.quality.invalid_rows,
        len(records),
        QUALITY_SUMMARY,  # relative to the run folder: a short path, not a long file:// URL
    )
    return {"leads": len(result.leads), **counts, "quality_invalid": result.quality.invalid_rows}
