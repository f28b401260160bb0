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

from d365.hooks.errors import ApiError
from d365.pipeline.fields import APPLICANT_FIELDS, SourceField
from d365.pipeline.records import (
    AcademicTerm,
    ApplicantRecord,
    ApplicationRecord,
    Catalog,
    ConsentDefinition,
    Course,
    CourseChoice,
    OfferRecord,
)
from d365.pipeline.settings import DEFAULT_DELETION_EVENTS

log = logging.getLogger(__name__)

APPLICANT_EXPAND = "consents,trackers"
APPLICATION_EXPAND = "courses,offers"
JOURNAL_PAGE = 1024  # the journal's cap (reference §1.6)
LIST_PAGE_CAP = 32768  # /applicants and /applications without expand
APPLICANT_ID_CHUNK = 500


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


# -- small wire helpers -----------------------------------------------------------------------
def link_id(value: Any) -> int | None:
    """The ID a link (``/api/v9/courses/7``), an expanded object (``{"id": 7}``) or a bare number names."""
    if value is None or isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value
    if isinstance(value, dict):
        return link_id(value.get("id"))
    if isinstance(value, str):
        tail = value.rstrip("/").rsplit("/", 1)[-1]
        return int(tail) if tail.isdigit() else None
    return None


def _key_id(key: str, item: Mapping[str, Any]) -> int | None:
    value = item.get("id")
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    return int(key) if key.isdigit() else None


def _ranges(ids: Iterable[int], gap: int) -> list[tuple[int, int]]:
    """Sorted IDs grouped into ``(first, last)`` ranges, split where two neighbours are more than ``gap`` apart."""
    out: list[tuple[int, int]] = []
    for i in sorted(set(ids)):
        if out and i - out[-1][1] <= gap:
            out[-1] = (out[-1][0], i)
        else:
            out.append((i, i))
    return out


def _chunks(ids: Sequence[int], size: int) -> Iterable[list[int]]:
    for start in range(0, len(ids), size):
        yield list(ids[start : start + size])


def _requests(client: Any) -> int:
    stats = getattr(client, "stats", None)
    if isinstance(stats, Mapping):
        return int(stats.get("requests", 0))
    return 0


# -- catalog ----------------------------------------------------------------------------------
def load_catalog(client: Any) -> tuple[Catalog, list[int]]:
    """The reference data (7 requests) and the academic year keys (for /applications' required filter)."""
    years = client.get_collection("/academic-years")
    terms = client.get_collection("/academic-terms")
    term_types = client.get_collection("/academic-terms/types")
    courses = client.get_collection("/courses")
    consents = client.get_collection("/applicants/consents")
    trackers = client.get_collection("/applicants/trackers")
    offer_types = client.get_collection("/applications/offers/types")

    out_terms: dict[str, AcademicTerm] = {}
    for key, t in terms.items():
        tid = _key_id(key, t)
        if tid is None:
            continue
        year = link_id(t.get("year"))
        type_id = link_id(t.get("type"))
        out_terms[str(tid)] = AcademicTerm(
            id=tid,
            name=t.get("name"),
            year=year,
            year_name=(years.get(str(year)) or {}).get("name") if year is not None else None,
            type_id=type_id,
            type_name=(term_types.get(str(type_id)) or {}).get("name") if type_id is not None else None,
            start=t.get("start"),
            finish=t.get("finish"),
        )
    out_courses: dict[str, Course] = {}
    for key, c in courses.items():
        cid = _key_id(key, c)
        if cid is None:
            continue
        out_courses[str(cid)] = Course(
            id=cid,
            name=c.get("name"),
            code=c.get("code"),
            code_internal=c.get("code_internal"),
            type=c.get("type"),
            mode=c.get("mode"),
        )
    out_consents: dict[str, ConsentDefinition] = {}
    for key, c in consents.items():
        cid = _key_id(key, c)
        if cid is not None:
            out_consents[str(cid)] = ConsentDefinition(id=cid, type=c.get("type"), text=c.get("text"))
    catalog = Catalog(
        terms=out_terms,
        courses=out_courses,
        consents=out_consents,
        trackers={str(_key_id(k, t)): t.get("code") for k, t in trackers.items() if _key_id(k, t) is not None},
        offer_types={str(_key_id(k, t)): t.get("title") for k, t in offer_types.items() if _key_id(k, t) is not None},
    )
    year_keys = sorted({y for k, v in years.items() if (y := _key_id(k, v)) is not None})
    if not year_keys:  # fall back to the years the terms name
        year_keys = sorted({t["year"] for t in out_terms.values() if t["year"] is not None})
    return catalog, year_keys


