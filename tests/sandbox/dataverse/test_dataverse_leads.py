"""leads: create, retrieve, update, delete, upsert by id and by alternate key, conditional requests, owners."""

from __future__ import annotations

import uuid

from dvhelpers import WebApi, error_of, new_applicant_id

from sandbox import Sandbox


def _lead(**extra: object) -> dict[str, object]:
    body: dict[str, object] = {
        "firstname": "Ann",
        "lastname": "Lee",
        "subject": "Applicant",
        "emailaddress1": "ann@example.com",
    }
    body.update(extra)
    return body


def test_create_204_then_retrieve(api: WebApi, sandbox: Sandbox) -> None:
    r = api.post("leads", _lead(uni_applicantid=new_applicant_id()))
    assert r.status_code == 204
    assert r.content == b""
    entity_url = r.headers["OData-EntityId"]
    assert entity_url.startswith(api.base + "/leads(")
    lead_id = entity_url.rsplit("(", 1)[1].rstrip(")")
    uuid.UUID(lead_id)
    got = api.get(f"leads({lead_id})")
    assert got.status_code == 200
    body = got.json()
    assert body["@odata.context"] == f"{api.base}/$metadata#leads/$entity"
    assert body["@odata.etag"].startswith('W/"')
    assert got.headers["ETag"] == body["@odata.etag"]
    assert body["leadid"] == lead_id
    assert body["fullname"] == "Ann Lee"
    assert body["statecode"] == 0 and body["statuscode"] == 1
    assert body["_ownerid_value"] == sandbox.state.application_user_id
    assert body["_createdby_value"] == sandbox.state.application_user_id
    assert body["createdon"].endswith("Z") and body["modifiedon"] == body["createdon"]
    assert body["donotemail"] is False
    assert body["telephone1"] is None
    assert isinstance(body["versionnumber"], int)
    assert "owneridname" not in body and "owneridtype" not in body


def test_create_with_representation_and_select(api: WebApi) -> None:
    r = api.post("leads?$select=leadid,fullname", _lead(), headers={"Prefer": "return=representation"})
    assert r.status_code == 201
    assert r.headers["Preference-Applied"] == "return=representation"
    body = r.json()
    assert body["@odata.context"] == f"{api.base}/$metadata#leads(leadid,fullname)/$entity"
    assert set(body) == {"@odata.context", "@odata.etag", "leadid", "fullname"}
    assert r.headers["ETag"] == body["@odata.etag"]
    assert r.headers["OData-EntityId"].endswith(f"({body['leadid']})")


def test_client_supplied_leadid_is_honoured(api: WebApi) -> None:
    lead_id = str(uuid.uuid4())
    r = api.post("leads", _lead(leadid=lead_id))
    assert r.headers["OData-EntityId"] == f"{api.base}/leads({lead_id})"
    assert api.post("leads", _lead(leadid=lead_id)).status_code == 412


def test_update_delete_and_404(api: WebApi) -> None:
    lead_id = api.create(_lead())
    before = api.get(f"leads({lead_id})").json()
    r = api.patch(f"leads({lead_id})", {"firstname": "Anna", "jobtitle": "Student"})
    assert r.status_code == 204
    after = api.get(f"leads({lead_id})?$select=firstname,fullname,jobtitle,modifiedon").json()
    assert after["fullname"] == "Anna Lee" and after["jobtitle"] == "Student"
    assert after["@odata.etag"] != before["@odata.etag"]
    assert api.patch(f"leads({lead_id})", {"jobtitle": None}).status_code == 204
    assert api.get(f"leads({lead_id})?$select=jobtitle").json()["jobtitle"] is None
    assert api.delete(f"leads({lead_id})").status_code == 204
    status, code, message = error_of(api.get(f"leads({lead_id})"))
    assert (status, code, message) == (404, "0x80040217", f"lead With Id = {lead_id} Does Not Exist")
    assert api.delete(f"leads({lead_id})").status_code == 404


def test_upsert_by_id_creates_then_updates(api: WebApi) -> None:
    lead_id = str(uuid.uuid4())
    r = api.patch(f"leads({lead_id})", _lead())
    assert r.status_code == 204
    assert r.headers["OData-EntityId"] == f"{api.base}/leads({lead_id})"
    r = api.patch(f"leads({lead_id})?$select=leadid", {"lastname": "Lo"}, headers={"Prefer": "return=representation"})
    assert r.status_code == 200
    assert r.json()["leadid"] == lead_id
    assert api.get(f"leads({lead_id})?$select=fullname").json()["fullname"] == "Ann Lo"


