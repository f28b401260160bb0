"""Row reads of the Dynamics hook (``d365.hooks.dynamics_query``) against the sandbox Dataverse: lookups by a
column's values (``query_in``) over real HTTP, their chunking, escaping and failures."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any
from urllib.parse import unquote

import pytest

from d365.hooks.dynamics import DynamicsHook, odata_literal
from d365.hooks.errors import DynamicsMalformedAnswer
from sandbox import Sandbox
from sandbox.client import SandboxClient

Private = Callable[..., tuple[DynamicsHook, SandboxClient]]
SELECT = ["leadid", "uni_applicantid", "emailaddress1"]


@pytest.fixture
def hook(dynamics_hook: DynamicsHook) -> DynamicsHook:
    """The shared-sandbox hook from conftest, under a short local name."""
    return dynamics_hook


@pytest.fixture
def uid(dynamics_uid: str) -> str:
    return dynamics_uid


def header(entry: dict[str, Any], name: str) -> str | None:
    return {k.lower(): v for k, v in entry["headers"].items()}.get(name.lower())


def lookups_since(client: SandboxClient, seq: int) -> list[dict]:
    """The GETs of the leads collection the sandbox logged after ``seq``."""
    return [
        e
        for e in client.requests(server="dataverse", since=seq)
        if e["method"] == "GET" and e["path"] == "/api/data/v9.2/leads"
    ]


def test_query_in_finds_values_with_apostrophes_across_chunks(dynamics_private: Private) -> None:
    hook, client = dynamics_private()
    keys = [f"Q-{i}" for i in range(5)] + ["O'Brien-1", "d'Artagnan & co"]
    ids = client.post(
        "/dataverse/leads",
        [
            {"lastname": "Q", "subject": "s", "uni_applicantid": k, "emailaddress1": f"q{i}@example.org"}
            for i, k in enumerate(keys)
        ],
    )["ids"]
    client.post("/dataverse/leads", [{"lastname": "Other", "subject": "s", "uni_applicantid": "Q-other"}])
    hook.whoami()
    seq = client.last_seq()

    wanted = [*keys, "O'Brien-1", "missing'one"]  # a repeat and a value with no lead
    found = hook.query_in("leads", "uni_applicantid", wanted, select=SELECT, chunk_size=3)

    assert sorted(r["uni_applicantid"] for r in found.rows) == sorted(keys)
    assert sorted(r["leadid"] for r in found.rows) == sorted(ids)
    sent = lookups_since(client, seq)
    assert found.requests == len(sent) == 3  # 8 distinct values, 3 per request
    queries = [unquote(e["query"]) for e in sent]
    assert all("Microsoft.Dynamics.CRM.In(PropertyName='uni_applicantid'" in q for q in queries)
    assert any("'O''Brien-1'" in q for q in queries) and any("'d''Artagnan & co'" in q for q in queries)


def test_query_in_applies_the_extra_filter_and_select(dynamics_private: Private) -> None:
    hook, client = dynamics_private()
    client.post(
        "/dataverse/leads",
        [
            {"lastname": "Open", "subject": "s", "uni_applicantid": "S-open", "emailaddress1": "o'pen@example.org"},
            {
                "lastname": "Closed",
                "subject": "s",
                "uni_applicantid": "S-closed",
                "emailaddress1": "o'pen@example.org",
                "statecode": 2,
                "statuscode": 6,
            },
        ],
    )
    every = hook.query_in("leads", "emailaddress1", ["o'pen@example.org"], select=SELECT)
    assert sorted(r["uni_applicantid"] for r in every.rows) == ["S-closed", "S-open"]
    open_only = hook.query_in("leads", "emailaddress1", ["o'pen@example.org"], select=SELECT, filter="statecode eq 0")
    assert [r["uni_applicantid"] for r in open_only.rows] == ["S-open"] and open_only.requests == 1
    assert set(open_only.rows[0]) >= set(SELECT) and "lastname" not in open_only.rows[0]


def test_query_in_keeps_every_url_within_the_limit(dynamics_private: Private) -> None:
    hook, client = dynamics_private()
    emails = [f"long.address.number.{i:03d}.o'neill@faculty.example.org" for i in range(30)]
    client.post("/dataverse/leads", [{"lastname": "L", "subject": "s", "emailaddress1": e} for e in emails])
    hook.whoami()
    seq = client.last_seq()
    limit = 900
    found = hook.query_in("leads", "emailaddress1", emails, select=SELECT, chunk_size=50, max_url_length=limit)
    assert sorted(r["emailaddress1"] for r in found.rows) == sorted(emails)
    sent = lookups_since(client, seq)
    assert found.requests == len(sent) > 1  # 30 values fit the count but not the length: split by length
    base = hook.org_url
    assert all(len(f"{base}{e['path']}?{e['query']}") <= limit for e in sent)


def test_query_in_without_values_sends_nothing(dynamics_private: Private) -> None:
    hook, client = dynamics_private()
    hook.whoami()
    seq = client.last_seq()
    assert hook.query_in("leads", "uni_applicantid", [], select=SELECT) == ([], 0)
    assert lookups_since(client, seq) == []


def test_a_failed_chunk_fails_the_lookup_and_names_no_value(dynamics_private: Private) -> None:
    hook, client = dynamics_private(hook_kwargs={"max_retries": 1})
    emails = [f"person{i}@example.org" for i in range(4)]
    client.post("/dataverse/leads", [{"lastname": "F", "subject": "s", "emailaddress1": e} for e in emails])
    hook.whoami()
    rule = client.add_fault(
        kind="json_error", server="dataverse", method="GET", path="^/api/data/v9.2/leads$", nth=2, times=99
    )
    with pytest.raises(DynamicsMalformedAnswer) as caught:  # the second chunk lies: never "fewer rows"
        hook.query_in("leads", "emailaddress1", emails, select=SELECT, chunk_size=2)
    fired = next(r for r in client.get("/faults")["rules"] if r["id"] == rule["id"])["fired"]
    assert fired == 2  # the second chunk's request and its one retry
    assert (caught.value.method, caught.value.path) == ("GET", "/api/data/v9.2/leads")
    assert not any(e in str(caught.value) for e in emails) and "example.org" not in str(caught.value)


def test_systemuser_lookup(hook: DynamicsHook) -> None:
    by_email = hook.find_systemuser(email="daniel.obrien@university.example")
    assert by_email is not None and by_email["fullname"] == "Daniel O'Brien"
    by_domain = hook.find_systemuser(domainname="daniel.obrien@university.example")
    assert by_domain is not None and by_domain["systemuserid"] == by_email["systemuserid"]
    by_id = hook.find_systemuser(user_id=by_email["systemuserid"].upper())
    assert by_id is not None and by_id["internalemailaddress"] == "daniel.obrien@university.example"
    disabled = hook.find_systemuser(email="frank.meyer@university.example")
    assert disabled is not None and disabled["isdisabled"] is True
    assert hook.find_systemuser(email="nobody'here@university.example") is None
    # string literals are escaped: an apostrophe in a filter value works
    literal = odata_literal("Daniel O'Brien")
    assert literal == "'Daniel O''Brien'"
    named = hook.list_systemusers(filter=f"fullname eq {literal}")
    assert [u["systemuserid"] for u in named] == [by_email["systemuserid"]]
    enabled = hook.list_systemusers(filter="isdisabled eq false and accessmode eq 0 and applicationid eq null")
    assert enabled and all(not u["isdisabled"] and u["applicationid"] is None for u in enabled)
    with pytest.raises(ValueError):
        hook.find_systemuser()


def test_query_pages_with_the_same_page_size(hook: DynamicsHook, sandbox: Sandbox, uid: str) -> None:
    client = SandboxClient(sandbox.info())
    client.post(
        "/dataverse/leads",
        [{"lastname": f"Page {i}", "subject": f"page-{uid}", "uni_applicantid": f"P-{uid}-{i}"} for i in range(20)],
    )
    hook.whoami()
    seq = client.last_seq()
    rows = list(hook.query("leads", select=["leadid", "lastname"], filter=f"subject eq 'page-{uid}'", page_size=7))
    assert len(rows) == 20 and len({r["leadid"] for r in rows}) == 20
    pages = client.requests(server="dataverse", since=seq)
    assert len(pages) == 3
    assert all(header(e, "Prefer") == "odata.maxpagesize=7" for e in pages)
