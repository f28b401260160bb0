"""The plan task: what to write to Dynamics 365, as final requests the load only sends."""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping
from dataclasses import replace
from typing import Any

from airflow.sdk.exceptions import AirflowFailException

from d365.pipeline.ledger import (
    LeadState,
    Ledger,
    parked_records,
)
from d365.pipeline.mapping_result import MappedLead
from d365.pipeline.owners import OwnerIds
from d365.pipeline.plan import (
    WRITES,
    ExistingLead,
    needs_lookup,
    plan_operations,
    summarize,
)
from d365.pipeline.runfiles import (
    EXTRACT_META,
    PLAN_DRY_RUN,
    PLAN_META,
    PLAN_OPERATIONS,
    PLAN_PARKED,
    TRANSFORM_LEADS,
    TRANSFORM_OUTCOMES,
)
from d365.pipeline.settings import Settings
from d365.pipeline.target import LeadTarget
from d365.tasks.context import RunContext, _applicant_id

log = logging.getLogger(__name__)


def plan_step(rc: RunContext) -> dict[str, Any]:
    """Ledger first; Dynamics is asked only about applicants the ledger cannot name. Consent withdrawals
    (skipped for consent, lead sent earlier) and erasures (``extract/meta.json``, plus failed erasures of
    earlier runs) are planned here too (``privacy``). Pending leads get their new picklist options first
    (``_add_options``: one insert per option, one ``PublishXml``). Every write leaves as its final request
    (``plan.final_requests``: preflight's entity set, and each create's owner bind: the first matching owner
    rule's user, else the contact owner, as preflight resolved them); the load only sends it."""
    from d365.hooks.dynamics import DynamicsHook
    from d365.pipeline.fit import LeadSchema
    from d365.pipeline.plan import PlanError, final_requests
    from d365.pipeline.privacy import (
        DataMinimisationError,
        erasure_operations,
        pending_erasures,
        unexpected_columns,
        withdrawal_operations,
    )

    s = rc.settings
    pre = rc.preflight()
    instance = pre["instance"]
    target = LeadTarget.from_json(pre.get("target"))  # where preflight looked: lookups and options go there too
    meta = rc.folder.read_json(EXTRACT_META) or {}
    erased_ids = {i for i in map(_applicant_id, meta.get("erased_applicant_ids") or []) if i is not None}
    skipped = [
        aid
        for o in rc.folder.read_jsonl(TRANSFORM_OUTCOMES)
        if o.get("state") == LeadState.SKIPPED_CONSENT.value and (aid := _applicant_id(o.get("applicant_id")))
    ]
    mapped = [
        lead
        for lead in map(MappedLead.from_dict, rc.folder.read_jsonl(TRANSFORM_LEADS))
        if lead.applicant_id not in erased_ids
    ]
    owner_rule = {m.applicant_id: m.owner_rule for m in mapped if m.owner_rule is not None}
    ledger = Ledger(rc.ledger_url)
    try:
        rc.hold_lock(ledger, "plan")
        # failed (retried) and erasing (an erasure whose scrub has not succeeded yet: finished this run)
        failed = ledger.ids_in_state(instance, LeadState.FAILED, LeadState.ERASING)
        entries = ledger.entries(instance, [*(m.applicant_id for m in mapped), *skipped, *erased_ids, *failed])
        parked = {r.applicant_id for r in parked_records(ledger, instance)}
    finally:
        ledger.dispose()
    erased_ids |= set(pending_erasures({i: entries[i] for i in failed if i in entries}))
    mapped = [m for m in mapped if m.applicant_id not in erased_ids]
    # parked (failed parking.max_failed_runs runs in a row): not sent again, not even when the applicant changed or
    # a manual send names them, until released (python -m d365.parking release); privacy actions still go
    held = sorted(m.applicant_id for m in mapped if m.applicant_id in parked)
    if held:
        mapped = [m for m in mapped if m.applicant_id not in parked]
        log.warning("plan: %d parked applicants held back (python -m d365.parking): %s", len(held), held[:50])
    rc.folder.write_json(PLAN_PARKED, {"held": held})
    dyn: Any = None
    options_meta: dict[str, Any] = {}
    pending = [m for m in mapped if m.options_needed]
    if rc.dry_run and pending:  # reported as "would add", nothing inserted
        from d365.pipeline.picklists import needed_options

        wanted = needed_options(pending)
        options_meta = {
            "dry_run": True,
            "would_add": [{"attribute": a, "label": label} for a, label in wanted.values()],
        }
    elif pending:  # picklist options to add: once per run, one publish
        dyn = DynamicsHook(target.connection_id)
        mapped, options_meta = _add_options(rc, dyn, target.entity, mapped)
    unknown = needs_lookup(mapped, entries)
    by_key: dict[str, ExistingLead] = {}
    by_email: dict[str, list[ExistingLead]] = {}
    lookups = 0
    if unknown:
        dyn = dyn or DynamicsHook(target.connection_id)
        lookups = _lookup_existing(dyn, target.entity_set, target.primary_id, s, unknown, by_key, by_email)
    ops = plan_operations(
        mapped,
        entries,
        instance=instance,
        by_applicant_key=by_key,
        by_email=by_email,
        send_all_new=s.send_all_new,
        automatic_updates=s.automatic_updates,
        adopt_by_email=s.dedupe.adopt_existing_by_email,
        requested=rc.requested_ids,
        force=rc.full_resync,
    )
    ops += withdrawal_operations(skipped, entries, s, exclude=erased_ids)
    schema = LeadSchema.from_metadata_json(pre["schema"]) if pre.get("schema") else None
    ops += erasure_operations(erased_ids, entries, s, schema)
    extra = unexpected_columns(ops, s)
    if extra:  # data minimisation: nothing but the mapped columns may leave DreamApply
        shown = "; ".join(f"applicant {aid}: {', '.join(cols)}" for aid, cols in sorted(extra.items())[:10])
        raise DataMinimisationError(f"payloads hold columns outside data_mapping, nothing written: {shown}")
    owners = OwnerIds.from_json(pre.get("owners"), default=pre.get("owner_id"))  # preflight's one resolution
    try:  # after the minimisation check: the owner bind is the plan's, not a mapped column
        ops = final_requests(ops, entity_set=target.entity_set, owners=owners, owner_rules=owner_rule)
    except PlanError as exc:
        raise AirflowFailException(f"plan: {exc}; nothing written") from None  # settings, not a transient fault
    rc.folder.write_jsonl(PLAN_OPERATIONS, (op.to_json() for op in ops))
    counts = summarize(ops)
    rc.folder.write_json(
        PLAN_META,
        {
            "target": target.to_json(),  # every planned request addresses its entity set
            "counts": counts,
            "lookup_requests": lookups,
            "picklist_options": options_meta,
        },
    )
    log.info("plan: %s (%d lookup requests)", counts, lookups)
    if rc.dry_run:
        from d365.pipeline.dry_run import plan_summary
        from d365.pipeline.dry_run import summary_text as dry_run_text

        summary = plan_summary(ops, rc.folder.read_json(PLAN_META) or {}, owners, _load_estimate(rc, pre, ops))
        rc.folder.write_json(PLAN_DRY_RUN, summary)
        for line in dry_run_text(summary).splitlines():  # once, in the log (no print beside it)
            log.info(line)
    return {"writes": sum(counts.get(a, 0) for a in WRITES), **counts}


