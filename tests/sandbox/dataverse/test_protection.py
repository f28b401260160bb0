"""Service protection: the three limits, penalties and Retry-After, response headers, injected 429s.

Unit tests drive the counters with a fake clock; the rest runs against private sandboxes over
verified TLS with scaled-down limits (windows of a few seconds: Retry-After is whole seconds).
"""

from __future__ import annotations

import re
import threading
import time
from types import SimpleNamespace
from typing import Any

import pytest
import requests
from dvhelpers import authed_session

from sandbox import Sandbox, ServiceProtectionLimits
from sandbox.client import VerifiedSession
from sandbox.dataverse import protection
from sandbox.dataverse.protection import (
    CODE_CONCURRENCY,
    CODE_EXECUTION_TIME,
    CODE_REQUESTS,
    ServiceProtection,
    format_seconds,
)

RATE_FORMAT = re.compile(r"^\d{1,3}(,\d{3})*\.\d{2}$")
COOKIE_FORMAT = re.compile(r"^ARRAffinity=[0-9a-f]{64}; path=/; secure; HttpOnly$")


# -- unit tests ---------------------------------------------------------------------------------


def _fake_state(**limits: Any) -> Any:
    return SimpleNamespace(
        config=SimpleNamespace(limits=ServiceProtectionLimits(**limits)),
        endpoints=SimpleNamespace(org_url="https://org.example"),
        on_injected_throttle=None,
    )


def test_time_remaining_format() -> None:
    assert format_seconds(1200) == "1,200.00"
    assert format_seconds(0.5) == "0.50"
    assert format_seconds(1_234_567.891) == "1,234,567.89"
    assert format_seconds(-3) == "0.00"
    for value in (0, 0.004, 12.5, 999.999, 1200, 86_400.25):
        assert RATE_FORMAT.match(format_seconds(value))


def test_messages_follow_the_limits() -> None:
    defaults = ServiceProtectionLimits()
    assert protection.requests_message(defaults) == (
        "Number of requests exceeded the limit of 6000 over time window of 300 seconds."
    )
    assert protection.execution_time_message(defaults).startswith(
        "Combined execution time of incoming requests exceeded limit of 1,200,000 milliseconds "
        "over time window of 300 seconds. Decrease number of concurrent requests"
    )
    assert protection.concurrency_message(defaults) == "Number of concurrent requests exceeded the limit of 52."


def test_sliding_window_and_penalty_with_a_fake_clock() -> None:
    state = _fake_state(window_seconds=10, max_requests=3, retry_after_seconds=2, retry_after_max_seconds=16)
    p = ServiceProtection(state)
    for t in (0.0, 1.0, 2.0):
        meter, throttle = p.admit("u", "c", t)
        assert throttle is None
        p.finish(meter, t, t + 0.1)
    _, throttle = p.admit("u", "c", 3.0)
    assert throttle is not None and throttle.code == CODE_REQUESTS
    assert throttle.retry_after == 7  # the request at t=0 leaves the window at t=10
    _, again = p.admit("u", "c", 3.5)  # within the grace period: same end, no doubling
    assert again is not None and again.retry_after == 7
    _, extended = p.admit("u", "c", 5.0)  # keeps sending: 7 s doubles to 14 s from now
    assert extended is not None and extended.retry_after == 14
    _, capped = p.admit("u", "c", 6.5)
    assert capped is not None and capped.retry_after == 16  # capped at retry_after_max_seconds
    meter, ok = p.admit("u", "c", 6.5 + 16.01)
    assert ok is None and len(meter.requests) == 1  # 429s were never counted
    assert p.remaining(meter)[0] == 2
    # Another user is unaffected.
    assert p.admit("v", "c2", 4.0)[1] is None


def test_execution_time_and_concurrency_with_a_fake_clock() -> None:
    state = _fake_state(window_seconds=10, max_execution_ms=1000, max_concurrent=2, retry_after_seconds=1)
    p = ServiceProtection(state)
    m1, _ = p.admit("u", None, 0.0)
    m2, _ = p.admit("u", None, 0.0)
    _, throttle = p.admit("u", None, 0.1)
    assert throttle is not None and (throttle.code, throttle.retry_after) == (CODE_CONCURRENCY, 1)
    p.finish(m1, 0.0, 0.6)
    p.finish(m2, 0.0, 0.7)
    assert p.remaining(m1)[1] == pytest.approx(0.0)
    _, throttle = p.admit("u", None, 1.2)  # penalty (until 1.1) is over; 1300 ms used ≥ 1000 ms
    assert throttle is not None and throttle.code == CODE_EXECUTION_TIME
    assert throttle.retry_after == 10  # the 600 ms request leaves the window at 10.6 → 9.4 s, rounded up
    assert p.admit("u", None, 12.0)[1] is None