def test_upsert_by_key_204_both_ways_in_key_form(api: WebApi) -> None:
    app_id = new_applicant_id()
    r = api.patch(f"leads(uni_applicantid='{app_id}')", _lead())
    assert r.status_code == 204
    assert r.headers["OData-EntityId"] == f"{api.base}/leads(uni_applicantid='{app_id}')"
    r = api.patch(f"leads(uni_applicantid='{app_id}')", {"firstname": "Ada"})
    assert r.status_code == 204
    rows = api.get(f"leads?$select=fullname,uni_applicantid&$filter=uni_applicantid eq '{app_id}'").json()["value"]
    assert len(rows) == 1 and rows[0]["fullname"] == "Ada Lee" and rows[0]["uni_applicantid"] == app_id


def test_upsert_by_key_201_then_200_with_representation(api: WebApi) -> None:
    app_id = new_applicant_id()
    prefer = {"Prefer": "return=representation"}
    r = api.patch(f"leads(uni_applicantid='{app_id}')?$select=leadid", _lead(), headers=prefer)
    assert r.status_code == 201
    created = r.json()
    assert created["@odata.context"] == f"{api.base}/$metadata#leads(leadid)/$entity"
    assert set(created) == {"@odata.context", "@odata.etag", "leadid"}
    r = api.patch(f"leads(uni_applicantid='{app_id}')?$select=leadid", {"lastname": "Li"}, headers=prefer)
    assert r.status_code == 200
    assert r.json()["leadid"] == created["leadid"]
    assert r.json()["@odata.etag"] != created["@odata.etag"]


def test_key_values_in_body_ignored_on_update_and_win_on_create(api: WebApi) -> None:
    app_id, other = new_applicant_id(), new_applicant_id()
    api.patch(f"leads(uni_applicantid='{app_id}')", _lead())
    assert (
        api.patch(f"leads(uni_applicantid='{app_id}')", {"uni_applicantid": other, "firstname": "Z"}).status_code == 204
    )
    rows = api.get(f"leads?$select=firstname&$filter=uni_applicantid eq '{app_id}'").json()["value"]
    assert [r["firstname"] for r in rows] == ["Z"]
    third = new_applicant_id()
    assert api.patch(f"leads(uni_applicantid='{third}')", _lead(uni_applicantid=other)).status_code == 204
    assert api.get(f"leads?$filter=uni_applicantid eq '{other}'&$select=leadid").json()["value"]
    assert not api.get(f"leads?$filter=uni_applicantid eq '{third}'&$select=leadid").json()["value"]


def test_apostrophe_in_key_and_filter(api: WebApi) -> None:
    app_id = "O'Brien-" + uuid.uuid4().hex[:8]
    quoted = app_id.replace("'", "''")
    r = api.patch(f"leads(uni_applicantid='{quoted}')", _lead(lastname="O'Brien"))
    assert r.status_code == 204
    assert r.headers["OData-EntityId"].endswith(f"leads(uni_applicantid='{quoted}')")
    got = api.get(f"leads(uni_applicantid='{quoted}')?$select=lastname,uni_applicantid")
    assert got.status_code == 200 and got.json()["uni_applicantid"] == app_id
    rows = api.get(
        "leads", params={"$select": "lastname", "$filter": f"uni_applicantid eq '{quoted}' and lastname eq 'O''Brien'"}
    )
    assert len(rows.json()["value"]) == 1


def test_if_match_star_on_missing_is_404_and_if_none_match_star_on_existing_is_412(api: WebApi) -> None:
    app_id = new_applicant_id()
    status, _, message = error_of(api.patch(f"leads(uni_applicantid='{app_id}')", _lead(), headers={"If-Match": "*"}))
    assert status == 404 and message == "A record with the specified key values does not exist in lead entity"
    missing = str(uuid.uuid4())
    status, code, message = error_of(api.patch(f"leads({missing})", _lead(), headers={"If-Match": "*"}))
    assert (status, message) == (404, f"lead With Id = {missing} Does Not Exist")
    assert api.patch(f"leads(uni_applicantid='{app_id}')", _lead(), headers={"If-None-Match": "*"}).status_code == 204
    status, code, message = error_of(
        api.patch(f"leads(uni_applicantid='{app_id}')", _lead(), headers={"If-None-Match": "*"})
    )
    assert (status, code, message) == (412, "0x80040237", "A record with matching key values already exists.")
    assert (
        api.patch(f"leads(uni_applicantid='{app_id}')", {"firstname": "U"}, headers={"If-Match": "*"}).status_code
        == 204
    )
    assert (
        api.patch(
            f"leads(uni_applicantid='{app_id}')", {"firstname": "V"}, headers={"If-None-Match": "null"}
        ).status_code
        == 204
    )


