"""DreamApply API v9 sandbox server (reference: /work/shared/reference/dreamapply-api.md).

Wire behaviour and the sandbox's choices where the reference leaves room:

- Auth: every ``/api/v9/...`` request needs ``Authorization: DREAM apikey="<key>"``; a missing or wrong
  key is ``401``. ``GET /api/version`` answers without a key (``{"version": 9}``); ``/api/v9/ping``
  needs one (``{"pong": <epoch seconds>}``).
- Errors have a plain-text body (``text/plain``), e.g. ``400 Bad Request: Missing required parameter
  byEvents ...``. Non-numeric IDs in paths are ``400``, unknown or erased records ``404``.
- Rate limit: ``dreamapply_requests_per_minute`` per key in fixed one-minute windows, all methods
  (HEAD too); over it ``429`` with no ``Retry-After`` (see ``ratelimit.py``).
- Collections are JSON objects keyed by ID. ``HEAD`` works wherever ``GET`` does; on a collection it
  carries ``X-Count`` = the number of items matching the filters, ignoring ``limit``. ``GET`` does not
  send ``X-Count``.
- ``limit`` on /applicants and /applications: 1..32768, or 1..8192 with ``expand``; out of range is
  ``400`` (the reference calls these hard caps); without ``limit`` at most the cap is returned. On the
  journal ``limit`` is 1..1024, default 1024, and larger values are silently capped (as documented);
  ``limit<1`` is ``400``.
- ``bySince``/``byUntil`` (inclusive) take an ID or an ISO datetime; the datetime form filters on
  ``registered`` (applicants), ``created`` (applications) or ``logged`` (journal).
- ``expand`` on /applicants: ``consents`` and ``trackers`` inline the association maps; ``documents``,
  ``invoices`` and ``wishes`` inline empty maps (the sandbox has none). An unknown name is ``400``.
- The journal returns only the last 6 months (183 days) of events; ``byEvents`` is required and accepts
  any names (unknown names simply match nothing). See ``sandbox.data.journal`` for the event names.
- ``/purged-resources`` pages 100 items per page (``page=`` 1-based, oldest purge first). Applicant and
  application IDs come from disjoint ranges (applications start at 1 000 001), so one ID-keyed map
  holds both types.
"""

from __future__ import annotations

import json
import re
from collections.abc import Awaitable, Callable
from typing import Any

from aiohttp import web

from sandbox.dreamapply import filters as F
from sandbox.dreamapply import render as R
from sandbox.dreamapply import shape_faults
from sandbox.dreamapply.filters import BadRequest
from sandbox.dreamapply.store import DreamApplyStore
from sandbox.httpcommon import LOG_EXTRA, STATE_KEY, make_app
from sandbox.state import SandboxState

API = "/api/v9"
APPLICANTS_CAP = 32768
APPLICANTS_EXPAND_CAP = 8192
JOURNAL_CAP = 1024
APPLICANT_EXPANDS = ("trackers", "documents", "consents", "invoices", "wishes")
APPLICATION_LIST_EXPANDS = ("applicant", "flags", "courses", "offers", "documents")
APPLICATION_EXPANDS = (*APPLICATION_LIST_EXPANDS, "tasks", "scores", "references")
COURSE_STATUSES = ("Online", "Standby", "Draft", "Archived", "Template", "Closed")
_AUTH = re.compile(r'^DREAM\s+apikey="([^"]*)"\s*$', re.IGNORECASE)

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


class NotFound(Exception):
    pass


# -- plumbing --------------------------------------------------------------------------------
def create_store(state: SandboxState) -> DreamApplyStore:
    return DreamApplyStore(state)


create_service = create_store


def _store(request: web.Request) -> DreamApplyStore:
    return request.app[STATE_KEY].dreamapply


def _text(status: int, reason: str, message: str = "") -> web.Response:
    body = f"{status} {reason}" + (f": {message}" if message else "")
    return web.Response(status=status, text=body, content_type="text/plain")


def _json(request: web.Request, obj: Any, count: int | None = None) -> web.Response:
    headers = {"X-Count": str(count)} if count is not None and request.method == "HEAD" else None
    if request.method == "HEAD":
        return web.Response(status=200, headers=headers, content_type="application/json")
    body = json.dumps(obj, ensure_ascii=False, separators=(",", ":")).encode()
    return web.Response(status=200, body=body, content_type="application/json", charset="utf-8")


def _head(request: web.Request) -> bool:
    return request.method == "HEAD"


