"""One client-side throttle shared by every worker thread of a ``DynamicsHook`` (reference §7).

Dataverse counts its service-protection limits per user over a sliding window (defaults: 6 000 requests and
1 200 000 ms of execution time per 300 s, 52 concurrent requests). All threads of one hook are one user, so
they share one throttle, and every request passes its gate (``acquire`` before sending, ``release`` with the
answer). The gate has three parts:

1. **Retry-After pause.** A 429 stops every sender: no request is admitted until the ``Retry-After`` has run
   out (counted from the moment the client learned of the 429, which is after the server answered it), plus
   a little jitter per thread so they do not all resume at once. Learning of a 429 and admitting a request
   happen under the same lock, so a request admitted after the 429 was seen never starts inside its window;
   only requests already on the wire when the 429 arrived can.
2. **Concurrency.** At most ``concurrency`` requests are in flight: the smallest of four bounds.

   * ``cap``: ``min(x-ms-dop-hint, max_concurrency, 52)`` (52: Dataverse's documented per-user limit).
   * ``limit`` (AIMD on 429s): starts at the cap, halves on a 429 (once per round: a 429 for a request sent
     before the previous decrease does not halve again) and grows by one after every ``increase_every``
     successful answers, back up to the cap.
   * ``latency_limit`` (queueing) and ``budget_limit`` (what the budgets sustain, once they bind): how each
     is learned and bounded is told in ``throttle_settings`` beside the settings that steer them.
3. **Proactive pacing.** The client keeps its own sliding window of what it sent: the answered requests and
   their client-measured elapsed time (which is never less than the server's execution time for them).
   Entries are stamped when the answer arrives (later than the server's stamps), so the client's window always
   frees later than the server's: the pacing errs on the safe side.

   * Requests: admitted only while ``count + in_flight + 1 <= max_requests * margin``.
   * Execution time: admitted only while the window can never hold more than ``max_execution_ms * margin``
     until the new request is expected back (``peak_execution_ms``): at each moment it holds the answered
     entries not yet slid out plus every request in flight (and the new one) at what it has run so far, up to
     its expected cost (the running estimate, an exponentially weighted average of recent elapsed times, or its
     age if it has already run longer). What slides out while the requests run is credited: reserving each
     in-flight request's whole cost against the window as it is now (the rule before) kept the window short of
     the budget by about one request's cost per request in flight.
   * Spacing: while the budgets bind, admissions are spaced at the budgets' own rates (``margin · E / W`` ms
     of execution time and ``margin · R / W`` requests per second, at most ``SPACING_BURST`` requests' worth at
     once, trued up with each answer's real time). Without it, budget freed by a burst of answers is taken by
     a burst of requests one window later, the window fills and empties in waves, and the waves waste budget.

   Otherwise the sender sleeps until the window or the spacing has room. So a long load settles at the
   execution-time (or request) budget instead of running into 429s.

Budgets, window, margin and cap are configurable (connection extras or operator arguments), because the
documented defaults "may vary between environments". ``clock``/``sleep`` are injectable for tests, and
``try_acquire`` passes the gate once without waiting (a caller that schedules its own waits, or a test that drives
the throttle with synthetic latencies).

Settings, the ``Ticket`` and the reading of ``Retry-After`` headers live in ``throttle_settings``.
"""

from __future__ import annotations

import itertools
import math
import random
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable
from typing import Any

from d365.hooks.throttle_settings import (
    RETRY_AFTER_MAX_SECONDS,
    RETRY_AFTER_PAST_SECONDS,
    ThrottleSettings,
    Ticket,
    retry_after_seconds,
)

__all__ = [
    "RETRY_AFTER_MAX_SECONDS",
    "RETRY_AFTER_PAST_SECONDS",
    "Throttle",
    "ThrottleSettings",
    "Ticket",
    "retry_after_seconds",
]

THROTTLED = 429
# Dataverse's documented limit of concurrent requests per user: no setting or hint lets the throttle exceed it.
MAX_CONCURRENT_REQUESTS = 52
# Answered entries whose leaving the window pacing tries as the next moment to admit (the rest: the next round).
PACING_SEARCH = 64
# While the budgets bind, admissions are spaced at the budget's rate with at most this many requests' worth of burst.
SPACING_BURST = 2.0
# Spacing waits shorter than this are not worth a sleep (and rounding must not make a sender spin).
SPACING_RESOLUTION = 0.001
# A latency sample this many times below the median of recent ones belongs to another kind of request (a WhoAmI
# among $batch requests is 20-50 times faster); queueing rarely stretches latency this far without 429s.
LATENCY_OUTLIER = 10.0


