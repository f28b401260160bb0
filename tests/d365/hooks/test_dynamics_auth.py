"""MSAL token provider and tenant discovery, against the sandbox's Entra ID and Dataverse over verified TLS;
token-endpoint faults retried inside the hook; the secrets sent only to Microsoft or an explicit sandbox."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from d365.errors import PreflightUnavailable
from d365.hooks.dreamapply import DreamApplyHook
from d365.hooks.dynamics import DynamicsConnectionSettings, DynamicsHook
from d365.hooks.dynamics_auth import (
    MICROSOFT_LOGIN_HOSTS,
    TOKEN_ATTEMPTS,
    Authority,
    MsalTokenAuth,
    TokenServiceUnavailable,
    authority_from_challenge,
    check_authority,
    is_microsoft_login_host,
    normalise_origin,
    parse_bearer_challenge,
)
from d365.hooks.errors import DreamApplyAuthError, DynamicsAuthError
from d365.tasks.context import RunContext
from d365.tasks.preflight import _preflight_api_failure, preflight
from sandbox import Sandbox
from sandbox.client import SandboxClient, airflow_connections

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


# -- the token endpoint has bad minutes: retried inside the hook ----------------------------------------------
def _fired(client: SandboxClient, rule: dict[str, Any]) -> int:
    return next(r["fired"] for r in client.get("/faults")["rules"] if r["id"] == rule["id"])


def _service_requests(client: SandboxClient, seq: int) -> list[dict[str, Any]]:
    """Requests to the stand-ins of the real services (the admin API's own calls left out)."""
    return [e for server in ("login", "dataverse", "dreamapply") for e in client.requests(server=server, since=seq)]


def _token_posts(client: SandboxClient, seq: int) -> list[dict[str, Any]]:
    return [e for e in client.requests(server="login", since=seq) if e["method"] == "POST"]


def test_token_endpoint_503_then_200_within_one_call(
    dynamics_private: Callable[..., tuple[DynamicsHook, SandboxClient]],
) -> None:
    hook, client = dynamics_private()
    seq = client.last_seq()
    rule = client.add_fault(kind="status", server="login", path="token", status=503, times=1)
    assert hook.whoami()["UserId"]  # one call: no hook-level retry, no task retry
    assert _fired(client, rule) == 1
    assert [e["status"] for e in _token_posts(client, seq)] == [503, 200]
    assert hook.stats["retries"] == 0
    assert hook._auth is not None and hook._auth.http_client.stats["retries"] == 1


@pytest.mark.parametrize("fault", [{"kind": "reset"}, {"kind": "status", "status": 429, "retry_after": "1"}])
def test_token_endpoint_reset_or_429_is_retried_inside_the_hook(
    dynamics_private: Callable[..., tuple[DynamicsHook, SandboxClient]], fault: dict[str, Any]
) -> None:
    hook, client = dynamics_private()
    rule = client.add_fault(server="login", path="token", times=1, **fault)
    started = time.monotonic()
    assert hook.whoami()["UserId"]
    assert _fired(client, rule) == 1
    if fault.get("retry_after"):
        assert time.monotonic() - started >= 1.0  # the token service's Retry-After was honoured
    assert hook._auth is not None and hook._auth.http_client.stats["retries"] == 1


def test_token_endpoint_down_ends_in_a_typed_retryable_error_after_bounded_attempts(
    dynamics_private: Callable[..., tuple[DynamicsHook, SandboxClient]],
) -> None:
    hook, client = dynamics_private()
    secret = client.info["entra"]["client_secret"]
    seq = client.last_seq()
    # Retry-After: 0 keeps the test fast; the attempts stay bounded whatever the server says
    rule = client.add_fault(kind="status", server="login", path="token", status=503, retry_after="0")
    with pytest.raises(TokenServiceUnavailable) as caught:
        hook.whoami()
    err = caught.value
    assert err.retryable and err.status == 503 and err.code == "TokenServiceUnavailable"
    assert "AADSTS90033" in str(err) and secret not in str(err)
    assert len(_token_posts(client, seq)) == TOKEN_ATTEMPTS == _fired(client, rule)
    assert isinstance(_preflight_api_failure("Dynamics 365", err), PreflightUnavailable)  # the task retries later
    assert not [e for e in client.requests(server="dataverse", since=seq) if e["path"].endswith("WhoAmI")]


def test_preflight_succeeds_with_a_token_endpoint_503(
    make_sandbox: Callable[..., tuple[Sandbox, SandboxClient]], monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    sb, client = make_sandbox(applicants=5)
    for name, conn in airflow_connections(sb.info()).items():
        monkeypatch.setenv(name, json.dumps(conn))
    rc = RunContext.create(
        "dreamapply_to_dynamics365",
        "manual__token_503",
        run_folder="file://" + str(tmp_path / "run"),
        ledger_url=f"sqlite:///{tmp_path / 'ledger.db'}",
    )
    rule = client.add_fault(kind="status", server="login", path="token", status=503, times=1)
    result = preflight(rc)
    assert result["instance"] and rc.folder.read_json("preflight.json")["caller_id"]
    assert _fired(client, rule) == 1


# -- the client secret goes only to Microsoft (or an explicit sandbox token service) ---------------------------
def test_microsoft_login_hosts_cover_msals_known_authority_hosts() -> None:
    from msal.authority import WELL_KNOWN_AUTHORITY_HOSTS

    assert set(WELL_KNOWN_AUTHORITY_HOSTS) <= MICROSOFT_LOGIN_HOSTS
    for host in ("login.microsoftonline.com", "login.microsoftonline.us", "login.partner.microsoftonline.cn"):
        assert is_microsoft_login_host(f"https://{host}")
    assert not is_microsoft_login_host("http://login.microsoftonline.com")  # not over plain http
    assert not is_microsoft_login_host("https://login.microsoftonline.com:8443")
    assert not is_microsoft_login_host("https://login.microsoftonline.com.evil.example")


def test_authority_validation_is_on_for_microsoft_and_off_only_for_an_explicit_sandbox_host() -> None:
    microsoft = MsalTokenAuth(
        client_id="c", client_secret="s", authority=Authority("https://login.microsoftonline.us", "t"), resource="r"
    )
    assert microsoft.msal_options() == {}  # MSAL's defaults: validate_authority on
    local = Authority("https://127.0.0.1:8443", "t")
    sandbox = MsalTokenAuth(
        client_id="c", client_secret="s", authority=local, resource="r", custom_authority_host=local.host
    )
    assert sandbox.msal_options() == {"validate_authority": False, "instance_discovery": False}
    with pytest.raises(DynamicsAuthError) as caught:
        MsalTokenAuth(client_id="c", client_secret="s", authority=local, resource="r", discovered=True)
    assert caught.value.code == "UntrustedAuthority" and "401 challenge" in str(caught.value)
    with pytest.raises(DynamicsAuthError):  # another custom host than the one given explicitly
        check_authority(local, conn_id="x", custom_host="https://127.0.0.1:9999", discovered=False)


@pytest.mark.parametrize("sandbox_flag", [True, None])
def test_a_discovered_foreign_authority_is_refused_before_the_secret_is_sent(
    sandbox: Sandbox, make_dynamics_hook: Callable[..., DynamicsHook], sandbox_flag: bool | None
) -> None:
    """No authority_host: the org's 401 challenge names the sandbox's token service, which is not Microsoft's."""
    info = sandbox.info()
    client = SandboxClient(info)
    seq = client.last_seq()
    hook = make_dynamics_hook(info, extra_authority_host=None, extra_sandbox=sandbox_flag)
    with pytest.raises(DynamicsAuthError) as caught:
        hook.whoami()
    err = caught.value
    assert err.code == "UntrustedAuthority" and not err.retryable
    assert "'dynamics365_default'" in str(err) and info["entra"]["login_url"] in str(err)
    assert info["entra"]["client_secret"] not in str(err)
    assert client.requests(server="login", since=seq) == []  # not one request reached the token service
    dataverse = client.requests(server="dataverse", since=seq)
    assert [(e["path"], e["status"]) for e in dataverse] == [(API_ROOT, 401)]  # only the unauthenticated probe
    assert "authorization" not in {k.lower() for k in dataverse[0]["headers"]}


def test_an_explicit_custom_authority_needs_the_sandbox_flag(
    sandbox: Sandbox, make_dynamics_hook: Callable[..., DynamicsHook]
) -> None:
    info = sandbox.info()
    client = SandboxClient(info)
    seq = client.last_seq()
    hook = make_dynamics_hook(info, extra_sandbox=None)  # authority_host is the sandbox's Entra ID
    with pytest.raises(DynamicsAuthError) as caught:
        hook.whoami()
    assert caught.value.code == "UntrustedAuthority" and "authority_host" in str(caught.value)
    assert _service_requests(client, seq) == []  # refused before any request, to any server


@pytest.mark.parametrize(
    ("overrides", "named"),
    [
        ({"extra_verify": False}, '"verify": false'),
        ({"extra_verify": "false"}, '"verify": false'),
        ({"host": "http://127.0.0.1:1"}, "host (Organization URL)"),
        ({"extra_authority_host": "http://login.microsoftonline.com"}, "extra authority_host"),
    ],
)
def test_dynamics_connection_refuses_insecure_transport_without_the_sandbox_flag(
    sandbox: Sandbox, make_dynamics_hook: Callable[..., DynamicsHook], overrides: dict[str, Any], named: str
) -> None:
    info = sandbox.info()
    client = SandboxClient(info)
    seq = client.last_seq()
    hook = make_dynamics_hook(info, **{"extra_sandbox": None, "extra_authority_host": None, **overrides})
    with pytest.raises(DynamicsAuthError) as caught:
        hook.whoami()
    message = str(caught.value)
    assert caught.value.code == "InsecureConnection"
    assert "'dynamics365_default'" in message and named in message
    assert info["entra"]["client_secret"] not in message
    assert _service_requests(client, seq) == []


def test_sandbox_flag_allows_verify_false(sandbox: Sandbox, make_dynamics_hook: Callable[..., DynamicsHook]) -> None:
    hook = make_dynamics_hook(sandbox.info(), extra_ca_bundle=None, extra_verify=False)
    assert hook.settings.sandbox and hook.settings.verify is False
    assert hook.whoami()["UserId"]


@pytest.mark.parametrize(
    ("change", "named"),
    [
        ({"extra": {"verify": False}}, '"verify": false'),
        ({"host": "http://127.0.0.1:1"}, "host (instance URL)"),
    ],
)
def test_dreamapply_connection_refuses_insecure_transport_without_the_sandbox_flag(
    sandbox: Sandbox, monkeypatch: pytest.MonkeyPatch, change: dict[str, Any], named: str
) -> None:
    info = sandbox.info()
    client = SandboxClient(info)
    conn = airflow_connections(info)["AIRFLOW_CONN_DREAMAPPLY_DEFAULT"]
    conn.update(change)
    conn["extra"].pop("sandbox", None)
    monkeypatch.setenv("AIRFLOW_CONN_DREAMAPPLY_DEFAULT", json.dumps(conn))
    seq = client.last_seq()
    with pytest.raises(DreamApplyAuthError) as caught:
        DreamApplyHook().get_json("/ping")
    message = str(caught.value)
    assert caught.value.code == "InsecureConnection" and "'dreamapply_default'" in message and named in message
    assert info["dreamapply"]["api_key"] not in message
    assert client.requests(server="dreamapply", since=seq) == []
    conn["extra"] = {**conn.get("extra", {}), "sandbox": True}  # the documented sandbox flag lifts the check
    if "verify" in conn["extra"]:
        monkeypatch.setenv("AIRFLOW_CONN_DREAMAPPLY_DEFAULT", json.dumps(conn))
        hook = DreamApplyHook()
        assert hook.get_json("/ping") and hook.get_conn().verify is False
