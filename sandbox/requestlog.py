"""What every sandbox server received and answered, with secrets redacted, for tests to assert on."""

from __future__ import annotations

import hashlib
import itertools
import threading
from collections import deque
from collections.abc import Iterable, Mapping
from typing import Any

# Headers whose values are credentials. They are never stored, only a short fingerprint.
SECRET_HEADERS = frozenset({"authorization", "cookie", "set-cookie", "proxy-authorization"})


def fingerprint(secret: str) -> str:
    return "sha256:" + hashlib.sha256(secret.encode()).hexdigest()[:12]


def redact_header(name: str, value: str) -> str:
    if name.lower() not in SECRET_HEADERS:
        return value
    scheme, _, rest = value.partition(" ")
    if rest:
        return f"{scheme} <redacted {fingerprint(rest)}>"
    return f"<redacted {fingerprint(value)}>"


def redact_headers(headers: Mapping[str, str] | Iterable[tuple[str, str]]) -> dict[str, str]:
    items = headers.items() if isinstance(headers, Mapping) else headers
    return {k: redact_header(k, v) for k, v in items}


class RequestLog:
    """A bounded, thread-safe list of request records (plain dicts, JSON-ready)."""

    def __init__(self, maxlen: int) -> None:
        self._entries: deque[dict[str, Any]] = deque(maxlen=maxlen)
        self._seq = itertools.count(1)
        self._lock = threading.Lock()

    def add(self, entry: dict[str, Any]) -> dict[str, Any]:
        with self._lock:
            entry["seq"] = next(self._seq)
            self._entries.append(entry)
        return entry

    def entries(self, server: str | None = None, since_seq: int = 0, user: str | None = None) -> list[dict[str, Any]]:
        with self._lock:
            items = list(self._entries)
        return [
            e
            for e in items
            if e["seq"] > since_seq
            and (server is None or e["server"] == server)
            and (user is None or e.get("user") == user)
        ]

    def last_seq(self) -> int:
        with self._lock:
            return self._entries[-1]["seq"] if self._entries else 0

    def clear(self) -> None:
        with self._lock:
            self._entries.clear()
