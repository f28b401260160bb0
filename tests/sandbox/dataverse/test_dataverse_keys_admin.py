"""Alternate key lifecycle, duplicate detection and the sandbox-only admin routes."""

from __future__ import annotations

import time
import uuid
from typing import Any

from dvhelpers import WebApi, error_of, new_applicant_id

LEAD = "EntityDefinitions(LogicalName='lead')"
NOT_A_KEY = "The specified key attributes are not a defined key for the lead entity"


def _key_status(api: WebApi) -> str:
    keys = api.get(f"{LEAD}/Keys?$select=SchemaName,EntityKeyIndexStatus").json()["value"]
    return next(k["EntityKeyIndexStatus"] for k in keys if k["SchemaName"] == "uni_applicantid_key")


def test_key_pending_then_active(make_sandbox: Any, connect: Any) -> None:
    sb, _ = make_sandbox(alternate_key_activation_seconds=1)
    api: WebApi = connect(sb)
    assert _key_status(api) == "Pending"
    status, _, message = error_of(api.patch("leads(uni_applicantid='A-1')", {"lastname": "P"}))
    assert (status, message) == (400, NOT_A_KEY)
    assert error_of(api.get("leads(uni_applicantid='A-1')"))[2] == NOT_A_KEY
    # Writes without the key work meanwhile, and duplicates are not yet rejected.
    api.create({"lastname": "Early", "uni_applicantid": "A-0"})
    deadline = time.time() + 5
    while _key_status(api) != "Active":
        assert time.time() < deadline
        time.sleep(0.1)
    assert api.patch("leads(uni_applicantid='A-1')", {"lastname": "P"}).status_code == 204
    assert api.get("leads(uni_applicantid='A-0')?$select=lastname").json()["lastname"] == "Early"


def test_key_fails_to_activate_over_duplicates(make_sandbox: Any, connect: Any) -> None:
    sb, _ = make_sandbox(alternate_key_activation_seconds=0.3)
    api: WebApi = connect(sb)
    api.create({"lastname": "One", "uni_applicantid": "DUP"})
    api.create({"lastname": "Two", "uni_applicantid": "dup"})
    time.sleep(0.4)
    assert _key_status(api) == "Failed"
    assert error_of(api.get("leads(uni_applicantid='DUP')"))[2] == NOT_A_KEY


def test_no_key_defined_then_created_by_post(make_sandbox: Any, connect: Any) -> None:
    sb, _ = make_sandbox(alternate_key_activation_seconds=-1)
    api: WebApi = connect(sb)
    assert api.get(f"{LEAD}/Keys").json()["value"] == []
    assert error_of(api.patch("leads(uni_applicantid='A-1')", {"lastname": "P"}))[2] == NOT_A_KEY
    body = {
        "SchemaName": "uni_applicantid_key",
        "DisplayName": {"LocalizedLabels": [{"Label": "Applicant", "LanguageCode": 1033}]},
        "KeyAttributes": ["uni_applicantid"],
    }
    r = api.post(f"{LEAD}/Keys", body)
    assert r.status_code == 204
    assert "/Keys(" in r.headers["OData-EntityId"]
    assert api.post(f"{LEAD}/Keys", body).status_code == 400
    assert api.post(f"{LEAD}/Keys", {"SchemaName": "x_key", "KeyAttributes": ["description"]}).status_code == 400
    assert _key_status(api) == "Active"
    assert api.patch("leads(uni_applicantid='A-1')", {"lastname": "P"}).status_code == 204
    key_id = r.headers["OData-EntityId"].rsplit("(", 1)[1].rstrip(")")
    assert api.delete(f"{LEAD}/Keys({key_id})").status_code == 204
    assert error_of(api.get("leads(uni_applicantid='A-1')"))[2] == NOT_A_KEY


def test_duplicate_detection_only_when_asked(api: WebApi) -> None:
    email = f"dup-{uuid.uuid4().hex[:8]}@example.com"
    api.create({"lastname": "First", "emailaddress1": email})
    on = {"MSCRM.SuppressDuplicateDetection": "false"}
    status, code, message = error_of(
        api.post("leads", {"lastname": "Second", "emailaddress1": email.upper()}, headers=on)
    )
    assert (status, code) == (500, "0x80040333")
    assert message == "A record was not created or updated because a duplicate of the current record already exists."
    assert api.post("leads", {"lastname": "Second", "emailaddress1": email}).status_code == 204
    other = api.create({"lastname": "Third"})
    assert error_of(api.patch(f"leads({other})", {"emailaddress1": email}, headers=on))[0] == 500
    upsert = api.patch(f"leads(uni_applicantid='{new_applicant_id()}')", {"emailaddress1": email}, headers=on)
    assert upsert.status_code == 500


def test_admin_routes(make_sandbox: Any, connect: Any) -> None:
    sb, client = make_sandbox()
    api: WebApi = connect(sb)
    created = client.post(
        "/dataverse/leads",
        [
            {
                "firstname": "Pre",
                "lastname": "Existing",
                "uni_applicantid": "A-77",
                "createdon": "2024-05-01T10:00:00Z",
            },
            {"lastname": "Closed", "statecode": 2, "statuscode": 4},
        ],
    )
    assert created["created"] == 2
    rows = client.get("/dataverse/leads", applicant_id="A-77")
    assert len(rows) == 1 and rows[0]["fullname"] == "Pre Existing" and rows[0]["createdon"] == "2024-05-01T10:00:00Z"
    assert rows[0]["_ownerid_value"] != sb.state.application_user_id
    lead_id = rows[0]["leadid"]
    r = client.http.post(client.admin_url + "/dataverse/leads", json=[{"subject": "x" * 301}])
    assert r.status_code == 400 and r.json()["error"]["code"] == "0x80044331"
    assert client.get("/dataverse/stats")["leads"] == 2
    r = client.http.patch(client.admin_url + f"/dataverse/leads/{lead_id}", json={"statecode": 2, "statuscode": 6})
    assert r.status_code == 200 and r.json()["statuscode"] == 6
    assert api.get(f"leads({lead_id})?$select=statecode").json()["statecode"] == 2
    assert client.http.delete(client.admin_url + f"/dataverse/leads/{lead_id}").status_code == 204
    assert client.http.delete(client.admin_url + f"/dataverse/leads/{lead_id}").status_code == 404
    assert api.get(f"leads({lead_id})").status_code == 404
    assert len(client.get("/dataverse/leads")) == 1
    client.post("/dataverse/reset")
    assert client.get("/dataverse/stats")["leads"] == 0
