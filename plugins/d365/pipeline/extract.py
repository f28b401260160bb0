"""Incremental extract of DreamApply applicants into the normalised records of ``records.py``.

Airflow-free: ``client`` is anything with the methods of :class:`d365.hooks.dreamapply.DreamApplyHook`
(``get_collection``, ``get_json``, ``iter_collection_pages``, ``iter_paginated``, ``count``; an optional
``stats`` dict with ``"requests"`` is used for the request count).

Request budget: requests grow with *pages*, never with applicants.

- Catalog, once per run: /academic-years, /academic-terms, /academic-terms/types, /courses,
  /applicants/consents, /applicants/trackers, /applications/offers/types (7 requests).
- First load (both cursors 0) or ``full_resync``: the newest journal event ID is read *before* anything
  else (1 request), so events that happen while the run is going are replayed next run rather than lost;
  then every applicant by keyset (``bySince``, ``expand=consents,trackers``) and every application of
  every academic year by keyset (``expand=courses,offers``): ``ceil(n / page_size)`` (+1 when a page is
  exactly full) requests each.
- Incremental: the journal from ``cursor + 1`` in pages of 1024 (oldest first) → applicant IDs; then new
  applicants by keyset from the applicant cursor; then the changed ones (not already fetched as new) by
  ID *ranges* (``bySince``/``byUntil`` + ``expand``; a range is split where the gap between two wanted IDs
  exceeds the page size, which is where one request per range becomes cheaper than reading through the
  gap); then their applications by ``byApplicantIDs`` chunks of 500.

  Trade-off of the ``byApplicantIDs`` chunks: ``ceil(k / 500)`` requests for ``k`` applicants, each
  returning only their applications, against ``ceil(all applications / page_size)`` requests for a scan
  of every application. Small incremental runs (the normal case) are far cheaper with chunks; when more
  than one chunk is needed the extract counts all applications with one ``HEAD`` and scans instead if
  that needs fewer requests. 500 IDs keep the query string near 5 KB (URL length limits of proxies).
- Erasures: the journal is read for ``deletion_events`` (``dreamapply.deletion_events``, by default
  "Applicant was deleted") as well as ``event_names``; an applicant such an event names is never fetched again
  (IDs are never reused). /purged-resources (paginator, 100 per page) is read on first load/resync, and on
  incremental runs only when a deletion event came (or none is configured, so the journal cannot tell) or a
  wanted ID could not be read; never for ``applicant_ids`` runs. An applicant a deletion event names that is
  not (yet) in /purged-resources is carried like any unread ID, so the purge list is read again next run.

Cursors are *returned*, never saved: the caller stores them after the load commits, so a failed load
replays the same changes next run. The journal keeps only 6 months of events: a cursor older than that
silently misses changes; run a ``full_resync`` after a long outage.

A cursor never moves past a read that failed. Every answer is shape-checked by the hook (a 200 with an HTML
page, an error object or a cut body is an error, retried and then raised, never "no data"), so a failed read
fails the extract and nothing moves. Applicants the journal names (or new ones the ID scan should have
returned) that still could not be read — a range request that failed after the hook's retries, an ID missing
from the answer, a record without a usable ID — are *carried*: returned in ``ExtractResult.carried`` for the
caller to keep (the ledger's ``d365_sync_carried``, saved with the cursors) and passed back as ``carried`` next
run, where they are fetched with the first ranges. An ID that turns up in /purged-resources is not carried
(DreamApply removed the applicant; erasures are handled from that list).
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from d365.pipeline.extract_fetch import (
    LIST_PAGE_CAP,
    _applicants_of_applications,
    _erased,
    _newest_event_id,
    _ranges,
    _read_journal,
    _Run,
)
from d365.pipeline.extract_normalise import _key_id, link_id, load_catalog, normalise_applicant, normalise_application
from d365.pipeline.records import (
    ApplicantRecord,
    Catalog,
)
from d365.pipeline.settings import DEFAULT_DELETION_EVENTS

# importers keep reading the normalisation (and the range split) from here
__all__ = [
    "Cursors",
    "ExtractResult",
    "_ranges",
    "applicants_by_selection",
    "extract",
    "link_id",
    "load_catalog",
    "normalise_applicant",
    "normalise_application",
]

log = logging.getLogger(__name__)


@dataclass
class Cursors:
    applicant_id: int = 0  # highest applicant id already handed to the load
    journal_event_id: int = 0  # highest journal event id already processed


@dataclass
class ExtractResult:
    applicants: list[ApplicantRecord]  # normalised, each with reason new/changed/requested/resync
    catalog: Catalog
    cursors: Cursors  # what to save AFTER the load commits (never saved by extract)
    counts: dict[str, int]  # new, changed, requested, resync, journal_events, requests, carried, ...
    erased_applicant_ids: list[int] = field(default_factory=list)  # purged with request_to_be_forgotten
    carried: list[int] = field(default_factory=list)  # named by the journal but not read: keep for next run
    carried_read: list[int] = field(default_factory=list)  # carried from earlier runs, read (or purged) now


def _requests(client: Any) -> int:
    stats = getattr(client, "stats", None)
    if isinstance(stats, Mapping):
        return int(stats.get("requests", 0))
    return 0


# -- entry point ------------------------------------------------------------------------------
def extract(
    client: Any,
    cursors: Cursors,
    *,
    event_names: Sequence[str],
    deletion_events: Sequence[str] = DEFAULT_DELETION_EVENTS,
    full_resync: bool = False,
    applicant_ids: Sequence[int] | None = None,
    include_new: bool = True,
    include_changes: bool = True,
    page_size: int = 8192,
    carried: Iterable[int] = (),
) -> ExtractResult:
    """Fetch what changed since ``cursors`` (or everything, or just ``applicant_ids``), normalised.

    - ``applicant_ids``: only those, reason ``requested``; no journal; cursors returned unchanged; ``carried``
      is left as it is (returned unchanged).
    - ``full_resync`` or a first run (both cursors 0, ``include_new``): every applicant, reason
      ``resync``/``new``; the returned cursors are the newest journal event (read first) and the highest
      applicant ID seen.
    - otherwise: new applicants (``include_new``) and applicants named by journal events of
      ``event_names`` (``include_changes``), reasons ``new``/``changed``; an applicant named by an event of
      ``deletion_events`` (read with them; such a name wins over ``event_names``) is an erasure signal, never
      fetched; ``carried`` (IDs earlier runs could not read) are fetched with the first ranges, reason
      ``carried``.

    ``ExtractResult.carried``: wanted IDs that could not be read this run (see the module docstring), for the
    caller to save with the cursors; ``carried_read``: the ``carried`` IDs that no longer need carrying.
    """
    if not 1 <= page_size <= 8192:
        raise ValueError("page_size must be between 1 and 8192 (DreamApply's cap with expand)")
    if applicant_ids is None and include_changes and not event_names:
        raise ValueError("event_names is required (DreamApply's journal needs byEvents)")
    earlier = sorted({int(i) for i in carried})
    deletion_names = set(deletion_events)
    watched = list(dict.fromkeys([*event_names, *deletion_events]))  # the journal's byEvents, each name once
    requests_before = _requests(client)
    catalog, years = load_catalog(client)
    run = _Run(client, catalog, years, page_size)
    counts = {"new": 0, "changed": 0, "requested": 0, "resync": 0, "journal_events": 0}
    new_cursors = Cursors(cursors.applicant_id, cursors.journal_event_id)
    erased: list[int] = []
    read_purges = False
    wanted: set[int] = set()  # IDs this run must read (journal-named, carried, new by the scan): else carried
    deleted: set[int] = set()

    if applicant_ids is not None:
        run.fetch_ids(applicant_ids, "requested")
        apps = run.applications_of_fetched()
        counts["requested_missing"] = len(set(applicant_ids) - set(run.raw))
        wanted = set(earlier)  # untouched by a manual send: carried as they were (unless read now)
    elif full_resync or (include_new and cursors.applicant_id == 0 and cursors.journal_event_id == 0):
        reason = "resync" if full_resync else "new"
        newest = _newest_event_id(client, watched) if event_names else None
        top = run.scan_applicants(1, reason)
        apps = run.applications_all()
        new_cursors = Cursors(
            applicant_id=top if full_resync else max(top, cursors.applicant_id),
            journal_event_id=newest if newest is not None else cursors.journal_event_id,
        )
        read_purges = True
        wanted = set(earlier)  # a full scan reads whatever still exists
    else:
        changed: set[int] = set()
        if include_changes:
            events, top_event = _read_journal(client, watched, cursors.journal_event_id)
            counts["journal_events"] = len(events)
            new_cursors.journal_event_id = top_event
            orphan_apps: set[int] = set()
            for ev in events:
                aid = link_id(ev.get("applicant"))
                if aid is not None:
                    changed.add(aid)
                    if ev.get("event") in deletion_names:
                        deleted.add(aid)
                elif (app_id := link_id(ev.get("application"))) is not None:
                    orphan_apps.add(app_id)
            changed |= _applicants_of_applications(client, orphan_apps, years, page_size)
            changed -= deleted  # IDs are never reused: a deleted applicant cannot be fetched any more
            # no deletion event configured: the journal cannot tell, so the purge list is always read
            read_purges = not deletion_names or any(ev.get("event") in deletion_names for ev in events)
            run.fetch_ids(set(earlier) - deleted, "carried", carry_failures=True)  # carried first
        # a deleted ID stays wanted (never fetched): found in the purge list it is an erasure, else carried
        wanted = changed | set(earlier) | deleted
        if include_new:
            top = run.scan_applicants(cursors.applicant_id + 1, "new")
            new_cursors.applicant_id = max(cursors.applicant_id, top)
            # IDs above the old cursor were all covered by the scan (the journal was read first).
            changed = {i for i in changed if i <= cursors.applicant_id}
        run.fetch_ids(changed, "changed", carry_failures=True)
        apps = run.applications_of_fetched()

    missing = wanted - set(run.raw)
    purged: set[int] = set()
    if read_purges or (missing and applicant_ids is None):  # an unread ID may be purged: that one is not carried
        erased, purged = _erased(client)
        counts["purged_applicants"] = len(purged)
    carry = sorted(missing - purged)
    if carry:
        log.warning(
            "%d applicants named by the journal could not be read (%d after failed requests): carried to the next "
            "run: %s",
            len(carry),
            len(run.unread & set(carry)),
            carry[:50],
        )
    counts["carried"] = len(carry)
    counts["carried_read"] = len(set(earlier) - set(carry))
    applicants = run.records(apps)
    for rec in applicants:
        counts[rec["reason"]] = counts.get(rec["reason"], 0) + 1
    counts["applicants"] = len(applicants)
    counts["applications"] = sum(len(a["applications"]) for a in applicants)
    counts["requests"] = _requests(client) - requests_before
    return ExtractResult(
        applicants=applicants,
        catalog=catalog,
        cursors=new_cursors,
        counts=counts,
        erased_applicant_ids=erased,
        carried=carry,
        carried_read=sorted(set(earlier) - set(carry)),
    )


def applicants_by_selection(
    client: Any,
    *,
    tracker_codes: Sequence[str] = (),
    academic_term_ids: Sequence[int] = (),
    page_size: int = LIST_PAGE_CAP,
) -> list[int]:
    """Applicant IDs of a manual send by tracker or academic term, in bulk: ``/applicants?byTrackerCodes=…``
    (one keyset scan for all codes) and ``/applications?byAcademicTermID=…`` (one scan per term; the
    applicants of those applications). The union, sorted."""
    out: set[int] = set()
    if tracker_codes:
        params: dict[str, Any] = {"byTrackerCodes": list(tracker_codes)}
        for page in client.iter_collection_pages("/applicants", params, page_size):
            out.update(aid for key, item in page.items() if (aid := _key_id(key, item)) is not None)
    for term in academic_term_ids:
        for page in client.iter_collection_pages("/applications", {"byAcademicTermID": int(term)}, page_size):
            out.update(aid for item in page.values() if (aid := link_id(item.get("applicant"))) is not None)
    return sorted(out)