def _path_id(request: web.Request, name: str = "id") -> int:
    raw = request.match_info[name]
    if not raw.isdigit() or not raw.isascii():
        raise BadRequest(f"Invalid ID format: {raw!r}")
    return int(raw)


def _catalog_collection(attr: str, render: Callable[..., Any], *, with_catalog: bool = False) -> Handler:
    """A handler for a whole set-up map ``Catalog.<attr>`` (keyed by ID) as an ID-keyed collection.

    ``render(item)``, or ``render(item, catalog)`` with ``with_catalog``, gives one item's JSON.
    """

    async def handler(request: web.Request) -> web.Response:
        cat = _store(request).ds.catalog
        items = getattr(cat, attr)
        extra = (cat,) if with_catalog else ()
        return _json(request, {str(key): render(item, *extra) for key, item in items.items()}, len(items))

    return handler


def _catalog_item(
    attr: str, render: Callable[..., Any], not_found: str, *, param: str = "id", with_catalog: bool = False
) -> Handler:
    """A handler for one item of ``Catalog.<attr>`` by the path ID ``param``; ``404 <not_found>`` if absent."""

    async def handler(request: web.Request) -> web.Response:
        cat = _store(request).ds.catalog
        item = getattr(cat, attr).get(_path_id(request, param))
        if item is None:
            raise NotFound(not_found)
        extra = (cat,) if with_catalog else ()
        return _json(request, render(item, *extra))

    return handler


@web.middleware
async def _api_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    path = request.path
    if path.startswith("/api/") and path != "/api/version":
        store = _store(request)
        m = _AUTH.match(request.headers.get("Authorization", ""))
        if m is None or m.group(1) != store.api_key:
            return _text(401, "Unauthorized", "API key missing, expired or invalid")
        if not store.limiter.allow(m.group(1)):
            request[LOG_EXTRA]["throttled"] = True
            return _text(
                429, "Too Many Requests", f"quota of {store.limiter.requests_per_minute} requests per minute exceeded"
            )
    try:
        return await handler(request)
    except BadRequest as exc:
        return _text(400, "Bad Request", str(exc))
    except NotFound as exc:
        return _text(404, "Not Found", str(exc))


def build_app(state: SandboxState) -> web.Application:
    app = make_app(state, "dreamapply", middlewares=[_api_middleware, shape_faults.middleware])
    get = app.router.add_get
    get("/api/version", version)
    get(f"{API}/ping", ping)
    # applicants (static paths before {id})
    get(f"{API}/applicants", applicants)
    get(f"{API}/applicants/consents", consent_definitions)
    get(f"{API}/applicants/consents/{{cid}}", consent_definition)
    get(f"{API}/applicants/trackers", trackers)
    get(f"{API}/applicants/trackers/{{tid}}", tracker)
    get(f"{API}/applicants/{{id}}", applicant)
    get(f"{API}/applicants/{{id}}/consents", applicant_consents)
    get(f"{API}/applicants/{{id}}/consents/{{cid}}", applicant_consent)
    get(f"{API}/applicants/{{id}}/trackers", applicant_trackers)
    get(f"{API}/applicants/{{id}}/trackers/{{tid}}", applicant_tracker)
    get(f"{API}/applicants/{{id}}/applications", applicant_applications)
    get(f"{API}/applicants/{{id}}/photo", applicant_photo)
    for sub in ("documents", "invoices", "wishes", "emails"):
        get(f"{API}/applicants/{{id}}/{sub}", applicant_empty)
    # applications
    get(f"{API}/applications", applications)
    get(f"{API}/applications/statuses", application_statuses)
    get(f"{API}/applications/flags", empty_collection)
    get(f"{API}/applications/offers/types", offer_types)
    get(f"{API}/applications/offers/types/{{tid}}", offer_type)
    get(f"{API}/applications/{{id}}", application)
    get(f"{API}/applications/{{id}}/courses", application_courses)
    get(f"{API}/applications/{{id}}/courses/{{cid}}", application_course)
    get(f"{API}/applications/{{id}}/courses/{{cid}}/priority", application_course_priority)
    get(f"{API}/applications/{{id}}/offers", application_offers)
    get(f"{API}/applications/{{id}}/offers/{{oid}}", application_offer)
    for sub in ("flags", "documents", "exports"):
        get(f"{API}/applications/{{id}}/{sub}", application_empty)
    # set-up
    get(f"{API}/courses", courses)
    get(f"{API}/courses/{{id}}", course)
    get(f"{API}/academic-terms", academic_terms)
    get(f"{API}/academic-terms/types", term_types)
    get(f"{API}/academic-terms/types/{{id}}", term_type)
    get(f"{API}/academic-terms/{{id}}", academic_term)
    get(f"{API}/academic-years", academic_years)
    get(f"{API}/academic-years/{{id}}", academic_year)
    get(f"{API}/intakes", intakes)
    get(f"{API}/intakes/{{id}}", intake)
    get(f"{API}/institutions", institutions)
    get(f"{API}/institutions/{{id}}", institution)
    # change detection
    get(f"{API}/journal", journal)
    get(f"{API}/purged-resources", purged_resources)
    return app


