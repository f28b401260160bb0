"""What every sandbox server shares: request logging and fault injection as aiohttp middlewares."""

from __future__ import annotations

import asyncio
import contextlib
import json
import socket
import struct
import time
from collections.abc import Awaitable, Callable, Iterable

from aiohttp import web

from sandbox.entra.tokens import peek_client_id
from sandbox.faults import FaultRule
from sandbox.requestlog import fingerprint, redact_headers
from sandbox.state import SandboxState

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]

STATE_KEY = web.AppKey("sandbox_state", SandboxState)
SERVER_KEY = web.AppKey("sandbox_server", str)
# Handlers may put extra facts for the request log here (error_code, ops, throttled, ...).
LOG_EXTRA = web.RequestKey("sandbox_log_extra", dict)
# Number of operations a request carried (a $batch carries many); drives simulated execution time.
OPS_KEY = web.RequestKey("sandbox_ops", int)
# The authenticated caller (sandbox.dataverse.service.Caller), set by the Dataverse auth middleware.
CALLER_KEY = web.RequestKey("sandbox_caller", object)


def caller_of(request: web.Request) -> str | None:
    """The identity service limits are counted against: the token's client id, or the API key's fingerprint."""
    auth = request.headers.get("Authorization", "")
    if auth[:7].lower() == "bearer ":
        return peek_client_id(auth[7:].strip())
    if auth.startswith("DREAM "):
        return fingerprint(auth)
    return None


def make_app(
    state: SandboxState, server: str, middlewares: Iterable[Callable[..., Awaitable[web.StreamResponse]]] = ()
) -> web.Application:
    app = web.Application(
        middlewares=[_request_log_middleware, _fault_middleware, *middlewares],
        client_max_size=64 * 1024 * 1024,
    )
    app[STATE_KEY] = state
    app[SERVER_KEY] = server
    return app


@web.middleware
async def _request_log_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    state = request.app[STATE_KEY]
    started = time.time()
    request[LOG_EXTRA] = {}
    status = 0
    response: web.StreamResponse | None = None
    try:
        response = await handler(request)
        status = response.status
        return response
    except web.HTTPException as exc:
        status = exc.status
        response = exc
        raise
    except (ConnectionResetError, asyncio.CancelledError):
        status = 0
        raise
    finally:
        finished = time.time()
        entry = {
            "server": request.app[SERVER_KEY],
            "method": request.method,
            "path": request.path,
            "query": request.query_string,
            "user": caller_of(request),
            "status": status,
            "started": started,
            "finished": finished,
            "duration_ms": round((finished - started) * 1000, 3),
            "headers": redact_headers(request.headers),
        }
        if response is not None and "Retry-After" in response.headers:
            entry["retry_after"] = float(response.headers["Retry-After"])
        entry.update(request[LOG_EXTRA])
        state.request_log.add(entry)


@web.middleware
async def _fault_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    state = request.app[STATE_KEY]
    server = request.app[SERVER_KEY]
    rule = state.faults.pick(server, request.method, request.path)
    if rule is None:
        return await handler(request)
    request[LOG_EXTRA]["fault"] = {"id": rule.id, "kind": rule.kind}
    if rule.kind == "latency":
        await asyncio.sleep(rule.seconds)
        return await handler(request)
    if rule.kind == "timeout":
        await asyncio.sleep(rule.seconds)
        return await handler(request)
    if rule.kind == "reset":
        _reset_connection(request)
        request[LOG_EXTRA]["status"] = 0  # nothing reached the client
        return web.Response(status=204)  # never written: the transport is gone
    return _fault_response(state, server, request, rule)


def _reset_connection(request: web.Request) -> None:
    transport = request.transport
    if transport is None:
        return
    sock = transport.get_extra_info("socket")
    if sock is not None:
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    transport.abort()


def _fault_response(state: SandboxState, server: str, request: web.Request, rule: FaultRule) -> web.Response:
    headers: dict[str, str] = {}
    if rule.status == 429:
        headers["Retry-After"] = (
            str(int(rule.retry_after)) if rule.retry_after == int(rule.retry_after) else str(rule.retry_after)
        )
    if server == "dataverse":
        if rule.status == 429:
            code = "0x80072322"
            message = "Number of requests exceeded the limit of 6000 over time window of 300 seconds."
            if state.on_injected_throttle is not None:
                state.on_injected_throttle(caller_of(request), rule.retry_after)
        else:
            code = ""
            message = "The service is temporarily unavailable. Please retry later."
        request[LOG_EXTRA]["error_code"] = code
        body = json.dumps({"error": {"code": code, "message": message}})
        headers["OData-Version"] = "4.0"
        return web.Response(status=rule.status, text=body, content_type="application/json", headers=headers)
    if server == "login":
        body = json.dumps(
            {
                "error": "temporarily_unavailable",
                "error_description": "AADSTS90033: A transient error has occurred. Please try again.",
                "error_codes": [90033],
            }
        )
        return web.Response(status=rule.status, text=body, content_type="application/json", headers=headers)
    text = "Too Many Requests" if rule.status == 429 else "Service Unavailable"
    return web.Response(status=rule.status, text=text, headers=headers)
