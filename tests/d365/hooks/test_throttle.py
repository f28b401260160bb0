"""The shared throttle on a fake clock: Retry-After pause, AIMD concurrency, budget pacing, settings; Retry-After
parsing (capped, nonsense handled) and both hooks bounded by the cap against the sandbox."""

from __future__ import annotations

import json
import random
import threading
import time
from collections.abc import Callable
from dataclasses import replace
from datetime import UTC, datetime
from typing import Any

import pytest

from d365.hooks.dreamapply import DreamApplyHook
from d365.hooks.dynamics import DynamicsHook
from d365.hooks.errors import parse_retry_after
from d365.hooks.throttle import (
    RETRY_AFTER_MAX_SECONDS,
    RETRY_AFTER_PAST_SECONDS,
    Throttle,
    ThrottleSettings,
    retry_after_seconds,
)
from sandbox import Sandbox
from sandbox.client import SandboxClient, airflow_connections


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0
        self.slept: list[float] = []

    def __call__(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.slept.append(seconds)
        self.now += seconds


def make(clock: FakeClock, **settings: object) -> Throttle:
    """A throttle on the fake clock; without slow start unless asked (most tests hold several requests at once)."""
    base = {"jitter_seconds": (0.0, 0.0), "max_concurrency": 4, "increase_every": 2, "slow_start": False}
    base.update(settings)
    return Throttle(ThrottleSettings(**base), clock=clock, sleep=clock.sleep, wall=clock, rng=random.Random(1))  # type: ignore[arg-type]


def admits_now(t: Throttle, clock: FakeClock, **budgets: float) -> bool:
    """Whether one more request fits the window now under these budgets: the window's contents seen the way
    ``acquire`` sees them (``budget_delay``); the budgets stay changed."""
    t.configure(replace(t.settings, **budgets))
    return t.budget_delay(clock.now) == 0.0


def test_429_pauses_every_sender_for_the_retry_after_counted_from_when_it_was_seen() -> None:
    clock = FakeClock()
    t = make(clock)
    a, b = t.acquire(), t.acquire()
    clock.now += 0.5
    t.release(a, 429, retry_after=3.0)
    seen = clock.now
    t.release(b, 200)  # already on the wire: answered normally
    c = t.acquire()
    assert c.started >= seen + 3.0 and c.waited >= 3.0 and t.stats["retry_after_waits"] == 1
    assert t.stats["throttled_429"] == 1 and t.paused_for() == 0


def test_a_later_429_extends_the_pause_never_shortens_it() -> None:
    clock = FakeClock()
    t = make(clock)
    a, b = t.acquire(), t.acquire()
    t.release(a, 429, retry_after=10.0)
    t.release(b, 429, retry_after=2.0)
    assert t.paused_for() == pytest.approx(10.0)


def test_aimd_halves_once_per_round_and_grows_back_by_one_per_n_successes() -> None:
    clock = FakeClock()
    t = make(clock, max_concurrency=8, increase_every=2)
    tickets = [t.acquire() for _ in range(4)]
    assert t.limit == 8
    clock.now += 0.1
    t.release(tickets[0], 429, retry_after=1.0)
    assert t.limit == 4
    t.release(tickets[1], 429, retry_after=1.0)  # sent before the decrease: an echo, no second halving
    assert t.limit == 4
    t.release(tickets[2], 200)
    t.release(tickets[3], 200)
    assert t.limit == 5 and t.stats["concurrency_increases"] == 1
    late = t.acquire()  # after the pause
    t.release(late, 429, retry_after=1.0)  # a new round: halves again
    assert t.limit == 2 and t.stats["concurrency_decreases"] == 2 and t.stats["min_concurrency"] == 2
    for _ in range(20):
        t.release(t.acquire(), 204)
    assert t.limit == 8  # back to the cap, never above


def test_concurrency_limit_blocks_until_a_slot_is_released() -> None:
    t = Throttle(ThrottleSettings(max_concurrency=2, slow_start=False))
    held = [t.acquire(), t.acquire()]
    got = threading.Event()

    def third() -> None:
        t.release(t.acquire(), 200)
        got.set()

    worker = threading.Thread(target=third)
    worker.start()
    assert not got.wait(0.2)
    t.release(held[0], 200)
    assert got.wait(2.0)
    worker.join()
    t.release(held[1], 200)
    assert t.stats["peak_in_flight"] == 2 and t.stats["concurrency_waits"] >= 1


def test_dop_hint_caps_concurrency_below_the_configured_maximum() -> None:
    t = Throttle(ThrottleSettings(max_concurrency=16, slow_start=False))
    t.configure(dop_hint=4)
    assert (t.cap, t.limit) == (4, 4)
    t.configure(dop_hint=48)
    assert (t.cap, t.limit) == (16, 16)


def test_execution_time_budget_delays_before_the_server_would_throttle() -> None:
    clock = FakeClock()
    # 10 s window, 4 000 ms budget at 100 %: four 1 000 ms requests fill it.
    t = make(clock, window_seconds=10.0, max_execution_ms=4000.0, safety_margin=1.0, max_requests=1000)
    for _ in range(4):
        ticket = t.acquire()
        clock.now += 1.0
        t.release(ticket, 200)
    # the window holds 4 × 1 000 ms: one more (estimated at 1 000 ms) fits 5 000 ms, not 4 999 ms
    assert admits_now(t, clock, max_execution_ms=5000.0) and not admits_now(t, clock, max_execution_ms=4999.0)
    t.configure(replace(t.settings, max_execution_ms=4000.0))
    first_answer = 1001.0
    ticket = t.acquire()  # waits until the first answer's 1 000 ms leaves the window
    assert ticket.started >= first_answer + 10.0
    assert t.stats["pacing_waits"] >= 1 and t.stats["throttled_429"] == 0


def test_in_flight_requests_count_at_the_estimated_cost() -> None:
    clock = FakeClock()
    t = make(clock, window_seconds=10.0, max_execution_ms=3000.0, safety_margin=1.0, max_concurrency=8)
    ticket = t.acquire()
    clock.now += 1.0
    t.release(ticket, 200)  # estimate: 1 000 ms; window holds 1 000 ms
    assert t.budget_delay(clock.now) == 0.0
    t.acquire()  # in flight: 1 000 + 1 000 + the next 1 000 = budget
    assert t.budget_delay(clock.now) == 0.0
    t.acquire()
    assert t.budget_delay(clock.now) > 0  # a fourth would exceed it


def test_request_count_budget_with_margin() -> None:
    clock = FakeClock()
    t = make(clock, window_seconds=10.0, max_requests=10, safety_margin=0.5, max_execution_ms=1e9)
    for _ in range(5):
        t.release(t.acquire(), 200)
        clock.now += 0.1
    assert t.budget_delay(clock.now) == pytest.approx(10.0 - 0.5, abs=0.01)
    clock.now += 10.0
    assert t.budget_delay(clock.now) == 0.0


def test_429s_are_not_counted_against_the_budgets_but_timeouts_are() -> None:
    clock = FakeClock()
    t = make(clock, window_seconds=10.0, safety_margin=1.0)
    a = t.acquire()
    clock.now += 2.0
    t.release(a, 429, retry_after=0.0)
    b = t.acquire()
    clock.now += 2.0
    t.release(b, None)  # no answer: it may have run on the server
    # one request in the window (the timeout): room for one more under a budget of 2, none under a budget of 1
    assert admits_now(t, clock, max_requests=2) and not admits_now(t, clock, max_requests=1)
    # its 2 000 ms count (+ the 1 000 ms estimate for the next): fits 3 000 ms, not 2 999 ms
    assert admits_now(t, clock, max_requests=1000, max_execution_ms=3000.0)
    assert not admits_now(t, clock, max_execution_ms=2999.0)


def test_settings_from_extras_and_overrides() -> None:
    s = ThrottleSettings().updated(
        {"throttle_window_seconds": "60", "throttle_max_execution_ms": 240000, "max_concurrency": 8, "other": 1}
    )
    assert (s.window_seconds, s.max_execution_ms, s.max_concurrency, s.max_requests) == (60.0, 240000.0, 8, 6000)
    assert s.updated({"safety_margin": 0.8}).safety_margin == 0.8
    with pytest.raises(ValueError):
        ThrottleSettings(safety_margin=1.5)


def test_snapshot_reports_waits_and_budgets() -> None:
    clock = FakeClock()
    t = make(clock)
    t.release(t.acquire(), 429, retry_after=1.0)
    t.release(t.acquire(), 200)
    snap = t.snapshot()
    assert snap["throttled_429"] == 1 and snap["retry_after_wait_seconds"] >= 1.0
    assert snap["max_execution_ms"] == 1_200_000.0 and snap["concurrency_cap"] == 4


def test_hook_reads_throttle_budgets_from_connection_extras_and_caps_by_dop_hint(
    sandbox: Sandbox, make_dynamics_hook: Callable[..., DynamicsHook]
) -> None:
    hook = make_dynamics_hook(
        sandbox.info(), extra_throttle_max_requests=1200, extra_throttle_window_seconds=60, extra_max_concurrency=64
    )
    hook.whoami()
    s = hook.throttle.settings
    assert (s.max_requests, s.window_seconds, s.max_execution_ms) == (1200, 60.0, 1_200_000.0)
    assert hook.throttle.cap == 48 == hook.dop_hint  # min(x-ms-dop-hint, max_concurrency)
    override = make_dynamics_hook(
        sandbox.info(), extra_max_concurrency=64, hook_kwargs={"throttle": {"max_concurrency": 3}}
    )
    override.whoami()
    assert override.throttle.cap == 3 and override.throttle.stats["admitted"] >= 1


# -- Retry-After: one reading for every hook, capped, nonsense handled -----------------------------------------
NOW = datetime(2026, 3, 1, 12, 0, 0, tzinfo=UTC)


@pytest.mark.parametrize(
    ("header", "expected"),
    [
        ("7", 7.0),
        (" 2.5 ", 2.5),
        ("0", 0.0),
        ("1e9", 300.0),  # huge: the cap
        ("inf", 300.0),
        ("Infinity", 300.0),
        ("-5", RETRY_AFTER_PAST_SECONDS),  # negative: retry soon, not in a tight loop
        ("-inf", RETRY_AFTER_PAST_SECONDS),
        ("nan", 4.0),  # unreadable: the caller's default backoff
        ("soon", 4.0),
        ("", 4.0),
        (None, 4.0),
        ("Wed, 21 Oct 2015 07:28:00 GMT", RETRY_AFTER_PAST_SECONDS),  # a date in the past
        ("Sun, 01 Mar 2026 12:00:30 GMT", 30.0),  # a date 30 s ahead
        ("Mon, 01 Mar 2027 12:00:00 GMT", 300.0),  # a date a year ahead: the cap
        ("Xyz, 99 Foo 2026 99:99:99 GMT", 4.0),
    ],
)
def test_retry_after_values_are_bounded(header: str | None, expected: float) -> None:
    assert retry_after_seconds(header, default=4.0, now=NOW) == pytest.approx(expected)


def test_retry_after_cap_and_default_are_the_callers() -> None:
    assert retry_after_seconds("1e9", default=4.0, cap=0.5) == 0.5
    assert retry_after_seconds(None, default=4.0, cap=0.5) == 0.5  # the default never exceeds the cap either
    assert retry_after_seconds("-1", default=4.0, cap=0.5) == 0.5  # nor the "past" backoff
    assert retry_after_seconds("x", default=None) is None  # None: the caller's own backoff decides
    assert parse_retry_after("1e9", 5.0) == RETRY_AFTER_MAX_SECONDS == 300.0
    assert parse_retry_after("1e9", 5.0, cap=12.0) == 12.0
    assert parse_retry_after("garbage", 5.0) == 5.0


def test_the_throttle_never_pauses_longer_than_its_cap() -> None:
    clock = FakeClock()
    t = make(clock, retry_after_max_seconds=2.0)
    t.release(t.acquire(), 429, retry_after=1e9)
    assert t.paused_for() == pytest.approx(2.0)
    t.release(t.acquire(), 429, retry_after=float("nan"))
    assert t.paused_for() == 0.0
    assert ThrottleSettings().updated({"retry_after_max_seconds": "45"}).retry_after_max_seconds == 45.0
    with pytest.raises(ValueError):
        ThrottleSettings(retry_after_max_seconds=float("inf"))


def _retry_after_faults(client: SandboxClient, rule_id: int) -> dict[str, Any]:
    return next(r for r in client.get("/faults")["rules"] if r["id"] == rule_id)


def test_dataverse_429_with_retry_after_1e9_waits_only_the_connection_cap(
    dynamics_private: Callable[..., tuple[DynamicsHook, SandboxClient]],
    monkeypatch: pytest.MonkeyPatch,
    capfd: pytest.CaptureFixture[str],
) -> None:
    hook, client = dynamics_private()
    info = hook.get_connection(hook.dynamics365_conn_id)
    extra = {**info.extra_dejson, "retry_after_max_seconds": 0.5}
    conn = {"conn_type": "dynamics365", "host": info.host, "login": info.login, "password": info.password}
    monkeypatch.setenv("AIRFLOW_CONN_DYNAMICS365_DEFAULT", json.dumps({**conn, "extra": extra}))
    hook = DynamicsHook()
    try:
        hook.whoami()
        rule = client.add_fault(
            kind="status", server="dataverse", path="WhoAmI", status=429, retry_after="1e9", times=1
        )
        seq = client.last_seq()
        started = time.monotonic()
        assert hook.whoami()["UserId"]
        elapsed = time.monotonic() - started
    finally:
        hook.close()
    assert _retry_after_faults(client, rule["id"])["fired"] == 1
    statuses = [(e["status"], e.get("retry_after")) for e in client.requests(server="dataverse", since=seq)]
    assert statuses == [(429, 1e9), (200, None)]
    assert hook.throttle.settings.retry_after_max_seconds == 0.5
    assert hook.throttle.stats["retry_after_wait_seconds"] <= 0.5 + 0.25  # the cap plus the jitter
    assert 0.5 <= elapsed < 5.0
    out = capfd.readouterr()
    throttled = [line for line in (out.out + out.err).splitlines() if "throttled (" in line]
    assert throttled and all("Retry-After 0.5 s" in line for line in throttled)  # the wait that applies, logged


def test_dreamapply_429_with_retry_after_1e9_waits_only_the_connection_cap(
    sandbox: Sandbox, monkeypatch: pytest.MonkeyPatch
) -> None:
    info = sandbox.info()
    client = SandboxClient(info)
    conn = airflow_connections(info)["AIRFLOW_CONN_DREAMAPPLY_DEFAULT"]
    conn["extra"]["retry_after_max_seconds"] = 0.4
    monkeypatch.setenv("AIRFLOW_CONN_DREAMAPPLY_DEFAULT", json.dumps(conn))
    hook = DreamApplyHook(retry_wait_min=30.0, retry_wait_max=60.0)  # the exponential backoff would take 30 s
    rule = client.add_fault(
        kind="status", server="dreamapply", path="/api/v9/academic-years", status=429, retry_after="1e9", times=1
    )
    try:
        started = time.monotonic()
        assert hook.get_collection("/academic-years")
        elapsed = time.monotonic() - started
        assert _retry_after_faults(client, rule["id"])["fired"] == 1
    finally:
        client.clear_faults()
        hook.close()
    assert hook.stats["throttled"] == 1 and hook.stats["retries"] == 1
    assert hook.stats["backoff_seconds"] == pytest.approx(0.4)
    assert 0.4 <= elapsed < 5.0
