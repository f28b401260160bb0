"""A client-side request quota: at most N requests in any sliding window of 60 seconds, thread-safe.

DreamApply allows 180 requests per minute per API key and answers every further request with ``429``
at once (reference §1.5; HEAD counts too). Waiting on the client side is cheaper than being refused,
so the hook takes a slot here before every request it sends.

Why the window is measured from *completion*: the server opens its one-minute window when it
*receives* a request, which is later than when the client sent it. A slot is therefore held while the
request is in flight and is stamped with the time its response arrived; it frees up 60 seconds after
that stamp. With that rule no 60-second window on the server side can see more than N requests from
this limiter, whatever the network latency (in-flight requests count as occupied slots).
"""

from __future__ import annotations

import threading
import time
from collections import deque
from collections.abc import Callable, Iterator
from contextlib import contextmanager

WINDOW_SECONDS = 60.0


class SlidingWindowLimiter:
    """At most ``requests_per_minute`` requests per ``window`` seconds (in flight or completed within it).

    ``clock`` and ``sleep`` are injectable so tests can run without waiting; ``requests_per_minute``
    <= 0 disables the limit.
    """

    def __init__(
        self,
        requests_per_minute: int,
        *,
        window: float = WINDOW_SECONDS,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self.requests_per_minute = int(requests_per_minute)
        self.window = float(window)
        self._clock = clock
        self._sleep = sleep
        self._done: deque[float] = deque()  # completion stamps, ascending
        self._in_flight = 0
        self._cond = threading.Condition()
        self.waited_seconds = 0.0
        self.waits = 0

    def _prune(self, now: float) -> None:
        done = self._done
        cutoff = now - self.window
        while done and done[0] <= cutoff:
            done.popleft()

    def acquire(self) -> float:
        """Take a slot, sleeping first while the window is full; returns the seconds waited."""
        if self.requests_per_minute <= 0:
            return 0.0
        waited = 0.0
        with self._cond:
            while True:
                now = self._clock()
                self._prune(now)
                if self._in_flight + len(self._done) < self.requests_per_minute:
                    self._in_flight += 1
                    break
                if self._done:
                    delay = max(self._done[0] + self.window - now, 0.001)
                    # Sleep outside the lock so other threads can release their slots meanwhile.
                    self._cond.release()
                    try:
                        self._sleep(delay)
                    finally:
                        self._cond.acquire()
                else:
                    # Every slot is in flight: wait for one to complete (bounded, in case of a lost release).
                    delay = 1.0
                    start = self._clock()
                    self._cond.wait(timeout=delay)
                    delay = self._clock() - start
                waited += delay
            if waited:
                self.waited_seconds += waited
                self.waits += 1
        return waited

    def release(self) -> None:
        """The request of a slot taken by :meth:`acquire` has completed (or failed)."""
        if self.requests_per_minute <= 0:
            return
        with self._cond:
            self._in_flight = max(0, self._in_flight - 1)
            now = self._clock()
            if self._done and now < self._done[-1]:
                now = self._done[-1]  # keep the deque ascending even if the clock misbehaves
            self._done.append(now)
            self._cond.notify()

    @contextmanager
    def slot(self) -> Iterator[float]:
        """``with limiter.slot() as waited: send()``: acquire before, release after the response."""
        waited = self.acquire()
        try:
            yield waited
        finally:
            self.release()
