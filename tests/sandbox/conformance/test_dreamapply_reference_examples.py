"""Every JSON example of the DreamApply reference (/work/shared/reference/dreamapply-api.md), checked against
the sandbox: status, headers (JSON content type, ``X-Count`` on HEAD of collections) and shape (same keys,
same value types; v9's extra ``id`` and the SDK-documented extra fields allowed, links as ``/api/v9/...``).

Tests are named after the reference section they mirror.
"""

from __future__ import annotations

import re
from typing import Any

import pytest

from sandbox import Sandbox
from sandbox.client import VerifiedSession

DATETIME = re.compile(r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}\+00:00$")
DATE = re.compile(r"^\d{4}-\d{2}-\d{2}$")

# -- the examples, verbatim from the reference (… placeholders filled with a string) ----------
APPLICANT_LIST_ITEM_DOKU = {
    "123": {
        "registered": "2014-06-20T08:13:41+00:00",
        "name": {"given": "Joe", "middle": "", "family": "Smith"},
        "email": "sample.applicant.21@example.com",
        "skype": None,
        "phone": "+372 123456789",
        "reference": "foobar",
        "citizenship": "US",
        "trackers": "/api/applicants/123/trackers",
        "photo": "/api/applicants/123/photo",
        "documents": "/api/applicants/123/documents",
    }
}
APPLICANT_RECORD = {
    "id": 123,
    "type": "Natural",
    "registered": "2025-11-24T10:56:34+00:00",
    "name": {"full": "John Smith", "given": "John", "middle": None, "family": "Smith"},
    "email": "john.smith@email.com",
    "phone": "",
    "reference": None,
    "matriculation": None,
    "citizenship": "GB",
    "notes": None,
    "applications": "/api/v9/applicants/123/applications",
    "trackers": "/api/v9/applicants/123/trackers",
    "photo": "/api/v9/applicants/123/photo",
    "consents": "/api/v9/applicants/123/consents",
    "invoices": "/api/v9/applicants/123/invoices",
    "wishes": "/api/v9/applicants/123/wishes",
    "documents": "/api/v9/applicants/123/documents",
}
# [SDK] extra applicant fields
APPLICANT_EXTRAS = {
    "address",
    "vatin",
    "emails",
    "id",
    "type",
    "matriculation",
    "notes",
    "applications",
    "consents",
    "invoices",
    "wishes",
    "full",
    "parent",
    "legal",
}
CONSENTS = {
    "1": {"decided": "2025-08-05T12:13:02+00:00", "decision": "Accept", "consent": "/api/v9/applicants/consents/1"},
    "2": {"decided": "2025-11-24T12:07:18+00:00", "decision": "Reject", "consent": "/api/v9/applicants/consents/2"},
}
CONSENT_DEFINITION = {"type": "Mandatory", "text": "I agree to the terms…", "link": "https://…"}
TRACKER_ASSOCIATION = {"assigned": "2025-10-03T13:00:42+00:00", "tracker": "/api/v9/applicants/trackers/321"}
TRACKERS = {
    "1": {
        "id": 1,
        "created": "2025-07-29T12:53:20+00:00",
        "code": "DISCOUNT10",
        "notes": "Tracker code to provide a discount to early applicants",
        "reduction": {"reduction": "Percent", "percent": 10},
    },
    "2": {"id": 2, "created": "2025-08-27T09:18:38+00:00", "code": "FACEBOOK", "notes": None, "reduction": None},
}
APPLICATION_LIST_ITEM = {
    "60": {
        "created": "2025-06-20T08:30:31+00:00",
        "revised": "2025-06-20T08:30:31+00:00",
        "submitted": None,
        "status": "Prepare",
        "commence_year": "2025",
        "applicant": "/api/v9/applicants/60",
        "flags": "/api/v9/applications/60/flags",
        "courses": "/api/v9/applications/60/courses",
        "offers": "/api/v9/applications/60/offers",
        "exports": "/api/v9/applications/60/exports",
        "documents": "/api/v9/applications/60/documents",
    }
}
APPLICATION_COURSE = {  # [SDK] / Kotlin ApplicationCourseDto: the five keys
    "priority": 1,
    "submitted": "2025-06-20T08:30:31+00:00",
    "modifier": None,
    "course": "/api/v9/courses/1",
    "intake": "/api/v9/intakes/1",
}
OFFERS = {
    "12": {
        "priority": 1,
        "inserted": "2014-06-20T11:00:19+00:00",
        "saved": "2014-06-20T11:00:19+00:00",
        "confirmed": None,
        "course": "/api/courses/1",
        "type": "/api/v4/applications/offers/types/7",
        "type-confirmed": "/api/v4/applications/offers/types/1",
        "comments": None,
        "comments-confirmed": None,
        "decision": "None",
        "decision-policy": "None",
        "decision-deadline": None,
        "score": {"auto": "10.00", "extra": None},
        "notes": None,
    }
}
OFFER_EXTRAS = {"id", "scored", "decided", "subject", "intake", "reason"}
ACADEMIC_TERMS = {
    "27": {
        "id": 27,
        "year": "/api/v9/academic-years/2025",
        "name": "Fall semester 2025/26",
        "type": "/api/v9/academic-terms/types/1",
        "start": "2025-09-01",
        "grace": "2025-09-15",
        "finish": "2025-12-31",
    }
}
TERM_TYPES = {"1": {"name": "Fall semester"}, "2": {"name": "Spring semester"}}
ACADEMIC_YEARS = {"2025": {"name": "2025/26", "start": "2025-09-01"}}
INTAKES = {
    "1": {
        "id": 1,
        "name": "Fall semester intake",
        "start": "2025-01-01",
        "pre": {"deadline": None, "info": "…", "mask": False},
        "policy": "Strict (course)",
        "deadlines": {"001": {"deadline": "2025-06-01", "info": None}},
        "decision": {"policy": "Required", "days": 7},
        "arrival": "2025-08-31",
        "commence": "2025-08-01",
        "academic-term": {
            "id": 1,
            "year": "/api/v9/academic-years/2025",
            "name": "Fall semester 2025/26",
            "type": "/api/v9/academic-terms/types/1",
            "start": "2025-09-01",
            "grace": "2025-12-31",
            "finish": "2025-12-31",
        },
    }
}
COURSES = {
    "1": {
        "status": "Online",
        "updated": "2014-06-20T11:00:15+00:00",
        "institution": "/api/institutions/1",
        "intakes": {"1": "/api/intakes/1"},
        "featured": False,
        "type": "UG",
        "awards": [{"abbr": "BSc", "full": ""}],
        "name": "Sample under-graduate course",
        "mode": "FT",
        "duration": "3 years",
        "credits": None,
        "language": "en",
        "country": "EE",
        "location": "Tallinn",
        "code": None,
        "quota": None,
        "prospect": {"uri": None},
    }
}
COURSE_EXTRAS = {"id", "accreditation", "code_internal"}
PAGINATOR = {"total": 1, "current": 1, "prev": None, "next": None, "items": {"current": 3, "total": 3}}
PURGED_ITEM = {  # §2.9: fields seen id, type, created, request_to_be_forgotten, marked{at…}
    "id": 10,
    "type": "Application",
    "created": "2026-04-01T10:00:00+00:00",
    "request_to_be_forgotten": True,
    "marked": {"at": "2026-04-01T10:00:00+00:00"},
}
JOURNAL_ITEM = {  # [SDK] fields
    "id": 1,
    "logged": "2025-11-24T10:56:34+00:00",
    "event": "Applicant registered",
    "bind": [],
    "administrator": None,
    "applicant": None,
    "application": None,
    "course": None,
    "institution": None,
    "invoice": None,
    "offer": None,
    "document": None,
    "flag": None,
    "tracker": None,
}
STATUS_ITEM = {"title": "Submitted", "colour": "#00ff00", "verbose": "Submitted"}  # [SDK]
OFFER_TYPE_ITEM = {"id": 1, "title": "Accepted", "colour": "#00ff00"}  # Kotlin OfferTypeDto
OFFER_TYPE_EXTRAS = {"ranking", "confirm", "freeze", "decide", "decline", "reopen", "silence", "subject", "comments"}


