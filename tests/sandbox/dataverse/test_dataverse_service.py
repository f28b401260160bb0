"""DataverseService.dispatch without HTTP: URL forms, transactions (changeset rollback) and scale."""

from __future__ import annotations

import json
import time
import tracemalloc
import uuid
from types import SimpleNamespace
from typing import Any

import pytest

from sandbox.clock import SandboxClock
from sandbox.config import SandboxConfig
from sandbox.dataverse.service import Caller, DataverseService, SubResponse
from sandbox.entra.apps import AppRegistry
from sandbox.state import Endpoints

APP_USER = "a983663f-e268-548a-b251-ea1190075ca5"


@pytest.fixture
def service() -> DataverseService:
    cfg = SandboxConfig()
    endpoints = Endpoints(
        login_url="https://login.test",
        org_url="https://org.test",
        dreamapply_url="https://da.test",
        admin_url="https://admin.test",
        tenant_id=cfg.tenant_id,
    )
    apps = AppRegistry(cfg)
    assert apps.primary.user_id == APP_USER
    state = SimpleNamespace(
        config=cfg, endpoints=endpoints, clock=SandboxClock(), application_user_id=APP_USER, apps=apps
    )
    return DataverseService(state)  # type: ignore[arg-type]


CALLER = Caller(user_id=APP_USER, client_id="client")


def call(
    svc: DataverseService,
    method: str,
    url: str,
    body: Any = None,
    headers: dict[str, str] | None = None,
    txn: Any = None,
) -> SubResponse:
    raw = b"" if body is None else json.dumps(body).encode()
    return svc.dispatch(method, url, headers or {}, raw, CALLER, txn=txn)


def test_relative_and_absolute_urls_and_case_insensitive_headers(service: DataverseService) -> None:
    r = call(service, "POST", "/api/data/v9.2/leads", {"lastname": "A"}, {"prefer": "return=representation"})
    assert r.status == 201
    lead_id = json.loads(r.body or b"")["leadid"]
    assert r.headers["OData-EntityId"] == f"https://org.test/api/data/v9.2/leads({lead_id})"
    assert r.headers["Content-Type"] == "application/json; odata.metadata=minimal"
    r = call(service, "GET", f"https://org.test/api/data/v9.2/leads({lead_id})?$select=lastname")
    assert r.status == 200 and json.loads(r.body or b"")["lastname"] == "A"
    r = call(service, "GET", "/api/data/v9.1/leads")
    assert r.status == 404 and r.headers["REQ_ID"]


def test_rollback_restores_every_change(service: DataverseService) -> None:
    keep = json.loads(
        call(service, "POST", "/api/data/v9.2/leads", {"lastname": "Keep"}, {"Prefer": "return=representation"}).body
        or b""
    )
    gone = json.loads(
        call(
            service,
            "POST",
            "/api/data/v9.2/leads",
            {"lastname": "Gone", "uni_applicantid": "K-1"},
            {"Prefer": "return=representation"},
        ).body
        or b""
    )
    before = {k: dict(v) for k, v in service.store.rows.items()}
    txn = service.begin()
    assert (
        call(service, "POST", "/api/data/v9.2/leads", {"lastname": "New", "uni_applicantid": "K-2"}, txn=txn).status
        == 204
    )
    assert (
        call(service, "PATCH", f"/api/data/v9.2/leads({keep['leadid']})", {"lastname": "Changed"}, txn=txn).status
        == 204
    )
    assert (
        call(service, "PATCH", "/api/data/v9.2/leads(uni_applicantid='K-3')", {"lastname": "Upserted"}, txn=txn).status
        == 204
    )
    assert call(service, "DELETE", f"/api/data/v9.2/leads({gone['leadid']})", txn=txn).status == 204
    assert (
        call(service, "PATCH", "/api/data/v9.2/leads(uni_applicantid='K-2')", {"lastname": "Twice"}, txn=txn).status
        == 204
    )
    txn.rollback()
    assert {k: dict(v) for k, v in service.store.rows.items()} == before
    assert call(service, "GET", "/api/data/v9.2/leads(uni_applicantid='K-1')").status == 200
    assert call(service, "GET", "/api/data/v9.2/leads(uni_applicantid='K-2')").status == 404
    assert call(service, "GET", "/api/data/v9.2/leads(uni_applicantid='K-3')").status == 404
    body = json.loads(call(service, "GET", "/api/data/v9.2/leads?$select=lastname").body or b"")
    assert sorted(r["lastname"] for r in body["value"]) == ["Gone", "Keep"]
    txn = service.begin()
    call(service, "POST", "/api/data/v9.2/leads", {"lastname": "Committed"}, txn=txn)
    txn.commit()
    assert len(service.store.rows) == 3


