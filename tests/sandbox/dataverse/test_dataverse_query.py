"""Queries: $select, $filter, $orderby, $top, $count, $skip, paging with $skiptoken; the filter parser itself."""

from __future__ import annotations

import uuid
from typing import Any

import pytest
from dvhelpers import WebApi, error_of

from sandbox.dataverse import errors, odata


@pytest.fixture(scope="module")
def cohort(sandbox: Any) -> tuple[str, list[dict[str, Any]]]:
    """25 leads sharing a unique uni_reference marker."""
    api = WebApi(sandbox)
    marker = f"cohort-{uuid.uuid4().hex[:10]}"
    rows = []
    for i in range(25):
        body = {
            "firstname": f"F{i:02d}",
            "lastname": ["Smith", "O'Hara", "Jones", None][i % 4],
            "emailaddress1": f"person{i}@{marker}.example",
            "uni_reference": marker,
            "uni_leadstage": 727000000 + i % 3,
            "numberofemployees": i,
            "uni_consentgiven": i % 2 == 0,
        }
        lead_id = api.create(body)
        rows.append({**body, "leadid": lead_id})
    return marker, rows


def _query(api: WebApi, **params: str) -> dict[str, Any]:
    r = api.get("leads", params=params)
    assert r.status_code == 200, r.text
    return r.json()


def test_select_and_context(api: WebApi, cohort: Any) -> None:
    marker, _ = cohort
    body = _query(api, **{"$select": "firstname,_ownerid_value", "$filter": f"uni_reference eq '{marker}'"})
    assert body["@odata.context"] == f"{api.base}/$metadata#leads(firstname,_ownerid_value)"
    assert len(body["value"]) == 25
    assert set(body["value"][0]) == {"@odata.etag", "firstname", "_ownerid_value", "leadid"}
    status, code, message = error_of(api.get("leads", params={"$select": "firstname,nope"}))
    assert (status, code, message) == (
        400,
        "0x80060888",
        "Could not find a property named 'nope' on type 'Microsoft.Dynamics.CRM.lead'.",
    )


@pytest.mark.parametrize(
    ("expr", "expected"),
    [
        ("lastname eq 'Smith'", lambda r: r["lastname"] == "Smith"),
        ("lastname eq 'smith'", lambda r: r["lastname"] == "Smith"),
        ("lastname eq 'O''Hara'", lambda r: r["lastname"] == "O'Hara"),
        ("lastname ne 'Smith'", lambda r: r["lastname"] != "Smith"),
        ("lastname eq null", lambda r: r["lastname"] is None),
        (
            "lastname ne null and numberofemployees lt 8",
            lambda r: r["lastname"] is not None and r["numberofemployees"] < 8,
        ),
        (
            "numberofemployees ge 20 or numberofemployees le 1",
            lambda r: r["numberofemployees"] >= 20 or r["numberofemployees"] <= 1,
        ),
        ("not (numberofemployees gt 3)", lambda r: not r["numberofemployees"] > 3),
        (
            "uni_consentgiven eq true and uni_leadstage eq 727000001",
            lambda r: r["uni_consentgiven"] and r["uni_leadstage"] == 727000001,
        ),
        ("contains(firstname,'1')", lambda r: "1" in r["firstname"]),
        ("startswith(firstname,'f0')", lambda r: r["firstname"].startswith("F0")),
        ("endswith(lastname,'ara')", lambda r: (r["lastname"] or "").endswith("ara")),
        (
            "Microsoft.Dynamics.CRM.In(PropertyName='lastname',PropertyValues=['Jones','O''Hara'])",
            lambda r: r["lastname"] in ("Jones", "O'Hara"),
        ),
        (
            "Microsoft.Dynamics.CRM.NotIn(PropertyName='lastname',PropertyValues=['Jones'])",
            lambda r: r["lastname"] != "Jones",
        ),
    ],
)
def test_filter_expressions(api: WebApi, cohort: Any, expr: str, expected: Any) -> None:
    marker, rows = cohort
    body = _query(api, **{"$select": "leadid", "$filter": f"uni_reference eq '{marker}' and ({expr})"})
    assert sorted(r["leadid"] for r in body["value"]) == sorted(r["leadid"] for r in rows if expected(r))


