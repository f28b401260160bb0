"""DreamApply API v9 sandbox over real HTTPS: auth, collections, cursors, filters, expand, journal, purges."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from dahelpers import DA

from sandbox import Sandbox
from sandbox.client import VerifiedSession
from sandbox.data.journal import APPLICANT_REGISTERED, APPLICATION_CREATED, APPLICATION_SUBMITTED, OFFER_EDITED


@pytest.fixture(scope="module")
def da(sandbox: Sandbox) -> DA:
    return DA(sandbox)


@pytest.fixture(autouse=True)
def _fresh_quota(sandbox: Sandbox) -> None:
    """The shared sandbox keeps the default 180 requests/minute; start every test with a fresh window."""
    r = VerifiedSession(sandbox.ca_path).post(sandbox.endpoints.admin_url + "/_sandbox/dreamapply/ratelimit", json={})
    assert r.status_code == 200


@pytest.fixture(scope="module")
def all_applicants(da: DA) -> dict[str, Any]:
    return da.json("/applicants", expand="consents,trackers")


# -- auth and plumbing -------------------------------------------------------------------------
def test_missing_key_is_401(sandbox: Sandbox) -> None:
    r = VerifiedSession(sandbox.ca_path).get(sandbox.endpoints.dreamapply_api_url + "/applicants")
    assert r.status_code == 401
    assert r.headers["Content-Type"].startswith("text/plain")


@pytest.mark.parametrize(
    "header",
    ['DREAM apikey="wrong"', "Bearer abc", 'DREAM apikey=""', "DREAM sandbox-dreamapply-api-key-0123456789abcdef"],
)
def test_wrong_key_is_401(sandbox: Sandbox, header: str) -> None:
    r = VerifiedSession(sandbox.ca_path).get(
        sandbox.endpoints.dreamapply_api_url + "/applicants/1", headers={"Authorization": header}
    )
    assert r.status_code == 401


def test_ping_and_version(sandbox: Sandbox, da: DA) -> None:
    assert isinstance(da.json("/ping")["pong"], int)
    r = VerifiedSession(sandbox.ca_path).get(sandbox.endpoints.dreamapply_url + "/api/version")
    assert r.status_code == 200 and r.json() == {"version": 9}


def test_bad_id_is_400_and_unknown_is_404(da: DA) -> None:
    assert da.get("/applicants/abc").status_code == 400
    assert da.get("/applicants/99999999").status_code == 404
    assert da.head("/applicants/99999999").status_code == 404
    assert da.get("/applications/99999999").status_code == 404


# -- applicants --------------------------------------------------------------------------------
def test_applicants_are_id_keyed_with_id(all_applicants: dict[str, Any]) -> None:
    assert len(all_applicants) > 250
    for key, item in all_applicants.items():
        assert item["id"] == int(key)
    ids = [int(k) for k in all_applicants]
    assert ids == sorted(ids)
    registered = [all_applicants[str(i)]["registered"] for i in ids]
    assert registered == sorted(registered)
    assert all(r.endswith("+00:00") for r in registered)


def test_head_counts_and_has_no_body(da: DA, all_applicants: dict[str, Any]) -> None:
    r = da.head("/applicants")
    assert r.status_code == 200
    assert int(r.headers["X-Count"]) == len(all_applicants)
    assert r.content == b""
    assert "X-Count" not in da.get("/applicants", limit=1).headers


def test_keyset_paging_returns_each_applicant_once(da: DA, all_applicants: dict[str, Any]) -> None:
    seen: list[int] = []
    since = 1
    while True:
        page = da.json("/applicants", bySince=since, limit=37)
        seen += [int(k) for k in page]
        if len(page) < 37:
            break
        since = max(int(k) for k in page) + 1
    assert len(seen) == len(set(seen))
    assert len(seen) == int(da.head("/applicants").headers["X-Count"])
    assert seen == [int(k) for k in all_applicants]


def test_since_until_by_id_are_inclusive(da: DA, all_applicants: dict[str, Any]) -> None:
    ids = [int(k) for k in all_applicants]
    lo, hi = ids[10], ids[20]
    page = da.json("/applicants", bySince=lo, byUntil=hi)
    assert [int(k) for k in page] == ids[10:21]
    assert int(da.head("/applicants", bySince=lo, byUntil=hi).headers["X-Count"]) == 11


def test_since_until_by_datetime_filter_registration(da: DA, all_applicants: dict[str, Any]) -> None:
    items = list(all_applicants.values())
    a, b = items[50], items[80]
    page = da.json("/applicants", bySince=a["registered"], byUntil=b["registered"])
    assert [int(k) for k in page] == [x["id"] for x in items[50:81]]
    # Z suffix and naive (UTC) forms
    z = a["registered"].replace("+00:00", "Z")
    assert next(iter(da.json("/applicants", bySince=z, limit=1))) == str(a["id"])
    assert da.get("/applicants", bySince="yesterday").status_code == 400


@pytest.mark.parametrize(
    ("params", "status"),
    [
        ({"limit": 32768}, 200),
        ({"limit": 32769}, 400),
        ({"limit": 8192, "expand": "consents"}, 200),
        ({"limit": 8193, "expand": "consents"}, 400),
        ({"limit": 0}, 400),
        ({"limit": "ten"}, 400),
        ({"expand": "consents,bogus"}, 400),
        ({"byCitizenships": "Estonia"}, 400),
        ({"byTrackerIDs": "x"}, 400),
    ],
)
def test_limit_caps_and_bad_filters(da: DA, params: dict[str, Any], status: int) -> None:
    r = da.get("/applicants", **params)
    assert r.status_code == status, r.text
    if status == 400:
        assert r.headers["Content-Type"].startswith("text/plain")
        assert r.text.startswith("400 Bad Request")


def test_expand_inlines_consents_and_trackers(da: DA, all_applicants: dict[str, Any]) -> None:
    plain = da.json("/applicants", limit=5)
    for item in plain.values():
        assert item["consents"] == f"/api/v9/applicants/{item['id']}/consents"
        assert item["trackers"] == f"/api/v9/applicants/{item['id']}/trackers"
    with_trackers = [a for a in all_applicants.values() if a["trackers"]]
    assert with_trackers
    a = with_trackers[0]
    assert da.json(f"/applicants/{a['id']}/trackers") == a["trackers"]
    assert da.json(f"/applicants/{a['id']}/consents") == a["consents"]
    for assoc in a["trackers"].values():
        assert set(assoc) == {"assigned", "tracker"}
        assert assoc["tracker"].startswith("/api/v9/applicants/trackers/")


def test_filters_citizenship_email_tracker(da: DA, all_applicants: dict[str, Any]) -> None:
    ee = {k for k, a in all_applicants.items() if (a["citizenship"] or "").upper() in ("EE", "FI")}
    assert set(da.json("/applicants", byCitizenships="ee fi")) == ee
    assert int(da.head("/applicants", byCitizenships="EE,FI").headers["X-Count"]) == len(ee)
    a = next(a for a in all_applicants.values() if a["email"] and "@" in a["email"] and " " not in a["email"])
    found = da.json("/applicants", byEmails=a["email"].upper())
    assert str(a["id"]) in found
    assert all(x["email"].strip().lower() == a["email"].lower() for x in found.values())
    tracked = [a for a in all_applicants.values() if a["trackers"]]
    tid = next(iter(tracked[0]["trackers"]))
    code = da.json(f"/applicants/trackers/{tid}")["code"]
    expected = {str(a["id"]) for a in tracked if tid in a["trackers"]}
    assert set(da.json("/applicants", byTrackerIDs=tid)) == expected
    assert set(da.json("/applicants", byTrackerCodes=code)) == expected


def test_applicant_record_and_links(da: DA, all_applicants: dict[str, Any]) -> None:
    a = next(iter(all_applicants.values()))
    rec = da.json(f"/applicants/{a['id']}")
    assert rec["id"] == a["id"]
    assert rec["name"]["full"]
    assert rec["applications"] == f"/api/v9/applicants/{a['id']}/applications"
    r = da.head(f"/applicants/{a['id']}")
    assert r.status_code == 200 and r.content == b""


def test_consent_association_and_undecided_404(da: DA, all_applicants: dict[str, Any]) -> None:
    decided = undecided = None
    for a in all_applicants.values():
        if "2" in a["consents"] and decided is None:
            decided = a
        if "2" not in a["consents"] and undecided is None:
            undecided = a
    assert decided and undecided
    one = da.json(f"/applicants/{decided['id']}/consents/2")
    assert one == decided["consents"]["2"]
    assert one["decision"] in ("Accept", "Reject")
    assert da.get(f"/applicants/{undecided['id']}/consents/2").status_code == 404
    assert da.get(f"/applicants/{decided['id']}/consents/99").status_code == 404
    defs = da.json("/applicants/consents")
    assert {d["type"] for d in defs.values()} == {"Mandatory", "Voluntary"}
    assert da.json("/applicants/consents/2")["type"] == "Voluntary"


# -- applications ------------------------------------------------------------------------------
def test_applications_require_a_term_filter(da: DA) -> None:
    r = da.get("/applications")
    assert r.status_code == 400
    assert "byAcademicTermID" in r.text
    assert da.get("/applications", byApplicantIDs="1").status_code == 400
    assert da.head("/applications").status_code == 400


def _years(da: DA) -> list[int]:
    return [int(y) for y in da.json("/academic-years")]


def test_applications_by_year_term_and_applicant(da: DA) -> None:
    years = _years(da)
    by_years = da.json("/applications", byAcademicYears=",".join(map(str, years)))
    assert by_years
    total = 0
    for y in years:
        page = da.json("/applications", byAcademicYear=y)
        total += len(page)
        assert all(a["commence_year"] == str(y) for a in page.values())
    assert total == len(by_years)
    any_app = next(iter(by_years.values()))
    term_id = int(any_app["academic_term"].rsplit("/", 1)[1])
    by_term = da.json("/applications", byAcademicTermID=term_id)
    assert all(a["academic_term"] == any_app["academic_term"] for a in by_term.values())
    applicant_id = int(any_app["applicant"].rsplit("/", 1)[1])
    mine = da.json("/applications", byAcademicYears=",".join(map(str, years)), byApplicantIDs=applicant_id)
    assert set(mine) == set(da.json(f"/applicants/{applicant_id}/applications"))
    assert int(da.head("/applications", byAcademicYears=",".join(map(str, years))).headers["X-Count"]) == len(by_years)


def test_applications_revised_since_and_statuses(da: DA) -> None:
    years = ",".join(map(str, _years(da)))
    apps = da.json("/applications", byAcademicYears=years)
    revised = sorted(a["revised"] for a in apps.values())
    cut = revised[len(revised) // 2]
    newer = da.json("/applications", byAcademicYears=years, byRevisedSince=cut)
    assert newer and all(a["revised"] >= cut for a in newer.values())
    assert len(newer) == sum(1 for a in apps.values() if a["revised"] >= cut)
    submitted = da.json("/applications", byAcademicYears=years, byStatuses="Submitted")
    assert submitted and all(a["status"] == "Submitted" for a in submitted.values())
    statuses = {s["title"] for s in da.json("/applications/statuses").values()}
    assert {a["status"] for a in apps.values()} <= statuses


def test_application_expand_courses_offers(da: DA) -> None:
    years = ",".join(map(str, _years(da)))
    apps = da.json("/applications", byAcademicYears=years, byStatuses="Submitted", expand="courses,offers", limit=20)
    app = next(a for a in apps.values() if a["offers"])
    assert app["courses"] == da.json(f"/applications/{app['id']}/courses")
    assert app["offers"] == da.json(f"/applications/{app['id']}/offers")
    prios = sorted(c["priority"] for c in app["courses"].values())
    assert prios == list(range(1, len(prios) + 1))
    for oid, offer in app["offers"].items():
        assert {"type-confirmed", "comments-confirmed", "decision-policy", "decision-deadline"} <= set(offer)
        assert offer["decision"] in ("None", "Final", "Declined")
        assert da.json(f"/applications/{app['id']}/offers/{oid}") == offer
    types = da.json("/applications/offers/types")
    assert {"Unreplied", "Conditional", "Unconditional", "Rejected", "Waitlisted"} <= {
        t["title"] for t in types.values()
    }
    rec = da.json(f"/applications/{app['id']}", expand="applicant")
    assert rec["applicant"]["id"] == int(app["applicant"].rsplit("/", 1)[1])
    assert "profile" in rec


def test_application_paging_by_since(da: DA) -> None:
    years = ",".join(map(str, _years(da)))
    all_ids = [int(k) for k in da.json("/applications", byAcademicYears=years)]
    seen: list[int] = []
    since = 0
    while True:
        page = da.json("/applications", byAcademicYears=years, bySince=since, limit=50)
        seen += [int(k) for k in page]
        if len(page) < 50:
            break
        since = max(int(k) for k in page) + 1
    assert seen == all_ids


# -- set-up --------------------------------------------------------------------------------------
def test_courses_terms_years_intakes(da: DA) -> None:
    courses = da.json("/courses")
    assert 10 <= len(courses) <= 20
    online = da.json("/courses", byStatuses="Online")
    assert online and all(c["status"] == "Online" for c in online.values())
    assert da.get("/courses", byStatuses="Sleeping").status_code == 400
    code = next(c["code"] for c in courses.values() if c["code"])
    assert [c["code"] for c in da.json("/courses", byCodes=code).values()] == [code]
    terms = da.json("/academic-terms")
    t = next(iter(terms.values()))
    assert da.json(f"/academic-terms/{t['id']}") == t
    assert da.json(t["type"].replace("/api/v9", "")) == {
        "id": int(t["type"].rsplit("/", 1)[1]),
        "name": "Fall semester",
    }
    years = da.json("/academic-years")
    y = next(iter(years))
    assert da.json(f"/academic-years/{y}") == years[y]
    intakes = da.json("/intakes")
    i = next(iter(intakes.values()))
    assert i["academic-term"]["id"] in {int(k) for k in terms}
    assert int(da.head("/intakes").headers["X-Count"]) == len(intakes)


# -- journal and purges ----------------------------------------------------------------------
EVENTS = ",".join([APPLICANT_REGISTERED, APPLICATION_CREATED, APPLICATION_SUBMITTED, OFFER_EDITED])


def test_journal_requires_by_events(da: DA) -> None:
    r = da.get("/journal")
    assert r.status_code == 400 and "byEvents" in r.text
    assert da.get("/journal", byEvents=EVENTS, order="sideways").status_code == 400
    assert da.get("/journal", byEvents=EVENTS, limit=0).status_code == 400


def test_journal_order_limit_and_cursor(da: DA) -> None:
    page = da.json("/journal", byEvents=EVENTS, limit=5000)
    assert 0 < len(page) <= 1024  # silently capped
    ids = [int(k) for k in page]
    assert ids == sorted(ids)
    logged = [e["logged"] for e in page.values()]
    assert logged == sorted(logged)
    for e in page.values():
        assert e["event"] in EVENTS.split(",")
        assert isinstance(e["bind"], list)
    newest = da.json("/journal", byEvents=EVENTS, order="newest-first", limit=3)
    assert [int(k) for k in newest] == sorted((int(k) for k in newest), reverse=True)
    mid = ids[len(ids) // 2]
    after = da.json("/journal", byEvents=EVENTS, bySince=mid, limit=10)
    assert next(iter(after)) == str(mid)  # inclusive
    until = da.json("/journal", byEvents=EVENTS, bySince=mid, byUntil=mid)
    assert list(until) == [str(mid)]
    count = int(da.head("/journal", byEvents=EVENTS).headers["X-Count"])
    assert count >= len(page)


def test_journal_only_last_six_months(da: DA) -> None:
    page = da.json("/journal", byEvents=APPLICANT_REGISTERED, limit=1)
    first = datetime.fromisoformat(next(iter(page.values()))["logged"])
    assert first >= datetime.now(UTC) - timedelta(days=184)


def test_journal_by_academic_year(da: DA) -> None:
    years = _years(da)
    for y in years:
        page = da.json("/journal", byEvents=APPLICATION_CREATED, byAcademicYear=y, limit=10)
        for e in page.values():
            app = da.get(e["application"].replace("/api/v9", ""))
            if app.status_code == 200:
                assert app.json()["commence_year"] == str(y)


def test_purged_resources_paginator(da: DA) -> None:
    body = da.json("/purged-resources")
    pages = body.pop("pages")
    assert set(pages) == {"total", "current", "prev", "next", "items"}
    assert pages["current"] == 1 and pages["prev"] is None
    assert pages["items"]["current"] == len(body)
    assert int(da.head("/purged-resources").headers["X-Count"]) == pages["items"]["total"]
    assert da.get("/purged-resources", page=0).status_code == 400
