"""GET leads?fetchXml=…: the implemented FetchXML subset answers exactly, everything else is a loud 400."""

from __future__ import annotations

import urllib.parse
import uuid
import xml.etree.ElementTree as ET
from typing import Any

import pytest
from dvhelpers import WebApi, error_of

from sandbox.dataverse.fetchxml import like_regex

ANNOTATIONS = "Microsoft.Dynamics.CRM.fetchxmlpagingcookie,Microsoft.Dynamics.CRM.morerecords"
PAGING_PREFER = {"Prefer": f'odata.include-annotations="{ANNOTATIONS}"'}


@pytest.fixture(scope="module")
def cohort(sandbox: Any) -> tuple[str, list[dict[str, Any]]]:
    """23 leads sharing a unique uni_reference marker (another cohort's leads must never leak in)."""
    api = WebApi(sandbox)
    marker = f"fx-{uuid.uuid4().hex[:10]}"
    rows = []
    for i in range(23):
        body = {
            "firstname": f"G{i:02d}",
            "lastname": ["Smith", "O'Hara", "Jones", None][i % 4],
            "uni_reference": marker,
            "numberofemployees": i,
            "uni_consentgiven": i % 2 == 0,
        }
        if i % 5:
            body["emailaddress1"] = f"p{i}@{marker}.example"
        rows.append({**body, "leadid": api.create(body)})
    api.create({"firstname": "Other", "lastname": "Smith", "uni_reference": marker + "-other"})
    return marker, rows


def _fetch(api: WebApi, xml: str, headers: dict[str, str] | None = None) -> dict[str, Any]:
    r = api.get("leads", params={"fetchXml": xml}, headers=headers)
    assert r.status_code == 200, r.text
    return r.json()


def _marker_condition(marker: str) -> str:
    return f"<condition attribute='uni_reference' operator='eq' value='{marker}' />"


def _names(body: dict[str, Any]) -> list[str]:
    return [row["firstname"] for row in body["value"]]


def test_attributes_filter_and_order(api: WebApi, cohort: Any) -> None:
    marker, rows = cohort
    xml = (
        "<fetch><entity name='lead'><attribute name='firstname' /><attribute name='emailaddress1' />"
        "<order attribute='numberofemployees' descending='true' />"
        f"<filter>{_marker_condition(marker)}<condition attribute='lastname' operator='eq' value='smith' /></filter>"
        "</entity></fetch>"
    )
    body = _fetch(api, xml)
    expected = sorted((r for r in rows if r["lastname"] == "Smith"), key=lambda r: -r["numberofemployees"])
    assert _names(body) == [r["firstname"] for r in expected]
    assert body["@odata.context"] == f"{api.base}/$metadata#leads"
    for row, source in zip(body["value"], expected, strict=True):
        assert row["leadid"] == source["leadid"]
        # FetchXML leaves out null columns: a lead without an email has no emailaddress1 key at all
        assert set(row) == {"@odata.etag", "firstname", "leadid"} | (
            {"emailaddress1"} if "emailaddress1" in source else set()
        )


