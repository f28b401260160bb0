"""Mutating DreamApply scenarios on private sandboxes: time advance, admin edits, erasure, rate limit."""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime

import pytest
from dahelpers import ALL_EVENTS, DA

from sandbox import Sandbox
from sandbox.client import SandboxClient, VerifiedSession

Make = Callable[..., tuple[Sandbox, SandboxClient]]


@pytest.fixture
def private(make_sandbox: Make) -> tuple[Sandbox, SandboxClient, DA]:
    sb, client = make_sandbox(applicants=200, seed=11, dreamapply_requests_per_minute=100_000)
    return sb, client, DA(sb)


def test_rate_limit_429_without_retry_after(make_sandbox: Make) -> None:
    sb, client = make_sandbox(applicants=20, dreamapply_requests_per_minute=5)
    da = DA(sb)
    bad = VerifiedSession(sb.ca_path)
    assert bad.get(da.api + "/applicants", headers={"Authorization": 'DREAM apikey="nope"'}).status_code == 401
    assert [da.get("/ping").status_code for _ in range(3)] == [200] * 3
    assert da.http.head(da.api + "/applicants").status_code == 200  # HEAD counts
    assert da.get("/applicants/1").status_code in (200, 404)
    r = da.get("/ping")
    assert r.status_code == 429
    assert "Retry-After" not in r.headers
    assert da.http.head(da.api + "/applicants").status_code == 429
    # the window is measured on the sandbox clock: moving time on opens a new one
    client.post("/dreamapply/advance", {"hours": 0.02, "seed": 1})
    assert da.get("/ping").status_code == 200


def test_advance_emits_journal_events_after_the_cursor(private: tuple[Sandbox, SandboxClient, DA]) -> None:
    _, client, da = private
    cursor = da.last_event_id()
    before = {int(k) for k in da.json("/applicants")}
    rates = {"new_applicants": 0.05, "edits": 0.1, "applications": 0.1, "submissions": 0.3, "offer_edits": 0.3}
    out = client.post("/dreamapply/advance", {"hours": 24, "seed": 3, "rates": rates})
    assert out["applicants_registered"] and out["applicants_edited"] and out["applications_created"]
    assert out["journal"]["first"] == cursor + 1
    page = da.json("/journal", byEvents=ALL_EVENTS, bySince=cursor + 1)
    ids = [int(k) for k in page]
    assert ids == list(range(cursor + 1, out["journal"]["last"] + 1))
    logged = [datetime.fromisoformat(e["logged"]) for e in page.values()]
    assert logged == sorted(logged)
    start, end = datetime.fromisoformat(out["from"]), datetime.fromisoformat(out["to"])
    assert all(start.replace(microsecond=0) <= t <= end for t in logged)
    registered = [int(e["applicant"].rsplit("/", 1)[1]) for e in page.values() if e["event"] == "Applicant registered"]
    assert registered == out["applicants_registered"]
    edited = sorted(
        {int(e["applicant"].rsplit("/", 1)[1]) for e in page.values() if e["event"] == "Applicant was edited"}
    )
    assert edited == sorted(out["applicants_edited"])
    created = {
        int(e["application"].rsplit("/", 1)[1]) for e in page.values() if "Application was created" in e["event"]
    }
    assert created == set(out["applications_created"])
    # new applicants are served, with new, higher IDs, after the old cursor
    new = da.json("/applicants", bySince=max(before) + 1)
    assert [int(k) for k in new] == out["applicants_registered"]
    # nothing older than the cursor came back
    again = da.json("/journal", byEvents=ALL_EVENTS, bySince=out["journal"]["last"] + 1)
    assert again == {}


def test_advance_is_deterministic(make_sandbox: Make) -> None:
    outs = []
    for _ in range(2):
        _, client = make_sandbox(applicants=150, seed=5)
        out = client.post("/dreamapply/advance", {"hours": 48, "seed": 9, "edits": 0.05})
        for key in ("from", "to"):
            out.pop(key)
        outs.append(out)
    assert outs[0] == outs[1]


def test_erasure_via_advance_and_admin(private: tuple[Sandbox, SandboxClient, DA]) -> None:
    _, client, da = private
    out = client.post("/dreamapply/advance", {"hours": 24, "seed": 2, "rates": {"erasures": 0.05}})
    erased = out["applicants_erased"]
    assert erased
    listed = da.json("/applicants")
    target = next(int(k) for k in listed if int(k) not in erased)
    res = client.post(f"/dreamapply/applicants/{target}/erase", {"request_to_be_forgotten": True})
    erased.append(target)
    listed = da.json("/applicants")
    purged = da.json("/purged-resources")
    purged.pop("pages")
    for a_id in erased:
        assert str(a_id) not in listed
        assert da.get(f"/applicants/{a_id}").status_code == 404
        assert purged[str(a_id)]["type"] == "Applicant"
        assert purged[str(a_id)]["request_to_be_forgotten"] is True
        assert client.get(f"/dreamapply/applicants/{a_id}")["erased"] is True
    for app_id in res["applications_purged"] + out["applications_purged"]:
        assert purged[str(app_id)]["type"] == "Application"
        assert da.get(f"/applications/{app_id}").status_code == 404
    deleted = da.json("/journal", byEvents="Applicant was deleted", bySince=out["journal"]["first"])
    assert sorted(int(e["applicant"].rsplit("/", 1)[1]) for e in deleted.values()) == sorted(erased)


