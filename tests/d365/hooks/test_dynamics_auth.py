"""MSAL token provider and tenant discovery, against the sandbox's Entra ID and Dataverse over verified TLS."""

from __future__ import annotations

import threading
from collections.abc import Callable

import pytest

from d365.hooks.dynamics import DynamicsConnectionSettings, DynamicsHook
from d365.hooks.dynamics_auth import (
    Authority,
    authority_from_challenge,
    normalise_origin,
    parse_bearer_challenge,
)
from d365.hooks.errors import DynamicsAuthError
from sandbox import Sandbox
from sandbox.client import SandboxClient

API_ROOT = "/api/data/v9.2/"


@pytest.fixture
def hook(dynamics_hook: DynamicsHook) -> DynamicsHook:
    """The shared-sandbox hook from conftest, under a short local name."""
    return dynamics_hook


# -- challenge parsing (pure) --------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "header",
    [
        "Bearer authorization_uri=https://login.microsoftonline.com/tid-1/oauth2/authorize, "
        "resource_id=https://org.crm4.dynamics.com/",
        'Bearer authorization_uri="https://login.microsoftonline.com/tid-1/oauth2/authorize",'
        'resource_id="https://org.crm4.dynamics.com/"',
        "bearer   Authorization_URI = https://login.microsoftonline.com/tid-1/oauth2/authorize ,"
        "  resource_id=https://org.crm4.dynamics.com/",
    ],
)
def test_challenge_is_parsed_quoted_or_bare(header: str) -> None:
    params = parse_bearer_challenge(header)
    assert params["authorization_uri"] == "https://login.microsoftonline.com/tid-1/oauth2/authorize"
    assert params["resource_id"] == "https://org.crm4.dynamics.com/"
    authority = authority_from_challenge(header)
    assert authority == Authority(host="https://login.microsoftonline.com", tenant="tid-1")
    assert authority.is_microsoft


def test_challenge_variants() -> None:
    assert parse_bearer_challenge(None) == {}
    assert parse_bearer_challenge('Basic realm="x"') == {}
    expired = (
        "Bearer authorization_uri=https://127.0.0.1:8443/t/oauth2/authorize, resource_id=https://127.0.0.1:8444/, "
        'error="invalid_token", error_description="The access token is expired."'
    )
    assert parse_bearer_challenge(expired)["error"] == "invalid_token"
    local = authority_from_challenge(expired)
    assert local.url == "https://127.0.0.1:8443/t" and not local.is_microsoft
    # 'common' is rewritten as ServiceClient does; an authority_host extra replaces the challenge's host.
    common = "Bearer authorization_uri=https://login.microsoftonline.com/common/oauth2/authorize"
    assert authority_from_challenge(common).tenant == "organizations"
    assert authority_from_challenge(expired, "https://login.microsoftonline.us/").host == (
        "https://login.microsoftonline.us"
    )
    with pytest.raises(DynamicsAuthError):
        authority_from_challenge("Bearer resource_id=https://x/")


def test_origin_normalisation() -> None:
    assert normalise_origin("org.crm4.dynamics.com") == "https://org.crm4.dynamics.com"
    assert normalise_origin("https://Org.CRM4.dynamics.com/") == "https://org.crm4.dynamics.com"
    assert normalise_origin("https://org.crm4.dynamics.com/api/data/v9.2/") == "https://org.crm4.dynamics.com"
    assert normalise_origin("127.0.0.1:8444") == "https://127.0.0.1:8444"


def test_connection_settings_from_env(sandbox: Sandbox, make_dynamics_hook: Callable[..., DynamicsHook]) -> None:
    info = sandbox.info()
    org = info["dynamics365"]["org_url"]
    bare = org.removeprefix("https://")
    hook = make_dynamics_hook(
        info, host=bare + "/", extra_tenant_id=" t1 ", extra_authority_host="login.microsoftonline.com"
    )
    s = hook.settings
    assert s.org_url == org
    assert s.tenant_id == "t1"
    assert s.authority_host == "https://login.microsoftonline.com"
    assert s.ca_bundle == info["ca_bundle"]
    assert info["entra"]["client_secret"] not in repr(s)
    host, port = bare.split(":")
    hook = make_dynamics_hook(info, host=host, port=int(port))
    assert hook.settings.org_url == org
    assert isinstance(hook.settings, DynamicsConnectionSettings)


