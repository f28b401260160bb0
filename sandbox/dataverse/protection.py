"""Dataverse service-protection limits (reference §7) as an aiohttp middleware.

Per user (``request[CALLER_KEY].user_id``, set by the auth middleware that runs first), over a
sliding window of ``limits.window_seconds``:

* **requests**: every admitted request counts once (a ``$batch`` is one request, whatever it
  carries); 429s are not counted. At ``max_requests`` → 429 ``0x80072322``.
* **execution time**: the real wall time of each admitted request, measured from admission to the
  end of the simulated server time, added when the request finishes. At ``max_execution_ms`` → 429
  ``0x80072321``.
* **concurrency**: requests in flight. At ``max_concurrent`` → 429 ``0x80072326`` at once.

Simulated server time: after the handler returns, the middleware awaits
``config.request_latency_ms + cost * config.operation_ms`` before answering, so it is real, concurrent
wall time: a one-at-a-time client is slow, a parallel one is fast until it hits the concurrency or
execution-time limit. ``cost`` (``request[COST_KEY]``, else ``request[OPS_KEY]``, else 1) counts
operations: a single request or a ``$batch`` part is 1; a bulk message (``bulk.py``: CreateMultiple,
UpdateMultiple, UpsertMultiple, alone or as a ``$batch`` part) is
``config.bulk_request_operations + targets × config.bulk_target_operations`` (defaults 1 and 0.25:
100 upserts cost 26 operations as one UpsertMultiple and 100 as a ``$batch``).

**The bulk model is an assumption, not a measurement of Dataverse.** Microsoft says bulk messages give a
"significant" gain and publishes no figure against ``$batch``; its only number is a sample's illustrative
output (100 creates: CreateMultiple 1 s, ExecuteMultiple 4 s), which the default 0.25 per target mirrors,
with a fixed part per request on top. Benchmarks that compare ``$batch`` with bulk messages measure this
model; change the two knobs to test other assumptions. As in the service, a bulk message counts as one
request toward the request limit and all its time counts toward the execution-time limit.

Penalties: every 429 starts (or extends) a penalty for the user. While it lasts every request gets
429 with the same error code and is not counted. A request arriving during the penalty doubles the
penalty length (up to ``retry_after_max_seconds``) and pushes its end out, but at most once per
``PENALTY_GRACE_SECONDS`` so that the few requests a well-behaved parallel client already had on
the wire when the first 429 came back do not blow the penalty up. The first Retry-After is
``retry_after_seconds`` for concurrency, and for the request and time limits the time until enough
of the window has slid out for the next request to fit, but at least ``retry_after_seconds``.

``Retry-After`` is whole seconds (rounded up, at least 1) as in the real service, so scaled-down
limits must keep ``window_seconds`` and ``retry_after_seconds`` at a few seconds or more; shorter
windows still work but a client that honours Retry-After then waits longer than the window needs.

Every response that passes this middleware carries ``x-ms-dop-hint``,
``x-ms-ratelimit-burst-remaining-xrm-requests`` (requests left in the window),
``x-ms-ratelimit-time-remaining-xrm-requests`` (seconds of execution time left, ``1,200.00`` format)
and ``Set-Cookie: ARRAffinity=<hex>``. The sandbox is one "web server": the cookie is constant per
sandbox and the counters are per user only (the real per-server split that dropping affinity gives
is not modelled).

Fault-injected 429s (``POST /_sandbox/faults`` with ``status: 429``) become real penalties through
``state.on_injected_throttle``, which :func:`install` sets (the middleware also installs itself on
its first request). Limits are read from ``state.config.limits`` on every request; change them at
run time with :func:`set_limits`.
"""

from __future__ import annotations

import asyncio
import dataclasses
import hashlib
import json
import math
import time
import uuid
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from aiohttp import hdrs, web

from sandbox.config import ServiceProtectionLimits
from sandbox.httpcommon import CALLER_KEY, LOG_EXTRA, OPS_KEY, STATE_KEY
from sandbox.state import SandboxState

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]

PENALTY_GRACE_SECONDS = 1.0

CODE_REQUESTS = "0x80072322"
CODE_EXECUTION_TIME = "0x80072321"
CODE_CONCURRENCY = "0x80072326"