def test_optimistic_concurrency(api: WebApi) -> None:
    lead_id = api.create(_lead())
    etag = api.get(f"leads({lead_id})?$select=leadid").json()["@odata.etag"]
    assert api.patch(f"leads({lead_id})", {"firstname": "B"}, headers={"If-Match": etag}).status_code == 204
    status, code, message = error_of(api.patch(f"leads({lead_id})", {"firstname": "C"}, headers={"If-Match": etag}))
    assert (status, code) == (412, "0x80060882")
    assert message == "The version of the existing record doesn't match the RowVersion property provided."
    assert api.delete(f"leads({lead_id})", headers={"If-Match": etag}).status_code == 412
    fresh = api.get(f"leads({lead_id})?$select=leadid")
    assert (
        api.get(f"leads({lead_id})?$select=leadid", headers={"If-None-Match": fresh.headers["ETag"]}).status_code == 304
    )
    assert api.delete(f"leads({lead_id})", headers={"If-Match": fresh.headers["ETag"]}).status_code == 204


def test_duplicate_key_on_post_is_412(api: WebApi) -> None:
    app_id = new_applicant_id()
    api.create(_lead(uni_applicantid=app_id))
    status, code, message = error_of(api.post("leads", _lead(uni_applicantid=app_id.lower())))
    assert (status, code, message) == (412, "0x80040237", "A record with matching key values already exists.")


def test_owner_binding(api: WebApi, sandbox: Sandbox) -> None:
    users = api.get("systemusers?$select=fullname,isdisabled,applicationid").json()["value"]
    enabled = next(u for u in users if not u["isdisabled"] and u["applicationid"] is None and u["fullname"] != "SYSTEM")
    disabled = next(u for u in users if u["isdisabled"])
    lead_id = api.create(_lead(**{"ownerid@odata.bind": f"/systemusers({enabled['systemuserid']})"}))
    body = api.get(f"leads({lead_id})?$select=_ownerid_value,_owninguser_value").json()
    assert body["_ownerid_value"] == enabled["systemuserid"] == body["_owninguser_value"]
    annotated = api.get(
        f"leads({lead_id})?$select=_ownerid_value", headers={"Prefer": 'odata.include-annotations="*"'}
    ).json()
    assert annotated["_ownerid_value@OData.Community.Display.V1.FormattedValue"] == enabled["fullname"]
    assert annotated["_ownerid_value@Microsoft.Dynamics.CRM.lookuplogicalname"] == "systemuser"
    team = api.get("teams?$select=name").json()["value"][0]
    assert api.patch(f"leads({lead_id})", {"ownerid@odata.bind": f"teams({team['teamid']})"}).status_code == 204
    body = api.get(f"leads({lead_id})?$select=_ownerid_value,_owningteam_value,_owninguser_value").json()
    assert body["_owningteam_value"] == team["teamid"] and body["_owninguser_value"] is None
    status, code, _ = error_of(
        api.post("leads", _lead(**{"ownerid@odata.bind": f"/systemusers({disabled['systemuserid']})"}))
    )
    assert (status, code) == (400, "0x80040225")
    missing = str(uuid.uuid4())
    status, code, message = error_of(api.post("leads", _lead(**{"ownerid@odata.bind": f"/systemusers({missing})"})))
    assert (status, code, message) == (404, "0x80040217", f"systemuser With Id = {missing} Does Not Exist")
    status, code, message = error_of(
        api.post("leads", _lead(**{"OwnerId@odata.bind": f"/systemusers({enabled['systemuserid']})"}))
    )
    assert (status, code) == (400, "0x80048d19") and "An undeclared property 'OwnerId'" in message
    status, _, _ = error_of(api.post("leads", _lead(**{"ownerid@odata.bind": f"/accounts({enabled['systemuserid']})"})))
    assert status == 400
    status, _, _ = error_of(api.patch(f"leads({lead_id})", {"ownerid@odata.bind": None}))
    assert status == 400


def test_state_and_status_changes(api: WebApi) -> None:
    lead_id = api.create(_lead())
    assert api.patch(f"leads({lead_id})", {"statecode": 2, "statuscode": 6}).status_code == 204
    body = api.get(f"leads({lead_id})?$select=statecode,statuscode").json()
    assert (body["statecode"], body["statuscode"]) == (2, 6)
    assert api.patch(f"leads({lead_id})", {"statecode": 0}).status_code == 204
    assert api.get(f"leads({lead_id})?$select=statuscode").json()["statuscode"] == 1
    status, code, _ = error_of(api.patch(f"leads({lead_id})", {"statuscode": 4}))
    assert (status, code) == (400, "0x8004431a")


def test_single_property_and_method_errors(api: WebApi) -> None:
    lead_id = api.create(_lead())
    r = api.get(f"leads({lead_id})/lastname")
    assert r.status_code == 200 and r.json()["value"] == "Lee"
    assert api.request("PUT", f"leads({lead_id})/lastname", json={"value": "Ng"}).status_code == 204
    assert api.get(f"leads({lead_id})/fullname").json()["value"] == "Ann Ng"
    assert api.patch("leads", _lead()).status_code == 405
    assert api.post(f"leads({lead_id})", _lead()).status_code == 405