# -- the shape checker -----------------------------------------------------------------------
def assert_shape(ref: Any, actual: Any, where: str = "$", extras: set[str] = frozenset(), missing_ok=()) -> None:
    """``actual`` has ``ref``'s keys and value types; ``None`` in ``ref`` means "nullable, any type"."""
    if ref is None:
        return
    if isinstance(ref, dict):
        assert isinstance(actual, dict), f"{where}: expected an object, got {actual!r}"
        if ref and all(k.isdigit() for k in ref):  # a nested ID/code-keyed map: check every entry
            template = next(iter(ref.values()))
            for key, value in actual.items():
                assert key.isdigit(), f"{where}: key {key!r} is not an ID or code"
                assert_shape(template, value, f"{where}[{key}]", extras, missing_ok)
            return
        for key, value in ref.items():
            if key in missing_ok:
                continue
            assert key in actual, f"{where}: missing key {key!r}"
            assert_shape(value, actual[key], f"{where}.{key}", extras, missing_ok)
        unexpected = set(actual) - set(ref) - set(extras)
        assert not unexpected, f"{where}: unexpected keys {sorted(unexpected)}"
        return
    if actual is None:
        return  # DreamApply fields are nullable
    if isinstance(ref, bool):
        assert isinstance(actual, bool), f"{where}: expected a boolean, got {actual!r}"
    elif isinstance(ref, int):
        assert isinstance(actual, int) and not isinstance(actual, bool), f"{where}: expected an integer, got {actual!r}"
    elif isinstance(ref, str):
        assert isinstance(actual, str), f"{where}: expected a string, got {actual!r}"
        if ref.startswith("/api/"):
            assert actual.startswith("/api/v9/"), f"{where}: expected a /api/v9/ link, got {actual!r}"
        elif DATETIME.match(ref):
            assert DATETIME.match(actual), f"{where}: expected an ISO datetime with offset, got {actual!r}"
        elif DATE.match(ref):
            assert DATE.match(actual), f"{where}: expected a date, got {actual!r}"
    elif isinstance(ref, list):
        assert isinstance(actual, list), f"{where}: expected an array, got {actual!r}"
        if ref:
            for i, item in enumerate(actual):
                assert_shape(ref[0], item, f"{where}[{i}]", extras, missing_ok)


