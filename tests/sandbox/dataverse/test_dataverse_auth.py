"""Authentication: the Bearer challenge, tenant discovery, expired tokens and foreign applications."""

from __future__ import annotations

import re
from typing import Any

from dvhelpers import WebApi

from sandbox import Sandbox
from sandbox.client import VerifiedSession

CHALLENGE = re.compile(r"^Bearer authorization_uri=(?P<auth>[^,\s\"]+), resource_id=(?P<res>[^,\s\"]+)")


def test_missing_bearer_gets_the_challenge(sandbox: Sandbox) -> None:
    s = VerifiedSession(sandbox.ca_path)
    r = s.get(sandbox.endpoints.web_api_url + "/WhoAmI")
    assert r.status_code == 401
    m = CHALLENGE.match(r.headers["WWW-Authenticate"])
    assert m, r.headers["WWW-Authenticate"]
    assert m["auth"] == f"{sandbox.endpoints.login_url}/{sandbox.config.tenant_id}/oauth2/authorize"
    assert m["res"] == sandbox.endpoints.org_url + "/"
    assert r.headers["OData-Version"] == "4.0"
    assert r.headers["REQ_ID"] == r.headers["x-ms-service-request-id"]


def test_tenant_discovery_on_the_service_root(sandbox: Sandbox) -> None:
    s = VerifiedSession(sandbox.ca_path)
    r = s.get(sandbox.endpoints.web_api_url + "/")
    assert r.status_code == 401
    auth_uri = CHALLENGE.match(r.headers["WWW-Authenticate"])["auth"]  # type: ignore[index]
    tenant = auth_uri.split("/")[3]
    assert tenant == sandbox.config.tenant_id


def test_garbage_token_is_401(sandbox: Sandbox) -> None:
    s = VerifiedSession(sandbox.ca_path)
    r = s.get(sandbox.endpoints.web_api_url + "/WhoAmI", headers={"Authorization": "Bearer not-a-jwt"})
    assert r.status_code == 401
    assert "invalid_token" not in r.headers["WWW-Authenticate"]


def test_expired_token_says_invalid_token(make_sandbox: Any, connect: Any) -> None:
    sb, client = make_sandbox()
    api: WebApi = connect(sb)
    assert api.get("WhoAmI").status_code == 200
    client.expire_tokens()
    r = api.get("WhoAmI")
    assert r.status_code == 401
    assert 'error="invalid_token"' in r.headers["WWW-Authenticate"]
    assert CHALLENGE.match(r.headers["WWW-Authenticate"])
    assert connect(sb).get("WhoAmI").status_code == 200  # a new token works


def test_token_of_another_application_is_403(sandbox: Sandbox) -> None:
    token, _ = sandbox.state.tokens.issue("11111111-2222-3333-4444-555555555555", sandbox.endpoints.org_url, "x")
    s = VerifiedSession(sandbox.ca_path)
    r = s.get(sandbox.endpoints.web_api_url + "/WhoAmI", headers={"Authorization": f"Bearer {token}"})
    assert r.status_code == 403
    assert r.json()["error"]["code"] == "0x80072560"


def test_token_for_another_audience_is_401(sandbox: Sandbox) -> None:
    token, _ = sandbox.state.tokens.issue(sandbox.config.client_id, "https://other.crm4.dynamics.com", "x")
    s = VerifiedSession(sandbox.ca_path)
    r = s.get(sandbox.endpoints.web_api_url + "/WhoAmI", headers={"Authorization": f"Bearer {token}"})
    assert r.status_code == 401


def test_whoami(api: WebApi, sandbox: Sandbox) -> None:
    r = api.get("WhoAmI")
    assert r.status_code == 200
    assert r.headers["Content-Type"] == "application/json; odata.metadata=minimal"
    assert r.headers["OData-Version"] == "4.0"
    assert r.headers["REQ_ID"]
    body = r.json()
    assert body["@odata.context"] == f"{api.base}/$metadata#Microsoft.Dynamics.CRM.WhoAmIResponse"
    assert body["UserId"] == sandbox.state.application_user_id
    assert set(body) == {"@odata.context", "BusinessUnitId", "UserId", "OrganizationId"}
    assert api.get("WhoAmI()").json()["UserId"] == body["UserId"]


def test_unknown_segment_is_404(api: WebApi) -> None:
    r = api.get("leadz")
    assert r.status_code == 404
    assert r.json()["error"]["message"] == "Resource not found for the segment 'leadz'."