def register_admin_routes(app: web.Application, prefix: str) -> None:
    from sandbox.dreamapply.admin import register

    register(app, prefix)
    shape_faults.register(app, prefix)  # /_sandbox/shape-faults (both servers)


# -- misc --------------------------------------------------------------------------------------
async def version(request: web.Request) -> web.Response:
    return _json(request, {"version": 9})


async def ping(request: web.Request) -> web.Response:
    return _json(request, {"pong": _store(request).now()})


async def empty_collection(request: web.Request) -> web.Response:
    return _json(request, {}, 0)


# -- applicants --------------------------------------------------------------------------------
async def applicants(request: web.Request) -> web.Response:
    q = request.query
    store = _store(request)
    expand = F.parse_expand(q.get("expand"), APPLICANT_EXPANDS)
    limit = F.parse_limit(q.get("limit"), APPLICANTS_EXPAND_CAP if expand else APPLICANTS_CAP)
    count, found = store.select_applicants(
        since=F.parse_cursor(q["bySince"], "bySince") if "bySince" in q else None,
        until=F.parse_cursor(q["byUntil"], "byUntil") if "byUntil" in q else None,
        citizenships=F.parse_citizenships(q["byCitizenships"]) if "byCitizenships" in q else None,
        emails=F.parse_strings(q["byEmails"], "byEmails") if "byEmails" in q else None,
        tracker_ids=F.parse_ids(q["byTrackerIDs"], "byTrackerIDs") if "byTrackerIDs" in q else None,
        tracker_codes=F.parse_strings(q["byTrackerCodes"], "byTrackerCodes") if "byTrackerCodes" in q else None,
        limit=0 if _head(request) else limit,
    )
    with store.lock:
        body = {R.applicant_key(a): R.applicant(a, expand) for a in found}
    return _json(request, body, count)


def _live_applicant(request: web.Request):
    a = _store(request).applicant(_path_id(request))
    if a is None:
        raise NotFound("Applicant not found")
    return a


async def applicant(request: web.Request) -> web.Response:
    a = _live_applicant(request)
    return _json(request, R.applicant(a))


async def applicant_consents(request: web.Request) -> web.Response:
    a = _live_applicant(request)
    body = R.consent_associations(a)
    return _json(request, body, len(body))


async def applicant_consent(request: web.Request) -> web.Response:
    a = _live_applicant(request)
    cid = _path_id(request, "cid")
    item = R.consent_association(a, cid)
    if item is None:
        raise NotFound("The applicant has not decided on this consent, or the consent does not exist")
    return _json(request, item)


async def applicant_trackers(request: web.Request) -> web.Response:
    a = _live_applicant(request)
    body = R.tracker_associations(a)
    return _json(request, body, len(body))


async def applicant_tracker(request: web.Request) -> web.Response:
    a = _live_applicant(request)
    tid = _path_id(request, "tid")
    body = R.tracker_associations(a)
    if str(tid) not in body:
        raise NotFound("Tracker is not assigned to this applicant")
    return _json(request, body[str(tid)])


async def applicant_applications(request: web.Request) -> web.Response:
    a = _live_applicant(request)
    store = _store(request)
    expand = F.parse_expand(request.query.get("expand"), APPLICATION_LIST_EXPANDS)
    with store.lock:
        found = store.applications_of(a)
        body = {str(app.id): R.application(app, store.ds, expand) for app in found}
    return _json(request, body, len(body))


async def applicant_photo(request: web.Request) -> web.Response:
    _live_applicant(request)
    raise NotFound("No photo")


async def applicant_empty(request: web.Request) -> web.Response:
    _live_applicant(request)
    return _json(request, {}, 0)


consent_definitions = _catalog_collection("consents", R.consent_definition)
consent_definition = _catalog_item("consents", R.consent_definition, "Consent not found", param="cid")
trackers = _catalog_collection("trackers", R.tracker)
tracker = _catalog_item("trackers", R.tracker, "Tracker not found", param="tid")


# -- applications ----------------------------------------------------------------------------
def _ids_param(q: Any, name: str) -> set[int] | None:
    return F.parse_ids(q[name], name) if name in q else None