@pytest.mark.parametrize(
    ("condition", "expected"),
    [
        ("<condition attribute='lastname' operator='like' value='%ar%' />", lambda r: r["lastname"] == "O'Hara"),
        ("<condition attribute='lastname' operator='like' value='J_nes' />", lambda r: r["lastname"] == "Jones"),
        (
            "<condition attribute='lastname' operator='like' value='[js]%' />",
            lambda r: r["lastname"] in ("Jones", "Smith"),
        ),
        (
            "<condition attribute='lastname' operator='not-like' value='S%' />",
            lambda r: r["lastname"] is not None and r["lastname"] != "Smith",
        ),
        ("<condition attribute='lastname' operator='begins-with' value=\"o'\" />", lambda r: r["lastname"] == "O'Hara"),
        (
            "<condition attribute='lastname' operator='begins-with' value='O&apos;H' />",
            lambda r: r["lastname"] == "O'Hara",
        ),
        ("<condition attribute='lastname' operator='ends-with' value='NES' />", lambda r: r["lastname"] == "Jones"),
        (
            "<condition attribute='lastname' operator='not-begin-with' value='s' />",
            lambda r: r["lastname"] is not None and r["lastname"] != "Smith",
        ),
        (
            "<condition attribute='lastname' operator='not-end-with' value='a' />",
            lambda r: r["lastname"] is not None and r["lastname"] != "O'Hara",
        ),
        ("<condition attribute='lastname' operator='neq' value='jones' />", lambda r: r["lastname"] != "Jones"),
        (
            "<condition attribute='numberofemployees' operator='ge' value='20' />",
            lambda r: r["numberofemployees"] >= 20,
        ),
        ("<condition attribute='numberofemployees' operator='lt' value='3' />", lambda r: r["numberofemployees"] < 3),
        ("<condition attribute='lastname' operator='null' />", lambda r: r["lastname"] is None),
        ("<condition attribute='lastname' operator='not-null' />", lambda r: r["lastname"] is not None),
        ("<condition attribute='lastname' operator='ne' value='Smith' />", lambda r: r["lastname"] != "Smith"),
        ("<condition attribute='numberofemployees' operator='gt' value='19' />", lambda r: r["numberofemployees"] > 19),
        ("<condition attribute='numberofemployees' operator='le' value='2' />", lambda r: r["numberofemployees"] <= 2),
        (
            "<condition attribute='numberofemployees' operator='in'><value>3</value><value>7</value></condition>",
            lambda r: r["numberofemployees"] in (3, 7),
        ),
        (
            "<condition attribute='lastname' operator='not-in'><value>Smith</value><value>jones</value></condition>",
            lambda r: r["lastname"] not in ("Smith", "Jones"),
        ),
        ("<condition attribute='uni_consentgiven' operator='eq' value='1' />", lambda r: r["uni_consentgiven"]),
        (
            "<filter type='or'><condition attribute='numberofemployees' operator='eq' value='1' />"
            "<condition attribute='numberofemployees' operator='eq' value='2' /></filter>",
            lambda r: r["numberofemployees"] in (1, 2),
        ),
    ],
)
def test_condition_operators(api: WebApi, cohort: Any, condition: str, expected: Any) -> None:
    marker, rows = cohort
    xml = (
        "<fetch><entity name='lead'><attribute name='firstname' /><order attribute='firstname' />"
        f"<filter type='and'>{_marker_condition(marker)}{condition}</filter></entity></fetch>"
    )
    assert _names(_fetch(api, xml)) == sorted(r["firstname"] for r in rows if expected(r))


def test_condition_on_the_owner_lookup(api: WebApi, cohort: Any, sandbox: Any) -> None:
    marker, rows = cohort
    owner = sandbox.state.application_user_id
    xml = (
        "<fetch><entity name='lead'><attribute name='ownerid' /><filter>"
        f"{_marker_condition(marker)}<condition attribute='ownerid' operator='eq' value='{{{owner.upper()}}}' />"
        "</filter></entity></fetch>"
    )
    body = _fetch(api, xml)
    assert len(body["value"]) == len(rows)
    assert {row["_ownerid_value"] for row in body["value"]} == {owner}


def test_top_returns_at_most_top_rows_and_no_more_pages(api: WebApi, cohort: Any) -> None:
    marker, rows = cohort
    xml = (
        f"<fetch top='4'><entity name='lead'><attribute name='firstname' /><order attribute='firstname' />"
        f"<filter>{_marker_condition(marker)}</filter></entity></fetch>"
    )
    body = _fetch(api, xml, PAGING_PREFER)
    assert _names(body) == sorted(r["firstname"] for r in rows)[:4]
    assert body["@Microsoft.Dynamics.CRM.morerecords"] is False
    assert "@Microsoft.Dynamics.CRM.fetchxmlpagingcookie" not in body


