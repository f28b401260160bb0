"""The throttle's concurrency bounds and pacing on a fake clock, driven by synthetic servers: slow start, the latency
bound at a saturating server's knee, the budget bound only while the budgets bind, slide-out credit, spacing, and
a long load that stays inside its budgets while using most of them. No sleeps, no timing asserts."""

from __future__ import annotations

import heapq
import itertools
import math
import random
from collections.abc import Callable
from dataclasses import dataclass, field, replace

import pytest

from d365.hooks.throttle import MAX_CONCURRENT_REQUESTS, SPACING_BURST, Throttle, ThrottleSettings, Ticket


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def make(clock: FakeClock, **settings: object) -> Throttle:
    base: dict[str, object] = {"jitter_seconds": (0.0, 0.0), "max_concurrency": 16}
    base.update(settings)
    return Throttle(ThrottleSettings(**base), clock=clock, sleep=lambda s: None, wall=clock)  # type: ignore[arg-type]


# Budgets that never bind (the latency bound alone is under test).
ROOMY = {"window_seconds": 10.0, "max_requests": 10**9, "max_execution_ms": 1e15}
# The load benchmark's scaled limits: 40 000 ms and 200 requests per 10 s.
SCALED = {"window_seconds": 10.0, "max_requests": 200, "max_execution_ms": 40_000.0}


@dataclass
class Run:
    """What a driven load did: per admission (time, in flight after it), per answer (time, elapsed ms)."""

    admissions: list[tuple[float, int]] = field(default_factory=list)
    answers: list[tuple[float, float]] = field(default_factory=list)
    limits: list[int] = field(default_factory=list)  # the latency bound after each answer


def drive(
    t: Throttle,
    clock: FakeClock,
    latency_ms: Callable[[int], float],
    *,
    seconds: float,
    workers: int = 16,
    demand_until: float | None = None,
) -> Run:
    """``workers`` senders that always have a request ready (until ``demand_until``) against a server that answers
    a request admitted with ``k`` in flight after ``latency_ms(k)``; the clock jumps from event to event."""
    run = Run()
    end = clock.now + seconds
    stop = clock.now + demand_until if demand_until is not None else end
    due: list[tuple[float, int, Ticket]] = []
    while clock.now < end:
        wait = 1.0
        if clock.now < stop and t.in_flight < workers:
            gate = t.try_acquire()
            if isinstance(gate, Ticket):
                run.admissions.append((clock.now, t.in_flight))
                heapq.heappush(due, (clock.now + latency_ms(t.in_flight) / 1000.0, gate.id, gate))
                continue
            reason, wait = gate
            if reason == "concurrency":
                wait = math.inf  # the next answer frees a slot
        clock.now = max(min(end, due[0][0] if due else math.inf, clock.now + wait), clock.now + 1e-6)
        while due and due[0][0] <= clock.now:
            answered, _, ticket = heapq.heappop(due)
            t.release(ticket, 200)
            run.answers.append((answered, (answered - ticket.started) * 1000.0))
            run.limits.append(t.latency_limit)
    return run


def window_sums(answers: list[tuple[float, float]], window: float) -> list[tuple[float, float, int]]:
    """(time, execution ms, requests) answered within the window ending at each answer."""
    out = []
    for i, (at, _) in enumerate(answers):
        inside = [ms for when, ms in answers[: i + 1] if when > at - window]
        out.append((at, sum(inside), len(inside)))
    return out


def test_slow_start_ramps_from_the_initial_concurrency_to_the_cap_while_latency_stays_flat() -> None:
    clock = FakeClock()
    t = make(clock, **ROOMY)
    assert t.concurrency == 4  # initial_concurrency
    run = drive(t, clock, lambda k: 400.0, seconds=20)
    ramp = sorted(set(run.limits))
    # one step at a time until the efficiency is known, then doubling while it stays high
    assert ramp[0] == 4 and ramp[-1] == 16 == t.latency_limit == t.concurrency
    assert any(b == 2 * a for a, b in itertools.pairwise(ramp))
    assert t.stats["latency_decreases"] == 0 and t.stats["peak_in_flight"] == 16