async def applications(request: web.Request) -> web.Response:
    q = request.query
    store = _store(request)
    term_id = F.parse_int(q["byAcademicTermID"], "byAcademicTermID") if "byAcademicTermID" in q else None
    year_raw = q.get("byAcademicYear", q.get("byCommenceYear"))
    year = F.parse_int(year_raw, "byAcademicYear") if year_raw is not None else None
    years = _ids_param(q, "byAcademicYears")
    if term_id is None and year is None and years is None:
        raise BadRequest("One of the filters byAcademicTermID, byAcademicYear or byAcademicYears is required")
    expand = F.parse_expand(q.get("expand"), APPLICATION_LIST_EXPANDS)
    limit = F.parse_limit(q.get("limit"), APPLICANTS_EXPAND_CAP if expand else APPLICANTS_CAP)
    cat = store.ds.catalog
    course_ids = _ids_param(q, "byCourseIDs")
    if "byCourseTypes" in q:
        types = {t.lower() for t in F.parse_strings(q["byCourseTypes"], "byCourseTypes")}
        sel = {c.id for c in cat.courses.values() if c.type.lower() in types}
        course_ids = sel if course_ids is None else course_ids & sel
    inst = _ids_param(q, "byCourseInstitutionIDs")
    if inst is not None:
        sel = {c.id for c in cat.courses.values() if c.institution_id in inst}
        course_ids = sel if course_ids is None else course_ids & sel
    intake_ids = _ids_param(q, "byCourseIntakeIDs")
    term_ids = store.term_ids(term_id, year, years)
    if intake_ids is not None:
        term_ids &= {i.term_id for i in cat.intakes.values() if i.id in intake_ids}
    if "byFlagIDs" in q:
        _ids_param(q, "byFlagIDs")
        term_ids = set()  # the sandbox has no flags
    count, found = store.select_applications(
        term_ids,
        applicant_ids=_ids_param(q, "byApplicantIDs"),
        statuses=F.parse_strings(q["byStatuses"], "byStatuses") if "byStatuses" in q else None,
        created_since=F.parse_datetime(q["byCreatedSince"], "byCreatedSince") if "byCreatedSince" in q else None,
        revised_since=F.parse_datetime(q["byRevisedSince"], "byRevisedSince") if "byRevisedSince" in q else None,
        submitted_since=F.parse_datetime(q["bySubmittedSince"], "bySubmittedSince")
        if "bySubmittedSince" in q
        else None,
        course_ids=course_ids,
        offer_types=_ids_param(q, "byOfferTypes"),
        offer_decisions=F.parse_strings(q["byOfferDecisions"], "byOfferDecisions") if "byOfferDecisions" in q else None,
        since=F.parse_cursor(q["bySince"], "bySince") if "bySince" in q else None,
        until=F.parse_cursor(q["byUntil"], "byUntil") if "byUntil" in q else None,
        limit=0 if _head(request) else limit,
    )
    with store.lock:
        body = {str(app.id): R.application(app, store.ds, expand) for app in found}
    return _json(request, body, count)


def _live_application(request: web.Request):
    app = _store(request).application(_path_id(request))
    if app is None:
        raise NotFound("Application not found")
    return app


async def application(request: web.Request) -> web.Response:
    app = _live_application(request)
    store = _store(request)
    expand = F.parse_expand(request.query.get("expand"), APPLICATION_EXPANDS)
    with store.lock:
        return _json(request, R.application_record(app, store.ds, expand))


async def application_courses(request: web.Request) -> web.Response:
    app = _live_application(request)
    body = R.application_courses(app, _store(request).ds)
    return _json(request, body, len(body))


async def application_course(request: web.Request) -> web.Response:
    app = _live_application(request)
    body = R.application_courses(app, _store(request).ds)
    cid = str(_path_id(request, "cid"))
    if cid not in body:
        raise NotFound("Course is not part of this application")
    return _json(request, body[cid])


async def application_course_priority(request: web.Request) -> web.Response:
    app = _live_application(request)
    body = R.application_courses(app, _store(request).ds)
    cid = str(_path_id(request, "cid"))
    if cid not in body:
        raise NotFound("Course is not part of this application")
    return _json(request, body[cid]["priority"])


async def application_offers(request: web.Request) -> web.Response:
    app = _live_application(request)
    store = _store(request)
    with store.lock:
        body = R.application_offers(app, store.ds)
    return _json(request, body, len(body))