def test_errors_are_responses_not_exceptions(service: DataverseService) -> None:
    r = call(service, "POST", "/api/data/v9.2/leads", {"nope": 1})
    assert r.status == 400 and json.loads(r.body or b"")["error"]["code"] == "0x80060888"
    r = service.dispatch("POST", "/api/data/v9.2/leads", {}, b"\xff\xfe", CALLER)
    assert r.status == 400


@pytest.mark.slow  # more than 3 s: make test runs it, make test-fast does not
def test_hundred_thousand_leads_stay_usable(service: DataverseService) -> None:
    store = service.store
    stamp = "2025-01-02T03:04:05Z"
    tracemalloc.start()
    base = tracemalloc.get_traced_memory()[0]
    for i in range(100_000):
        if i == 10_000:  # measure on the first 10 000 rows (tracemalloc is slow), extrapolate
            per_row = (tracemalloc.get_traced_memory()[0] - base) / 10_000
            tracemalloc.stop()
        store.insert(
            {
                "leadid": str(uuid.UUID(int=i + 1)),
                "firstname": f"F{i}",
                "lastname": f"L{i}",
                "fullname": f"F{i} L{i}",
                "emailaddress1": f"p{i}@example.com",
                "subject": "Applicant 2025",
                "uni_applicantid": f"A-{i:06d}",
                "uni_programme": 727000001,
                "uni_leadstage": 727000000,
                "ownerid": APP_USER,
                "owneridtype": "systemuser",
                "createdby": APP_USER,
                "modifiedby": APP_USER,
                "createdon": stamp,
                "modifiedon": stamp,
                "statecode": 0,
                "statuscode": 1,
                "versionnumber": store.next_version(),
            }
        )
    assert per_row * 100_000 / 2**20 < 250, per_row
    started = time.perf_counter()
    r = call(service, "GET", "/api/data/v9.2/leads?$select=leadid&$filter=emailaddress1 eq 'P77777@example.com'")
    ids = "['A-000001','A-054321']"
    r2 = call(
        service,
        "GET",
        f"/api/data/v9.2/leads?$select=uni_applicantid&$filter=Microsoft.Dynamics.CRM.In(PropertyName='uni_applicantid',PropertyValues={ids})",
    )
    r3 = call(service, "PATCH", "/api/data/v9.2/leads(uni_applicantid='A-099999')", {"firstname": "Z"})
    indexed = time.perf_counter() - started
    assert len(json.loads(r.body or b"")["value"]) == 1
    assert len(json.loads(r2.body or b"")["value"]) == 2
    assert r3.status == 204
    assert indexed < 1.0, indexed  # generous: a GC pass over 100k rows may land here
    started = time.perf_counter()
    seen = 0
    url: str | None = "/api/data/v9.2/leads?$select=leadid"
    while url:
        body = json.loads(service.dispatch("GET", url, {"Prefer": "odata.maxpagesize=5000"}, b"", CALLER).body or b"")
        seen += len(body["value"])
        url = body.get("@odata.nextLink")
    assert seen == 100_000
    assert time.perf_counter() - started < 10
    body = json.loads(call(service, "GET", "/api/data/v9.2/leads?$select=leadid&$count=true&$top=1").body or b"")
    assert body["@odata.count"] == 5000 and body["@Microsoft.Dynamics.CRM.totalrecordcountlimitexceeded"] is True