def assert_collection(ref_item: Any, collection: dict[str, Any], extras: set[str] = frozenset(), missing_ok=()) -> None:
    assert isinstance(collection, dict) and collection, "expected a non-empty ID-keyed object"
    for key, item in collection.items():
        assert key.isdigit(), f"collection key {key!r} is not an ID"
        if "id" in item:
            assert str(item["id"]) == key
        assert_shape(ref_item, item, f"$[{key}]", extras, missing_ok)


class Api:
    def __init__(self, sb: Sandbox) -> None:
        self.base = sb.endpoints.dreamapply_url
        self.http = VerifiedSession(sb.ca_path)
        self.http.headers["Authorization"] = f'DREAM apikey="{sb.config.dreamapply_api_key}"'

    def fetch(self, path: str, collection: bool = False, **params: Any) -> Any:
        """GET (200, JSON) plus HEAD (200, no body, X-Count on collections)."""
        url = self.base + path
        r = self.http.get(url, params=params)
        assert r.status_code == 200, f"{path}: {r.status_code} {r.text[:200]}"
        assert r.headers["Content-Type"].split(";")[0] == "application/json"
        body = r.json()
        h = self.http.head(url, params=params)
        assert h.status_code == 200 and h.content == b""
        if collection:
            count = int(h.headers["X-Count"])
            assert count >= len(body) - (1 if "pages" in body else 0)
        return body


@pytest.fixture(scope="module")
def api(sandbox: Sandbox) -> Api:
    return Api(sandbox)


@pytest.fixture(autouse=True)
def _fresh_quota(sandbox: Sandbox) -> None:
    """The shared sandbox keeps the default 180 requests/minute; start every test with a fresh window."""
    r = VerifiedSession(sandbox.ca_path).post(sandbox.endpoints.admin_url + "/_sandbox/dreamapply/ratelimit", json={})
    assert r.status_code == 200