_ATTR = "_sandbox_dataverse_protection"
# Simulated server time of a request in operations (see the module docstring); set by the Dataverse handlers.
COST_KEY = web.RequestKey("sandbox_cost", float)


def _num(value: float) -> str:
    """300.0 → '300', 2.5 → '2.5' (for messages)."""
    return str(int(value)) if float(value).is_integer() else f"{value:g}"


def requests_message(limits: ServiceProtectionLimits) -> str:
    return (
        f"Number of requests exceeded the limit of {limits.max_requests} "
        f"over time window of {_num(limits.window_seconds)} seconds."
    )


def execution_time_message(limits: ServiceProtectionLimits) -> str:
    ms = limits.max_execution_ms
    shown = f"{int(ms):,}" if float(ms).is_integer() else f"{ms:,}"
    return (
        f"Combined execution time of incoming requests exceeded limit of {shown} milliseconds "
        f"over time window of {_num(limits.window_seconds)} seconds. Decrease number of concurrent requests "
        "or reduce the duration of requests and try again later."
    )


def concurrency_message(limits: ServiceProtectionLimits) -> str:
    return f"Number of concurrent requests exceeded the limit of {limits.max_concurrent}."


def format_seconds(seconds: float) -> str:
    """The ``x-ms-ratelimit-time-remaining-xrm-requests`` format: ``1,200.00``."""
    return f"{max(0.0, seconds):,.2f}"


@dataclass
class _Meter:
    """One user's sliding-window counters."""

    requests: deque[float] = field(default_factory=deque)  # admission times
    executions: deque[tuple[float, float]] = field(default_factory=deque)  # (finish time, ms)
    execution_ms: float = 0.0
    in_flight: int = 0
    penalty_until: float = 0.0
    penalty_seconds: float = 0.0
    penalty_extended_at: float = 0.0
    penalty_code: str = ""
    penalty_message: str = ""

    def prune(self, now: float, window: float) -> None:
        horizon = now - window
        requests = self.requests
        while requests and requests[0] <= horizon:
            requests.popleft()
        executions = self.executions
        while executions and executions[0][0] <= horizon:
            self.execution_ms -= executions.popleft()[1]
        if not executions:
            self.execution_ms = 0.0  # no float drift survives an empty window


@dataclass
class Throttle:
    code: str
    message: str
    retry_after: int