def _walk(api: WebApi, xml: str, marker: str) -> tuple[list[str], list[int]]:
    """Page like Microsoft's SDK: paging-cookie and page from the returned cookie, until morerecords is false."""
    seen: list[str] = []
    sizes: list[int] = []
    current = xml
    while True:
        body = _fetch(api, current, PAGING_PREFER)
        sizes.append(len(body["value"]))
        seen += [row["leadid"] for row in body["value"]]
        if not body["@Microsoft.Dynamics.CRM.morerecords"]:
            assert "@Microsoft.Dynamics.CRM.fetchxmlpagingcookie" not in body
            return seen, sizes
        outer = ET.fromstring(body["@Microsoft.Dynamics.CRM.fetchxmlpagingcookie"])
        assert outer.get("istracking") == "False"
        assert "%253c" in outer.get("pagingcookie", "").lower()  # the inner cookie is URL-encoded twice
        cookie = urllib.parse.unquote(urllib.parse.unquote(outer.get("pagingcookie", "")))
        fetch = ET.fromstring(current)
        fetch.set("paging-cookie", cookie)
        fetch.set("page", outer.get("pagenumber", ""))
        current = ET.tostring(fetch, encoding="unicode")
        if len(sizes) == 2:  # a lead created between pages must not disturb the walk
            api.create({"lastname": "Late", "uni_reference": marker + "-other"})


@pytest.mark.parametrize(
    "order", ["", "<order attribute='lastname' />", "<order attribute='numberofemployees' descending='true' />"]
)
def test_count_pages_with_the_paging_cookie(api: WebApi, cohort: Any, order: str) -> None:
    marker, rows = cohort
    xml = (
        f"<fetch count='5'><entity name='lead'><attribute name='firstname' />{order}"
        f"<filter>{_marker_condition(marker)}</filter></entity></fetch>"
    )
    seen, sizes = _walk(api, xml, marker)
    assert sizes == [5, 5, 5, 5, 3]
    assert sorted(seen) == sorted(r["leadid"] for r in rows)


def test_simple_paging_without_cookie(api: WebApi, cohort: Any) -> None:
    marker, rows = cohort
    names = sorted(r["firstname"] for r in rows)
    for page, expected in [(1, names[:10]), (2, names[10:20]), (3, names[20:]), (4, [])]:
        xml = (
            f"<fetch count='10' page='{page}'><entity name='lead'><attribute name='firstname' />"
            f"<order attribute='firstname' /><filter>{_marker_condition(marker)}</filter></entity></fetch>"
        )
        body = _fetch(api, xml, PAGING_PREFER)
        assert _names(body) == expected
        assert body["@Microsoft.Dynamics.CRM.morerecords"] is (page < 3)


def test_annotations_only_when_asked_and_total_count(api: WebApi, cohort: Any) -> None:
    marker, rows = cohort
    xml = (
        "<fetch count='2' returntotalrecordcount='true'><entity name='lead'><attribute name='firstname' />"
        f"<filter>{_marker_condition(marker)}</filter></entity></fetch>"
    )
    body = _fetch(api, xml)
    assert len(body["value"]) == 2
    assert (
        "@Microsoft.Dynamics.CRM.morerecords" not in body and "@Microsoft.Dynamics.CRM.fetchxmlpagingcookie" not in body
    )
    assert body["@Microsoft.Dynamics.CRM.totalrecordcount"] == len(rows)
    assert body["@Microsoft.Dynamics.CRM.totalrecordcountlimitexceeded"] is False
    star = _fetch(api, xml, {"Prefer": 'odata.include-annotations="*"'})
    assert star["@Microsoft.Dynamics.CRM.morerecords"] is True


def test_all_attributes(api: WebApi, cohort: Any) -> None:
    marker, _ = cohort
    xml = (
        f"<fetch top='1'><entity name='lead'><all-attributes /><order attribute='firstname' />"
        f"<filter>{_marker_condition(marker)}</filter></entity></fetch>"
    )
    row = _fetch(api, xml)["value"][0]
    assert row["firstname"] == "G00" and row["uni_reference"] == marker and row["statecode"] == 0
    assert all(value is not None for value in row.values())


