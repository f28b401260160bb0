"""The commit task: after the load, record the outcomes, finish erasures, advance the cursors."""

from __future__ import annotations

import logging
from collections.abc import Iterable
from typing import Any

from airflow.sdk.exceptions import AirflowFailException

from d365.pipeline.ledger import (
    LeadState,
    Ledger,
    LedgerUpdate,
    LockLost,
    park_failing,
    parked_records,
    save_carried,
)
from d365.pipeline.plan import (
    ERASE,
    ERASED,
    WITHDRAW,
    Operation,
)
from d365.pipeline.runfiles import (
    COMMIT_PARKED,
    COMMIT_PRIVACY,
    EXTRACT_META,
    PLAN_OPERATIONS,
    TRANSFORM_OUTCOMES,
)
from d365.runtime.runfolder import default_run_root, storage_path
from d365.tasks.context import RunContext, _applicant_id, _load_results, release_lock

log = logging.getLogger(__name__)


def commit_step(rc: RunContext) -> dict[str, Any]:
    """After the load: record the non-write outcomes, finish the erasures (applicants removed from every run
    folder, then the ledger row scrubbed: pending until both succeeded) and advance the cursors (never before)."""
    instance = rc.instance
    outcomes = list(rc.folder.read_jsonl(TRANSFORM_OUTCOMES))
    meta = rc.folder.read_json(EXTRACT_META) or {}
    ops = [Operation.from_json(o) for o in rc.folder.read_jsonl(PLAN_OPERATIONS)]
    results = _load_results(rc)
    withdrawing = {op.applicant_id for op in ops if op.action == WITHDRAW}
    erasing = {op.applicant_id: op for op in ops if op.action in (ERASE, ERASED)}
    ledger = Ledger(rc.ledger_url)
    try:
        version = rc.hold_lock(ledger, "commit")
        ids = [i for i in (_applicant_id(o.get("applicant_id")) for o in outcomes) if i is not None]
        entries = ledger.entries(instance, [*ids, *erasing])
        updates: list[LedgerUpdate] = []
        for o in outcomes:
            aid = _applicant_id(o.get("applicant_id"))
            if aid is None or aid in withdrawing or aid in erasing:
                continue  # no ledger row without an id; withdrawals and erasures were recorded by the load
            state = LeadState(o["state"])
            entry = entries.get(aid)
            if entry is not None and (
                entry.state in (LeadState.ERASED, LeadState.ERASING)
                or (entry.state is LeadState.WITHDRAWN and state is LeadState.SKIPPED_CONSENT)
            ):
                continue  # still withdrawn (or erased): keep that state and its reason
            # a failure before the load (e.g. a picklist option that could not be added) gets the report's code,
            # so a parked record always says why (python -m d365.parking list)
            code = "before_load" if state is LeadState.FAILED else None
            updates.append(LedgerUpdate(aid, state, reason=o.get("reason"), error_code=code))
        ledger.record(instance, updates, run_id=rc.run_id, version=version)

        # erasures: without a lead (no request), or whose CRM action an earlier run did (state erasing), pending
        # now; with a lead done when the load says so (the load recorded them erasing). Erased only after the scrub.
        done: dict[int, str] = {}
        failures: list[dict[str, Any]] = []
        fresh: list[LedgerUpdate] = []
        for aid, op in sorted(erasing.items()):
            reason = op.reason or "erased"
            if op.action == ERASED:
                entry = entries.get(aid)
                if entry is not None and entry.state in (LeadState.ERASED, LeadState.ERASING):
                    reason = entry.reason or reason
                else:
                    fresh.append(LedgerUpdate(aid, LeadState.ERASING, reason=reason))
                done[aid] = reason
                continue
            row = results.get(aid, {})
            if row.get("outcome") == "erased":
                done[aid] = reason + (" (the lead no longer existed)" if row.get("status") == 404 else "")
            else:
                failures.append(
                    {
                        "applicant_id": aid,
                        "error_code": row.get("error_code") or "not_loaded",
                        "error": row.get("error") or "the erasure did not reach Dynamics; retried next run",
                    }
                )
        ledger.record(instance, fresh, run_id=rc.run_id, version=version)
        # the run files before the ledger: the ledger says erased only once no run file holds the applicant. A
        # failed scrub fails the commit; the erasure stays pending (erasing / failed) and the next run retries it.
        scrubbed = _scrub_run_files(rc, erasing) if erasing else 0
        by_reason: dict[str, list[int]] = {}
        for aid, reason in done.items():
            by_reason.setdefault(reason, []).append(aid)
        for reason, group in by_reason.items():
            ledger.scrub(instance, group, reason=reason)
        if "carried" in meta:  # before the cursors move: the journal events of these are behind the cursor
            save_carried(ledger, instance, meta["carried"], meta.get("carried_read") or [], run_id=rc.run_id)
        # records that failed parking.max_failed_runs runs in a row are parked for a person (d365.parking)
        newly_parked = park_failing(ledger, instance, rc.settings.parking.max_failed_runs, run_id=rc.run_id)
        parked_now = len(parked_records(ledger, instance))
        if rc.requested_ids:
            cursors = ledger.cursors(instance)  # a manual send does not move the cursors
        else:
            # only while this run still holds the lock, checked in the cursors' own transaction
            cursors = ledger.advance_cursors(instance, fence=rc.lock_fence(), **meta.get("cursors", {}))
    except LockLost as exc:
        raise AirflowFailException(str(exc)) from None
    finally:
        ledger.dispose()
    rc.folder.write_json(COMMIT_PRIVACY, {"erased": len(done), "erase_failures": failures, "scrubbed": scrubbed})
    rc.folder.write_json(COMMIT_PARKED, {"newly_parked": [r.to_json() for r in newly_parked], "total": parked_now})
    if newly_parked:
        log.warning(
            "parked %d applicants after %d failed runs in a row (%d parked in all): %s",
            len(newly_parked),
            rc.settings.parking.max_failed_runs,
            parked_now,
            [r.applicant_id for r in newly_parked][:50],
        )
    log.info(
        "committed %d outcomes; %d withdrawals, %d erasures (%d failed, %d run-file records scrubbed); cursors %s",
        len(updates),
        len(withdrawing),
        len(done),
        len(failures),
        scrubbed,
        cursors,
    )
    release_lock(rc)  # the cursors have moved: the next run of this instance may read them
    return {"cursors": cursors, "erased": len(done), "withdrawn": len(withdrawing)}


def _scrub_run_files(rc: RunContext, applicant_ids: Iterable[int]) -> int:
    """Every erased applicant leaves every run folder, a failed Dynamics action included (the ledger keeps what
    the retry needs: applicant id, lead id, reason). Raises when a file cannot be rewritten."""
    from d365.pipeline.privacy import personal_columns, scrub_run_files

    ids = sorted(applicant_ids)
    keys = personal_columns(rc.settings)
    root = default_run_root()
    scrubbed = scrub_run_files(storage_path(root), ids, personal_keys=keys)
    if not rc.folder.url.startswith(root.rstrip("/") + "/"):
        scrubbed += scrub_run_files(rc.folder.path, ids, personal_keys=keys)
    return scrubbed