def test_filter_by_guid_and_email_index(api: WebApi, cohort: Any) -> None:
    _, rows = cohort
    body = _query(api, **{"$select": "emailaddress1", "$filter": f"leadid eq {rows[3]['leadid']}"})
    assert [r["emailaddress1"] for r in body["value"]] == [rows[3]["emailaddress1"]]
    body = _query(api, **{"$select": "leadid", "$filter": f"emailaddress1 eq '{rows[4]['emailaddress1'].upper()}'"})
    assert [r["leadid"] for r in body["value"]] == [rows[4]["leadid"]]


def test_filter_errors(api: WebApi) -> None:
    status, _, message = error_of(api.get("leads", params={"$filter": "nope eq 1"}))
    assert status == 400 and message == "Could not find a property named 'nope' on type 'Microsoft.Dynamics.CRM.lead'."
    status, _, message = error_of(api.get("leads", params={"$filter": "statecode eq 'x'"}))
    assert status == 400 and "incompatible types" in message
    assert error_of(api.get("leads", params={"$filter": "lastname eq 'unterminated"}))[0] == 400
    assert error_of(api.get("leads", params={"$filter": "lastname eq"}))[0] == 400


def test_orderby_top_and_count(api: WebApi, cohort: Any) -> None:
    marker, rows = cohort
    body = _query(
        api,
        **{
            "$select": "lastname,firstname",
            "$filter": f"uni_reference eq '{marker}'",
            "$orderby": "lastname desc,firstname asc",
            "$top": "6",
            "$count": "true",
        },
    )
    assert body["@odata.count"] == 25
    assert "@odata.nextLink" not in body
    expected = sorted(rows, key=lambda r: r["firstname"])
    expected = sorted(
        expected, key=lambda r: (r["lastname"] is not None, (r["lastname"] or "").casefold()), reverse=True
    )
    assert [r["firstname"] for r in body["value"]] == [r["firstname"] for r in expected[:6]]


def test_skip_is_rejected(api: WebApi) -> None:
    status, _, message = error_of(api.get("leads", params={"$skip": "5"}))
    assert (status, message) == (400, "The query parameter $skip is not supported")


@pytest.mark.parametrize("orderby", [None, "numberofemployees desc", "lastname asc"])
def test_paging_returns_each_lead_exactly_once(api: WebApi, cohort: Any, orderby: str | None) -> None:
    marker, rows = cohort
    params = {"$select": "firstname", "$filter": f"uni_reference eq '{marker}'"}
    if orderby:
        params["$orderby"] = orderby
    r = api.get("leads", params=params, headers={"Prefer": "odata.maxpagesize=7"})
    seen: list[str] = []
    pages = 0
    while True:
        assert r.status_code == 200, r.text
        assert r.headers["Preference-Applied"] == "odata.maxpagesize=7"
        body = r.json()
        assert len(body["value"]) <= 7
        seen += [row["leadid"] for row in body["value"]]
        pages += 1
        link = body.get("@odata.nextLink")
        if not link:
            break
        assert "$skiptoken=%3Ccookie%20pagenumber=%22" in link
        if pages == 2:  # a concurrent insert between pages must not disturb the walk
            api.create({"lastname": "Late", "uni_reference": marker + "-other"})
        r = api.get(link, headers={"Prefer": "odata.maxpagesize=7"})
    assert pages == 4
    assert sorted(seen) == sorted(r["leadid"] for r in rows)


@pytest.mark.parametrize(
    ("top", "page_size", "pages"),
    [(5, 2, [2, 2, 1]), (6, 2, [2, 2, 2]), (4, 10, [4]), (30, 10, [10, 10, 5]), (0, 3, [0])],
)
@pytest.mark.parametrize("orderby", [None, "firstname desc"])
def test_top_caps_the_total_across_pages(
    api: WebApi, cohort: Any, top: int, page_size: int, pages: list[int], orderby: str | None
) -> None:
    """$top with odata.maxpagesize: at most $top rows in all, the last page has no nextLink (25 leads match)."""
    marker, rows = cohort
    params = {"$select": "firstname", "$filter": f"uni_reference eq '{marker}'", "$top": str(top)}
    if orderby:
        params["$orderby"] = orderby
    prefer = {"Prefer": f"odata.maxpagesize={page_size}"}
    body = _query_with(api, params, prefer)
    sizes, seen = [], []
    while True:
        sizes.append(len(body["value"]))
        seen += [row["firstname"] for row in body["value"]]
        link = body.get("@odata.nextLink")
        if not link:
            break
        assert "$top=" in link  # the link keeps the query as sent; the remaining budget rides in the skiptoken
        r = api.get(link, headers=prefer)
        assert r.status_code == 200, r.text
        body = r.json()
    assert sizes == pages
    if orderby:  # firstname desc
        expected = sorted((r["firstname"] for r in rows), reverse=True)
    else:  # by leadid
        expected = [r["firstname"] for r in sorted(rows, key=lambda r: r["leadid"])]
    assert seen == expected[:top]