@pytest.fixture(scope="module")
def years(api: Api) -> str:
    return ",".join(api.fetch("/api/v9/academic-years", collection=True))


@pytest.fixture(scope="module")
def submitted_app(api: Api, years: str) -> dict[str, Any]:
    apps = api.fetch("/api/v9/applications", collection=True, byAcademicYears=years, byStatuses="Submitted", limit=50)
    return next(iter(apps.values()))


# -- §1 transport ------------------------------------------------------------------------------
def test_s1_1_api_version(api: Api) -> None:
    body = api.fetch("/api/version")
    assert body == {"version": 9}


def test_s1_1_ping(api: Api) -> None:
    assert_shape({"pong": 1700000000}, api.fetch("/api/v9/ping"))


def test_s1_6_purged_resources_paginator(api: Api, sandbox: Sandbox) -> None:
    # make sure there is something purged
    admin = sandbox.endpoints.admin_url + "/_sandbox/dreamapply"
    http = VerifiedSession(sandbox.ca_path)
    stats = http.get(admin + "/stats").json()
    if not stats["purged_resources"]:
        new = http.post(
            admin + "/applicants",
            json={"applications": [{"year": int(api.fetch("/api/v9/academic-years").popitem()[0])}]},
        ).json()
        http.post(admin + f"/applicants/{new['ids'][0]}/erase", json={})
    body = api.fetch("/api/v9/purged-resources", collection=True)
    assert_shape(PAGINATOR, body.pop("pages"), "$.pages")
    assert_collection(PURGED_ITEM, body)


# -- §2 applicants -----------------------------------------------------------------------------
def test_s2_1_applicant_list_item(api: Api) -> None:
    body = api.fetch("/api/v9/applicants", collection=True, limit=50)
    # "skype" is in the old DOKU example only; the v9 SDK model has no such field.
    assert_collection(APPLICANT_LIST_ITEM_DOKU["123"], body, APPLICANT_EXTRAS, missing_ok=("skype",))
    assert_collection(APPLICANT_RECORD, body, APPLICANT_EXTRAS)


def test_s2_2_applicant_record(api: Api) -> None:
    first = next(iter(api.fetch("/api/v9/applicants", limit=1)))
    assert_shape(APPLICANT_RECORD, api.fetch(f"/api/v9/applicants/{first}"), extras=APPLICANT_EXTRAS)


def _applicant_with(api: Api, key: str) -> dict[str, Any]:
    body = api.fetch("/api/v9/applicants", expand="consents,trackers", limit=200)
    return next(a for a in body.values() if a[key])


def test_s2_3_applicant_consents(api: Api) -> None:
    a = _applicant_with(api, "consents")
    body = api.fetch(f"/api/v9/applicants/{a['id']}/consents", collection=True)
    assert_collection(CONSENTS["1"], body)
    cid = next(iter(body))
    assert_shape(CONSENTS["1"], api.fetch(f"/api/v9/applicants/{a['id']}/consents/{cid}"))


def test_s2_3_consent_definition(api: Api) -> None:
    assert_shape(CONSENT_DEFINITION, api.fetch("/api/v9/applicants/consents/1"), extras={"id"})
    assert_collection(CONSENT_DEFINITION, api.fetch("/api/v9/applicants/consents", collection=True), extras={"id"})


def test_s2_4_applicant_trackers(api: Api) -> None:
    a = _applicant_with(api, "trackers")
    body = api.fetch(f"/api/v9/applicants/{a['id']}/trackers", collection=True)
    assert_collection(TRACKER_ASSOCIATION, body)


def test_s2_4_tracker_definitions(api: Api) -> None:
    body = api.fetch("/api/v9/applicants/trackers", collection=True)
    assert_collection(TRACKERS["2"], body)
    assert_shape(TRACKERS["1"]["reduction"], body["1"]["reduction"], extras={"amount", "currency"})
    assert_shape(TRACKERS["1"], api.fetch("/api/v9/applicants/trackers/1"))


