"""What every sandbox server shares: request logging and fault injection as aiohttp middlewares."""

from __future__ import annotations

import asyncio
import contextlib
import json
import socket
import struct
import time
from collections.abc import Awaitable, Callable, Iterable
from typing import Any

from aiohttp import web
from yarl import URL

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
            entry["retry_after"] = _seconds(response.headers["Retry-After"])
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
    if rule.kind == "status":
        return _fault_response(state, server, request, rule)
    if rule.kind in ("html", "json_error", "empty"):
        return _untrusted_answer(server, rule)
    real = await handler(request)
    if not isinstance(real, web.Response) or not isinstance(real.body, bytes):
        return real  # a streamed answer: nothing to rewrite (not used by the servers' JSON routes)
    body, changed = _rewrite(real.body, rule, request)
    request[LOG_EXTRA]["fault"]["changed"] = changed
    headers = {k: v for k, v in real.headers.items() if k.lower() not in ("content-length", "content-type")}
    return web.Response(
        status=rule.status or real.status,
        body=body,
        headers=headers,
        content_type=real.content_type,
        charset=real.charset,
    )


_MAINTENANCE_PAGE = (
    "<!DOCTYPE html><html><head><title>Service Unavailable</title></head><body><h1>We'll be back soon</h1>"
    "<p>The service is undergoing scheduled maintenance.</p></body></html>"
)


def _untrusted_answer(server: str, rule: FaultRule) -> web.Response:
    """A 200 that is not the resource: a maintenance page, an error object, nothing at all."""
    status = rule.status or 200
    if rule.kind == "html":
        return web.Response(status=status, text=_MAINTENANCE_PAGE, content_type="text/html")
    if rule.kind == "empty":
        return web.Response(status=status, body=b"", content_type="application/json")
    if server == "dataverse":
        error: Any = {"code": "0x80040216", "message": "An unexpected error occurred."}
    else:
        error = "Internal error, please try again later"
    return web.Response(status=status, text=json.dumps({"error": error}), content_type="application/json")


def _rewrite(body: bytes, rule: FaultRule, request: web.Request) -> tuple[bytes, bool]:
    """The real body as the fault wants it; ``changed`` is False where the fault could not apply."""
    if rule.kind == "cut":
        return body[: len(body) // 2], bool(body)
    try:
        doc = json.loads(body)
    except ValueError:
        return body, False
    if rule.kind == "wrong_encoding":
        text = json.dumps(doc, ensure_ascii=False, separators=(",", ":"))
        out = text.encode("cp1252", errors="replace")
        return out, out != text.encode("utf-8")
    if not isinstance(doc, dict):  # next_link
        return body, False
    here = request.url
    if rule.mode == "repeat":
        link = str(here)
    else:
        current = doc.get("@odata.nextLink")
        target = URL(current) if isinstance(current, str) and URL(current).is_absolute() else here
        link = str(target.with_host("localhost" if here.host != "localhost" else "127.0.0.1"))
    doc["@odata.nextLink"] = link
    return json.dumps(doc, ensure_ascii=False, separators=(",", ":")).encode(), True


def _seconds(value: str) -> float | str:
    """A Retry-After for the request log: seconds when it is a number, else the text as sent."""
    try:
        return float(value)
    except ValueError:
        return value


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
    if isinstance(rule.retry_after, str):
        headers["Retry-After"] = rule.retry_after  # verbatim: nonsense values are part of the test
    elif rule.status == 429:
        headers["Retry-After"] = (
            str(int(rule.retry_after)) if rule.retry_after == int(rule.retry_after) else str(rule.retry_after)
        )
    if server == "dataverse":
        if rule.status == 429:
            code = "0x80072322"
            message = "Number of requests exceeded the limit of 6000 over time window of 300 seconds."
            penalty = _seconds(str(rule.retry_after))
            if state.on_injected_throttle is not None and isinstance(penalty, float) and 0 <= penalty < 3600:
                state.on_injected_throttle(caller_of(request), penalty)
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
