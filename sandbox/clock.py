"""Sandbox time: real time plus an offset that ``advance`` moves forward, so data can age on demand."""

from __future__ import annotations

import threading
from datetime import UTC, datetime, timedelta


class SandboxClock:
    def __init__(self) -> None:
        self._offset = timedelta(0)
        self._lock = threading.Lock()

    def now(self) -> datetime:
        with self._lock:
            return datetime.now(UTC) + self._offset

    def advance(self, delta: timedelta) -> tuple[datetime, datetime]:
        """Move time forward; returns the (start, end) of the skipped interval."""
        with self._lock:
            start = datetime.now(UTC) + self._offset
            self._offset += delta
            return start, start + delta


def isoformat(ts: datetime) -> str:
    """DreamApply/Dataverse style: second precision with a numeric offset (``2025-11-24T10:56:34+00:00``)."""
    return ts.astimezone(UTC).replace(microsecond=0).isoformat()


def odata_datetime(ts: datetime) -> str:
    """Dataverse style: UTC with a trailing Z (``2025-11-24T10:56:34Z``)."""
    return ts.astimezone(UTC).replace(microsecond=0).strftime("%Y-%m-%dT%H:%M:%SZ")
