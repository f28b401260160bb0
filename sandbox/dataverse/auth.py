"""Bearer-token authentication of the Dataverse Web API, as an aiohttp middleware.

* No or invalid bearer → 401 with ``WWW-Authenticate: Bearer authorization_uri=<login>/<tenant>/oauth2/authorize,
  resource_id=<org>/`` (values unquoted, as the real service writes them). This also answers the
  unauthenticated tenant-discovery probe ``GET /api/data/v9.2/``.
* Expired token → 401 with the same challenge plus ``error="invalid_token", error_description="..."``.
* A valid token of an application that is not one of the tenant's app registrations (``state.apps``) → 403
  0x80072560 "The user is not a member of the organization.". A known app calls as its own application user
  (``Caller.user_id``), which service protection meters separately; a token issued before its app's secret was
  revoked is refused like an expired one (401).
* 401 bodies are empty [unverified]; the request log gets error codes ``RequestIsNotAuthenticated``,
  ``InvalidAuthTicket`` or ``ExpiredAuthTicket``.

Every response that passes through (including 429s from the protection middleware and ``$batch``)
gets ``OData-Version: 4.0`` and a ``REQ_ID`` / ``x-ms-service-request-id`` pair.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Awaitable, Callable

from aiohttp import web

from sandbox.dataverse import errors
from sandbox.entra.tokens import TokenRejected
from sandbox.httpcommon import CALLER_KEY, LOG_EXTRA, STATE_KEY

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def challenge(login_url: str, tenant_id: str, org_url: str, expired: bool = False) -> str:
    value = f"Bearer authorization_uri={login_url}/{tenant_id}/oauth2/authorize, resource_id={org_url}/"
    if expired:
        value += ', error="invalid_token", error_description="The access token is expired."'
    return value


def _stamp(response: web.StreamResponse) -> web.StreamResponse:
    request_id = response.headers.get("REQ_ID") or str(uuid.uuid4())
    response.headers.setdefault("REQ_ID", request_id)
    response.headers.setdefault("x-ms-service-request-id", request_id)
    response.headers.setdefault("OData-Version", "4.0")
    return response


@web.middleware
async def middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    from sandbox.dataverse.service import Caller

    state = request.app[STATE_KEY]
    endpoints = state.endpoints
    auth = request.headers.get("Authorization", "")
    token = auth[7:].strip() if auth[:7].lower() == "bearer " else ""
    if not token:
        request[LOG_EXTRA]["error_code"] = "RequestIsNotAuthenticated"
        return _unauthorized(state, expired=False)
    try:
        claims = state.tokens.verify(token, audience=endpoints.org_url)
    except TokenRejected as exc:
        request[LOG_EXTRA]["error_code"] = "ExpiredAuthTicket" if exc.expired else "InvalidAuthTicket"
        return _unauthorized(state, expired=exc.expired)
    app = state.apps.get(claims.client_id)
    if app is None:
        request[LOG_EXTRA]["error_code"] = errors.NOT_A_MEMBER
        body = json.dumps(
            {"error": {"code": errors.NOT_A_MEMBER, "message": "The user is not a member of the organization."}}
        )
        return _stamp(
            web.Response(
                status=403, body=body.encode(), headers={"Content-Type": "application/json; odata.metadata=minimal"}
            )
        )
    request[CALLER_KEY] = Caller(user_id=app.user_id, client_id=claims.client_id)
    try:
        response = await handler(request)
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        request[LOG_EXTRA].setdefault("error_code", errors.ODATA_ERROR)
        segment = request.path.rstrip("/").rsplit("/", 1)[-1]
        message = f"Resource not found for the segment '{segment}'." if exc.status == 404 else exc.reason
        body = json.dumps({"error": {"code": errors.ODATA_ERROR, "message": message}})
        return _stamp(
            web.Response(
                status=exc.status,
                body=body.encode(),
                headers={"Content-Type": "application/json; odata.metadata=minimal"},
            )
        )
    return _stamp(response)


def _unauthorized(state, expired: bool) -> web.StreamResponse:  # type: ignore[no-untyped-def]
    endpoints = state.endpoints
    headers = {"WWW-Authenticate": challenge(endpoints.login_url, state.config.tenant_id, endpoints.org_url, expired)}
    return _stamp(web.Response(status=401, headers=headers))
