"""sdkmessagefilters: the query Microsoft documents to detect bulk-message support per table, on and off."""

from __future__ import annotations

from typing import Any

import pytest
from dvhelpers import WebApi, error_of

from sandbox.dataverse.users import stable_id


def _filters(api: WebApi, message: str, table: str = "lead") -> list[dict[str, Any]]:
    """The reference's form (§12): literals in the filter."""
    r = api.get(
        "sdkmessagefilters",
        params={
            "$select": "sdkmessagefilterid",
            "$filter": f"sdkmessageid/name eq '{message}' and primaryobjecttypecode eq '{table}'",
        },
    )
    assert r.status_code == 200, r.text
    assert r.json()["@odata.context"].endswith("$metadata#sdkmessagefilters(sdkmessagefilterid)")
    return r.json()["value"]


@pytest.mark.parametrize("message", ["CreateMultiple", "UpdateMultiple", "UpsertMultiple", "Create", "Update"])
def test_the_lead_table_lists_its_messages_by_default(api: WebApi, message: str) -> None:
    [row] = _filters(api, message)
    assert row["sdkmessagefilterid"] == stable_id(f"sdkmessagefilter:{message}:lead")
    assert set(row) == {"@odata.etag", "sdkmessagefilterid"}


def test_an_unknown_message_or_table_has_no_row(api: WebApi) -> None:
    assert _filters(api, "DeleteMultiple") == []  # elastic tables only
    assert _filters(api, "CreateMultiple", "uni_nosuchtable") == []
    assert len(_filters(api, "UpsertMultiple", "contact")) == 1


def test_the_docs_form_with_parameter_aliases(api: WebApi) -> None:
    """Microsoft's page sends ``@message`` and ``@table`` as parameter aliases."""
    r = api.get(
        "sdkmessagefilters?$select=sdkmessagefilterid&$filter=sdkmessageid/name eq @message and "
        "primaryobjecttypecode eq @table&@message='CreateMultiple'&@table='lead'"
    )
    assert r.status_code == 200, r.text
    assert [row["sdkmessagefilterid"] for row in r.json()["value"]] == [
        stable_id("sdkmessagefilter:CreateMultiple:lead")
    ]
    unbound = api.get("sdkmessagefilters?$filter=sdkmessageid/name eq @message&@table='lead'")
    assert error_of(unbound)[0] == 400 and "@message" in error_of(unbound)[2]


def test_an_alias_inside_a_string_literal_is_text(api: WebApi) -> None:
    r = api.get("sdkmessagefilters?$filter=primaryobjecttypecode eq '@table'&@table='lead'")
    assert r.status_code == 200 and r.json()["value"] == []


@pytest.mark.parametrize(
    ("offered", "listed"),
    [
        ((), []),
        (("CreateMultiple", "UpdateMultiple"), ["CreateMultiple", "UpdateMultiple"]),
        (("UpsertMultiple",), ["UpsertMultiple"]),
    ],
)
def test_the_setting_decides_what_lead_lists(make_sandbox: Any, offered: tuple[str, ...], listed: list[str]) -> None:
    sb, _ = make_sandbox(applicants=5, lead_bulk_messages=offered)
    api = WebApi(sb)
    assert [m for m in ("CreateMultiple", "UpdateMultiple", "UpsertMultiple") if _filters(api, m)] == listed
    assert len(_filters(api, "Create")) == 1  # the ordinary messages stay
    assert len(_filters(api, "CreateMultiple", "account")) == 1  # other tables keep theirs


def test_read_only_and_no_other_options(api: WebApi) -> None:
    assert api.post("sdkmessagefilters", {"name": "x"}).status_code == 405
    assert api.get("sdkmessagefilters?$expand=sdkmessageid").status_code == 400
    assert error_of(api.get("sdkmessagefilters?$select=nope"))[0] == 400
    ordered = api.get("sdkmessagefilters?$select=primaryobjecttypecode&$orderby=sdkmessageid/name desc&$top=1")
    assert ordered.status_code == 200, ordered.text
    assert ordered.json()["value"][0]["primaryobjecttypecode"] in ("lead", "contact", "account")