def test_the_latency_bound_settles_at_the_knee_of_a_saturating_server() -> None:
    # Four requests at a time are served in 400 ms; every further one only queues (the time grows with the count).
    clock = FakeClock()
    t = make(clock, **ROOMY)
    run = drive(t, clock, lambda k: 400.0 * max(1.0, k / 4), seconds=120)
    settled = run.limits[3 * len(run.limits) // 4 :]
    assert set(settled) <= {4, 5} and t.stats["latency_decreases"] >= 1
    assert t.efficiency() is not None
    # the throughput of the last 30 s is within 10 % of what the server can give (4 per 400 ms)
    last = [at for at, _ in run.answers if at >= clock.now - 30]
    assert len(last) / 30 >= 0.9 * 10.0


def answer_together(t: Throttle, clock: FakeClock, level: int, ms: float) -> None:
    """``level`` requests sent together and answered together after ``ms``: each is filed under ``level``."""
    tickets = [t.acquire() for _ in range(level)]
    clock.now += ms / 1000.0
    for ticket in tickets:
        t.release(ticket, 200)


def test_efficiency_compares_the_lowest_level_with_the_highest_within_the_bound() -> None:
    clock = FakeClock()
    t = make(clock, slow_start=False, latency_min_samples=1, increase_every=1000)
    assert t.efficiency() is None  # nothing known yet
    for level, ms in ((1, 400.0), (4, 500.0), (8, 1000.0)):
        answer_together(t, clock, level, ms)
    assert [t.level_latency(level) for level in (1, 4, 8)] == pytest.approx([400.0, 500.0, 1000.0])
    # average, 1 to 8: 8 requests give 8 per 1 000 ms against 1 per 400 ms: (8 · 400 / 1 000 − 1) / 7 = 0.31;
    # marginal, 4 to 8: (8 / 1 000 − 4 / 500) · 400 / 4 = 0: the last four only queued
    assert t.efficiency() == pytest.approx(((8 * 400 / 1000 - 1) / 7, 0.0))
    t.configure(replace(t.settings, max_concurrency=4))  # the bound (the cap now) leaves level 8 out
    assert t.latency_limit == 4 and t.efficiency() == pytest.approx(((4 * 400 / 500 - 1) / 3,) * 2)


def test_a_hooks_quick_set_up_calls_do_not_pass_for_an_idle_server() -> None:
    # tenant discovery and WhoAmI answer in 14-20 ms; the load's $batch requests take 450 ms
    clock = FakeClock()
    t = make(clock, slow_start=False, latency_min_samples=2, increase_every=1000)
    for ms in (20.0, 14.0, 450.0, 460.0):
        answer_together(t, clock, 1, ms)
    for _ in range(3):
        answer_together(t, clock, 4, 500.0)
    assert t.level_latency(1) == pytest.approx(455.0)  # not (20 + 450) / 2
    assert t.level_latency(4) == pytest.approx(500.0)


def test_a_request_is_filed_under_the_mean_number_in_flight_while_it_ran() -> None:
    clock = FakeClock()
    t = make(clock, slow_start=False, latency_min_samples=1, increase_every=1000)
    a = t.acquire()
    clock.now += 0.5
    b = t.acquire()  # a ran alone for 0.5 s, then with b for 0.5 s: 1.5 on average
    clock.now += 0.5
    t.release(a, 200)
    clock.now += 1.0
    t.release(b, 200)  # b: with a for 0.5 s, alone for 1.0 s: 1.33
    assert t.level_latency(2) == pytest.approx(1000.0) and t.level_latency(1) == pytest.approx(1500.0)


def test_the_budget_bound_applies_only_while_the_budgets_bind() -> None:
    clock = FakeClock()
    t = make(clock, slow_start=False, **SCALED)
    # 40 000 ms per 10 s at 95 %: 3.8 requests in flight on average; with 25 % headroom: 5
    assert t.budget_limit() == 5 and t.concurrency == 16
    run = drive(t, clock, lambda k: 400.0, seconds=40, demand_until=30)
    in_flight_late = [n for at, n in run.admissions if at > 1015]
    assert in_flight_late and max(in_flight_late) <= 5  # the budgets bind: no more than they sustain
    assert max(n for _, n in run.admissions) == 16  # the empty window at the start was used at full concurrency
    clock.now += 10.0  # a whole window without pacing: the bound no longer applies
    assert t.concurrency == 16


def test_the_request_budget_binds_for_short_requests() -> None:
    clock = FakeClock()
    t = make(clock, slow_start=False, **SCALED)
    drive(t, clock, lambda k: 50.0, seconds=5)
    # 200 requests per 10 s at 95 %: 19 per second, of 50 ms each: one in flight on average, two with headroom
    assert t.budget_limit() == 2


@pytest.mark.parametrize("latency", [lambda k: 400.0, lambda k: 445.0 + 25.0 * (k - 1)], ids=["flat", "queueing"])
def test_a_long_load_stays_inside_the_budgets_and_uses_most_of_them(latency: Callable[[int], float]) -> None:
    clock = FakeClock()
    t = make(clock, **SCALED)
    rng = random.Random(7)
    run = drive(t, clock, lambda k: latency(k) * rng.uniform(0.95, 1.05), seconds=120)
    sums = window_sums(run.answers, 10.0)
    allowed_ms, allowed_requests = 40_000.0 * 0.95, 200 * 0.95
    # never more than the server's limits in any window (estimates of in-flight costs may err a little)
    assert max(ms for _, ms, _ in sums) <= 40_000.0 and max(n for _, _, n in sums) <= allowed_requests
    # after the first windows, the window holds at least 95.5 % of the allowed execution time on average
    steady = [ms for at, ms, _ in sums if at > 1030]
    assert sum(steady) / len(steady) >= 0.955 * allowed_ms
    assert max(ms for _, ms, _ in sums) <= allowed_ms * 1.01
    # while the budgets bind, the latency bound never takes away concurrency the budgets sustain
    assert min(bound for (at, _), bound in zip(run.answers, run.limits, strict=True) if at > 1030) >= 5
    assert t.concurrency == t.budget_limit() == 5


def test_slide_out_is_credited_while_the_new_request_runs() -> None:
    clock = FakeClock()
    t = make(clock, slow_start=False, window_seconds=10.0, max_execution_ms=3000.0, safety_margin=1.0)
    a = t.acquire()
    clock.now = 1001.0
    t.release(a, 200)  # 1 000 ms, leaves the window at 1011
    clock.now = 1009.5
    b = t.acquire()
    clock.now = 1010.5
    t.release(b, 200)  # 1 000 ms, leaves at 1020.5
    clock.now = 1010.6
    t.acquire()  # in flight, expected back at 1011.6
    # Reserving every cost against today's window: 2 000 + 2 × 1 000 > 3 000. But a's 1 000 ms leave at 1011,
    # before the in-flight request and the new one (expected back at 1011.6) can add theirs: the peak is 3 000.
    assert t.budget_delay(clock.now) == 0.0
    with t._cond:
        assert t.peak_execution_ms(clock.now) == pytest.approx(3000.0)
    t.configure(replace(t.settings, max_execution_ms=2999.0))
    # with 1 ms less, the next moment that leaves room is when b leaves the window
    assert t.budget_delay(clock.now) == pytest.approx(1020.5 - 1010.6)


def test_while_the_budgets_bind_admissions_are_spaced_at_the_budget_rate() -> None:
    clock = FakeClock()
    t = make(clock, slow_start=False, **SCALED)
    run = drive(t, clock, lambda k: 400.0, seconds=60)
    # 38 000 ms per 10 s at 400 ms a request: 9.5 requests a second
    rate = 40_000.0 * 0.95 / 10.0 / 400.0
    late = [at for at, _ in run.admissions if at > 1020]
    for i, start in enumerate(late):
        within_a_second = sum(1 for at in late[i:] if at < start + 1.0)
        assert within_a_second <= math.ceil(rate + SPACING_BURST)
    assert t.stats["admitted"] == len(run.admissions)


def test_the_cap_never_exceeds_dataverses_52_concurrent_requests() -> None:
    t = Throttle(ThrottleSettings(max_concurrency=64, slow_start=False))
    assert t.cap == MAX_CONCURRENT_REQUESTS == 52 and t.concurrency == 52
    t.configure(dop_hint=100)
    assert t.cap == 52
    t.configure(dop_hint=8)
    assert t.cap == 8 and t.concurrency == 8


def test_a_429_still_halves_whatever_the_other_bounds_say() -> None:
    clock = FakeClock()
    t = make(clock, slow_start=False)
    tickets = [t.acquire() for _ in range(8)]
    clock.now += 0.2
    t.release(tickets[0], 429, retry_after=1.0)
    assert t.limit == 8 and t.concurrency == 8
    assert t.try_acquire()[0] == "retry_after"  # type: ignore[index]


def test_slow_start_and_the_initial_concurrency_come_from_extras_too() -> None:
    s = ThrottleSettings().updated({"slow_start": "false", "initial_concurrency": "2"})
    assert (s.slow_start, s.initial_concurrency) == (False, 2)
    assert ThrottleSettings().updated({"slow_start": "true"}).slow_start is True
    assert Throttle(ThrottleSettings(initial_concurrency=2)).concurrency == 2


@pytest.mark.parametrize(
    "bad",
    [
        {"latency_shrink_efficiency": 0.9, "latency_grow_efficiency": 0.8},
        {"latency_shrink_efficiency": -0.1},
        {"budget_headroom": 0.5},
        {"latency_min_samples": 0},
        {"latency_min_samples": 10, "latency_samples": 9},
        {"initial_concurrency": 0},
    ],
)
def test_settings_refuse_nonsense(bad: dict[str, float]) -> None:
    with pytest.raises(ValueError):
        ThrottleSettings(**bad)  # type: ignore[arg-type]
