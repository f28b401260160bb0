"""Entra ID token service: OpenID discovery and the client-credentials grant, with AADSTS-style errors.

Every app registration of the tenant (``state.apps``: the sandbox app and ``extra_app_users`` more) gets tokens whose
``oid`` is its own application user; a revoked secret is refused like a wrong one (AADSTS7000215). The request log
records the client id and the AADSTS code of each token request (never the secret), so a test can count refusals.
"""

from __future__ import annotations

import base64
import json
import uuid
from datetime import UTC, datetime

from aiohttp import web

from sandbox.httpcommon import LOG_EXTRA, STATE_KEY, make_app
from sandbox.state import SandboxState


def build_app(state: SandboxState) -> web.Application:
    app = make_app(state, "login")
    app.router.add_get("/{tenant}/v2.0/.well-known/openid-configuration", openid_configuration)
    app.router.add_get("/{tenant}/.well-known/openid-configuration", openid_configuration)
    app.router.add_post("/{tenant}/oauth2/v2.0/token", token)
    return app


def _known_tenant(state: SandboxState, tenant: str) -> bool:
    return tenant in (state.config.tenant_id, "organizations")


async def openid_configuration(request: web.Request) -> web.Response:
    state = request.app[STATE_KEY]
    tenant = request.match_info["tenant"]
    if not _known_tenant(state, tenant):
        return _aad_error(
            400,
            "invalid_tenant",
            90002,
            f"Tenant '{tenant}' not found. Check to make sure you have the correct tenant ID.",
        )
    base = state.endpoints.login_url
    tid = state.config.tenant_id
    return web.json_response(
        {
            "token_endpoint": f"{base}/{tid}/oauth2/v2.0/token",
            "token_endpoint_auth_methods_supported": ["client_secret_post", "private_key_jwt", "client_secret_basic"],
            "jwks_uri": f"{base}/{tid}/discovery/v2.0/keys",
            "response_modes_supported": ["query", "fragment", "form_post"],
            "subject_types_supported": ["pairwise"],
            "id_token_signing_alg_values_supported": ["RS256"],
            "response_types_supported": ["code", "id_token", "code id_token", "id_token token"],
            "scopes_supported": ["openid", "profile", "email", "offline_access"],
            "issuer": f"{base}/{tid}/v2.0",
            "request_uri_parameter_supported": False,
            "userinfo_endpoint": "https://graph.microsoft.com/oidc/userinfo",
            "authorization_endpoint": f"{base}/{tid}/oauth2/v2.0/authorize",
            "device_authorization_endpoint": f"{base}/{tid}/oauth2/v2.0/devicecode",
            "http_logout_supported": True,
            "frontchannel_logout_supported": True,
            "end_session_endpoint": f"{base}/{tid}/oauth2/v2.0/logout",
            "claims_supported": ["sub", "iss", "aud", "exp", "iat", "tid", "ver"],
            "tenant_region_scope": "EU",
            "cloud_instance_name": "microsoftonline.com",
            "cloud_graph_host_name": "graph.windows.net",
            "msgraph_host": "graph.microsoft.com",
        }
    )


async def token(request: web.Request) -> web.Response:
    state = request.app[STATE_KEY]
    tenant = request.match_info["tenant"]
    if not _known_tenant(state, tenant):
        return _aad_error(
            400,
            "invalid_request",
            90002,
            f"Tenant '{tenant}' not found. Check to make sure you have the correct tenant ID.",
        )
    form = await request.post()
    client_id = str(form.get("client_id", ""))
    client_secret = str(form.get("client_secret", ""))
    basic = request.headers.get("Authorization", "")
    if basic.lower().startswith("basic "):
        decoded = base64.b64decode(basic[6:]).decode()
        client_id, _, client_secret = decoded.partition(":")
    grant_type = str(form.get("grant_type", ""))
    scope = str(form.get("scope", ""))
    request[LOG_EXTRA]["client_id"] = client_id or None
    response = _grant(state, client_id, client_secret, grant_type, scope)
    if response.status >= 400:
        request[LOG_EXTRA]["error_code"] = _aadsts_of(response)
    return response


def _aadsts_of(response: web.Response) -> str:
    """``AADSTS<n>`` of an error answer built by ``_aad_error``."""
    body = json.loads(response.body) if isinstance(response.body, bytes) else {}
    codes = body.get("error_codes") or []
    return f"AADSTS{codes[0]}" if codes else ""


def _grant(state: SandboxState, client_id: str, client_secret: str, grant_type: str, scope: str) -> web.Response:
    """The client-credentials grant for one app registration: a token, or the AADSTS error Entra ID answers."""
    if grant_type != "client_credentials":
        return _aad_error(
            400,
            "unsupported_grant_type",
            70003,
            f"The app requested an unsupported grant type '{grant_type}'.",
        )
    if not client_id:
        return _aad_error(
            400, "invalid_request", 900144, "The request body must contain the following parameter: 'client_id'."
        )
    app = state.apps.get(client_id)
    if app is None:
        return _aad_error(
            400,
            "unauthorized_client",
            700016,
            f"Application with identifier '{client_id}' was not found in the directory '{state.config.tenant_id}'. "
            "This can happen if the application has not been installed by the administrator of the tenant or "
            "consented to by any user in the tenant. "
            "You might have sent your authentication request to the wrong tenant.",
        )
    if not client_secret:
        return _aad_error(
            401,
            "invalid_client",
            7000216,
            "'client_assertion', 'client_secret' or 'request' is required for the 'client_credentials' grant type.",
        )
    if not state.apps.secret_ok(app, client_secret):
        return _aad_error(
            401,
            "invalid_client",
            7000215,
            "Invalid client secret provided. Ensure the secret being sent in the request is the client secret value, "
            f"not the client secret ID, for a secret added to app '{client_id}'.",
        )
    org = state.endpoints.org_url
    scopes = scope.split()
    valid_scopes = {f"{org}/.default", f"{org}//.default"}
    if len(scopes) != 1 or scopes[0] not in valid_scopes:
        if any(s.endswith("/.default") for s in scopes):
            return _aad_error(
                400,
                "invalid_resource",
                500011,
                f"The resource principal named {scope.removesuffix('/.default')} was not found in the tenant named "
                f"{state.config.tenant_id}. This can happen if the application has not been installed by the "
                "administrator of the tenant or consented to by any user in the tenant.",
            )
        return _aad_error(
            400,
            "invalid_scope",
            1002012,
            f"The provided value for scope {scope} is not valid. Client credential flows must have a scope value "
            "with /.default suffixed to the resource identifier (application ID URI).",
        )
    access_token, lifetime = state.tokens.issue(client_id, audience=org, object_id=app.user_id)
    return web.json_response(
        {"token_type": "Bearer", "expires_in": lifetime, "ext_expires_in": lifetime, "access_token": access_token},
        headers={"Cache-Control": "no-store, no-cache", "Pragma": "no-cache"},
    )


def _aad_error(status: int, error: str, code: int, description: str) -> web.Response:
    trace_id = str(uuid.uuid4())
    correlation_id = str(uuid.uuid4())
    now = datetime.now(UTC)
    stamp = now.strftime("%Y-%m-%d %H:%M:%SZ")
    return web.json_response(
        {
            "error": error,
            "error_description": f"AADSTS{code}: {description} Trace ID: {trace_id} "
            f"Correlation ID: {correlation_id} Timestamp: {stamp}",
            "error_codes": [code],
            "timestamp": stamp,
            "trace_id": trace_id,
            "correlation_id": correlation_id,
            "error_uri": f"https://login.microsoftonline.com/error?code={code}",
        },
        status=status,
    )