# -- normalisation ----------------------------------------------------------------------------
def _association(client: Any, value: Any) -> Mapping[str, Any]:
    """An expanded association map; a link (the server ignored ``expand``) is fetched as a fallback."""
    if isinstance(value, str) and client is not None:
        log.warning("expand was not honoured; fetching %s (one request per record)", value)
        return client.get_collection(value)
    if isinstance(value, Mapping):
        return value
    return {}


def normalise_applicant(
    raw: Any,
    catalog: Catalog,
    applications: list[ApplicationRecord],
    reason: str,
    client: Any = None,
    key_id: int | None = None,
) -> ApplicantRecord:
    """One wire record → an ``ApplicantRecord``. Never raises on data (only a fetch through ``client`` can):
    a record of the wrong shape (not an object, an id that is not an integer, a name that is not an object,
    consents or trackers that are not ID-keyed objects, a malformed application) comes back with
    ``malformed`` notes that name the key and what it held, never a value, and ``applicant_id`` None when the
    id cannot be read (``key_id``, the id the ID-keyed collection filed it under, when given: the record is
    still malformed, but its quarantine names the applicant); the quality step quarantines it per row.
    Scalars of the wrong type (an e-mail given as a number) are kept as they are: they are field issues for
    the quality step."""
    notes: list[str] = []
    key_id = key_id if isinstance(key_id, int) and not isinstance(key_id, bool) and key_id > 0 else None
    if not isinstance(raw, Mapping):
        return _malformed_applicant(key_id, reason, [f"record: {_shape(raw)} instead of an object"], applications)
    applicant_id = _whole(raw.get("id"))
    if applicant_id is None:
        notes.append(f"id: {_shape(raw.get('id'))} instead of a positive integer")
        applicant_id = key_id
    elif key_id is not None and applicant_id != key_id:
        notes.append("id: differs from the key the record is listed under")
        applicant_id = key_id
    wire_fields = _wire_fields(raw, notes)
    consent_map = _id_keyed(client, raw.get("consents"), "consents", notes)
    tracker_map = _id_keyed(client, raw.get("trackers"), "trackers", notes)
    try:
        consents: dict[str, str] = {}
        for key, item in consent_map.items():
            if not isinstance(item, Mapping):
                continue
            cid = link_id(item.get("consent")) or (int(key) if str(key).isdigit() else None)
            decision = item.get("decision")
            if cid is not None and decision in ("Accept", "Reject"):
                consents[str(cid)] = decision
        tracker_ids: list[int] = []
        for key, item in tracker_map.items():
            tid = link_id(item.get("tracker")) if isinstance(item, Mapping) else None
            if tid is None and str(key).isdigit():
                tid = int(key)
            if tid is not None and tid not in tracker_ids:
                tracker_ids.append(tid)
        known = catalog.get("trackers") if isinstance(catalog, Mapping) else None
        known = known if isinstance(known, Mapping) else {}
        codes = [known[str(t)] for t in tracker_ids if isinstance(known.get(str(t)), str) and known[str(t)]]
    except (AttributeError, TypeError, ValueError, KeyError, OverflowError) as exc:  # never raise on data
        return _malformed_applicant(applicant_id, reason, [*notes, f"record: unreadable ({type(exc).__name__})"], [])
    record = ApplicantRecord(  # type: ignore[typeddict-item] - the field keys come from the registry
        applicant_id=applicant_id,
        **wire_fields,
        consents=consents,
        tracker_ids=tracker_ids,
        tracker_codes=codes,
        applications=_sorted_applications(applications),
        reason=reason,
    )
    if notes:
        record["malformed"] = notes
    return record


# per registry field, in registry order: record key, the object it is in (None: the applicant itself), wire key
_WirePlan = tuple[tuple[str, str | None, str], ...]
_wire_plans: dict[int, tuple[tuple[SourceField, ...], _WirePlan]] = {}


