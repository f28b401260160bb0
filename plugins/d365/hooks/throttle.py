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
2. **Adaptive concurrency (AIMD).** At most ``limit`` requests are in flight. ``limit`` starts at the cap
   (``min(x-ms-dop-hint, max_concurrency)``), halves on a 429 (once per round: a 429 for a request sent
   before the previous decrease does not halve again) and grows by one after every ``increase_every``
   successful answers, back up to the cap.
3. **Proactive pacing.** The client keeps its own sliding window of what it sent: the answered requests and
   their client-measured elapsed time (which is never less than the server's execution time for them).
   A request is only admitted if the window still has room for it with the in-flight requests counted at the
   current estimate of a request's cost (an exponentially weighted average of recent elapsed times):
   ``count + in_flight + 1 <= max_requests * margin`` and
   ``execution_ms + (in_flight + 1) * estimate <= max_execution_ms * margin``. Otherwise the sender sleeps
   until enough of the window has slid out. So a long load settles at the execution-time (or request) budget
   instead of running into 429s. Entries are stamped when the answer arrives (later than the server's
   stamps), so the client's window always frees later than the server's: the pacing errs on the safe side.

Budgets, window, margin and cap are configurable (connection extras or operator arguments), because the
documented defaults "may vary between environments". ``clock``/``sleep`` are injectable for tests.

``retry_after_seconds`` is the one reading of a ``Retry-After`` header for every hook (Dataverse's throttle and
retries, the token endpoint, DreamApply's 429s): a server (or a proxy in front of it) can send nonsense, and a
client that believes ``1e9`` never finishes. Huge values are capped (``retry_after_max_seconds``, default 300 s,
a connection extra), a date in the past or a negative number means "soon" (a short backoff), and anything
unreadable falls back to the caller's own backoff.
"""

from __future__ import annotations

import itertools
import math
import random
import threading
import time
from collections import deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass, fields, replace
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime
from typing import Any, ClassVar

__all__ = [
    "RETRY_AFTER_MAX_SECONDS",
    "RETRY_AFTER_PAST_SECONDS",
    "Throttle",
    "ThrottleSettings",
    "Ticket",
    "retry_after_seconds",
]

THROTTLED = 429
# The longest a client waits for one Retry-After (connection extra ``retry_after_max_seconds`` overrides it).
RETRY_AFTER_MAX_SECONDS = 300.0
# The wait for a Retry-After that lies in the past or is negative: "retry soon", but not in a tight loop.
RETRY_AFTER_PAST_SECONDS = 1.0


def retry_after_seconds(
    value: str | None,
    *,
    default: float | None,
    cap: float = RETRY_AFTER_MAX_SECONDS,
    past: float = RETRY_AFTER_PAST_SECONDS,
    now: datetime | None = None,
) -> float | None:
    """Seconds to wait for a ``Retry-After`` header (delta-seconds or an HTTP date), always within ``[0, cap]``.

    Absent, empty, ``nan`` or unreadable -> ``default`` (None lets the caller use its own backoff); ``inf`` or
    anything above ``cap`` -> ``cap``; negative or a date in the past -> ``past`` (capped too).
    """
    cap = max(0.0, float(cap))
    past = min(max(0.0, float(past)), cap)

    def bounded(seconds: float | None) -> float | None:
        return None if seconds is None else min(max(0.0, seconds), cap)

    text = (value or "").strip()
    if not text:
        return bounded(default)
    try:
        seconds = float(text)
    except ValueError:
        seconds = None
    else:
        if math.isnan(seconds):
            return bounded(default)
        return past if seconds < 0 else bounded(seconds)
    try:
        when = parsedate_to_datetime(text)
    except (TypeError, ValueError, IndexError, OverflowError):
        return bounded(default)
    if when is None:
        return bounded(default)
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    delta = (when - (now or datetime.now(UTC))).total_seconds()
    return past if delta < 0 else bounded(delta)


@dataclass(frozen=True)
class ThrottleSettings:
    """What the throttle paces against. Defaults are Dataverse's documented per-user limits."""

    window_seconds: float = 300.0
    max_requests: int = 6000
    max_execution_ms: float = 1_200_000.0
    # Fraction of each budget the client allows itself. The client's own measure (send to answer) already
    # exceeds the server's execution time, and the service lets a client "exceed the limits a little
    # before they bite" (reference §7), so a small margin is enough.
    safety_margin: float = 0.95
    # Upper bound on parallel requests; the effective cap is min(this, x-ms-dop-hint).
    max_concurrency: int = 16
    # Additive increase: +1 concurrency per this many successful answers.
    increase_every: int = 5
    # Cost assumed for a request before any has been measured (ms); replaced by measurements.
    initial_estimate_ms: float = 1000.0
    # Weight of the newest measurement in the running estimate of a request's cost.
    estimate_weight: float = 0.2
    # Extra wait after a Retry-After, per thread, so senders do not all resume at the same instant.
    jitter_seconds: tuple[float, float] = (0.05, 0.25)
    # The longest pause one Retry-After can impose (a server asking for more gets this).
    retry_after_max_seconds: float = RETRY_AFTER_MAX_SECONDS

    # connection extra (or operator argument) name -> field
    EXTRAS: ClassVar[dict[str, str]] = {
        "throttle_window_seconds": "window_seconds",
        "throttle_max_requests": "max_requests",
        "throttle_max_execution_ms": "max_execution_ms",
        "throttle_safety_margin": "safety_margin",
        "max_concurrency": "max_concurrency",
        "retry_after_max_seconds": "retry_after_max_seconds",
    }

    def __post_init__(self) -> None:
        if self.window_seconds <= 0 or self.max_requests <= 0 or self.max_execution_ms <= 0:
            raise ValueError("throttle window and budgets must be positive")
        if not 0 < self.safety_margin <= 1:
            raise ValueError("throttle safety_margin must be in (0, 1]")
        if self.max_concurrency < 1 or self.increase_every < 1:
            raise ValueError("max_concurrency and increase_every must be at least 1")
        if not 0 <= self.retry_after_max_seconds < math.inf:
            raise ValueError("retry_after_max_seconds must be a finite number of seconds, 0 or more")

    def updated(self, values: Mapping[str, Any] | None) -> ThrottleSettings:
        """A copy with field values (or their ``EXTRAS`` names) from ``values``; unknown names are ignored."""
        if not values:
            return self
        names = {f.name: f.type for f in fields(self)}
        changes: dict[str, Any] = {}
        for key, value in values.items():
            name = self.EXTRAS.get(key, key)
            if name not in names or value is None or value == "" or name == "jitter_seconds":
                continue
            current = getattr(self, name)
            changes[name] = type(current)(value)
        return replace(self, **changes) if changes else self


@dataclass
class Ticket:
    """One admitted request: ``started`` on the throttle's clock, wall times for logs and tests."""

    id: int
    started: float
    admitted_at: float  # time.time() at admission
    released_at: float | None = None  # time.time() when the answer was handed back
    status: int | None = None
    waited: float = 0.0  # seconds this request slept at the gate (Retry-After and pacing)


class Throttle:
    """Retry-After gate, AIMD concurrency and budget pacing for all threads of one hook (thread-safe)."""

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
        self.cap = self.settings.max_concurrency
        self.limit = self.cap
        self.in_flight = 0
        self.pause_until = 0.0
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
            "min_concurrency": self.limit,
            "peak_in_flight": 0,
        }

    # -- configuration ---------------------------------------------------------------------------------
    def configure(self, settings: ThrottleSettings | None = None, *, dop_hint: int | None = None) -> None:
        """New settings and/or a server ``x-ms-dop-hint``: the cap becomes min(hint, max_concurrency)."""
        with self._cond:
            if settings is not None:
                self.settings = settings
            cap = self.settings.max_concurrency
            if dop_hint and dop_hint > 0:
                cap = min(cap, int(dop_hint))
            self.cap = max(1, cap)
            self.limit = min(max(self.limit, 1), self.cap) if self.stats["concurrency_decreases"] else self.cap
            self.stats["min_concurrency"] = min(self.stats["min_concurrency"], self.limit)
            self._cond.notify_all()

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
        over = self._execution_ms + (self.in_flight + 1) * self.estimate_ms - allowed_ms
        if over > 0:
            freed = 0.0
            frees_at = self._done[-1][0]
            for answered, ms in self._done:
                freed += ms
                frees_at = answered
                if freed >= over:
                    break
            delay = max(delay, frees_at + s.window_seconds - now)
        return max(0.0, delay)

    def acquire(self) -> Ticket:
        """Wait for the gate (Retry-After, concurrency, budgets), then count the request as in flight."""
        waited = 0.0
        with self._cond:
            while True:
                now = self._clock()
                if now < self.pause_until:
                    delay = self.pause_until - now + self._rng.uniform(*self.settings.jitter_seconds)
                    self.stats["retry_after_waits"] += 1
                    self.stats["retry_after_wait_seconds"] += delay
                    waited += delay
                    self._wait(delay)
                    continue
                if self.in_flight >= self.limit:
                    self.stats["concurrency_waits"] += 1
                    self._cond.wait(timeout=0.5)
                    continue
                delay = self.budget_delay(now)
                if delay > 0:
                    # Do not over-sleep: an answer may arrive (and new measurements change the picture).
                    delay = min(delay, 1.0)
                    self.stats["pacing_waits"] += 1
                    self.stats["pacing_wait_seconds"] += delay
                    waited += delay
                    self._wait(delay)
                    continue
                self.in_flight += 1
                self.stats["admitted"] += 1
                self.stats["peak_in_flight"] = max(self.stats["peak_in_flight"], self.in_flight)
                return Ticket(next(self._ids), now, self._wall(), waited=waited)

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
            self.in_flight = max(0, self.in_flight - 1)
            if status == THROTTLED:
                self._on_throttled(ticket, now, retry_after)
            else:
                elapsed_ms = max(0.0, (now - ticket.started) * 1000.0)
                if self._done and now < self._done[-1][0]:
                    now = self._done[-1][0]
                self._done.append((now, elapsed_ms))
                self._execution_ms += elapsed_ms
                if status is not None:
                    self._learn(elapsed_ms)
                if status is not None and status < 500:
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
                concurrency_now=self.limit,
                window_seconds=s.window_seconds,
                max_requests=s.max_requests,
                max_execution_ms=s.max_execution_ms,
                safety_margin=s.safety_margin,
                request_estimate_ms=round(self.estimate_ms, 1),
            )
            return out