class ServiceProtection:
    """The per-sandbox counters. Everything runs on the sandbox's single asyncio loop."""

    def __init__(self, state: SandboxState) -> None:
        self.state = state
        self.meters: dict[str, _Meter] = {}
        self.user_of_client: dict[str, str] = {}
        # Injected penalties for clients not yet seen with a user id: client id → (until, seconds).
        self.pending: dict[str, tuple[float, float]] = {}
        self.affinity = hashlib.sha256(f"ARRAffinity:{state.endpoints.org_url}".encode()).hexdigest()

    @property
    def limits(self) -> ServiceProtectionLimits:
        return self.state.config.limits

    def meter(self, user: str) -> _Meter:
        m = self.meters.get(user)
        if m is None:
            m = self.meters[user] = _Meter()
        return m

    # -- penalties ---------------------------------------------------------------------------
    def _start_penalty(self, m: _Meter, now: float, seconds: float, code: str, message: str) -> int:
        """A new penalty (only called when none is running)."""
        retry_after = max(1, math.ceil(seconds - 1e-9))
        m.penalty_until = now + retry_after
        m.penalty_seconds = float(retry_after)
        m.penalty_extended_at = now
        m.penalty_code = code
        m.penalty_message = message
        return retry_after

    def _extend_penalty(self, m: _Meter, now: float) -> int:
        limits = self.limits
        if now - m.penalty_extended_at >= PENALTY_GRACE_SECONDS:
            cap = max(limits.retry_after_max_seconds, limits.retry_after_seconds, 1.0)
            m.penalty_seconds = min(max(m.penalty_seconds * 2, limits.retry_after_seconds, 1.0), cap)
            m.penalty_until = max(m.penalty_until, now + math.ceil(m.penalty_seconds))
            m.penalty_extended_at = now
        return max(1, math.ceil(m.penalty_until - now - 1e-9))

    def inject(self, client_or_user: str | None, retry_after: float) -> None:
        """``state.on_injected_throttle``: a fault-injected 429 becomes a real penalty."""
        if not client_or_user:
            return
        now = time.monotonic()
        seconds = max(float(retry_after), 0.001)
        user = self.user_of_client.get(client_or_user)
        if user is None and client_or_user in self.meters:
            user = client_or_user
        if user is None:
            until, prev = self.pending.get(client_or_user, (0.0, 0.0))
            self.pending[client_or_user] = (max(until, now + seconds), max(prev, seconds))
            return
        self._inject_into(self.meter(user), now, now + seconds, seconds)

    def _inject_into(self, m: _Meter, now: float, until: float, seconds: float) -> None:
        if until <= now:
            return
        active = m.penalty_until > now
        m.penalty_until = max(m.penalty_until, until)
        m.penalty_seconds = max(m.penalty_seconds if active else 0.0, seconds)
        m.penalty_extended_at = now
        m.penalty_code = CODE_REQUESTS
        m.penalty_message = requests_message(self.limits)

    # -- admission ---------------------------------------------------------------------------
    def admit(self, user: str, client_id: str | None, now: float) -> tuple[_Meter, Throttle | None]:
        """Count the request in, or say why it is throttled."""
        limits = self.limits
        m = self.meter(user)
        if client_id:
            self.user_of_client[client_id] = user
            pending = self.pending.pop(client_id, None)
            if pending is not None:
                self._inject_into(m, now, pending[0], pending[1])
        m.prune(now, limits.window_seconds)

        if m.penalty_until > now:
            return m, Throttle(m.penalty_code, m.penalty_message, self._extend_penalty(m, now))

        if m.in_flight >= limits.max_concurrent:
            ra = self._start_penalty(m, now, limits.retry_after_seconds, CODE_CONCURRENCY, concurrency_message(limits))
            return m, Throttle(CODE_CONCURRENCY, concurrency_message(limits), ra)

        if len(m.requests) >= limits.max_requests:
            # The next request fits once (len - max + 1) of the oldest have left the window.
            excess = len(m.requests) - limits.max_requests
            frees_at = m.requests[excess] + limits.window_seconds
            wait = max(limits.retry_after_seconds, frees_at - now)
            message = requests_message(limits)
            return m, Throttle(CODE_REQUESTS, message, self._start_penalty(m, now, wait, CODE_REQUESTS, message))

        if m.execution_ms >= limits.max_execution_ms:
            # Wait until enough finished requests slide out to bring the total under the limit.
            total = m.execution_ms
            frees_at = now
            for finished, ms in m.executions:
                total -= ms
                frees_at = finished + limits.window_seconds
                if total < limits.max_execution_ms:
                    break
            wait = max(limits.retry_after_seconds, frees_at - now)
            message = execution_time_message(limits)
            return m, Throttle(
                CODE_EXECUTION_TIME, message, self._start_penalty(m, now, wait, CODE_EXECUTION_TIME, message)
            )

        m.requests.append(now)
        m.in_flight += 1
        return m, None

    def finish(self, m: _Meter, started: float, now: float) -> None:
        m.in_flight -= 1
        m.executions.append((now, (now - started) * 1000.0))
        m.execution_ms += (now - started) * 1000.0

    # -- reporting ---------------------------------------------------------------------------
    def remaining(self, m: _Meter | None) -> tuple[int, float]:
        limits = self.limits
        if m is None:
            return limits.max_requests, limits.max_execution_ms / 1000.0
        return (
            max(0, limits.max_requests - len(m.requests)),
            max(0.0, limits.max_execution_ms - m.execution_ms) / 1000.0,
        )

    def usage(self) -> dict[str, dict[str, Any]]:
        """A snapshot per user (for the admin API or debugging)."""
        now = time.monotonic()
        out: dict[str, dict[str, Any]] = {}
        for user, m in self.meters.items():
            m.prune(now, self.limits.window_seconds)
            out[user] = {
                "requests": len(m.requests),
                "execution_ms": round(m.execution_ms, 3),
                "in_flight": m.in_flight,
                "penalty_seconds_left": round(max(0.0, m.penalty_until - now), 3),
                "penalty_code": m.penalty_code if m.penalty_until > now else None,
            }
        return out

    def reset(self) -> None:
        """Forget all counters and penalties (in-flight requests finish against fresh meters)."""
        self.meters.clear()
        self.pending.clear()