def _wire_plan(applicant_fields: tuple[SourceField, ...]) -> _WirePlan:
    """How to read the registry's wire paths (``email``; ``name.given`` inside the ``name`` object): computed
    once per registry, found by identity (hashing the entries would cost more than reading the fields)."""
    cached = _wire_plans.get(id(applicant_fields))
    if cached is not None and cached[0] is applicant_fields:
        return cached[1]
    plan: list[tuple[str, str | None, str]] = []
    for f in applicant_fields:
        if not f.wire or not f.record_key:
            continue
        parts = f.wire.split(".")
        if len(parts) > 2:
            raise ValueError(f"{f.name}: wire path {f.wire!r} is deeper than one object (DreamApply has none)")
        plan.append((f.record_key, parts[0], parts[1]) if len(parts) == 2 else (f.record_key, None, parts[0]))
    _wire_plans[id(applicant_fields)] = (applicant_fields, tuple(plan))
    return tuple(plan)


def _wire_fields(raw: Mapping[str, Any], notes: list[str]) -> dict[str, Any]:
    """Record key → the value at each registry field's wire path, as DreamApply sent it (None when absent), in
    registry order. An object a path reads in that is null reads as empty; anything else but an object is noted
    as malformed (what it held, never its value) and its fields read as empty."""
    get = raw.get
    out: dict[str, Any] = {}
    objects: dict[str, Mapping[str, Any]] = {}
    for key, parent, wire_key in _wire_plan(APPLICANT_FIELDS):
        if parent is None:
            out[key] = get(wire_key)
            continue
        obj = objects.get(parent)
        if obj is None:
            value = get(parent)
            if value is not None and not isinstance(value, Mapping):
                notes.append(f"{parent}: {_shape(value)} instead of an object")
            obj = objects[parent] = value if isinstance(value, Mapping) else {}
        out[key] = obj.get(wire_key)
    return out


