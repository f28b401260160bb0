"""The steps of one sync run; each task of the ``dreamapply_to_dynamics365`` DAG calls one of them.

preflight → extract → transform → plan → load (``LoadLeadsOperator``) → commit → report

Steps exchange data through the run folder (``RunFolder``; JSON Lines) and return only small dicts
for XCom. Hooks are built inside the steps, at task run time, never at DAG parse time.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from airflow.sdk.exceptions import AirflowFailException

from d365.errors import PreflightError, PreflightUnavailable
from d365.hooks.errors import ApiError
from d365.notifications import send_mail
from d365.pipeline.identity import instance_key
from d365.pipeline.ledger import (
    LeadState,
    Ledger,
    LedgerUpdate,
    LockLost,
    carried_ids,
    default_ledger_url,
    park_failing,
    parked_records,
    save_carried,
)
from d365.pipeline.owners import OwnerIds
from d365.pipeline.plan import (
    ERASE,
    ERASED,
    WITHDRAW,
    WRITES,
    ExistingLead,
    LeadPayload,
    Operation,
    needs_lookup,
    plan_operations,
    summarize,
)
from d365.pipeline.report import build_report, quality_summary, summary_text
from d365.pipeline.settings import Settings, load_settings
from d365.pipeline.target import LeadTarget
from d365.runtime.run_note import set_run_note
from d365.runtime.runfolder import RunFolder, default_run_root, storage_path

log = logging.getLogger(__name__)

PREFLIGHT = "preflight.json"
EXTRACT_APPLICANTS = "extract/applicants.jsonl"
EXTRACT_CATALOG = "extract/catalog.json"
EXTRACT_META = "extract/meta.json"
TRANSFORM_LEADS = "transform/leads.jsonl"
TRANSFORM_OUTCOMES = "transform/outcomes.jsonl"
PLAN_OPERATIONS = "plan/operations.jsonl"
PLAN_META = "plan/meta.json"
LOAD_RESULTS = "load/results.jsonl"
LOAD_STATS = "load/stats.json"
COMMIT_PRIVACY = "commit/privacy.json"  # erasures of the run (counts, failures): their own lines are scrubbed
REPORT = "report.json"
TIMINGS = "timings.jsonl"
PLAN_DRY_RUN = "plan/dry_run.json"  # a dry run's plan summary (what would be written)
LOCK = "lock.json"  # the sync lock this run holds: generation, ttl, how long it waited and for whom
PLAN_PARKED = "plan/parked.json"  # parked applicants this run held back (not sent: d365.parking)
COMMIT_PARKED = "commit/parked.json"  # applicants parked by this run's commit, and how many are parked now
LOCK_WAITS = "lock/waits.jsonl"  # one line per look at the lock that found another run holding it


def _preflight_api_failure(what: str, exc: ApiError) -> Exception:
    cls = PreflightUnavailable if exc.retryable else PreflightError
    return cls(f"preflight failed: {what}: {exc}")


@dataclass
class RunContext:
    dag_id: str
    run_id: str
    folder: RunFolder
    settings: Settings
    ledger_url: str
    params: Mapping[str, Any]
    # In the DAG every step after ``lock`` must hold the instance's sync lock; direct callers (tests) may not.
    require_lock: bool = False

    @classmethod
    def create(
        cls,
        dag_id: str,
        run_id: str,
        params: Mapping[str, Any] | None = None,
        *,
        run_folder: str | None = None,
        settings: Settings | None = None,
        ledger_url: str | None = None,
        require_lock: bool = False,
    ) -> RunContext:
        folder = RunFolder(run_folder) if run_folder else RunFolder.for_run(dag_id, run_id)
        return cls(
            dag_id=dag_id,
            run_id=run_id,
            folder=folder,
            settings=settings or load_settings(),
            ledger_url=ledger_url or default_ledger_url(),
            params=dict(params or {}),
            require_lock=require_lock,
        )

    @property
    def requested_ids(self) -> list[int]:
        """The applicant IDs of a manual send: ``applicant_ids``, plus those the extract resolved from
        ``tracker_codes`` / ``academic_term_ids`` (``extract/meta.json``)."""
        ids = set(self._param_list("applicant_ids", int))
        if self.tracker_codes or self.academic_term_ids:
            ids.update(int(i) for i in (self.folder.read_json(EXTRACT_META) or {}).get("requested") or [])
        return sorted(ids)

    @property
    def tracker_codes(self) -> list[str]:
        return sorted(set(self._param_list("tracker_codes", str)))

    @property
    def academic_term_ids(self) -> list[int]:
        return sorted(set(self._param_list("academic_term_ids", int)))

    @property
    def dry_run(self) -> bool:
        """Plan and print, write nothing (no picklist options, no load, no commit)."""
        return bool(self.params.get("dry_run"))

    def _param_list(self, name: str, kind: Any) -> list[Any]:
        raw = self.params.get(name) or []
        if isinstance(raw, str | int):
            raw = [part for part in str(raw).replace(",", " ").split() if part]
        return [kind(str(v).strip()) if kind is str else kind(v) for v in raw if str(v).strip()]

    @property
    def full_resync(self) -> bool:
        return bool(self.params.get("full_resync"))

    def preflight(self) -> dict[str, Any]:
        return self.folder.read_json(PREFLIGHT) or {}

    @property
    def instance(self) -> str:
        return self.preflight()["instance"]

    def hold_lock(self, ledger: Ledger, step: str) -> int | None:
        """Renew this run's sync lock before ``step`` reads or writes; its generation versions the step's
        ledger writes. None: no lock was taken (only outside the DAG, ``require_lock`` False)."""
        from d365.pipeline.lock import LockLost, hold

        doc = self.folder.read_json(LOCK)
        if doc is None:
            if self.require_lock:
                raise AirflowFailException(f"{step}: this run did not take the sync lock (the lock task); stopping")
            return None
        try:
            hold(ledger, doc["instance"], self.run_id, generation=doc["generation"], ttl=doc["ttl_seconds"], step=step)
        except LockLost as exc:
            raise AirflowFailException(str(exc)) from None  # a retry cannot get it back
        return int(doc["generation"])

    def lock_fence(self) -> tuple[str, int] | None:
        doc = self.folder.read_json(LOCK)
        return None if doc is None else (self.run_id, int(doc["generation"]))


# -- lock -------------------------------------------------------------------------------------------
def lock_step(rc: RunContext, *, dagrun_timeout: float | None = None) -> dict[str, Any] | None:
    """Take the DreamApply instance's sync lock (``d365.pipeline.lock``) before anything reads the cursors.
    Returns the lease (also in ``lock.json``), or None while another run holds it (the DAG's sensor asks again
    later); after ``D365_SYNC_LOCK_WAIT_SECONDS`` of waiting the task fails naming the holder."""
    from d365.pipeline import lock

    instance = rc.instance
    ttl = lock.ttl_seconds(dagrun_timeout)
    lease = lock.acquire(rc.ledger_url, instance, rc.run_id, ttl=ttl)
    waits = list(rc.folder.read_jsonl(LOCK_WAITS))
    now = time.time()
    waited = now - float(waits[0]["at"]) if waits else 0.0
    if lease.held:
        doc = {
            "instance": instance,
            "generation": lease.generation,
            "ttl_seconds": ttl,
            "acquired_at": lease.acquired_at.isoformat(),
            "waited_seconds": round(waited, 3),
            "waited_for": sorted({w["holder"] for w in waits if w.get("holder")}),
        }
        rc.folder.write_json(LOCK, doc)
        log.info("sync lock of %s taken: generation %d (waited %.0f s)", instance, lease.generation, waited)
        return doc
    rc.folder.append_jsonl(LOCK_WAITS, [{"at": now, "holder": lease.run_id, "generation": lease.generation}])
    if waited >= lock.wait_seconds():
        raise AirflowFailException(lock.busy_message(instance, lease, waited))
    log.info("waiting for the sync lock of %s: held by %s", instance, lock.describe(lease))
    return None


def release_lock(rc: RunContext) -> int:
    """Free the sync lock this run holds, if any (commit, report, watcher: whichever comes first)."""
    from d365.pipeline.lock import release

    freed = release(rc.ledger_url, None, rc.run_id)
    if freed:
        log.info("sync lock released by run %s", rc.run_id)
    return freed


# -- preflight --------------------------------------------------------------------------------------
def preflight(rc: RunContext) -> dict[str, Any]:
    """Refuses to run while the integration is paused; an irrecoverable failure counts towards the automatic
    pause (``d365.pause``). Then ``_preflight``."""
    from d365.pause import preflight_guard

    with preflight_guard(rc.settings, rc.ledger_url, rc.run_id):
        return _preflight(rc)


def _preflight(rc: RunContext) -> dict[str, Any]:
    """Before any extract: token and WhoAmI, the mapping against the live lead metadata (schema drift names
    the attribute), the contact owner and every owner-rule owner (exists, enabled, a person), then the
    DreamApply connection. Dynamics problems stop the run before DreamApply is asked anything."""
    from d365.hooks.dreamapply import DreamApplyHook
    from d365.hooks.dynamics import DynamicsHook
    from d365.pipeline.fit import LeadSchema, check_mapping
    from d365.pipeline.owners import resolve_owners

    s = rc.settings
    errors: list[str] = []
    dyn = DynamicsHook(s.dynamics.connection_id)
    try:
        who = dyn.whoami()
        meta = dyn.get_entity_metadata(s.dynamics.entity)
        keys = dyn.alternate_keys(s.dynamics.entity)
    except ApiError as exc:
        what = f"Dynamics 365 connection {s.dynamics.connection_id!r} (token, WhoAmI, metadata)"
        raise _preflight_api_failure(what, exc) from exc
    schema_doc = {
        "entity": {"LogicalName": meta.logical_name, "EntitySetName": meta.entity_set_name},
        "attributes": [_attribute_doc(a) for a in meta.attributes.values()],
        "alternate_keys": [{"KeyAttributes": list(k.key_attributes), "Status": k.status} for k in keys],
    }
    schema = LeadSchema.from_metadata_json(schema_doc)
    errors += check_mapping(s, schema)

    key_status = None
    if s.dynamics.alternate_key:
        matching = [k for k in keys if list(k.key_attributes) == [s.dynamics.alternate_key]]
        key_status = matching[0].status if matching else "missing"
        if key_status != "Active":
            log.warning(
                "alternate key on %s is %s: leads are addressed by their deterministic id, lookups by the "
                "column still work",
                s.dynamics.alternate_key,
                key_status,
            )

    try:
        owners, owner_errors = resolve_owners(s, dyn.find_systemuser, caller_id=who.get("UserId"))
    except ApiError as exc:
        raise _preflight_api_failure("looking up the lead owners in Dynamics 365", exc) from exc
    errors += owner_errors
    if errors:
        raise PreflightError("preflight failed:\n- " + "\n- ".join(errors))

    da = DreamApplyHook(s.dreamapply.connection_id)
    try:
        instance = instance_key(da.get_connection(da.dreamapply_conn_id).host or "")
        da.get_json("/ping")
    except ApiError as exc:
        raise _preflight_api_failure(f"DreamApply connection {s.dreamapply.connection_id!r}", exc) from exc

    target = LeadTarget.from_metadata(s.dynamics.connection_id, meta)  # every later Dynamics call uses it
    doc = {
        "instance": instance,
        "target": target.to_json(),
        "owner_id": owners.default,
        "owners": owners.to_json(),
        "caller_id": who.get("UserId"),
        "dop_hint": dyn.dop_hint,
        "alternate_key_status": key_status,
        "schema": schema_doc,
    }
    rc.folder.write_json(PREFLIGHT, doc)
    log.info(
        "preflight ok: instance %s, target %s on connection %s, owner %s (%d owner rules), alternate key %s",
        instance,
        target.entity_set,
        target.connection_id,
        owners.default,
        len(owners.rules),
        key_status,
    )
    return {"run_folder": rc.folder.url, "instance": instance, "target": target.to_json()}


def _attribute_doc(a: Any) -> dict[str, Any]:
    return {
        "LogicalName": a.logical_name,
        "Type": a.type,
        "MaxLength": a.max_length,
        "IsValidForCreate": a.valid_for_create,
        "IsValidForUpdate": a.valid_for_update,
        "RequiredLevel": a.required_level,
        "Format": a.format,
        "DateTimeBehavior": a.date_behavior,
        "Options": [{"Value": v, "Label": label} for v, label in (a.options or {}).items()] if a.options else None,
    }


# -- extract ----------------------------------------------------------------------------------------
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


# -- transform --------------------------------------------------------------------------------------
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
    files = write_artifacts(rc.folder, result)
    rc.folder.write_jsonl(TRANSFORM_OUTCOMES, result.ledger_outcomes())
    counts = {k: v for k, v in result.counts().items() if k != "leads"}
    if not result.ok:
        rc.folder.write_jsonl(TRANSFORM_LEADS, [])  # nothing to plan, whatever runs next
        message = (
            "data quality gate failed, nothing was written to Dynamics: "
            + "; ".join(result.batch_failures)
            + f" (see {files['summary']})"
        )
        log.error(message)
        raise AirflowFailException(message)  # retries cannot fix the data: fail the task at once
    rc.folder.write_jsonl(TRANSFORM_LEADS, result.leads)
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
        files["summary"],
    )
    return {"leads": len(result.leads), **counts, "quality_invalid": result.quality.invalid_rows}


# -- plan -------------------------------------------------------------------------------------------
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
    rows = [r for r in rc.folder.read_jsonl(TRANSFORM_LEADS) if int(r["applicant_id"]) not in erased_ids]
    mapped = [LeadPayload(int(r["applicant_id"]), r["payload"], r["payload_hash"], r.get("email")) for r in rows]
    owner_rule = {int(r["applicant_id"]): r["owner_rule"] for r in rows if r.get("owner_rule") is not None}
    needs = {int(r["applicant_id"]): r["options_needed"] for r in rows if r.get("options_needed")}
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
    if rc.dry_run and any(m.applicant_id in needs for m in mapped):  # reported as "would add", nothing inserted
        from d365.pipeline.picklists import needed_options

        wanted = needed_options({"options_needed": needs[m.applicant_id]} for m in mapped if m.applicant_id in needs)
        options_meta = {
            "dry_run": True,
            "would_add": [{"attribute": a, "label": label} for a, label in wanted.values()],
        }
    elif any(m.applicant_id in needs for m in mapped):  # picklist options to add: once per run, one publish
        dyn = DynamicsHook(target.connection_id)
        mapped, options_meta = _add_options(rc, dyn, target.entity, mapped, needs)
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

        summary = plan_summary(ops, rc.folder.read_json(PLAN_META) or {}, owners)
        rc.folder.write_json(PLAN_DRY_RUN, summary)
        print(dry_run_text(summary), flush=True)
    return {"writes": sum(counts.get(a, 0) for a in WRITES), **counts}


def _add_options(
    rc: RunContext, dyn: Any, entity: str, mapped: list[LeadPayload], needs: Mapping[int, list[list[str]]]
) -> tuple[list[LeadPayload], dict[str, Any]]:
    """Add the picklist options the pending leads need (``picklists.ensure_options``: deduped, metadata
    re-read once with ``Consistency: Strong``, one ``PublishXml``), fill their payloads and hashes. Leads
    whose option could not be added leave the plan as failed (ledger: retried next run)."""
    from d365.pipeline.mapping import payload_hash
    from d365.pipeline.picklists import ensure_options, fill_options, needed_options

    pending = sorted((m for m in mapped if m.applicant_id in needs), key=lambda m: m.applicant_id)
    wanted = needed_options({"options_needed": needs[m.applicant_id]} for m in pending)
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
    out: list[LeadPayload] = []
    failed: dict[int, str] = {}
    for m in mapped:
        if m.applicant_id not in needs:
            out.append(m)
            continue
        payload, missing = fill_options(m.payload, needs[m.applicant_id], result.values)
        if missing:
            codes = sorted({result.failed.get(k, "") for k in result.failed if k[0] in missing} - {""})
            failed[m.applicant_id] = (
                f"picklist: the option needed for {', '.join(sorted(set(missing)))} could not be added"
                + (f" ({', '.join(codes)})" if codes else "")
                + "; retried next run"
            )
            continue
        out.append(LeadPayload(m.applicant_id, payload, payload_hash(payload), m.email))
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
    unknown: list[LeadPayload],
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


# -- commit -----------------------------------------------------------------------------------------
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


def _applicant_id(value: Any) -> int | None:
    """An applicant id as int, or None for anything that is not a positive whole number."""
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value if value > 0 else None
    if isinstance(value, str) and value.strip().isdigit():
        return int(value.strip()) or None
    return None


def _load_results(rc: RunContext) -> dict[int, dict[str, Any]]:
    results: dict[int, dict[str, Any]] = {}
    for row in rc.folder.read_jsonl(LOAD_RESULTS):
        results[int(row["applicant_id"])] = row  # a retried task appends: the last word counts
    return results


def timed(rc: RunContext, name: str, step: Any) -> Any:
    """Run one step and append its duration to the run folder (the report shows them)."""
    started = time.time()
    try:
        return step(rc)
    finally:
        try:
            rc.folder.append_jsonl(
                TIMINGS, [{"step": name, "started": started, "seconds": round(time.time() - started, 3)}]
            )
        except Exception:  # never fail a step for its bookkeeping
            log.warning("could not record the duration of %s", name)


def _durations(rc: RunContext) -> dict[str, float]:
    durations = {row["step"]: row["seconds"] for row in rc.folder.read_jsonl(TIMINGS)}  # a retried step: last wins
    load = rc.folder.read_json(LOAD_STATS) or {}
    if isinstance(load.get("elapsed_seconds"), int | float):
        durations["load"] = round(float(load["elapsed_seconds"]), 3)
    return durations


# -- report -----------------------------------------------------------------------------------------
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
    for line in text.splitlines():
        log.info(line)
    print(text, flush=True)
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
    for line in text.splitlines():
        log.info(line)
    print(text, flush=True)
    report["note_set_via"] = set_run_note(rc.dag_id, rc.run_id, text)
    return {"dry_run": True, **summary.get("counts", {})}


def _lines(rc: RunContext, name: str) -> int:
    return sum(1 for _ in rc.folder.read_jsonl(name))


def _count(states: Iterable[str]) -> dict[str, int]:
    counts: dict[str, int] = {}
    for state in states:
        counts[state] = counts.get(state, 0) + 1
    return counts