def test_s2_5_applicant_applications_list_item(api: Api, submitted_app: dict[str, Any]) -> None:
    applicant_id = submitted_app["applicant"].rsplit("/", 1)[1]
    body = api.fetch(f"/api/v9/applicants/{applicant_id}/applications", collection=True)
    assert_collection(APPLICATION_LIST_ITEM["60"], body, extras={"id", "academic_term"})


def test_s2_5_applications_collection(api: Api, years: str) -> None:
    body = api.fetch("/api/v9/applications", collection=True, byAcademicYears=years, limit=100)
    assert_collection(APPLICATION_LIST_ITEM["60"], body, extras={"id", "academic_term"})


def test_s2_5_application_courses(api: Api, submitted_app: dict[str, Any]) -> None:
    body = api.fetch(f"/api/v9/applications/{submitted_app['id']}/courses", collection=True)
    assert_collection(APPLICATION_COURSE, body)
    cid = next(iter(body))
    prio = api.fetch(f"/api/v9/applications/{submitted_app['id']}/courses/{cid}/priority")
    assert isinstance(prio, int) and prio >= 1


def test_s2_5_application_statuses(api: Api) -> None:
    assert_collection(STATUS_ITEM, api.fetch("/api/v9/applications/statuses", collection=True), extras={"id"})


def test_s2_6_offers_hyphenated_keys(api: Api, submitted_app: dict[str, Any]) -> None:
    body = api.fetch(f"/api/v9/applications/{submitted_app['id']}/offers", collection=True)
    assert_collection(OFFERS["12"], body, extras=OFFER_EXTRAS)
    oid = next(iter(body))
    assert_shape(
        OFFERS["12"], api.fetch(f"/api/v9/applications/{submitted_app['id']}/offers/{oid}"), extras=OFFER_EXTRAS
    )


def test_s2_6_offer_types(api: Api) -> None:
    assert_collection(
        OFFER_TYPE_ITEM, api.fetch("/api/v9/applications/offers/types", collection=True), extras=OFFER_TYPE_EXTRAS
    )


def test_s2_9_journal_item(api: Api) -> None:
    events = "Applicant registered,Application was created,Application was submitted,Offer was edited: ?"
    body = api.fetch("/api/v9/journal", collection=True, byEvents=events, limit=200)
    assert_collection(JOURNAL_ITEM, body)
    assert all(isinstance(b, str) for item in body.values() for b in item["bind"])


# -- §3 academic set-up ----------------------------------------------------------------------
def test_s3_1_academic_terms(api: Api) -> None:
    body = api.fetch("/api/v9/academic-terms", collection=True)
    assert_collection(ACADEMIC_TERMS["27"], body)
    tid = next(iter(body))
    assert_shape(ACADEMIC_TERMS["27"], api.fetch(f"/api/v9/academic-terms/{tid}"))


def test_s3_1_academic_term_types(api: Api) -> None:
    body = api.fetch("/api/v9/academic-terms/types", collection=True)
    assert_collection(TERM_TYPES["1"], body, extras={"id"})
    assert {t["name"] for t in body.values()} >= {"Fall semester", "Spring semester"}


def test_s3_1_academic_years(api: Api) -> None:
    body = api.fetch("/api/v9/academic-years", collection=True)
    assert_collection(ACADEMIC_YEARS["2025"], body, extras={"id"})
    assert all(len(k) == 4 for k in body)  # keyed by year
    year = next(iter(body))
    assert_shape(ACADEMIC_YEARS["2025"], api.fetch(f"/api/v9/academic-years/{year}"), extras={"id"})


def test_s3_2_intakes(api: Api) -> None:
    body = api.fetch("/api/v9/intakes", collection=True)
    assert_collection(INTAKES["1"], body)
    assert_shape(INTAKES["1"], api.fetch("/api/v9/intakes/1"))


def test_s3_3_courses(api: Api) -> None:
    body = api.fetch("/api/v9/courses", collection=True)
    assert_collection(COURSES["1"], body, extras=COURSE_EXTRAS)
    assert_shape(COURSES["1"], api.fetch("/api/v9/courses/1"), extras=COURSE_EXTRAS)