def _shape(value: Any) -> str:
    """What a value is, never what it says (malformed notes reach quarantine files and the report)."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a yes/no value"
    if isinstance(value, int | float):
        return "a number"
    if isinstance(value, str):
        return "text"
    if isinstance(value, list):
        return "a list"
    if isinstance(value, Mapping):
        return "an object"
    return type(value).__name__


def _whole(value: Any) -> int | None:
    """A positive integer id (an int, or a digit string); None for anything else."""
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value if value > 0 else None
    if isinstance(value, str) and value.strip().isascii() and value.strip().isdigit() and len(value.strip()) < 19:
        return int(value.strip()) or None
    return None


def _id_keyed(client: Any, value: Any, key: str, notes: list[str]) -> Mapping[str, Any]:
    """An expanded association (ID-keyed object); null or an empty list (PHP's empty array) is empty; a link
    is fetched (``_association``); anything else is noted as malformed and read as empty."""
    if value is None or value == []:
        return {}
    if isinstance(value, Mapping) or (isinstance(value, str) and client is not None):
        found = _association(client, value)
        if isinstance(found, Mapping):
            return found
        notes.append(f"{key}: the linked collection is {_shape(found)}, not an object")
        return {}
    notes.append(f"{key}: {_shape(value)} instead of an object")
    return {}


def _sorted_applications(applications: Any) -> list[ApplicationRecord]:
    if not isinstance(applications, list):
        return []
    return sorted(applications, key=lambda a: (not isinstance(a.get("id"), int), a.get("id") or 0))


def _malformed_applicant(applicant_id: int | None, reason: str, notes: list[str], applications: Any) -> ApplicantRecord:
    return ApplicantRecord(  # type: ignore[typeddict-item]
        applicant_id=applicant_id,
        **dict.fromkeys(f.record_key for f in APPLICANT_FIELDS),
        consents={},
        tracker_ids=[],
        tracker_codes=[],
        applications=_sorted_applications(applications),
        reason=reason,
        malformed=notes,
    )


def normalise_application(raw: Any, catalog: Catalog, client: Any = None) -> ApplicationRecord:
    """One wire application → an ``ApplicationRecord``. Never raises on data: a wrong shape (not an object,
    an id that is not an integer, courses or offers that are not ID-keyed objects) is noted in
    ``malformed`` (value-free), which makes the applicant's record malformed for the quality step."""
    notes: list[str] = []
    if not isinstance(raw, Mapping):
        raw, notes = {}, [f"application: {_shape(raw)} instead of an object"]
    app_id = _whole(raw.get("id"))
    if app_id is None and not notes:
        notes.append(f"application id: {_shape(raw.get('id'))} instead of a positive integer")
    course_map = _id_keyed(client, raw.get("courses"), "courses", notes)
    offer_map = _id_keyed(client, raw.get("offers"), "offers", notes)
    offer_types = catalog.get("offer_types") if isinstance(catalog, Mapping) else None
    offer_types = offer_types if isinstance(offer_types, Mapping) else {}
    courses: list[CourseChoice] = []
    offers: list[OfferRecord] = []
    term_id: int | None = None
    try:
        term_id = link_id(raw.get("academic_term"))
        for key, item in course_map.items():
            if not isinstance(item, Mapping):
                continue
            cid = link_id(item.get("course")) or (int(key) if str(key).isdigit() else None)
            if cid is None:
                continue
            prio = item.get("priority")
            courses.append(
                CourseChoice(
                    course_id=cid,
                    priority=int(prio) if isinstance(prio, (int, str)) and str(prio).isdigit() else None,
                    intake_id=link_id(item.get("intake")),
                )
            )
        courses.sort(key=lambda c: (c["priority"] is None, c["priority"] or 0, c["course_id"]))
        for key, item in offer_map.items():
            if not isinstance(item, Mapping):
                continue
            oid = _key_id(str(key), item)
            if oid is None:
                continue
            type_id = link_id(item.get("type"))
            offers.append(
                OfferRecord(
                    id=oid,
                    course_id=link_id(item.get("course")),
                    type_id=type_id,
                    type_title=offer_types.get(str(type_id)) if type_id is not None else None,
                    decision=item.get("decision"),
                    inserted=item.get("inserted"),
                    saved=item.get("saved"),
                    confirmed=item.get("confirmed"),
                )
            )
        offers.sort(key=lambda o: o["id"])
    except (AttributeError, TypeError, ValueError, KeyError, OverflowError) as exc:  # never raise on data
        notes.append(f"application: unreadable ({type(exc).__name__})")
        courses, offers = [], []
    record = ApplicationRecord(
        id=app_id,  # type: ignore[typeddict-item]
        status=raw.get("status"),
        created=raw.get("created"),
        revised=raw.get("revised"),
        submitted=raw.get("submitted"),
        academic_term_id=term_id,
        courses=courses,
        offers=offers,
    )
    if notes:
        record["malformed"] = notes
    return record


# -- fetching ---------------------------------------------------------------------------------
class _Run:
    def __init__(self, client: Any, catalog: Catalog, years: list[int], page_size: int) -> None:
        self.client = client
        self.catalog = catalog
        self.years = years
        self.page_size = page_size
        self.raw: dict[int, Mapping[str, Any]] = {}  # applicant id -> wire record
        self.reason: dict[int, str] = {}
        self.unread: set[int] = set()  # wanted, but their range request failed after the hook's retries

    def scan_applicants(self, since: int, reason: str) -> int:
        """Every applicant from ``since`` on (keyset); returns the highest ID seen (0 if none)."""
        top = 0
        params = {"bySince": since, "expand": APPLICANT_EXPAND}
        for page in self.client.iter_collection_pages("/applicants", params, self.page_size):
            for key, item in page.items():
                aid = _key_id(key, item)
                if aid is None:
                    log.warning("an applicant record without a usable id (%d characters of key) was skipped", len(key))
                    continue
                top = max(top, aid)
                if aid not in self.raw:
                    self.raw[aid] = item
                    self.reason[aid] = reason
        return top

    def fetch_ids(self, ids: Iterable[int], reason: str, *, carry_failures: bool = False) -> None:
        """Just these applicants, by ID ranges (never one request per applicant).

        ``carry_failures``: a range whose request still fails after the hook's retries (a retryable error:
        5xx, network, a lying 200) leaves its IDs in ``unread`` and the other ranges go on; anything else
        (authentication, a bad request) is raised."""
        wanted = {i for i in ids if i not in self.raw}
        for lo, hi in _ranges(wanted, self.page_size):
            params = {"bySince": lo, "byUntil": hi, "expand": APPLICANT_EXPAND}
            found: dict[int, Mapping[str, Any]] = {}
            try:
                for page in self.client.iter_collection_pages("/applicants", params, self.page_size):
                    for key, item in page.items():
                        aid = _key_id(key, item)
                        if aid in wanted and aid not in self.raw:
                            found[aid] = item
            except ApiError as exc:
                if not (carry_failures and exc.retryable):
                    raise
                ids_in_range = {i for i in wanted if lo <= i <= hi}
                log.warning("applicants %d..%d not read (%s): carried to the next run", lo, hi, exc.describe())
                self.unread |= ids_in_range
                continue
            for aid, item in found.items():
                self.raw[aid] = item
                self.reason[aid] = reason

    def _application_params(self) -> dict[str, Any]:
        return {"byAcademicYears": self.years, "expand": APPLICATION_EXPAND}

    def applications_all(self) -> dict[int, list[ApplicationRecord]]:
        """Every application (keyset over all academic years), kept for the fetched applicants."""
        out: dict[int, list[ApplicationRecord]] = {}
        if not self.years:
            return out
        for page in self.client.iter_collection_pages("/applications", self._application_params(), self.page_size):
            self._keep(page, out)
        return out

    def applications_of_fetched(self) -> dict[int, list[ApplicationRecord]]:
        ids = sorted(self.raw)
        out: dict[int, list[ApplicationRecord]] = {}
        if not ids or not self.years:
            return out
        chunks = -(-len(ids) // APPLICANT_ID_CHUNK)
        if chunks > 1:
            total = self.client.count("/applications", {"byAcademicYears": self.years})
            if total // self.page_size + 1 < chunks:
                return self.applications_all()
        for chunk in _chunks(ids, APPLICANT_ID_CHUNK):
            params = {**self._application_params(), "byApplicantIDs": chunk}
            for page in self.client.iter_collection_pages("/applications", params, self.page_size):
                self._keep(page, out)
        return out

    def _keep(self, page: Mapping[str, Mapping[str, Any]], out: dict[int, list[ApplicationRecord]]) -> None:
        for item in page.values():
            aid = link_id(item.get("applicant"))
            if aid is not None and aid in self.raw:
                out.setdefault(aid, []).append(normalise_application(item, self.catalog, self.client))

    def records(self, apps: dict[int, list[ApplicationRecord]]) -> list[ApplicantRecord]:
        return [
            normalise_applicant(self.raw[aid], self.catalog, apps.get(aid, []), self.reason[aid], self.client, aid)
            for aid in sorted(self.raw)
        ]


def _newest_event_id(client: Any, event_names: Sequence[str]) -> int | None:
    page = client.get_collection("/journal", {"byEvents": list(event_names), "order": "newest-first", "limit": 1})
    return max((i for k, v in page.items() if (i := _key_id(k, v)) is not None), default=None)


def _read_journal(client: Any, event_names: Sequence[str], cursor: int) -> tuple[list[Mapping[str, Any]], int]:
    """Events after ``cursor`` (oldest first, pages of 1024 until a short page) and the highest ID read."""
    events: list[Mapping[str, Any]] = []
    top = cursor
    params = {"byEvents": list(event_names), "bySince": cursor + 1}
    for page in client.iter_collection_pages("/journal", params, JOURNAL_PAGE):
        for key, item in page.items():
            eid = _key_id(key, item)
            if eid is None or eid <= cursor:
                continue
            events.append(item)
            top = max(top, eid)
    return events, top


def _applicants_of_applications(client: Any, app_ids: set[int], years: list[int], page_size: int) -> set[int]:
    """Resolve application IDs (events without an applicant link) to applicant IDs, by ID ranges."""
    out: set[int] = set()
    if not app_ids or not years:
        return out
    for lo, hi in _ranges(app_ids, LIST_PAGE_CAP):
        params = {"byAcademicYears": years, "bySince": lo, "byUntil": hi}
        for page in client.iter_collection_pages("/applications", params, LIST_PAGE_CAP):
            for key, item in page.items():
                if _key_id(key, item) in app_ids and (aid := link_id(item.get("applicant"))) is not None:
                    out.add(aid)
    return out


def _erased(client: Any) -> tuple[list[int], set[int]]:
    """Applicant IDs purged with ``request_to_be_forgotten`` (all of them: the ledger decides what is new),
    and every purged applicant ID (those are gone from DreamApply: never carried)."""
    forgotten: set[int] = set()
    purged: set[int] = set()
    for page in client.iter_paginated("/purged-resources"):
        for key, item in page.items():
            if str(item.get("type", "")).lower() != "applicant":
                continue
            pid = _key_id(key, item)
            if pid is None:
                continue
            purged.add(pid)
            if item.get("request_to_be_forgotten"):
                forgotten.add(pid)
    return sorted(forgotten), purged


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