@pytest.mark.parametrize(
    ("xml", "code", "fragment"),
    [
        ("<fetch top='2' count='2'><entity name='lead' /></fetch>", "0x80040203", "top attribute"),
        ("<fetch top='5001'><entity name='lead' /></fetch>", "0x80040203", "between 1 and 5000"),
        ("<fetch><entity name='account' /></fetch>", "0x80040203", "does not match"),
        ("<fetch><entity name='lead'>", "0x80040203", "not well-formed"),
        ("<fetch><entity name='lead'><attribute name='nope' /></entity></fetch>", "0x80041103", "Name = 'nope'"),
        (
            "<fetch><entity name='lead'><filter><condition attribute='nope' operator='eq' value='1' /></filter>"
            "</entity></fetch>",
            "0x80041103",
            "Name = 'nope'",
        ),
        (
            "<fetch><entity name='lead'><filter><condition attribute='numberofemployees' operator='eq' value='x' />"
            "</filter></entity></fetch>",
            "0x80040203",
            "Edm.Int32",
        ),
        (
            "<fetch><entity name='lead'><filter><condition attribute='numberofemployees' operator='like' value='1' />"
            "</filter></entity></fetch>",
            "0x80040203",
            "text column",
        ),
        (
            "<fetch><entity name='lead'><link-entity name='systemuser' from='systemuserid' to='ownerid' />"
            "</entity></fetch>",
            "0x80060888",
            "<link-entity>",
        ),
        ("<fetch aggregate='true'><entity name='lead' /></fetch>", "0x80060888", "'aggregate'"),
        ("<fetch distinct='true'><entity name='lead' /></fetch>", "0x80060888", "distinct"),
        (
            "<fetch><entity name='lead'><filter><condition attribute='createdon' operator='last-x-days' value='3' />"
            "</filter></entity></fetch>",
            "0x80060888",
            "'last-x-days'",
        ),
        (
            "<fetch><entity name='lead'><attribute name='firstname' alias='f' /></entity></fetch>",
            "0x80060888",
            "'alias'",
        ),
    ],
)
def test_refusals(api: WebApi, xml: str, code: str, fragment: str) -> None:
    status, got_code, message = error_of(api.get("leads", params={"fetchXml": xml}))
    assert (status, got_code) == (400, code), message
    assert fragment in message
    if code == "0x80060888":
        assert "is not supported by the Dataverse sandbox" in message


def test_fetchxml_with_other_options_or_maxpagesize_is_refused(api: WebApi) -> None:
    xml = "<fetch><entity name='lead' /></fetch>"
    status, _, message = error_of(api.get("leads", params={"fetchXml": xml, "$select": "firstname"}))
    assert status == 400 and "$select" in message
    r = api.get("leads", params={"fetchXml": xml}, headers={"Prefer": "odata.maxpagesize=5"})
    assert error_of(r)[:2] == (400, "0x80060888")


@pytest.mark.parametrize(
    ("pattern", "text", "matches"),
    [
        ("a%", "Abc", True),
        ("%c", "abC", True),
        ("a_c", "abc", True),
        ("a_c", "abbc", False),
        ("[ab]%", "bob", True),
        ("[^ab]%", "bob", False),
        ("100[%]", "100%", True),
        ("a.c", "abc", False),
        ("(x)", "(x)", True),
    ],
)
def test_like_regex(pattern: str, text: str, matches: bool) -> None:
    assert (like_regex(pattern).fullmatch(text) is not None) is matches


def test_the_paging_cookie_is_a_keyset_not_an_offset(api: WebApi) -> None:
    """A lead inserted before the cursor between pages: the cookie resumes after the last row served (simple paging
    by offset would serve that row again)."""
    marker = f"fx-keyset-{uuid.uuid4().hex[:8]}"
    for name in ("B", "C", "D", "E"):
        api.create({"firstname": name, "lastname": "K", "uni_reference": marker})
    xml = (
        "<fetch count='2'><entity name='lead'><attribute name='firstname' /><order attribute='firstname' />"
        f"<filter>{_marker_condition(marker)}</filter></entity></fetch>"
    )
    first = _fetch(api, xml, PAGING_PREFER)
    assert _names(first) == ["B", "C"]
    api.create({"firstname": "A", "lastname": "K", "uni_reference": marker})
    outer = ET.fromstring(first["@Microsoft.Dynamics.CRM.fetchxmlpagingcookie"])
    fetch = ET.fromstring(xml)
    fetch.set("paging-cookie", urllib.parse.unquote(urllib.parse.unquote(outer.get("pagingcookie", ""))))
    fetch.set("page", "2")
    second = _fetch(api, ET.tostring(fetch, encoding="unicode"), PAGING_PREFER)
    assert _names(second) == ["D", "E"]
    assert second["@Microsoft.Dynamics.CRM.morerecords"] is False
    fetch.attrib.pop("paging-cookie")  # the same page by offset now holds C again
    assert _names(_fetch(api, ET.tostring(fetch, encoding="unicode"))) == ["C", "D"]
