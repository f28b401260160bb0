"""Fault injection rules: what a real service does on a bad day, on demand (sandbox-only)."""

from __future__ import annotations

import itertools
import random
import re
import threading
from dataclasses import asdict, dataclass, field
from typing import Any, Literal

FaultKind = Literal[
    "status", "reset", "timeout", "latency", "html", "json_error", "empty", "cut", "wrong_encoding", "next_link"
]
KINDS = frozenset(FaultKind.__args__)  # type: ignore[attr-defined]
# Kinds that answer 200 with a body that is not what it claims (a proxy, a maintenance page, a cut connection)
UNTRUSTED_BODY_KINDS = frozenset({"html", "json_error", "empty", "cut", "wrong_encoding", "next_link"})
NEXT_LINK_MODES = frozenset({"repeat", "foreign"})


@dataclass
class FaultRule:
    """One rule. It matches requests by server, method and path, and fires by count or rate.

    kind:
      status  -> answer ``status`` at once (429 carries ``Retry-After: retry_after`` and counts as a
                 real throttling penalty for the caller; 5xx carries a JSON error body)
      reset   -> drop the TCP connection with a RST, no response
      timeout -> hold the request ``seconds`` before answering normally (clients should time out)
      latency -> add ``seconds`` before handling the request normally
      html    -> 200 with a ``text/html`` maintenance page (what a proxy or a load balancer answers)
      json_error -> 200 ``application/json`` holding an error object instead of the resource
      empty   -> 200 with an empty body
      cut     -> the real answer with its body cut in half (a connection closed mid-body)
      wrong_encoding -> the real answer re-encoded as cp1252 while the header still says UTF-8
      next_link -> the real JSON answer with ``@odata.nextLink`` rewritten: ``mode`` ``repeat`` points it at the
                 URL just requested (a client that follows it loops); ``foreign`` moves it to another origin
                 (``localhost`` <-> ``127.0.0.1``, same port: it reaches this sandbox, so the request log shows
                 whether a client sent its bearer token there)
      ``status`` overrides the 200 of the body kinds (``cut``/``wrong_encoding``/``next_link`` keep the real
      status unless it is given). ``retry_after`` (status 429, or any status when given as text) is a number
      of seconds or any text, sent verbatim: "1e9", "-5", "inf", an HTTP date.
      nth     -> fire on the nth matching request after the rule was added (1-based)
      every   -> fire on every ``every``-th matching request
      rate    -> fire with this probability (seeded)
      (none)  -> fire on every matching request
      times   -> stop after firing this many times (None: unlimited; defaults to 1 with ``nth``)
    """

    kind: FaultKind
    server: str = "*"
    method: str = "*"
    path: str = ".*"
    status: int | None = None  # None: 503 for ``status``, 200 (or the real status) for the body kinds
    retry_after: float | str = 1.0
    mode: str | None = None
    seconds: float = 0.0
    nth: int | None = None
    every: int | None = None
    rate: float | None = None
    times: int | None = None
    seed: int = 0
    id: int = 0
    matched: int = 0
    fired: int = 0
    _rng: random.Random = field(default_factory=random.Random, repr=False)
    _path_re: re.Pattern[str] | None = field(default=None, repr=False)

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ValueError(f"unknown fault kind {self.kind!r}; one of {sorted(KINDS)}")
        if self.kind == "next_link" and self.mode not in NEXT_LINK_MODES:
            raise ValueError(f"next_link needs mode {sorted(NEXT_LINK_MODES)}")
        if self.kind == "status" and self.status is None:
            self.status = 503
        if self.nth is not None and self.times is None:
            self.times = 1
        self._rng = random.Random(self.seed)
        self._path_re = re.compile(self.path)

    def matches(self, server: str, method: str, path: str) -> bool:
        return (
            self.server in ("*", server)
            and self.method in ("*", method.upper())
            and self._path_re is not None
            and self._path_re.search(path) is not None
        )

    def should_fire(self) -> bool:
        """Called once per matching request; counts it and decides."""
        if self.times is not None and self.fired >= self.times:
            return False
        self.matched += 1
        if self.nth is not None:
            fire = self.matched >= self.nth
        elif self.every is not None:
            fire = self.matched % self.every == 0
        elif self.rate is not None:
            fire = self._rng.random() < self.rate
        else:
            fire = True
        if fire:
            self.fired += 1
        return fire

    def describe(self) -> dict[str, Any]:
        return {k: v for k, v in asdict(self).items() if not k.startswith("_")}


class FaultInjector:
    def __init__(self) -> None:
        self._rules: list[FaultRule] = []
        self._ids = itertools.count(1)
        self._lock = threading.Lock()

    def add(self, **spec: Any) -> FaultRule:
        allowed = {f for f in FaultRule.__dataclass_fields__ if not f.startswith("_")} - {
            "id",
            "matched",
            "fired",
        }
        unknown = set(spec) - allowed
        if unknown:
            raise ValueError(f"unknown fault fields: {sorted(unknown)}")
        rule = FaultRule(**spec)
        with self._lock:
            rule.id = next(self._ids)
            self._rules.append(rule)
        return rule

    def pick(self, server: str, method: str, path: str) -> FaultRule | None:
        """The first rule that fires for this request, if any (every matching rule counts it)."""
        chosen = None
        with self._lock:
            for rule in self._rules:
                if rule.matches(server, method, path) and rule.should_fire() and chosen is None:
                    chosen = rule
        return chosen

    def rules(self) -> list[dict[str, Any]]:
        with self._lock:
            return [r.describe() for r in self._rules]

    def remove(self, rule_id: int) -> bool:
        with self._lock:
            before = len(self._rules)
            self._rules = [r for r in self._rules if r.id != rule_id]
            return len(self._rules) != before

    def clear(self) -> None:
        with self._lock:
            self._rules.clear()