def test_injected_throttle_becomes_a_penalty() -> None:
    state = _fake_state(retry_after_seconds=1)
    p = protection.install(state)  # type: ignore[arg-type]
    assert state.on_injected_throttle == p.inject
    state.on_injected_throttle("client-1", 3)  # a client not seen yet: kept until it shows up
    _, throttle = p.admit("user-1", "client-1", time.monotonic())
    assert throttle is not None and throttle.code == CODE_REQUESTS and throttle.retry_after == 3


def test_set_limits_replaces_the_limits() -> None:
    state = _fake_state()
    new = protection.set_limits(state, max_requests=7, window_seconds=5)  # type: ignore[arg-type]
    assert state.config.limits is new and (new.max_requests, new.window_seconds, new.max_concurrent) == (7, 5, 52)
    with pytest.raises(ValueError, match="unknown"):
        protection.set_limits(state, max_apples=1)  # type: ignore[arg-type]


# -- over the wire ------------------------------------------------------------------------------


def _whoami(sb: Sandbox) -> str:
    return f"{sb.endpoints.web_api_url}/WhoAmI"


def _error_code(r: requests.Response) -> str:
    return r.json()["error"]["code"]


def test_headers_on_every_response(make_sandbox: Any) -> None:
    sb, _ = make_sandbox(applicants=5)
    http = authed_session(sb)
    first = http.get(_whoami(sb))
    second = http.get(_whoami(sb))
    missing = http.get(f"{sb.endpoints.web_api_url}/leads(00000000-0000-0000-0000-000000000001)")
    assert (first.status_code, second.status_code, missing.status_code) == (200, 200, 404)
    for r in (first, second, missing):
        assert r.headers["x-ms-dop-hint"] == "48"
        assert RATE_FORMAT.match(r.headers["x-ms-ratelimit-time-remaining-xrm-requests"])
        assert r.headers["x-ms-ratelimit-burst-remaining-xrm-requests"].isdigit()
        cookies = [v for k, v in r.raw.headers.items() if k.lower() == "set-cookie" and v.startswith("ARRAffinity=")]
        assert len(cookies) == 1 and COOKIE_FORMAT.match(cookies[0]), cookies
    burst = [int(r.headers["x-ms-ratelimit-burst-remaining-xrm-requests"]) for r in (first, second, missing)]
    assert burst[0] <= 5999 and burst[1] == burst[0] - 1 and burst[2] == burst[1] - 1


@pytest.mark.slow  # more than 3 s: make test runs it, make test-fast does not
def test_request_limit_penalty_extension_and_recovery(make_sandbox: Any) -> None:
    limits = ServiceProtectionLimits(window_seconds=2, max_requests=5, retry_after_seconds=1, retry_after_max_seconds=3)
    sb, admin = make_sandbox(applicants=5, limits=limits)
    http = authed_session(sb)
    assert [http.get(_whoami(sb)).status_code for _ in range(5)] == [200] * 5
    throttled = http.get(_whoami(sb))
    assert throttled.status_code == 429
    assert _error_code(throttled) == CODE_REQUESTS
    assert throttled.json()["error"]["message"] == (
        "Number of requests exceeded the limit of 5 over time window of 2 seconds."
    )
    first_ra = int(throttled.headers["Retry-After"])
    assert 1 <= first_ra <= 2
    assert throttled.headers["x-ms-ratelimit-burst-remaining-xrm-requests"] == "0"

    time.sleep(1.1)  # still inside the penalty: keep sending → the penalty is extended
    extended = http.get(_whoami(sb))
    assert extended.status_code == 429 and _error_code(extended) == CODE_REQUESTS
    ra = int(extended.headers["Retry-After"])
    assert ra == 3  # doubled from the first penalty, capped at retry_after_max_seconds

    time.sleep(ra + 0.05)
    ok = http.get(_whoami(sb))
    assert ok.status_code == 200

    entries = admin.requests(server="dataverse")
    throttled_entries = [e for e in entries if e.get("throttled")]
    assert len(throttled_entries) == 2
    assert {e["error_code"] for e in throttled_entries} == {CODE_REQUESTS}
    assert all(e["status"] == 429 and e["retry_after"] >= 1 for e in throttled_entries)


