"""Several application users of one tenant: each signs in with its own secret, is its own Dataverse user (WhoAmI,
systemusers, a role), is metered on its own, and can have its secret revoked mid-run (sandbox-only control)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import msal
import pytest
import requests

from sandbox import Sandbox, ServiceProtectionLimits
from sandbox.client import SandboxClient, VerifiedSession, airflow_connections
from sandbox.config import SANDBOX_CLIENT_ID, extra_app_user

ODATA = {"Accept": "application/json", "OData-MaxVersion": "4.0", "OData-Version": "4.0"}


def token_result(sb: Sandbox, client_id: str, secret: str) -> dict[str, Any]:
    app = msal.ConfidentialClientApplication(
        client_id,
        client_credential=secret,
        authority=sb.endpoints.authority,
        validate_authority=False,
        instance_discovery=False,
        http_client=VerifiedSession(sb.ca_path),
    )
    return app.acquire_token_for_client(scopes=[sb.endpoints.org_url + "/.default"])


def get(sb: Sandbox, token: str, path: str) -> requests.Response:
    return VerifiedSession(sb.ca_path).get(
        f"{sb.endpoints.web_api_url}/{path}", headers={"Authorization": f"Bearer {token}", **ODATA}
    )


@pytest.fixture
def three_users(make_sandbox: Callable[..., tuple[Sandbox, SandboxClient]]) -> tuple[Sandbox, SandboxClient]:
    return make_sandbox(applicants=10, extra_app_users=2)


def credentials(sb: Sandbox) -> list[tuple[str, str]]:
    info = sb.info()["entra"]
    return [(info["client_id"], info["client_secret"])] + [
        (u["client_id"], u["client_secret"]) for u in info["extra_app_users"]
    ]


def test_extra_users_are_deterministic_and_distinct() -> None:
    assert extra_app_user(2) == extra_app_user(2)
    ids = {SANDBOX_CLIENT_ID, *(extra_app_user(n)[0] for n in range(2, 6))}
    assert len(ids) == 5
    with pytest.raises(ValueError, match="numbered from 2"):
        extra_app_user(1)


def test_each_app_user_signs_in_as_its_own_enabled_application_user_with_a_role(
    three_users: tuple[Sandbox, SandboxClient],
) -> None:
    sb, client = three_users
    creds = credentials(sb)
    assert len(creds) == 3
    listed = {a["client_id"]: a for a in client.app_users()}
    assert set(listed) == {c for c, _ in creds} and not any(a["revoked"] for a in listed.values())
    assert "secret" not in str(client.app_users())
    seen_users = set()
    for client_id, secret in creds:
        result = token_result(sb, client_id, secret)
        token = result["access_token"]
        claims = sb.state.tokens.verify(token, audience=sb.endpoints.org_url)
        who = get(sb, token, "WhoAmI").json()["UserId"]
        assert claims.client_id == client_id and claims.object_id == who == listed[client_id]["user_id"]
        seen_users.add(who)
        user = get(sb, token, f"systemusers({who})?$select=applicationid,isdisabled,accessmode").json()
        assert (user["applicationid"], user["isdisabled"], user["accessmode"]) == (client_id, False, 4)
        roles = get(sb, token, f"systemusers({who})/systemuserroles_association?$select=name,roleid")
        assert roles.status_code == 200, roles.text
        assert [r["name"] for r in roles.json()["value"]] == ["DreamApply Integration"]
    assert len(seen_users) == 3
    # a user's roles only: a person holds another role, an unknown user is a 404
    anna = get(sb, token, "systemusers?$filter=internalemailaddress eq 'anna.virtanen@university.example'").json()
    anna_id = anna["value"][0]["systemuserid"]
    person = get(sb, token, f"systemusers({anna_id})/systemuserroles_association?$select=name").json()
    assert [r["name"] for r in person["value"]] == ["Salesperson"]
    missing = get(sb, token, "systemusers(00000000-0000-0000-0000-0000000000ab)/systemuserroles_association")
    assert missing.status_code == 404


def test_service_protection_meters_each_application_user_on_its_own(
    make_sandbox: Callable[..., tuple[Sandbox, SandboxClient]],
) -> None:
    limits = ServiceProtectionLimits(window_seconds=30.0, max_requests=3, retry_after_seconds=5.0)
    sb, client = make_sandbox(applicants=10, extra_app_users=1, limits=limits)
    (first_id, first_secret), (second_id, second_secret) = credentials(sb)
    first = token_result(sb, first_id, first_secret)["access_token"]
    second = token_result(sb, second_id, second_secret)["access_token"]
    assert [get(sb, first, "WhoAmI").status_code for _ in range(4)] == [200, 200, 200, 429]
    assert [get(sb, second, "WhoAmI").status_code for _ in range(3)] == [200, 200, 200]  # its own window
    log = client.requests(server="dataverse")
    assert {e["user"] for e in log if e["status"] == 429} == {first_id}


def test_a_revoked_secret_is_refused_and_its_tokens_stop_working(three_users: tuple[Sandbox, SandboxClient]) -> None:
    sb, client = three_users
    creds = credentials(sb)
    (_, _), (revoked_id, revoked_secret), (other_id, other_secret) = creds
    held = token_result(sb, revoked_id, revoked_secret)["access_token"]
    other = token_result(sb, other_id, other_secret)["access_token"]
    assert get(sb, held, "WhoAmI").status_code == 200
    since = client.last_seq()

    client.revoke_app_secret(revoked_id)

    refused = get(sb, held, "WhoAmI")
    assert refused.status_code == 401 and 'error="invalid_token"' in refused.headers["WWW-Authenticate"]
    result = token_result(sb, revoked_id, revoked_secret)
    assert result.get("error") == "invalid_client" and result["error_codes"] == [7000215]
    assert revoked_secret not in str(result)
    # the other users are not touched
    assert get(sb, other, "WhoAmI").status_code == 200
    assert "access_token" in token_result(sb, other_id, other_secret)
    assert {a["client_id"]: a["revoked"] for a in client.app_users()}[revoked_id] is True
    # the request log tells who was refused where, without the secret
    login = [e for e in client.requests(server="login", since=since) if e.get("client_id") == revoked_id]
    assert [(e["status"], e["error_code"]) for e in login] == [(401, "AADSTS7000215")]
    dataverse = [e for e in client.requests(server="dataverse", since=since) if e["user"] == revoked_id]
    assert [(e["status"], e["error_code"]) for e in dataverse] == [(401, "ExpiredAuthTicket")]
    assert revoked_secret not in str(client.requests(since=since))


def test_revoking_an_unknown_app_is_a_404(three_users: tuple[Sandbox, SandboxClient]) -> None:
    _, client = three_users
    with pytest.raises(requests.HTTPError) as info:
        client.revoke_app_secret("11111111-2222-3333-4444-555555555555")
    assert info.value.response.status_code == 404


def test_airflow_connections_for_every_user_and_the_pool_when_asked(three_users: tuple[Sandbox, SandboxClient]) -> None:
    sb, _ = three_users
    info = sb.info()
    plain = airflow_connections(info)
    assert set(plain) == {
        "AIRFLOW_CONN_DYNAMICS365_DEFAULT",
        "AIRFLOW_CONN_DYNAMICS365_USER2",
        "AIRFLOW_CONN_DYNAMICS365_USER3",
        "AIRFLOW_CONN_DREAMAPPLY_DEFAULT",
    }
    assert "pool" not in plain["AIRFLOW_CONN_DYNAMICS365_DEFAULT"]["extra"]
    users = info["entra"]["extra_app_users"]
    for n, user in zip((2, 3), users, strict=True):
        conn = plain[f"AIRFLOW_CONN_DYNAMICS365_USER{n}"]
        assert (conn["login"], conn["password"]) == (user["client_id"], user["client_secret"])
        assert conn["host"] == plain["AIRFLOW_CONN_DYNAMICS365_DEFAULT"]["host"]
        assert conn["extra"]["sandbox"] is True
    pooled = airflow_connections(info, dynamics_pool=True)
    assert pooled["AIRFLOW_CONN_DYNAMICS365_DEFAULT"]["extra"]["pool"] == ["dynamics365_user2", "dynamics365_user3"]


def test_a_sandbox_without_extra_users_has_one_dynamics_connection(sandbox: Sandbox) -> None:
    conns = airflow_connections(sandbox.info(), dynamics_pool=True)
    assert set(conns) == {"AIRFLOW_CONN_DYNAMICS365_DEFAULT", "AIRFLOW_CONN_DREAMAPPLY_DEFAULT"}
    assert conns["AIRFLOW_CONN_DYNAMICS365_DEFAULT"]["extra"]["pool"] == []
