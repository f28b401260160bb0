"""``DynamicsHook.query`` paging: a repeated ``@odata.nextLink`` stops with an error, a nextLink to another origin
is refused before any request (so it never receives the bearer token). Against the sandbox's nextLink faults."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest

from d365.hooks.dynamics import DynamicsHook
from d365.hooks.errors import DynamicsPagingError
from sandbox.client import SandboxClient

SELECT = ["fullname"]


def _fired(client: SandboxClient, rule: dict[str, Any]) -> int:
    return next(r["fired"] for r in client.get("/faults")["rules"] if r["id"] == rule["id"])


def _host(entry: dict[str, Any]) -> str:
    return next((v for k, v in entry["headers"].items() if k.lower() == "host"), "")


def _has_token(entry: dict[str, Any]) -> bool:
    return "authorization" in {k.lower() for k in entry["headers"]}


@pytest.fixture
def paging(dynamics_private: Callable[..., tuple[DynamicsHook, SandboxClient]]) -> tuple[DynamicsHook, SandboxClient]:
    hook, client = dynamics_private()
    hook.whoami()  # token and tenant discovery out of the way
    return hook, client


def test_paging_without_faults_reads_every_page(paging: tuple[DynamicsHook, SandboxClient]) -> None:
    hook, client = paging
    seq = client.last_seq()
    users = list(hook.query("systemusers", select=SELECT, page_size=2))
    pages = [e for e in client.requests(server="dataverse", since=seq) if "systemusers" in e["path"]]
    assert len(users) > 2 and len(pages) >= (len(users) + 1) // 2  # several pages, every one followed


def test_a_repeated_next_link_ends_in_an_error(paging: tuple[DynamicsHook, SandboxClient]) -> None:
    hook, client = paging
    seq = client.last_seq()
    rule = client.add_fault(kind="next_link", mode="repeat", server="dataverse", path="systemusers", times=1)
    with pytest.raises(DynamicsPagingError) as caught:
        list(hook.query("systemusers", select=SELECT, filter="isdisabled eq false", page_size=2))
    err = caught.value
    assert err.code == "NextLinkRepeated" and err.retryable
    assert "isdisabled" not in str(err)  # the path, never the query ($filter values can be personal data)
    assert _fired(client, rule) == 1
    assert len([e for e in client.requests(server="dataverse", since=seq) if "systemusers" in e["path"]]) == 1


def test_a_next_link_repeated_later_in_the_walk_is_caught_too(paging: tuple[DynamicsHook, SandboxClient]) -> None:
    hook, client = paging
    rule = client.add_fault(kind="next_link", mode="repeat", server="dataverse", path="systemusers", nth=2)
    with pytest.raises(DynamicsPagingError):
        list(hook.query("systemusers", select=SELECT, page_size=1))
    assert _fired(client, rule) == 1


def test_a_foreign_next_link_is_refused_before_it_receives_the_token(
    paging: tuple[DynamicsHook, SandboxClient],
) -> None:
    hook, client = paging
    seq = client.last_seq()
    rule = client.add_fault(kind="next_link", mode="foreign", server="dataverse", path="systemusers", times=1)
    with pytest.raises(DynamicsPagingError) as caught:
        list(hook.query("systemusers", select=SELECT, page_size=2))
    err = caught.value
    assert err.code == "NextLinkForeignOrigin" and not err.retryable
    assert "https://localhost:" in str(err)
    assert _fired(client, rule) == 1
    log = [e for e in client.requests(server="dataverse", since=seq) if "systemusers" in e["path"]]
    assert len(log) == 1 and _host(log[0]).startswith("127.0.0.1")  # the first page only
    # the foreign origin (localhost reaches this same sandbox) never saw a request, let alone a bearer token
    all_since = [e for s in ("dataverse", "login", "dreamapply") for e in client.requests(server=s, since=seq)]
    assert not [e for e in all_since if _host(e).startswith("localhost")]
    assert not [e for e in all_since if _has_token(e) and not _host(e).startswith("127.0.0.1")]


@pytest.mark.parametrize(
    ("link", "code"),
    [
        ("https://evil.example/api/data/v9.2/systemusers?$skiptoken=1", "NextLinkForeignOrigin"),
        ("http://127.0.0.1:{port}/api/data/v9.2/systemusers", "NextLinkForeignOrigin"),  # same host, plain http
        ("https://127.0.0.1:1/api/data/v9.2/systemusers", "NextLinkForeignOrigin"),  # same host, other port
        ("//evil.example/api/data/v9.2/systemusers", "NextLinkForeignOrigin"),  # protocol-relative
        (42, "NextLinkNotAUrl"),
    ],
)
def test_next_link_checks_without_a_request(paging: tuple[DynamicsHook, SandboxClient], link: Any, code: str) -> None:
    hook, _ = paging
    if isinstance(link, str):
        link = link.format(port=hook.org_url.rsplit(":", 1)[1])
    with pytest.raises(DynamicsPagingError) as caught:
        hook._next_link(link, set())
    assert caught.value.code == code


def test_same_origin_next_links_are_followed(paging: tuple[DynamicsHook, SandboxClient]) -> None:
    hook, _ = paging
    absolute = hook.web_api_url + "/systemusers?$skiptoken=2"
    assert hook._next_link(absolute, set()) == absolute
    assert hook._next_link("systemusers?$skiptoken=2", set()) == absolute  # relative: resolved against the API
    assert hook._next_link(None, set()) is None