def _load_estimate(rc: RunContext, pre: Mapping[str, Any], ops: list[Any]) -> dict[str, Any]:
    """The dry run's estimate of the load time (``d365.pipeline.estimate``) from what preflight measured and
    recorded: the pool's users, the dop hint, the throttle's limits and its running estimate of a request."""
    from d365.pipeline.estimate import OrgLimits, estimate_load, estimate_text
    from d365.tuning import load_tuning

    throttle = pre.get("throttle") or {}
    tuning = load_tuning()
    users = 1 + len((pre.get("target") or {}).get("pool") or ())
    est = estimate_load(
        sum(1 for op in ops if op.action in WRITES),
        batch_size=tuning.batch_size,
        users=users,
        dop_hint=pre.get("dop_hint"),
        max_workers=tuning.max_workers,
        request_ms=float(throttle.get("request_estimate_ms") or 0.0),
        record_ms=float(rc.settings.estimate.record_ms),
        limits=OrgLimits.from_snapshot(throttle),
    )
    return {**est.to_json(), "text": estimate_text(est)}


def _add_options(
    rc: RunContext, dyn: Any, entity: str, mapped: list[MappedLead]
) -> tuple[list[MappedLead], dict[str, Any]]:
    """Add the picklist options the pending leads need (``picklists.ensure_options``: deduped, metadata
    re-read once with ``Consistency: Strong``, one ``PublishXml``), fill their payloads and hashes. Leads
    whose option could not be added leave the plan as failed (ledger: retried next run)."""
    from d365.pipeline.picklists import ensure_options, fill_options, needed_options

    pending = sorted((m for m in mapped if m.options_needed), key=lambda m: int(m.applicant_id or 0))
    wanted = needed_options(pending)
    attributes = {attribute for attribute, _ in wanted.values()}

    def current() -> dict[str, Any]:
        meta = dyn.get_entity_metadata(entity, strong=True)
        return {a: (meta.attributes[a].options if a in meta.attributes else None) for a in attributes}

    def code(exc: Exception) -> str:
        return str(getattr(exc, "code", "") or (f"HTTP {exc.status}" if getattr(exc, "status", None) else ""))

    result = ensure_options(
        wanted,
        current=current,
        insert=lambda attribute, label: dyn.insert_option_value(entity, attribute, label),
        publish=lambda: dyn.publish_xml(entity),
        error_code=code,
    )
    out: list[MappedLead] = []
    failed: dict[int, str] = {}
    for m in mapped:
        if not m.options_needed:
            out.append(m)
            continue
        payload, missing = fill_options(m.payload, m.options_needed, result.values)
        if missing:
            codes = sorted({result.failed.get(k, "") for k in result.failed if k[0] in missing} - {""})
            failed[int(m.applicant_id or 0)] = (
                f"picklist: the option needed for {', '.join(sorted(set(missing)))} could not be added"
                + (f" ({', '.join(codes)})" if codes else "")
                + "; retried next run"
            )
            continue
        out.append(replace(m, payload=payload, options_needed=[]))  # a new lead, so its hash is taken again
    if failed:  # their outcome: failed, through transform/outcomes.jsonl (commit records it, report counts it)
        outcomes = rc.folder.read_jsonl(TRANSFORM_OUTCOMES)
        kept = [o for o in outcomes if _applicant_id(o.get("applicant_id")) not in failed]
        kept += [
            {"applicant_id": aid, "row": None, "state": LeadState.FAILED.value, "reason": reason}
            for aid, reason in sorted(failed.items())
        ]
        rc.folder.write_jsonl(TRANSFORM_OUTCOMES, kept)
        log.error("picklist options: %d leads not sent, an option could not be added (%s)", len(failed), result.failed)
    if result.publish_error:
        log.warning("picklist options added but PublishXml failed (%s): publish the lead table", result.publish_error)
    log.info(
        "picklist options: %d needed, %d added, %d failed, published: %s",
        len(wanted),
        len(result.added),
        len(result.failed),
        result.published,
    )
    return out, result.to_json()


