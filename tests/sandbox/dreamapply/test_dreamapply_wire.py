"""Malformed applicant records served by the DreamApply API on request (admin ``/applicants/{id}/wire``)."""

from __future__ import annotations

import pytest
from dahelpers import ALL_EVENTS, DA

from sandbox.client import SandboxClient


@pytest.fixture
def private(make_sandbox) -> tuple[SandboxClient, DA]:  # type: ignore[no-untyped-def]
    sb, client = make_sandbox(applicants=30, seed=5, dreamapply_requests_per_minute=100_000)
    return client, DA(sb)


def _edit_events_after(da: DA, cursor: int) -> list[str]:
    page = da.json("/journal", byEvents=ALL_EVENTS, bySince=cursor + 1)
    return [e["applicant"] for e in page.values() if e["event"] == "Applicant was edited"]


def test_a_record_served_malformed_in_lists_and_by_id_then_wellformed_again(private) -> None:  # type: ignore[no-untyped-def]
    client, da = private
    good = da.json("/applicants/7")
    cursor = da.last_event_id()
    out = client.serve_malformed(7, set={"name": "Mari Tamm", "id": "7a"}, remove=["email"])
    assert out["wire"]["set"] == {"name": "Mari Tamm", "id": "7a"} and out["event_id"] == cursor + 1
    assert _edit_events_after(da, cursor) == ["/api/v9/applicants/7"]

    listed = da.json("/applicants", expand="consents,trackers", bySince=5, byUntil=9)
    assert list(listed) == ["5", "6", "7", "8", "9"]  # filters and keyset order still work on the model
    record = listed["7"]
    assert record["id"] == "7a" and record["name"] == "Mari Tamm" and "email" not in record
    assert record["phone"] == good["phone"] and isinstance(record["consents"], dict)
    assert isinstance(listed["6"]["name"], dict) and isinstance(listed["6"]["id"], int)  # only 7 is malformed
    single = da.json("/applicants/7")
    assert single["id"] == "7a" and single["name"] == "Mari Tamm"
    assert da.head("/applicants").headers["X-Count"] == "30"
    assert client.get("/dreamapply/applicants/7/wire")["record"]["name"] == "Mari Tamm"
    assert client.get("/dreamapply/applicants/7")["wire"]["remove"] == ["email"]

    cursor = da.last_event_id()
    client.serve_wellformed(7)
    assert da.json("/applicants/7") == good
    assert _edit_events_after(da, cursor) == ["/api/v9/applicants/7"]
    assert client.get("/dreamapply/applicants/7")["wire"] is None


def test_key_and_whole_record_replacement_and_no_journal(private) -> None:  # type: ignore[no-untyped-def]
    client, da = private
    cursor = da.last_event_id()
    client.serve_malformed(3, key="3a", set={"id": "3a"}, journal=False)
    client.serve_malformed(4, replace="not a record", journal=False)
    assert da.last_event_id() == cursor
    listed = da.json("/applicants", bySince=1, byUntil=5)
    assert list(listed) == ["1", "2", "3a", "4", "5"]
    assert listed["3a"]["id"] == "3a" and listed["4"] == "not a record"
    client.serve_malformed(4, replace=None, journal=False)
    assert da.json("/applicants", bySince=4, byUntil=4) == {"4": None}


def test_wire_errors(private) -> None:  # type: ignore[no-untyped-def]
    client, da = private
    url = f"{client.admin_url}/dreamapply/applicants"
    assert client.http.put(f"{url}/2/wire", json={"sett": {"name": "x"}}).status_code == 400
    assert client.http.put(f"{url}/2/wire", json={}).status_code == 400
    assert client.http.put(f"{url}/2/wire", json={"remove": "email"}).status_code == 400
    assert client.http.put(f"{url}/999/wire", json={"set": {"name": "x"}}).status_code == 404
    client.post("/dreamapply/applicants/2/erase", {})
    assert client.http.put(f"{url}/2/wire", json={"set": {"name": "x"}}).status_code == 409
    assert isinstance(da.json("/applicants/1")["name"], dict)  # nothing changed elsewhere