# -- public functions ---------------------------------------------------------------------------


def install(state: SandboxState) -> ServiceProtection:
    """Attach the counters to ``state`` and set ``state.on_injected_throttle``; idempotent."""
    protection = getattr(state, _ATTR, None)
    if protection is None:
        protection = ServiceProtection(state)
        setattr(state, _ATTR, protection)
    if state.on_injected_throttle is None:
        state.on_injected_throttle = protection.inject
    return protection


def protection_of(state: SandboxState) -> ServiceProtection:
    return install(state)


def set_limits(state: SandboxState, **changes: Any) -> ServiceProtectionLimits:
    """Change limits at run time (e.g. ``set_limits(state, max_requests=5)``); returns the new limits."""
    names = {f.name for f in dataclasses.fields(ServiceProtectionLimits)}
    unknown = set(changes) - names
    if unknown:
        raise ValueError(f"unknown service-protection limits: {sorted(unknown)}")
    state.config.limits = dataclasses.replace(state.config.limits, **changes)
    return state.config.limits


def usage(state: SandboxState) -> dict[str, dict[str, Any]]:
    return install(state).usage()


def reset(state: SandboxState) -> None:
    install(state).reset()


# -- middleware ---------------------------------------------------------------------------------


def _add_headers(protection: ServiceProtection, response: web.StreamResponse, m: _Meter | None) -> None:
    burst, seconds = protection.remaining(m)
    headers = response.headers
    headers["x-ms-dop-hint"] = str(protection.limits.dop_hint)
    headers["x-ms-ratelimit-burst-remaining-xrm-requests"] = str(burst)
    headers["x-ms-ratelimit-time-remaining-xrm-requests"] = format_seconds(seconds)
    if not any(v.startswith("ARRAffinity=") for v in headers.getall(hdrs.SET_COOKIE, [])):
        headers.add(hdrs.SET_COOKIE, f"ARRAffinity={protection.affinity}; path=/; secure; HttpOnly")


def _throttled_response(throttle: Throttle) -> web.Response:
    req_id = str(uuid.uuid4())
    return web.Response(
        status=429,
        body=json.dumps({"error": {"code": throttle.code, "message": throttle.message}}).encode(),
        headers={
            "Content-Type": "application/json; odata.metadata=minimal",
            "OData-Version": "4.0",
            "Retry-After": str(throttle.retry_after),
            "REQ_ID": req_id,
            "x-ms-service-request-id": req_id,
        },
    )


@web.middleware
async def middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    state = request.app[STATE_KEY]
    protection = install(state)
    caller = request.get(CALLER_KEY)
    user = getattr(caller, "user_id", None) if caller is not None else None
    if not user:
        # Not an authenticated API call (nothing to count against): pass through, headers only.
        return await _passthrough(protection, request, handler)

    started = time.monotonic()
    m, throttle = protection.admit(str(user), getattr(caller, "client_id", None), started)
    if throttle is not None:
        extra = request.get(LOG_EXTRA)
        if extra is not None:
            extra.update({"error_code": throttle.code, "throttled": True, "retry_after": throttle.retry_after})
        response = _throttled_response(throttle)
        _add_headers(protection, response, m)
        return response

    finished = False

    def finish() -> None:
        nonlocal finished
        if not finished:
            finished = True
            protection.finish(m, started, time.monotonic())

    try:
        try:
            response = await handler(request)
        except web.HTTPException as exc:
            await _simulated_time(state, request)
            finish()
            _add_headers(protection, exc, m)
            raise
        await _simulated_time(state, request)
        finish()
    finally:
        finish()  # cancelled (client went away) or the handler crashed
    _add_headers(protection, response, m)
    return response


async def _simulated_time(state: SandboxState, request: web.Request) -> None:
    config = state.config
    cost = request.get(COST_KEY)
    if cost is None:
        cost = request.get(OPS_KEY, 1) or 0
    delay_ms = config.request_latency_ms + cost * config.operation_ms
    if delay_ms > 0:
        await asyncio.sleep(delay_ms / 1000.0)


async def _passthrough(protection: ServiceProtection, request: web.Request, handler: Handler) -> web.StreamResponse:
    try:
        response = await handler(request)
    except web.HTTPException as exc:
        _add_headers(protection, exc, None)
        raise
    _add_headers(protection, response, None)
    return response