def _median(values: Iterable[float]) -> float:
    ordered = sorted(values)
    mid = len(ordered) // 2
    return ordered[mid] if len(ordered) % 2 else (ordered[mid - 1] + ordered[mid]) / 2


class Throttle:
    """Retry-After gate, concurrency bounds (429s, latency, budgets) and budget pacing for all threads of one hook
    (thread-safe)."""

    def __init__(
        self,
        settings: ThrottleSettings | None = None,
        *,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], None] = time.sleep,
        wall: Callable[[], float] = time.time,
        rng: random.Random | None = None,
    ) -> None:
        self.settings = settings or ThrottleSettings()
        self._clock = clock
        self._sleep = sleep
        self._wall = wall
        self._rng = rng or random.Random()
        self._cond = threading.Condition()
        self._ids = itertools.count(1)
        self.cap = min(self.settings.max_concurrency, MAX_CONCURRENT_REQUESTS)
        self.limit = self.cap
        self._slow_start = self.settings.slow_start
        self.latency_limit = min(self.cap, self.settings.initial_concurrency) if self._slow_start else self.cap
        self.in_flight = 0
        self.pause_until = 0.0
        # in flight × seconds, integrated over time: a request's mean concurrency is the growth over its life
        self._area = 0.0
        self._area_at = clock()
        self._levels: dict[int, deque[float]] = {}  # level -> recent latencies (ms)
        self._recent: deque[float] = deque(maxlen=4 * self.settings.latency_samples)  # all levels
        self._latency_successes = 0
        self._limit_reached = False  # in flight reached the latency bound since the last latency decision
        self._paced_at = float("-inf")  # clock time of the last pacing wait
        self._running: dict[int, float] = {}  # ticket id -> admitted at, for the requests in flight
        # spacing: execution time (ms) and requests that may be admitted now while the budgets bind
        self._allowance_ms = 0.0
        self._allowance_requests = 0.0
        self._allowance_at = clock()
        self._last_decrease = float("-inf")
        self._successes = 0
        self._done: deque[tuple[float, float]] = deque()  # (answered at, elapsed ms), ascending
        self._execution_ms = 0.0
        self.estimate_ms = self.settings.initial_estimate_ms
        self._measured = False
        self.stats: dict[str, float] = {
            "admitted": 0,
            "throttled_429": 0,
            "retry_after_waits": 0,
            "retry_after_wait_seconds": 0.0,
            "pacing_waits": 0,
            "pacing_wait_seconds": 0.0,
            "concurrency_waits": 0,
            "concurrency_decreases": 0,
            "concurrency_increases": 0,
            "latency_decreases": 0,
            "latency_increases": 0,
            "min_concurrency": self.limit,
            "peak_in_flight": 0,
            "answered": 0,
            "answered_elapsed_ms": 0.0,
        }

    # -- configuration ---------------------------------------------------------------------------------
    def configure(self, settings: ThrottleSettings | None = None, *, dop_hint: int | None = None) -> None:
        """New settings and/or a server ``x-ms-dop-hint``: the cap becomes min(hint, max_concurrency)."""
        with self._cond:
            if settings is not None:
                self.settings = settings
            cap = min(self.settings.max_concurrency, MAX_CONCURRENT_REQUESTS)
            if dop_hint and dop_hint > 0:
                cap = min(cap, int(dop_hint))
            self.cap = max(1, cap)
            self.limit = min(max(self.limit, 1), self.cap) if self.stats["concurrency_decreases"] else self.cap
            moved = self.stats["latency_decreases"] or self.stats["latency_increases"]
            keep = moved or self.settings.slow_start
            self.latency_limit = min(max(self.latency_limit, 1), self.cap) if keep else self.cap
            self.stats["min_concurrency"] = min(self.stats["min_concurrency"], self.limit)
            self._cond.notify_all()

    # -- concurrency -----------------------------------------------------------------------------------
    @property
    def concurrency(self) -> int:
        """Requests admitted in flight at most, now: the smallest of the cap and the 429, latency and budget
        bounds (the budget bound only while the budgets bind)."""
        bound = min(self.cap, self.limit, self.latency_limit)
        if self._budgets_bind(self._clock()):
            bound = min(bound, self.budget_limit())
        return max(1, bound)

    def _budgets_bind(self, now: float) -> bool:
        """A request waited for the pacing budgets (window or spacing) within the last window."""
        return now - self._paced_at < self.settings.window_seconds

    def _spacing_delay(self, now: float) -> float:
        """While the budgets bind: seconds until the spacing allowances (execution time and requests, topped up at
        the budgets' rates, at most ``SPACING_BURST`` requests' worth) cover one more request; else 0."""
        s = self.settings
        ms_rate = s.max_execution_ms * s.safety_margin / s.window_seconds
        request_rate = s.max_requests * s.safety_margin / s.window_seconds
        full_ms = SPACING_BURST * self.estimate_ms
        if not self._budgets_bind(now):
            self._allowance_ms, self._allowance_requests = full_ms, SPACING_BURST
            self._allowance_at = now
            return 0.0
        elapsed = max(0.0, now - self._allowance_at)
        self._allowance_ms = min(full_ms, self._allowance_ms + elapsed * ms_rate)
        self._allowance_requests = min(SPACING_BURST, self._allowance_requests + elapsed * request_rate)
        self._allowance_at = max(self._allowance_at, now)
        delay = max((self.estimate_ms - self._allowance_ms) / ms_rate, (1.0 - self._allowance_requests) / request_rate)
        return delay if delay > SPACING_RESOLUTION else 0.0

    def budget_limit(self) -> int:
        """The concurrency the binding budget sustains on average (Little's law), with headroom, at least 1."""
        s = self.settings
        execution = s.max_execution_ms * s.safety_margin / s.window_seconds / 1000.0
        requests = s.max_requests * s.safety_margin / s.window_seconds * self.estimate_ms / 1000.0
        return max(1, math.ceil(min(execution, requests) * s.budget_headroom - 1e-9))

    def level_latency(self, level: int) -> float | None:
        """The median of a level's recent latencies (ms), or None while it has too few samples.

        Samples below ``1 / LATENCY_OUTLIER`` of the median of all recent ones are left out: they are another kind
        of request (a hook's tenant discovery and WhoAmI before a load of ``$batch`` requests), not a faster server.
        """
        floor = _median(self._recent) / LATENCY_OUTLIER if self._recent else 0.0
        samples = [ms for ms in self._levels.get(level, ()) if ms >= floor]
        if len(samples) < self.settings.latency_min_samples:
            return None
        return _median(samples)

    def efficiency(self) -> tuple[float, float] | None:
        """Of the concurrency within the latency bound: (average, marginal) efficiency, or None with fewer than two
        levels known there. Average: throughput added per added request from the lowest known level to the
        highest, relative to the lowest level's throughput per request. Marginal: the same for the last step only
        (from the next lower known level to the highest)."""
        latencies = {lvl: self.level_latency(lvl) for lvl in sorted(self._levels) if lvl <= self.latency_limit}
        known = [(lvl, ms) for lvl, ms in latencies.items() if ms is not None]
        if len(known) < 2:
            return None
        (low, t_low), (below, t_below), (top, t_top) = known[0], known[-2], known[-1]
        per_request = 1.0 / t_low
        average = (top / t_top - low / t_low) / ((top - low) * per_request)
        marginal = (top / t_top - below / t_below) / ((top - below) * per_request)
        return average, marginal

    def _advance_area(self, now: float) -> None:
        if now > self._area_at:
            self._area += self.in_flight * (now - self._area_at)
            self._area_at = now

    def _observe_latency(self, ticket: Ticket, now: float, elapsed_ms: float) -> None:
        """File one successful answer's latency under its level; every ``increase_every`` of them, move the
        latency bound (down when the added concurrency bought too little, up when there was demand)."""
        s = self.settings
        if elapsed_ms <= 0:
            return
        mean_in_flight = (self._area - ticket.in_flight_area) / (elapsed_ms / 1000.0)
        level = min(self.cap, max(1, round(mean_in_flight)))
        self._levels.setdefault(level, deque(maxlen=s.latency_samples)).append(elapsed_ms)
        self._recent.append(elapsed_ms)
        self._latency_successes += 1
        if self._latency_successes < s.increase_every:
            return
        self._latency_successes = 0
        efficiency = self.efficiency()
        average = efficiency[0] if efficiency is not None else None
        bound = self.latency_limit
        # Both must agree, so that one noisy level does not move the bound; while the budgets bind, concurrency
        # they sustain is given up only when the server is clearly saturated.
        sustained = self._budgets_bind(now) and bound <= self.budget_limit()
        queueing = (
            efficiency is not None
            and efficiency[1] < s.latency_shrink_efficiency
            and efficiency[0] < (s.latency_shrink_efficiency if sustained else s.latency_grow_efficiency)
        )
        if queueing:
            self._slow_start = False
            if bound > 1:
                self.latency_limit = bound - 1
                self.stats["latency_decreases"] += 1
        elif self._limit_reached and bound < self.cap:
            budget = self.budget_limit()
            if average is not None and average >= s.latency_grow_efficiency:
                # doubling (slow start) only up to what the budgets sustain; beyond, one step at a time
                target = max(bound + 1, min(bound * 2, budget)) if self._slow_start else bound + 1
            else:  # unknown or lower efficiency: one step, and only up to what the budgets sustain
                self._slow_start = self._slow_start and average is None
                target = min(bound + 1, budget)
            if target > bound:
                self.latency_limit = min(self.cap, target)
                self.stats["latency_increases"] += 1
        self._limit_reached = False

    # -- the gate --------------------------------------------------------------------------------------
    def _prune(self, now: float) -> None:
        horizon = now - self.settings.window_seconds
        done = self._done
        while done and done[0][0] <= horizon:
            self._execution_ms -= done.popleft()[1]
        if not done:
            self._execution_ms = 0.0

    def budget_delay(self, now: float) -> float:
        """Seconds until one more request fits the pacing budgets (0: it fits now). Call with the lock held."""
        s = self.settings
        self._prune(now)
        if not self._done:
            return 0.0  # nothing to wait for; in-flight requests alone never block the first one
        delay = 0.0
        allowed_requests = s.max_requests * s.safety_margin
        excess = len(self._done) + self.in_flight + 1 - allowed_requests
        if excess > 0:
            index = min(len(self._done), int(excess + 0.999999)) - 1
            delay = max(delay, self._done[index][0] + s.window_seconds - now)
        allowed_ms = s.max_execution_ms * s.safety_margin
        if self.peak_execution_ms(now) > allowed_ms:
            # Try the moments the answered entries leave the window, oldest first; the first that leaves room wins.
            leaves = now
            for answered, _ in itertools.islice(self._done, PACING_SEARCH):
                leaves = answered + s.window_seconds
                if self.peak_execution_ms(now, leaves) <= allowed_ms:
                    break
            delay = max(delay, leaves - now)
        delay = max(delay, self._spacing_delay(now))
        return max(0.0, delay)

    def peak_execution_ms(self, now: float, at: float | None = None) -> float:
        """The most execution time the window can hold from ``at`` (default: now) until a request admitted then
        is answered.

        At each moment the window holds the answered entries not yet slid out, plus every request in flight (and
        the new one) at the time it has run so far, up to its expected cost (the estimate, or its age now if it
        has already run longer). The maximum is just before an entry leaves, or when the last request is expected
        back. Crediting what slides out while requests run is what lets a long load use the whole budget; the
        in-flight costs are estimates, which the safety margin covers. Call with the lock held.
        """
        at = now if at is None else at
        window = self.settings.window_seconds
        est = self.estimate_ms
        running = [(started, max(est, (now - started) * 1000.0)) for started in self._running.values()]
        running.append((at, est))
        horizon = max(started + cost / 1000.0 for started, cost in running)

        def held(t: float) -> float:
            return sum(min(cost, max(0.0, (t - started) * 1000.0)) for started, cost in running)

        remaining = self._execution_ms
        peak = 0.0
        for answered, ms in self._done:
            leaves = answered + window
            if leaves > horizon:
                break
            if leaves > at:
                peak = max(peak, remaining + held(leaves))  # just before it leaves
            remaining -= ms
        return max(peak, remaining + held(horizon))

    def acquire(self) -> Ticket:
        """Wait for the gate (Retry-After, concurrency, budgets), then count the request as in flight."""
        waited = 0.0
        with self._cond:
            while True:
                gate = self._gate(self._clock())
                if isinstance(gate, Ticket):
                    gate.waited = waited
                    return gate
                reason, delay = gate
                if reason == "concurrency":
                    self.stats["concurrency_waits"] += 1
                    self._cond.wait(timeout=delay)
                    continue
                key = "retry_after" if reason == "retry_after" else "pacing"
                self.stats[f"{key}_waits"] += 1
                self.stats[f"{key}_wait_seconds"] += delay
                waited += delay
                self._wait(delay)

    def try_acquire(self) -> Ticket | tuple[str, float]:
        """Admit one request now if the gate lets it through (its ticket), else why not and how long to wait:
        ``("retry_after" | "concurrency" | "pacing", seconds)``. For callers that schedule their own waits."""
        with self._cond:
            return self._gate(self._clock())

    def _gate(self, now: float) -> Ticket | tuple[str, float]:
        """One pass of the gate at ``now`` (lock held): a ticket, or the reason to wait and for how long."""
        if now < self.pause_until:
            return "retry_after", self.pause_until - now + self._rng.uniform(*self.settings.jitter_seconds)
        if self.in_flight >= self.concurrency:
            self._limit_reached |= self.in_flight >= self.latency_limit
            return "concurrency", 0.5  # an answer wakes the waiters sooner
        delay = self.budget_delay(now)
        if delay > 0:
            self._paced_at = now
            # Do not over-sleep: an answer may arrive (and new measurements change the picture).
            return "pacing", min(delay, 1.0)
        self._advance_area(now)
        self.in_flight += 1
        self._limit_reached |= self.in_flight >= self.latency_limit
        self.stats["admitted"] += 1
        self.stats["peak_in_flight"] = max(self.stats["peak_in_flight"], self.in_flight)
        ticket = Ticket(next(self._ids), now, self._wall(), in_flight_area=self._area)
        if self._budgets_bind(now):
            ticket.charged_ms = self.estimate_ms
            self._allowance_ms -= ticket.charged_ms
            self._allowance_requests -= 1
        self._running[ticket.id] = now
        return ticket

    def _wait(self, seconds: float) -> None:
        """Sleep without holding the lock (other threads release and learn of 429s meanwhile)."""
        self._cond.release()
        try:
            self._sleep(seconds)
        finally:
            self._cond.acquire()

    def release(self, ticket: Ticket, status: int | None, retry_after: float | None = None) -> None:
        """The answer to an admitted request: ``status`` None when none came (timeout, connection reset)."""
        with self._cond:
            now = self._clock()
            ticket.released_at = self._wall()
            ticket.status = status
            self._advance_area(now)
            self.in_flight = max(0, self.in_flight - 1)
            self._running.pop(ticket.id, None)
            if status == THROTTLED:
                if ticket.charged_ms:  # refused before it ran: it cost nothing
                    self._allowance_ms += ticket.charged_ms
                    self._allowance_requests += 1
                self._on_throttled(ticket, now, retry_after)
            else:
                elapsed_ms = max(0.0, (now - ticket.started) * 1000.0)
                if self._done and now < self._done[-1][0]:
                    now = self._done[-1][0]
                self._done.append((now, elapsed_ms))
                self._execution_ms += elapsed_ms
                if ticket.charged_ms:
                    self._allowance_ms += ticket.charged_ms - elapsed_ms
                if status is not None:
                    self._learn(elapsed_ms)
                if status is not None and status < 500:
                    self.stats["answered"] += 1
                    self.stats["answered_elapsed_ms"] += elapsed_ms
                    self._observe_latency(ticket, now, elapsed_ms)
                    self._successes += 1
                    if self._successes >= self.settings.increase_every and self.limit < self.cap:
                        self.limit += 1
                        self._successes = 0
                        self.stats["concurrency_increases"] += 1
            self._cond.notify_all()

    def _learn(self, elapsed_ms: float) -> None:
        if not self._measured:
            self.estimate_ms = elapsed_ms
            self._measured = True
        else:
            w = self.settings.estimate_weight
            self.estimate_ms = (1 - w) * self.estimate_ms + w * elapsed_ms

    def _on_throttled(self, ticket: Ticket, now: float, retry_after: float | None) -> None:
        self.stats["throttled_429"] += 1
        seconds = float(retry_after if retry_after is not None else 0.0)
        seconds = min(max(0.0, seconds), self.settings.retry_after_max_seconds) if seconds == seconds else 0.0
        self.pause_until = max(self.pause_until, now + seconds)
        # Multiplicative decrease, once per round: 429s for requests sent before the last decrease
        # are echoes of the same overload.
        if ticket.started >= self._last_decrease:
            self.limit = max(1, self.limit // 2)
            self._last_decrease = now
            self._successes = 0
            self.stats["concurrency_decreases"] += 1
            self.stats["min_concurrency"] = min(self.stats["min_concurrency"], self.limit)

    # -- reporting -------------------------------------------------------------------------------------
    def paused_for(self) -> float:
        with self._cond:
            return max(0.0, self.pause_until - self._clock())

    def snapshot(self) -> dict[str, Any]:
        """Counters for ``load/stats.json``: 429s, waits, concurrency changes and the settings used."""
        with self._cond:
            s = self.settings
            out: dict[str, Any] = {k: (round(v, 3) if isinstance(v, float) else v) for k, v in self.stats.items()}
            out.update(
                concurrency_cap=self.cap,
                concurrency_now=self.concurrency,
                latency_limit=self.latency_limit,
                budget_limit=self.budget_limit(),
                window_seconds=s.window_seconds,
                max_requests=s.max_requests,
                max_execution_ms=s.max_execution_ms,
                safety_margin=s.safety_margin,
                request_estimate_ms=round(self.estimate_ms, 1),
            )
            return out