def _query_with(api: WebApi, params: dict[str, str], headers: dict[str, str]) -> dict[str, Any]:
    r = api.get("leads", params=params, headers=headers)
    assert r.status_code == 200, r.text
    return r.json()


def test_top_alone_is_one_page(api: WebApi, cohort: Any) -> None:
    marker, _ = cohort
    body = _query(api, **{"$select": "firstname", "$filter": f"uni_reference eq '{marker}'", "$top": "7"})
    assert len(body["value"]) == 7 and "@odata.nextLink" not in body


@pytest.mark.parametrize("option", ["sql", "savedQuery", "userQuery", "fetchxml", "foo"])
def test_unknown_custom_query_options_are_refused(api: WebApi, cohort: Any, option: str) -> None:
    """A query option the sandbox does not implement is a 400, never a 200 with every lead."""
    status, code, message = error_of(api.get("leads", params={option: "SELECT leadid FROM lead"}))
    assert (status, code) == (400, "0x80060888")
    assert option in message
    assert error_of(api.get("systemusers", params={"fetchXml": "<fetch/>"}))[:2] == (400, "0x80060888")
    assert error_of(api.get(f"leads({cohort[1][0]['leadid']})", params={"sql": "x"}))[:2] == (400, "0x80060888")


def test_bad_skiptoken(api: WebApi) -> None:
    assert api.get("leads", params={"$skiptoken": "garbage"}).status_code == 400


def test_count_segment(api: WebApi, cohort: Any) -> None:
    r = api.get("leads/$count")
    assert r.status_code == 200 and int(r.text) >= 25


# -- the parser alone ------------------------------------------------------------------------
def test_parser_shapes() -> None:
    ast = odata.parse_filter("a eq 'x''y' and (b gt 2.5 or not c eq null)")
    assert ast == (
        "and",
        ("cmp", "eq", ("prop", "a"), ("lit", "x'y", "string")),
        (
            "or",
            ("cmp", "gt", ("prop", "b"), ("lit", 2.5, "number")),
            ("not", ("cmp", "eq", ("prop", "c"), ("lit", None, "null"))),
        ),
    )
    guid = str(uuid.uuid4())
    assert odata.parse_filter(f"x eq {guid}")[3] == ("lit", guid, "guid")
    assert odata.parse_filter("d ge 2025-01-01T10:00:00+02:00")[3] == ("lit", "2025-01-01T08:00:00Z", "datetime")
    assert odata.parse_filter("RequiredLevel/Value eq Microsoft.Dynamics.CRM.AttributeRequiredLevel'None'")[2:] == (
        ("prop", "RequiredLevel/Value"),
        ("lit", "None", "enum"),
    )
    with pytest.raises(errors.ODataError):
        odata.parse_filter("a eq 1 b")
    with pytest.raises(errors.ODataError):
        odata.parse_filter("foo(a)")


def test_key_parsing() -> None:
    guid = str(uuid.uuid4()).upper()
    assert odata.parse_key(guid) == ("id", guid.lower())
    assert odata.parse_key("uni_applicantid='A''B'") == ("named", {"uni_applicantid": "A'B"})
    assert odata.parse_key("key1=2,key2='x'") == ("named", {"key1": 2, "key2": "x"})
    segs = odata.split_path("/leads(uni_applicantid='A%27%27B%2FC')/firstname")
    assert [s.name for s in segs] == ["leads", "firstname"]
    assert odata.parse_key(segs[0].args or "") == ("named", {"uni_applicantid": "A'B/C"})