async def application_offer(request: web.Request) -> web.Response:
    app = _live_application(request)
    oid = _path_id(request, "oid")
    store = _store(request)
    if oid not in (app.offers or ()):
        raise NotFound("Offer not found")
    return _json(request, R.offer(store.ds.offers[oid], store.ds.catalog))


async def application_empty(request: web.Request) -> web.Response:
    _live_application(request)
    return _json(request, {}, 0)


application_statuses = _catalog_collection("statuses", R.status)
offer_types = _catalog_collection("offer_types", R.offer_type)
offer_type = _catalog_item("offer_types", R.offer_type, "Offer type not found", param="tid")


# -- set-up ------------------------------------------------------------------------------------
async def courses(request: web.Request) -> web.Response:
    q = request.query
    cat = _store(request).ds.catalog
    found = list(cat.courses.values())
    if "byStatuses" in q:
        wanted = F.parse_strings(q["byStatuses"], "byStatuses")
        known = {s.lower(): s for s in COURSE_STATUSES}
        bad = [s for s in wanted if s.lower() not in known]
        if bad:
            raise BadRequest(f"Invalid value for parameter byStatuses: {', '.join(bad)}")
        found = [c for c in found if c.status.lower() in {s.lower() for s in wanted}]
    if "byCodes" in q:
        codes = {c.lower() for c in F.parse_strings(q["byCodes"], "byCodes")}
        found = [c for c in found if c.code and c.code.lower() in codes]
    if "byTypes" in q:
        types = {t.lower() for t in F.parse_strings(q["byTypes"], "byTypes")}
        found = [c for c in found if c.type.lower() in types]
    if "byModes" in q:
        modes = {m.lower() for m in F.parse_strings(q["byModes"], "byModes")}
        found = [c for c in found if c.mode.lower() in modes]
    inst = _ids_param(q, "byInstitutionIds") or _ids_param(q, "byInstitutionIDs")
    if inst is not None:
        found = [c for c in found if c.institution_id in inst]
    return _json(request, {str(c.id): R.course(c, cat) for c in found}, len(found))


course = _catalog_item("courses", R.course, "Course not found", with_catalog=True)
academic_terms = _catalog_collection("terms", R.academic_term)
academic_term = _catalog_item("terms", R.academic_term, "Academic term not found")
term_types = _catalog_collection("term_types", R.term_type)
term_type = _catalog_item("term_types", R.term_type, "Academic term type not found")
academic_years = _catalog_collection("years", R.academic_year)
academic_year = _catalog_item("years", R.academic_year, "Academic year not found")
intakes = _catalog_collection("intakes", R.intake, with_catalog=True)
intake = _catalog_item("intakes", R.intake, "Intake not found", with_catalog=True)
institutions = _catalog_collection("institutions", R.institution)
institution = _catalog_item("institutions", R.institution, "Institution not found")


# -- change detection --------------------------------------------------------------------------
async def journal(request: web.Request) -> web.Response:
    q = request.query
    store = _store(request)
    names = F.parse_events(q.get("byEvents"))
    order = q.get("order", "oldest-first")
    if order not in ("oldest-first", "newest-first"):
        raise BadRequest("Invalid value for parameter order: expected oldest-first or newest-first")
    limit = min(F.parse_int(q["limit"], "limit", minimum=1), JOURNAL_CAP) if "limit" in q else JOURNAL_CAP
    count, ids = store.select_journal(
        names,
        since=F.parse_cursor(q["bySince"], "bySince") if "bySince" in q else None,
        until=F.parse_cursor(q["byUntil"], "byUntil") if "byUntil" in q else None,
        academic_year=F.parse_int(q["byAcademicYear"], "byAcademicYear") if "byAcademicYear" in q else None,
        term_id=F.parse_int(q["byAcademicTermID"], "byAcademicTermID") if "byAcademicTermID" in q else None,
        newest_first=order == "newest-first",
        limit=0 if _head(request) else limit,
    )
    with store.lock:
        body = {str(i): R.journal_item(store.ds.journal, i) for i in ids}
    return _json(request, body, count)


async def purged_resources(request: web.Request) -> web.Response:
    q = request.query
    page = F.parse_int(q["page"], "page", minimum=1) if "page" in q else 1
    store = _store(request)
    total, items = store.purged_page(page)
    per_page = 100
    pages = max(1, -(-total // per_page))
    body: dict[str, Any] = {
        "pages": {
            "total": pages,
            "current": page,
            "prev": page - 1 if 1 < page <= pages + 1 else None,
            "next": page + 1 if page < pages else None,
            "items": {"current": len(items), "total": total},
        }
    }
    for p in items:
        body[str(p.id)] = R.purge(p)
    return _json(request, body, total)