def _lookup_existing(
    dyn: Any,
    entity_set: str,
    primary_id: str,
    s: Settings,
    unknown: list[MappedLead],
    by_key: dict[str, ExistingLead],
    by_email: dict[str, list[ExistingLead]],
) -> int:
    """Existing leads of applicants the ledger cannot name, by alternate key and by e-mail, before any create.

    A failed lookup never turns into a create: every error propagates (the hook has already retried what is
    transient; the task fails and its retry asks again), an answer that is not a collection is a
    ``DynamicsMalformedAnswer`` from the hook, and a row without a lead id or with a non-text key or e-mail
    is one here, never "no existing lead". Messages carry the path, never the ``$filter`` values."""
    from d365.hooks.errors import DynamicsMalformedAnswer
    from d365.hooks.odata import GUID_RE

    key_col = s.dynamics.alternate_key
    email_column = s.dedupe.email_column
    select = [primary_id, email_column, "createdon", *([key_col] if key_col else [])]
    requests = 0

    def fetch(column: str, values: list[str]) -> Iterable[dict[str, Any]]:
        nonlocal requests
        found = dyn.query_in(entity_set, column, values, select=select, filter="statecode eq 0")
        requests += found.requests
        return found.rows

    def existing(row: Mapping[str, Any]) -> ExistingLead:
        lead_id = row.get(primary_id)
        texts = [row.get(email_column), *([row.get(key_col)] if key_col else [])]
        if not (isinstance(lead_id, str) and GUID_RE.match(lead_id)) or any(
            v is not None and not isinstance(v, str) for v in texts
        ):
            raise DynamicsMalformedAnswer(
                f"a lead lookup row without a lead id ({primary_id}) or with a non-text {email_column}/{key_col}",
                status=200,
                code="WrongShape",
                method="GET",
                path=f"/api/data/v9.2/{entity_set}",
            )
        return ExistingLead(
            lead_id=row[primary_id],
            applicant_key=(row.get(key_col) if key_col else None),
            email=row.get(email_column),
            createdon=row.get("createdon"),
        )

    if key_col:
        for row in fetch(key_col, sorted({str(m.applicant_id) for m in unknown})):
            lead = existing(row)
            if lead.applicant_key:
                by_key.setdefault(str(lead.applicant_key), lead)
    if s.dedupe.adopt_existing_by_email:
        emails = sorted({m.email.strip().lower() for m in unknown if m.email and m.email.strip()})
        for row in fetch(email_column, emails):
            lead = existing(row)  # checked before any value is used
            if lead.email:
                by_email.setdefault(lead.email.strip().lower(), []).append(lead)
    return requests