def test_admin_create_edit_consent(private: tuple[Sandbox, SandboxClient, DA]) -> None:
    _, client, da = private
    cursor = da.last_event_id()
    spec = {
        "given": "Seán",
        "middle": None,
        "family": "O'Brien-Ó Súilleabháin",
        "email": "sean.obrien@example.com",
        "phone": "+353 1 234 5678",
        "citizenship": "IE",
        "consents": {"1": "Accept", "2": "Reject"},
        "trackers": ["FACEBOOK"],
        "applications": [{"courses": ["CS-BSC", 2], "status": "Submitted", "offers": [{"type": "Conditional"}]}],
    }
    created = client.post("/dreamapply/applicants", spec)
    (a_id,) = created["ids"]
    rec = da.json(f"/applicants/{a_id}")
    assert rec["name"] == {
        "full": "Seán O'Brien-Ó Súilleabháin",
        "given": "Seán",
        "middle": None,
        "family": "O'Brien-Ó Súilleabháin",
        "parent": None,
        "legal": None,
    }
    assert da.json(f"/applicants/{a_id}/consents/2")["decision"] == "Reject"
    assert da.get(f"/applicants/{a_id}/consents/3").status_code == 404
    assert [t["tracker"] for t in da.json(f"/applicants/{a_id}/trackers").values()] == ["/api/v9/applicants/trackers/2"]
    apps = da.json(f"/applicants/{a_id}/applications", expand="offers,courses")
    (app,) = apps.values()
    assert app["status"] == "Submitted"
    offers = sorted(app["offers"].values(), key=lambda o: o["priority"])
    assert offers[0]["type"] == "/api/v9/applications/offers/types/2"
    assert offers[1]["type"] == "/api/v9/applications/offers/types/1"
    events = da.json("/journal", byEvents=ALL_EVENTS, bySince=cursor + 1)
    assert [e["event"] for e in events.values()] == [
        "Applicant registered",
        "Application was created",
        "Application was submitted",
        "Offer was edited: ?",
    ]
    # edit
    edit = client.http.patch(f"{client.admin_url}/dreamapply/applicants/{a_id}", json={"email": "sean@example.org"})
    assert edit.status_code == 200 and edit.json()["changed"] == ["email"]
    assert da.json(f"/applicants/{a_id}")["email"] == "sean@example.org"
    ev = da.json("/journal", byEvents="Applicant was edited", bySince=edit.json()["event_id"])
    assert ev[str(edit.json()["event_id"])]["bind"] == ["email"]
    # consent withdrawal and back to undecided
    res = client.post(f"/dreamapply/applicants/{a_id}/consents", {"consent": 2, "decision": "Accept"})
    assert da.json(f"/applicants/{a_id}/consents/2")["decision"] == "Accept"
    ev = da.json("/journal", byEvents="Applicant consent was changed", bySince=res["event_id"])
    assert ev[str(res["event_id"])]["bind"] == ["2", "Accept"]
    client.post(f"/dreamapply/applicants/{a_id}/consents", {"consent": 2, "decision": None})
    assert da.get(f"/applicants/{a_id}/consents/2").status_code == 404
    # a bad spec is a 400 and registers nobody
    before = client.get("/dreamapply/stats")["applicants"]
    r = client.http.post(f"{client.admin_url}/dreamapply/applicants", json={"consents": {"9": "Accept"}})
    assert r.status_code == 400
    assert client.get("/dreamapply/stats")["applicants"] == before


def test_consent_withdrawals_in_advance(private: tuple[Sandbox, SandboxClient, DA]) -> None:
    _, client, da = private
    out = client.post("/dreamapply/advance", {"hours": 72, "seed": 4, "consent_withdrawals": 0.2})
    changes = out["consents_changed"]
    assert any(c["decision"] == "Reject" for c in changes)
    for c in changes:
        got = da.json(f"/applicants/{c['applicant']}/consents/{c['consent']}")
        assert got["decision"] == c["decision"]


def test_admin_errors(private: tuple[Sandbox, SandboxClient, DA]) -> None:
    _, client, _ = private
    base = client.admin_url + "/dreamapply"
    assert client.http.post(base + "/advance", json={}).status_code == 400
    assert client.http.post(base + "/advance", json={"hours": 1, "bogus_rate": 1}).status_code == 400
    assert client.http.get(base + "/applicants/99999999").status_code == 404
    assert client.http.patch(base + "/applicants/1", json={"id": 5}).status_code == 400