def test_execution_time_limit(make_sandbox: Any) -> None:
    limits = ServiceProtectionLimits(window_seconds=3, max_execution_ms=500, retry_after_seconds=1)
    sb, _ = make_sandbox(applicants=5, operation_ms=200, limits=limits)
    http = authed_session(sb)
    started = time.monotonic()
    statuses = [http.get(_whoami(sb)).status_code for _ in range(3)]
    assert statuses == [200, 200, 200]
    assert time.monotonic() - started >= 0.6  # the simulated server time is really awaited
    throttled = http.get(_whoami(sb))
    assert throttled.status_code == 429 and _error_code(throttled) == CODE_EXECUTION_TIME
    message = throttled.json()["error"]["message"]
    assert "exceeded limit of 500 milliseconds over time window of 3 seconds" in message
    assert 1 <= int(throttled.headers["Retry-After"]) <= 3
    assert throttled.headers["x-ms-ratelimit-time-remaining-xrm-requests"] == "0.00"


@pytest.mark.slow  # over a second (real Retry-After waits, sleeps or a subprocess): make test runs it
def test_concurrency_limit(make_sandbox: Any) -> None:
    limits = ServiceProtectionLimits(
        window_seconds=5, max_concurrent=2, retry_after_seconds=1, retry_after_max_seconds=2
    )
    sb, _ = make_sandbox(applicants=5, request_latency_ms=700, limits=limits)
    sessions = [authed_session(sb) for _ in range(6)]
    barrier = threading.Barrier(len(sessions))
    results: list[requests.Response] = []
    lock = threading.Lock()

    def call(s: VerifiedSession) -> None:
        barrier.wait()
        r = s.get(_whoami(sb))
        with lock:
            results.append(r)

    threads = [threading.Thread(target=call, args=(s,)) for s in sessions]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    ok = [r for r in results if r.status_code == 200]
    throttled = [r for r in results if r.status_code == 429]
    assert len(ok) == 2 and len(throttled) == 4
    for r in throttled:
        assert _error_code(r) == CODE_CONCURRENCY
        assert r.json()["error"]["message"] == "Number of concurrent requests exceeded the limit of 2."
        assert int(r.headers["Retry-After"]) >= 1
    time.sleep(max(int(r.headers["Retry-After"]) for r in throttled) + 0.05)
    assert sessions[0].get(_whoami(sb)).status_code == 200


@pytest.mark.slow  # over a second (real Retry-After waits, sleeps or a subprocess): make test runs it
def test_fault_injected_429_is_enforced_as_a_penalty(make_sandbox: Any) -> None:
    sb, admin = make_sandbox(applicants=5)
    http = authed_session(sb)
    assert http.get(_whoami(sb)).status_code == 200
    admin.add_fault(kind="status", status=429, server="dataverse", nth=1, retry_after=2)
    injected = http.get(_whoami(sb))
    assert injected.status_code == 429 and injected.headers["Retry-After"] == "2"
    retry = http.get(_whoami(sb))  # a client that ignores Retry-After
    assert retry.status_code == 429 and _error_code(retry) == CODE_REQUESTS
    ra = int(retry.headers["Retry-After"])
    assert 1 <= ra <= 2
    time.sleep(ra + 0.05)
    assert http.get(_whoami(sb)).status_code == 200


def test_batch_is_one_request_but_accrues_all_operations(make_sandbox: Any) -> None:
    limits = ServiceProtectionLimits(window_seconds=5, max_requests=3)
    sb, admin = make_sandbox(applicants=5, operation_ms=100, limits=limits)
    http = authed_session(sb)
    boundary = "batch_protection"
    part = f"--{boundary}\r\nContent-Type: application/http\r\nContent-Transfer-Encoding: binary\r\n\r\n"
    body = "".join(f"{part}GET /api/data/v9.2/WhoAmI HTTP/1.1\r\n\r\n\r\n" for _ in range(4)) + f"--{boundary}--\r\n"
    started = time.monotonic()
    r = http.post(
        f"{sb.endpoints.web_api_url}/$batch",
        data=body.encode(),
        headers={"Content-Type": f'multipart/mixed; boundary="{boundary}"'},
    )
    elapsed = time.monotonic() - started
    assert r.status_code == 200, r.text
    assert elapsed >= 0.4  # 4 operations x 100 ms of simulated server time
    assert r.headers["x-ms-ratelimit-burst-remaining-xrm-requests"] == "2"
    entry = [e for e in admin.requests(server="dataverse") if e["path"].endswith("$batch")][-1]
    assert entry["ops"] == 4 and entry["part_statuses"] == [200, 200, 200, 200]
