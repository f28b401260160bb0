"""OData wire text (``d365.hooks.odata``): literals, key segments, query strings and the chunked ``In()`` filters."""

from __future__ import annotations

import uuid
from urllib.parse import unquote

import pytest

from d365.hooks.odata import (
    encode_query_value,
    entity_path,
    in_filter,
    in_filters,
    key_segment,
    odata_literal,
    query_string,
)


def test_key_and_literal_formatting() -> None:
    guid = "0F8FAD5B-D9CB-469F-A165-70867728950E"
    assert key_segment(guid) == "(0f8fad5b-d9cb-469f-a165-70867728950e)"
    assert key_segment("{" + guid + "}") == "(0f8fad5b-d9cb-469f-a165-70867728950e)"
    assert entity_path("leads", {"uni_ApplicantId": "O'Brien"}) == "leads(uni_applicantid='O''Brien')"
    assert key_segment({"uni_applicantid": "a b/ü"}) == "(uni_applicantid='a%20b%2F%C3%BC')"
    assert key_segment({"k1": 2, "k2": "x"}) == "(k1=2,k2='x')"
    assert odata_literal("it's") == "'it''s'" and odata_literal(True) == "true" and odata_literal(None) == "null"
    with pytest.raises(ValueError):
        key_segment("A-123")
    with pytest.raises(ValueError):
        key_segment({"uni_applicantid": None})


def test_query_string_encodes_values_but_keeps_odata_syntax() -> None:
    text = query_string({"$select": "leadid,lastname", "$filter": "lastname eq 'A&B +C#ü'", "$orderby": None})
    assert text == "$select=leadid,lastname&$filter=lastname%20eq%20'A%26B%20%2BC%23%C3%BC'"


def test_in_filter_escapes_apostrophes_and_adds_the_extra_filter() -> None:
    [flt] = in_filters(
        "emailaddress1", ["o'hara@example.org", "a@example.org"], extra="statecode eq 0", max_encoded=999
    )
    assert flt == (
        "Microsoft.Dynamics.CRM.In(PropertyName='emailaddress1',PropertyValues=['o''hara@example.org',"
        "'a@example.org']) and (statecode eq 0)"
    )
    guid = uuid.UUID("0f8fad5b-d9cb-469f-a165-70867728950e")
    assert in_filter("leadid", [odata_literal(guid), odata_literal(7)]) == (
        "Microsoft.Dynamics.CRM.In(PropertyName='leadid',PropertyValues=[0f8fad5b-d9cb-469f-a165-70867728950e,7])"
    )


def test_in_filters_cover_each_distinct_value_once_in_chunks_of_max_values() -> None:
    values = [f"v{i}" for i in range(7)] + ["v0", "v3"]
    filters = list(in_filters("uni_applicantid", values, max_values=3, max_encoded=10_000))
    assert len(filters) == 3
    sent = [v for flt in filters for v in flt.split("PropertyValues=[")[1].split("]")[0].split(",")]
    assert sent == [f"'v{i}'" for i in range(7)]
    assert list(in_filters("uni_applicantid", [], max_encoded=10_000)) == []


def test_in_filters_fit_the_encoded_length() -> None:
    values = [f"ünïcødé {i} & co'{i}@example.org" for i in range(40)]
    budget = 400
    filters = list(in_filters("emailaddress1", values, extra="statecode eq 0", max_values=50, max_encoded=budget))
    assert len(filters) > 1
    assert all(len(encode_query_value(flt)) <= budget for flt in filters)
    assert all(len(encode_query_value(flt)) > budget - 60 for flt in filters[:-1])  # each chunk is filled up
    joined = unquote("".join(encode_query_value(flt) for flt in filters))
    assert all(odata_literal(v) in joined for v in values)


def test_in_filters_refuse_what_cannot_be_sent_without_naming_the_value() -> None:
    secret = "very.long.personal.address" * 20 + "@example.org"
    with pytest.raises(ValueError, match="too long for a lookup URL") as caught:
        list(in_filters("emailaddress1", ["short@example.org", secret], max_encoded=300))
    assert "personal" not in str(caught.value) and "emailaddress1" in str(caught.value)
    with pytest.raises(ValueError, match="not a column logical name"):
        list(in_filters("x') or (1 eq 1", ["a"], max_encoded=999))
    for bad in (None, True, 1.5):
        with pytest.raises(ValueError, match="takes text"):
            list(in_filters("uni_applicantid", ["a", bad], max_encoded=999))
    with pytest.raises(ValueError):
        list(in_filters("uni_applicantid", ["a"], max_values=0, max_encoded=999))
