"""Sandbox-only control API: request log, fault injection, token expiry, app secrets, time travel and store access.

``GET /_sandbox/apps`` lists the tenant's app registrations (number, client id, application user id, revoked; never
a secret); ``POST /_sandbox/apps/<client id>/revoke`` revokes one app's secret mid-run: its next token request is
refused with AADSTS7000215 and the tokens it holds are refused by Dataverse with 401 (``sandbox.entra.apps``).

The generic controls live here; each domain package adds its own routes through
``register_admin_routes(app)`` (lead store and preload for Dataverse, time advance for DreamApply).
"""

from __future__ import annotations

from aiohttp import web

from sandbox.dataverse import server as dataverse
from sandbox.dreamapply import server as dreamapply
from sandbox.httpcommon import STATE_KEY, make_app
from sandbox.state import SandboxState

PREFIX = "/_sandbox"


def build_app(state: SandboxState) -> web.Application:
    app = make_app(state, "admin")
    r = app.router
    r.add_get(f"{PREFIX}/health", health)
    r.add_get(f"{PREFIX}/requests", list_requests)
    r.add_delete(f"{PREFIX}/requests", clear_requests)
    r.add_get(f"{PREFIX}/faults", list_faults)
    r.add_post(f"{PREFIX}/faults", add_fault)
    r.add_delete(f"{PREFIX}/faults", clear_faults)
    r.add_delete(f"{PREFIX}/faults/{{rule_id}}", delete_fault)
    r.add_post(f"{PREFIX}/tokens/expire", expire_tokens)
    r.add_put(f"{PREFIX}/tokens/lifetime", set_token_lifetime)
    r.add_get(f"{PREFIX}/apps", list_apps)
    r.add_post(f"{PREFIX}/apps/{{client_id}}/revoke", revoke_app_secret)
    dataverse.register_admin_routes(app, PREFIX)
    dreamapply.register_admin_routes(app, PREFIX)
    return app


async def health(request: web.Request) -> web.Response:
    state = request.app[STATE_KEY]
    return web.json_response({"ok": True, "now": state.clock.now().isoformat()})


async def list_requests(request: web.Request) -> web.Response:
    state = request.app[STATE_KEY]
    q = request.query
    entries = state.request_log.entries(server=q.get("server"), since_seq=int(q.get("since", 0)), user=q.get("user"))
    return web.json_response({"last_seq": state.request_log.last_seq(), "entries": entries})


async def clear_requests(request: web.Request) -> web.Response:
    request.app[STATE_KEY].request_log.clear()
    return web.Response(status=204)


async def list_faults(request: web.Request) -> web.Response:
    return web.json_response({"rules": request.app[STATE_KEY].faults.rules()})


async def add_fault(request: web.Request) -> web.Response:
    spec = await request.json()
    try:
        rule = request.app[STATE_KEY].faults.add(**spec)
    except (TypeError, ValueError) as exc:
        return web.json_response({"error": str(exc)}, status=400)
    return web.json_response(rule.describe(), status=201)


async def clear_faults(request: web.Request) -> web.Response:
    request.app[STATE_KEY].faults.clear()
    return web.Response(status=204)


async def delete_fault(request: web.Request) -> web.Response:
    removed = request.app[STATE_KEY].faults.remove(int(request.match_info["rule_id"]))
    return web.Response(status=204 if removed else 404)


async def expire_tokens(request: web.Request) -> web.Response:
    at = request.app[STATE_KEY].tokens.expire_all()
    return web.json_response({"revoked_before": at})


async def set_token_lifetime(request: web.Request) -> web.Response:
    body = await request.json()
    seconds = int(body["seconds"])
    if seconds < 1:
        return web.json_response({"error": "seconds must be >= 1"}, status=400)
    request.app[STATE_KEY].tokens.lifetime_seconds = seconds
    return web.json_response({"seconds": seconds})


async def list_apps(request: web.Request) -> web.Response:
    return web.json_response({"apps": request.app[STATE_KEY].apps.describe()})


async def revoke_app_secret(request: web.Request) -> web.Response:
    """The app's secret stops working now, and so do the tokens issued to it so far."""
    state = request.app[STATE_KEY]
    client_id = request.match_info["client_id"]
    if not state.apps.revoke(client_id):
        return web.json_response({"error": f"no app registration with client id {client_id}"}, status=404)
    at = state.tokens.expire_client(client_id)
    return web.json_response({"client_id": client_id, "revoked_before": at})
