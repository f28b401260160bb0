"""What the throttle paces against (``ThrottleSettings``), its admission ticket, and the one reading of a
``Retry-After`` header (``d365.hooks.throttle`` re-exports all three).

``retry_after_seconds`` is the one reading of a ``Retry-After`` header for every hook (Dataverse's throttle and
retries, the token endpoint, DreamApply's 429s): a server (or a proxy in front of it) can send nonsense, and a
client that believes ``1e9`` never finishes. Huge values are capped (``retry_after_max_seconds``, default 300 s,
a connection extra), a date in the past or a negative number means "soon" (a short backoff), and anything
unreadable falls back to the caller's own backoff.

The two learned bounds on the throttle's concurrency (``Throttle.concurrency`` is the smallest of the cap, the AIMD
limit and these):

* ``latency_limit`` (queueing): when a server queues, a request's time rises with the number in flight and
  more workers only add latency. Each successful answer is filed under the mean number of requests that were
  in flight while it ran (its *level*); the median of a level's recent times is its latency ``T``, and
  ``X = level / T`` the throughput that level gives. *Efficiency* is the throughput that added requests
  added, per added request, relative to the throughput per request at the lowest level known (1: perfect
  scaling; 0: the server is saturated and they only queue): *average* from the lowest level to the highest
  within the bound, *marginal* for the last step only. Every ``increase_every`` successful answers the bound
  drops by one when the marginal efficiency is below ``latency_shrink_efficiency`` and the average below
  ``latency_grow_efficiency`` (both must agree, so one noisy level does not move it; while the budgets bind
  and the bound is within what they sustain, the average must be below ``latency_shrink_efficiency`` too:
  that concurrency is given up only when the server is clearly saturated). Otherwise, if the bound was
  reached since the last decision (there was demand for more), it grows: freely while the average is at
  least ``latency_grow_efficiency``; by one and only up to ``budget_limit`` while it is lower or not known
  yet, because concurrency below what the budgets sustain leaves budget unspent while any real gain is worth
  having, and concurrency beyond it is worth only what the server gives without queueing. The bound starts
  at ``initial_concurrency`` (4: about what Dataverse's execution-time budget sustains) and doubles while it
  grows freely up to ``budget_limit`` (slow start: Microsoft's "ramp up gradually"), then steps by one.
  ``slow_start=False`` starts it at the cap, where it learns only from the lower levels that pacing and the
  ends of a load give it. A sample far below the recent median (``LATENCY_OUTLIER``) is another kind of
  request (the hook's WhoAmI before a load of ``$batch`` requests) and is left out.
* ``budget_limit``: once the budgets bind (a request waited for pacing within the last window), more
  concurrency than the budgets sustain buys nothing but queueing, which the execution-time budget pays for.
  By Little's law the execution-time budget sustains ``E · margin / W / 1000`` requests in flight on average
  (3.8 for Dataverse's 1 200 000 ms per 300 s) and the request budget ``R · margin / W × estimate``; the
  bound is the smaller, times ``budget_headroom``, rounded up. While the window has room (a short load, or
  the start of a long one) it does not apply.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, fields, replace
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime
from typing import Any, ClassVar

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
    # Additive increase: +1 concurrency per this many successful answers (also how often the latency bound moves).
    increase_every: int = 5
    # Efficiency of added concurrency (throughput per added request relative to the lowest level's): the average at or
    # above which the latency bound grows freely, and the marginal below which (with the average below the former)
    # it shrinks.
    latency_grow_efficiency: float = 0.8
    latency_shrink_efficiency: float = 0.6
    # Latency samples a level needs (the median of up to ``latency_samples`` recent ones is its latency).
    latency_min_samples: int = 3
    latency_samples: int = 9
    # The budget bound allows this many times the concurrency the binding budget sustains on average.
    budget_headroom: float = 1.25
    # The latency bound starts at ``initial_concurrency`` and ramps up (False: it starts at the cap). 4: about the
    # concurrency Dataverse's execution-time budget sustains on average (3.8 requests in flight).
    slow_start: bool = True
    initial_concurrency: int = 4
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
        if not 0 <= self.latency_shrink_efficiency <= self.latency_grow_efficiency or self.budget_headroom < 1:
            raise ValueError("latency efficiencies: 0 <= shrink <= grow; budget_headroom at least 1")
        if self.initial_concurrency < 1:
            raise ValueError("initial_concurrency must be at least 1")
        if not 1 <= self.latency_min_samples <= self.latency_samples:
            raise ValueError("latency_min_samples must be at least 1 and at most latency_samples")
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
            if isinstance(current, bool) and not isinstance(value, bool):  # an extra's "false" is not True
                changes[name] = str(value).strip().lower() in ("1", "true", "yes", "on")
            else:
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
    in_flight_area: float = 0.0  # the throttle's integral of requests in flight over time, at admission
    charged_ms: float = 0.0  # execution time admission took from the spacing allowance (trued up with the answer)
