"""The shared throttle on a fake clock: Retry-After pause, AIMD concurrency, budget pacing, settings."""

from __future__ import annotations

import random
import threading
from collections.abc import Callable

import pytest

from d365.hooks.dynamics import DynamicsHook
from d365.hooks.throttle import Throttle, ThrottleSettings
from sandbox import Sandbox


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
    base = {"jitter_seconds": (0.0, 0.0), "max_concurrency": 4, "increase_every": 2}
    base.update(settings)
    return Throttle(ThrottleSettings(**base), clock=clock, sleep=clock.sleep, wall=clock, rng=random.Random(1))  # type: ignore[arg-type]


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
    t = Throttle(ThrottleSettings(max_concurrency=2))
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
    t = Throttle(ThrottleSettings(max_concurrency=16))
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
    assert t.usage()["execution_ms"] == pytest.approx(4000.0)
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
    t = make(clock, window_seconds=10.0)
    a = t.acquire()
    clock.now += 2.0
    t.release(a, 429, retry_after=0.0)
    b = t.acquire()
    clock.now += 2.0
    t.release(b, None)  # no answer: it may have run on the server
    assert t.usage()["requests"] == 1 and t.usage()["execution_ms"] == pytest.approx(2000.0)


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
