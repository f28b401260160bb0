"""The extract task: new and changed applicants since the cursors, into the run folder."""

from __future__ import annotations

import logging
from typing import Any

from airflow.sdk.exceptions import AirflowFailException

from d365.pipeline.ledger import (
    LeadState,
    Ledger,
    carried_ids,
    parked_records,
)
from d365.pipeline.runfiles import (
    EXTRACT_APPLICANTS,
    EXTRACT_CATALOG,
    EXTRACT_META,
)
from d365.tasks.context import RunContext

log = logging.getLogger(__name__)


def extract_step(rc: RunContext) -> dict[str, Any]:
    """New and changed applicants since the cursors (or a resync, or given ids), plus failed ones to retry."""
    from d365.hooks.dreamapply import DreamApplyHook
    from d365.pipeline.extract import Cursors, extract

    s = rc.settings
    instance = rc.instance
    ledger = Ledger(rc.ledger_url)
    try:
        rc.hold_lock(ledger, "extract")  # never read the cursors without the lock
        cursors = Cursors(**ledger.cursors(instance))
        retry_ids = ledger.ids_in_state(instance, LeadState.FAILED)
        parked = {r.applicant_id for r in parked_records(ledger, instance)}
        retry_ids = [i for i in retry_ids if i not in parked]  # parked: not retried until a person releases them
        carried = sorted(carried_ids(ledger, instance))  # named by the journal, not read by an earlier run
    finally:
        ledger.dispose()
    hook = DreamApplyHook(s.dreamapply.connection_id)
    events = list(s.dreamapply.journal_events)
    page = s.dreamapply.page_size
    requested = rc.requested_ids
    if rc.tracker_codes or rc.academic_term_ids:  # a manual send by tracker or academic term
        from d365.pipeline.extract import applicants_by_selection

        selected = applicants_by_selection(hook, tracker_codes=rc.tracker_codes, academic_term_ids=rc.academic_term_ids)
        log.info(
            "manual send: %d applicants with tracker codes %s / academic terms %s",
            len(selected),
            rc.tracker_codes,
            rc.academic_term_ids,
        )
        requested = sorted({*requested, *selected})
        if not requested:
            raise AirflowFailException(
                f"no applicant has tracker codes {rc.tracker_codes} or academic terms {rc.academic_term_ids}"
            )
    if requested:
        result = extract(hook, cursors, event_names=events, applicant_ids=requested, page_size=page, carried=carried)
    else:
        result = extract(
            hook,
            cursors,
            event_names=events,
            deletion_events=s.dreamapply.deletion_events,  # erasure signals: read with the journal too
            full_resync=rc.full_resync,
            page_size=page,
            carried=carried,
        )
        seen = {a["applicant_id"] for a in result.applicants}
        missing = [i for i in retry_ids if i not in seen]
        if missing:
            retry = extract(hook, cursors, event_names=events, applicant_ids=missing, page_size=page)
            for a in retry.applicants:
                a["reason"] = "retry"
            result.applicants.extend(retry.applicants)
            result.counts["retry"] = len(retry.applicants)
    n = rc.folder.write_jsonl(EXTRACT_APPLICANTS, result.applicants)
    rc.folder.write_json(EXTRACT_CATALOG, result.catalog)
    counts = {**result.counts, "requests": hook.stats.get("requests", 0)}
    rc.folder.write_json(
        EXTRACT_META,
        {
            "cursors": {
                "applicant_id": result.cursors.applicant_id,
                "journal_event_id": result.cursors.journal_event_id,
            },
            "counts": counts,
            "requested": requested,
            "erased_applicant_ids": result.erased_applicant_ids,
            # saved by the commit with the cursors: not read now, fetched first next run / no longer carried
            "carried": result.carried,
            "carried_read": result.carried_read,
        },
    )
    log.info("extracted %d applicants (%s)", n, counts)
    return {"applicants": n, **{k: v for k, v in counts.items() if isinstance(v, int)}}
