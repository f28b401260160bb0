"""MSAL, unmodified, obtains tokens from the sandbox's Entra ID over verified TLS; errors look like Entra's."""

from __future__ import annotations

import time

import msal
import pytest
import requests

from sandbox import Sandbox
from sandbox.client import SandboxClient, VerifiedSession


def _app(
    sandbox: Sandbox, secret: str | None = None, client_id: str | None = None
) -> msal.ConfidentialClientApplication:
    return msal.ConfidentialClientApplication(
        client_id or sandbox.config.client_id,
        client_credential=secret if secret is not None else sandbox.config.client_secret,
        authority=sandbox.endpoints.authority,
        validate_authority=False,
        instance_discovery=False,
        http_client=VerifiedSession(sandbox.ca_path),
    )


def _scope(sandbox: Sandbox) -> list[str]:
    return [f"{sandbox.endpoints.org_url}/.default"]


def test_msal_gets_a_token_then_serves_it_from_its_cache(sandbox: Sandbox) -> None:
    app = _app(sandbox)
    first = app.acquire_token_for_client(scopes=_scope(sandbox))
    assert first["token_type"] == "Bearer"
    assert first["token_source"] == "identity_provider"
    assert 3000 < first["expires_in"] <= 3599
    claims = sandbox.state.tokens.verify(first["access_token"], audience=sandbox.endpoints.org_url)
    assert claims.client_id == sandbox.config.client_id
    assert claims.tenant_id == sandbox.config.tenant_id
    second = app.acquire_token_for_client(scopes=_scope(sandbox))
    assert second["token_source"] == "cache"
    assert second["access_token"] == first["access_token"]


def test_wrong_secret_gives_aadsts7000215(sandbox: Sandbox) -> None:
    result = _app(sandbox, secret="not-the-secret").acquire_token_for_client(scopes=_scope(sandbox))
    assert result["error"] == "invalid_client"
    assert result["error_codes"] == [7000215]
    assert result["error_description"].startswith("AADSTS7000215: Invalid client secret provided.")
    assert "not-the-secret" not in str(result)


def test_unknown_client_gives_aadsts700016(sandbox: Sandbox) -> None:
    result = _app(sandbox, client_id="11111111-2222-3333-4444-555555555555").acquire_token_for_client(
        scopes=_scope(sandbox)
    )
    assert result["error"] == "unauthorized_client"
    assert result["error_codes"] == [700016]


@pytest.mark.parametrize(
    ("scope", "error", "code"),
    [
        ("https://someone-else.crm4.dynamics.com/.default", "invalid_resource", 500011),
        ("user_impersonation", "invalid_scope", 1002012),
    ],
)
def test_wrong_scope_is_refused(sandbox: Sandbox, scope: str, error: str, code: int) -> None:
    result = _app(sandbox).acquire_token_for_client(scopes=[scope])
    assert result["error"] == error
    assert result["error_codes"] == [code]


def test_discovery_document_names_the_token_endpoint(sandbox: Sandbox) -> None:
    http = VerifiedSession(sandbox.ca_path)
    doc = http.get(f"{sandbox.endpoints.authority}/v2.0/.well-known/openid-configuration").json()
    assert doc["token_endpoint"] == f"{sandbox.endpoints.authority}/oauth2/v2.0/token"
    assert doc["issuer"] == f"{sandbox.endpoints.authority}/v2.0"
    unknown = http.get(f"{sandbox.endpoints.login_url}/no-such-tenant/v2.0/.well-known/openid-configuration")
    assert unknown.status_code == 400
    assert unknown.json()["error_codes"] == [90002]


def test_tls_is_verified_not_disabled(sandbox: Sandbox) -> None:
    """A client without the sandbox CA must refuse the connection."""
    with pytest.raises(requests.exceptions.SSLError):
        requests.get(sandbox.endpoints.login_url + "/x", verify=requests.certs.where(), timeout=5)


def test_token_lifetime_is_configurable(make_sandbox) -> None:  # type: ignore[no-untyped-def]
    sb, _ = make_sandbox(token_lifetime_seconds=400)
    result = _app(sb).acquire_token_for_client(scopes=_scope(sb))
    assert result["expires_in"] == 400


def test_early_expiry_invalidates_issued_tokens(make_sandbox) -> None:  # type: ignore[no-untyped-def]
    sb, client = make_sandbox()
    token = _app(sb).acquire_token_for_client(scopes=_scope(sb))["access_token"]
    sb.state.tokens.verify(token, audience=sb.endpoints.org_url)
    time.sleep(0.01)
    client.expire_tokens()
    from sandbox.entra.tokens import TokenRejected

    with pytest.raises(TokenRejected) as info:
        sb.state.tokens.verify(token, audience=sb.endpoints.org_url)
    assert info.value.expired
    fresh = _app(sb).acquire_token_for_client(scopes=_scope(sb))["access_token"]
    assert sb.state.tokens.verify(fresh, audience=sb.endpoints.org_url)


def test_secrets_never_reach_the_request_log(sandbox: Sandbox) -> None:
    client = SandboxClient(sandbox.info())
    _app(sandbox).acquire_token_for_client(scopes=_scope(sandbox))
    log = str(client.requests(server="login"))
    assert sandbox.config.client_secret not in log
