"""DreamApply's per-key request quota (reference §1.5).

A fixed one-minute window per API key: the first request of a key opens a window of 60 seconds
(sandbox-clock time, so ``advance`` also ends a window) in which up to ``requests_per_minute`` requests
are processed; every further request in that window gets ``429`` at once and is not processed. All
methods count, HEAD included; throttled requests do not count. DreamApply documents no ``Retry-After``
header for this 429 and the sandbox sends none (fault-injected 429s from the admin API do carry one).
"""

from __future__ import annotations

import threading
from collections.abc import Callable

WINDOW_SECONDS = 60.0


class RateLimiter:
    def __init__(self, requests_per_minute: int, now: Callable[[], float]) -> None:
        self.requests_per_minute = requests_per_minute
        self._now = now
        self._windows: dict[str, tuple[float, int]] = {}
        self._lock = threading.Lock()

    def allow(self, key: str) -> bool:
        """Count one request for ``key``; False when it must be answered with 429."""
        if self.requests_per_minute <= 0:
            return True
        now = self._now()
        with self._lock:
            start, count = self._windows.get(key, (now, 0))
            if now - start >= WINDOW_SECONDS or now < start:
                start, count = now, 0
            if count >= self.requests_per_minute:
                self._windows[key] = (start, count)
                return False
            self._windows[key] = (start, count + 1)
            return True

    def reset(self) -> None:
        with self._lock:
            self._windows.clear()

    def remaining(self, key: str) -> int:
        now = self._now()
        with self._lock:
            start, count = self._windows.get(key, (now, 0))
            if now - start >= WINDOW_SECONDS:
                count = 0
            return max(0, self.requests_per_minute - count)