# -- against the sandbox ----------------------------------------------------------------------------------
def test_token_with_configured_tenant(sandbox: Sandbox, make_dynamics_hook: Callable[..., DynamicsHook]) -> None:
    info = sandbox.info()
    client = SandboxClient(info)
    seq = client.last_seq()
    hook = make_dynamics_hook(
        info, extra_tenant_id=info["entra"]["tenant_id"], extra_authority_host=info["entra"]["login_url"]
    )
    assert hook.whoami()["UserId"]
    dataverse = client.requests(server="dataverse", since=seq)
    assert [(e["method"], e["path"], e["status"]) for e in dataverse] == [("GET", API_ROOT + "WhoAmI", 200)]
    login = client.requests(server="login", since=seq)
    token_calls = [e for e in login if e["method"] == "POST"]
    assert len(token_calls) == 1
    assert token_calls[0]["path"].startswith(f"/{info['entra']['tenant_id']}/")
    # MSAL serves the cached token afterwards.
    hook.whoami()
    assert len([e for e in client.requests(server="login", since=seq) if e["method"] == "POST"]) == 1


def test_tenant_discovered_from_challenge(sandbox: Sandbox, make_dynamics_hook: Callable[..., DynamicsHook]) -> None:
    info = sandbox.info()
    client = SandboxClient(info)
    seq = client.last_seq()
    hook = make_dynamics_hook(info)  # no tenant_id extra
    assert hook.whoami()["UserId"]
    first, second = client.requests(server="dataverse", since=seq)[:2]
    assert (first["path"], first["status"]) == (API_ROOT, 401)
    assert "authorization" not in {k.lower() for k in first["headers"]}
    assert (second["path"], second["status"]) == (API_ROOT + "WhoAmI", 200)
    assert hook._authority == Authority(host=info["entra"]["login_url"], tenant=info["entra"]["tenant_id"])


def test_wrong_secret_is_an_auth_error_without_the_secret(
    sandbox: Sandbox, make_dynamics_hook: Callable[..., DynamicsHook]
) -> None:
    info = sandbox.info()
    wrong = "not-the-secret-" + "x7" * 8
    hook = make_dynamics_hook(info, password=wrong)
    with pytest.raises(DynamicsAuthError) as caught:
        hook.whoami()
    err = caught.value
    assert err.code == "AADSTS7000215"
    assert wrong not in str(err) and wrong not in repr(err.args)
    ok, message = hook.test_connection()
    assert not ok and "AADSTS7000215" in message and wrong not in message


def test_test_connection_ok(hook: DynamicsHook) -> None:
    ok, message = hook.test_connection()
    assert ok, message
    assert hook.org_url in message


def test_expired_token_is_refreshed_transparently(
    dynamics_private: Callable[..., tuple[DynamicsHook, SandboxClient]],
) -> None:
    hook, client = dynamics_private()
    hook.whoami()
    client.expire_tokens()
    seq = client.last_seq()
    assert hook.whoami()["UserId"]
    assert hook.stats["auth_refreshes"] == 1
    statuses = [e["status"] for e in client.requests(server="dataverse", since=seq)]
    assert statuses == [401, 200]
    hook.whoami()  # the new token is cached and accepted
    assert hook.stats["auth_refreshes"] == 1


def test_token_refreshed_once_for_many_threads(
    dynamics_private: Callable[..., tuple[DynamicsHook, SandboxClient]],
) -> None:
    hook, client = dynamics_private()
    hook.whoami()
    client.expire_tokens()
    errors: list[BaseException] = []
    barrier = threading.Barrier(8)

    def work() -> None:
        try:
            barrier.wait()
            for _ in range(3):
                hook.whoami()
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=work) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    assert hook.stats["auth_refreshes"] == 1


def test_second_401_is_an_auth_error(dynamics_private: Callable[..., tuple[DynamicsHook, SandboxClient]]) -> None:
    hook, client = dynamics_private()
    hook.whoami()
    seq = client.last_seq()
    client.add_fault(kind="status", status=401, server="dataverse", path="WhoAmI")  # refuses every token
    with pytest.raises(DynamicsAuthError) as caught:
        hook.whoami()
    assert caught.value.status == 401
    assert hook.stats["auth_refreshes"] == 1
    assert [e["status"] for e in client.requests(server="dataverse", since=seq)] == [401, 401]


def test_cookies_are_never_sent_back(hook: DynamicsHook, sandbox: Sandbox) -> None:
    client = SandboxClient(sandbox.info())
    seq = client.last_seq()
    for _ in range(3):
        hook.whoami()
    list(hook.query("systemusers", select=["fullname"], page_size=2))
    entries = client.requests(server="dataverse", since=seq)
    assert len(entries) >= 6
    assert all("cookie" not in {k.lower() for k in e["headers"]} for e in entries)
    assert len(hook.get_conn().cookies) == 0
