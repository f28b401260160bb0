"""Write validation from metadata: status, error code and message of each rule."""

from __future__ import annotations

import pytest
from dvhelpers import WebApi, error_of

UNDECLARED = (
    "The property '{}' does not exist on type 'Microsoft.Dynamics.CRM.lead'. Make sure to only use property names "
    "that are defined by the type or mark the type as open type."
)


@pytest.mark.parametrize(
    ("body", "status", "code", "message"),
    [
        ({"bogus": 1}, 400, "0x80060888", UNDECLARED.format("bogus")),
        ({"owneridtype": "systemuser"}, 400, "0x80060888", UNDECLARED.format("owneridtype")),
        ({"Firstname": "x"}, 400, "0x80060888", UNDECLARED.format("Firstname")),
        (
            {"fullname": "x"},
            400,
            "0x80040203",
            "The 'fullname' attribute of the 'lead' entity is not valid for Create.",
        ),
        (
            {"statecode": 1},
            400,
            "0x80040203",
            "The 'statecode' attribute of the 'lead' entity is not valid for Create.",
        ),
        (
            {"subject": "x" * 301},
            400,
            "0x80044331",
            "A validation error occurred.  The length of the 'subject' attribute of the 'lead' entity exceeded the "
            "maximum allowed length of '300'.",
        ),
        (
            {"uni_applicantid": "x" * 101},
            400,
            "0x80044331",
            "A validation error occurred.  The length of the 'uni_applicantid' attribute of the 'lead' entity exceeded "
            "the maximum allowed length of '100'.",
        ),
        (
            {"leadsourcecode": 11},
            400,
            "0x8004431a",
            "A validation error occurred. The value 11 of 'leadsourcecode' on record of type 'lead' is outside the "
            "valid range. Accepted Values: 1,2,3,4,5,6,7,8,9,10",
        ),
        (
            {"uni_leadstage": 1},
            400,
            "0x8004431a",
            "A validation error occurred. The value 1 of 'uni_leadstage' on record of type 'lead' is outside the valid "
            "range. Accepted Values: 727000000,727000001,727000002,727000003,727000004,727000005,727000006",
        ),
        (
            {"statuscode": 9},
            400,
            "0x8004431a",
            "A validation error occurred. The value 9 of 'statuscode' on record of type 'lead' is outside the valid "
            "range. Accepted Values: 1,2,3,4,5,6,7",
        ),
        ({"_ownerid_value": "00000000-0000-0000-0000-000000000001"}, 400, "0x80048d19", None),
    ],
)
def test_create_rejections(api: WebApi, body: dict, status: int, code: str, message: str | None) -> None:
    got = error_of(api.post("leads", body))
    assert got[:2] == (status, code)
    if message is not None:
        assert got[2] == message


@pytest.mark.parametrize(
    ("body", "edm"),
    [
        ({"leadsourcecode": "8"}, "Edm.Int32"),
        ({"donotemail": 1}, "Edm.Boolean"),
        ({"uni_consentgiven": "yes"}, "Edm.Boolean"),
        ({"firstname": 5}, "Edm.String"),
        ({"numberofemployees": 1.5}, "Edm.Int32"),
        ({"uni_registeredon": "yesterday"}, "Edm.DateTimeOffset"),
        ({"uni_termstartdate": "2025-13-01"}, "Edm.Date"),
    ],
)
def test_wrong_json_types(api: WebApi, body: dict, edm: str) -> None:
    status, code, message = error_of(api.post("leads", body))
    assert (status, code) == (400, "0x80048d19")
    assert f"to the expected type '{edm}'" in message


def test_update_rules(api: WebApi) -> None:
    lead_id = api.create({"lastname": "Upd"})
    status, code, message = error_of(api.patch(f"leads({lead_id})", {"leadid": lead_id}))
    assert (status, code) == (400, "0x80040203") and "not valid for Update" in message
    assert error_of(api.patch(f"leads({lead_id})", {"fullname": "x"}))[0] == 400
    status, _, message = error_of(api.patch(f"leads({lead_id})", {"statecode": None}))
    assert status == 400 and "cannot be set to NULL" in message
    assert error_of(api.patch(f"leads({lead_id})", {"numberofemployees": 2_000_000}))[1] == "0x8004431a"


def test_valid_values_are_stored_normalized(api: WebApi) -> None:
    lead_id = api.create(
        {
            "lastname": "Types",
            "uni_termstartdate": "2025-09-01",
            "uni_registeredon": "2025-01-02T03:04:05+02:00",
            "uni_consentgiven": True,
            "uni_leadstage": 727000002,
            "numberofemployees": 10,
            "budgetamount": 12.5,
            "description": "ü" * 2000,
        }
    )
    body = api.get(f"leads({lead_id})").json()
    assert body["uni_termstartdate"] == "2025-09-01"
    assert body["uni_registeredon"] == "2025-01-02T01:04:05Z"
    assert body["uni_consentgiven"] is True
    assert body["uni_leadstage"] == 727000002
    assert body["budgetamount"] == 12.5
    assert len(body["description"]) == 2000


def test_bad_json_is_400(api: WebApi) -> None:
    r = api.http.post(api.url("leads"), data=b"{not json", headers=api.headers({"Content-Type": "application/json"}))
    assert r.status_code == 400
    assert r.json()["error"]["code"] == "0x80048d19"
