"""How long the load of a plan will take, from the org's service-protection limits, before anything is sent.

Dataverse meters every application user on its own, over a sliding window (documented: 6 000 requests,
20 minutes of server execution time and 52 concurrent requests per 5 minutes; the connection's throttle
extras may say otherwise, and then those are used, as the load's throttle uses them). A ``$batch`` of ``B``
writes counts as one request and costs ``t_b = request_ms + B · record_ms`` of execution time, so one user
loads at most::

    leads/s ≤ min( R · B / W,                  request budget
                   E / t_b · B / W,            execution-time budget
                   C · B / (t_b / 1000) )      concurrency (C = min(52, x-ms-dop-hint, the load's workers))

and a pool of ``U`` users ``U`` times that. ``request_ms`` is measured: the running estimate of a request's
time that the throttle kept over preflight's reads. ``record_ms``, the server time one write adds, cannot be
measured without writing; it is an assumption (``estimate.record_ms`` in the settings; plug-ins and workflows
on the lead table raise it), and the estimate says so. The safety margin the throttle keeps (``safety_margin``)
lowers the budgets the same way it does in the load.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from d365.hooks.throttle import ThrottleSettings

DOCUMENTED_CONCURRENCY = 52  # concurrent requests per user (Dataverse service protection)
_THROTTLE = ThrottleSettings()


@dataclass(frozen=True)
class OrgLimits:
    """Per-user service-protection limits, as the load's throttle applies them (its ``ThrottleSettings`` defaults:
    Dataverse's documented limits, one definition)."""

    window_seconds: float = _THROTTLE.window_seconds
    max_requests: int = _THROTTLE.max_requests
    max_execution_ms: float = _THROTTLE.max_execution_ms
    safety_margin: float = _THROTTLE.safety_margin
    max_concurrency: int = DOCUMENTED_CONCURRENCY

    @classmethod
    def from_snapshot(cls, snapshot: dict[str, Any] | None) -> OrgLimits:
        """From the throttle's ``snapshot()`` that preflight records (missing keys: the documented limits)."""
        snap = snapshot or {}
        base = cls()
        return cls(
            window_seconds=float(snap.get("window_seconds") or base.window_seconds),
            max_requests=int(snap.get("max_requests") or base.max_requests),
            max_execution_ms=float(snap.get("max_execution_ms") or base.max_execution_ms),
            safety_margin=float(snap.get("safety_margin") or base.safety_margin),
        )


@dataclass(frozen=True)
class LoadEstimate:
    writes: int
    seconds: float
    leads_per_second: float
    binding: str  # "requests", "execution time" or "concurrency"
    ceilings: dict[str, float]  # leads/s per limit, for the whole pool
    users: int
    concurrency: int
    batch_ms: float
    request_ms: float
    record_ms: float

    def to_json(self) -> dict[str, Any]:
        return {
            "writes": self.writes,
            "seconds": round(self.seconds, 1),
            "leads_per_second": round(self.leads_per_second, 1),
            "binding_limit": self.binding,
            "ceilings_leads_per_second": {k: round(v, 1) for k, v in self.ceilings.items()},
            "users": self.users,
            "concurrency_per_user": self.concurrency,
            "batch_ms": round(self.batch_ms, 1),
            "request_ms_measured": round(self.request_ms, 1),
            "record_ms_assumed": self.record_ms,
        }


def estimate_load(
    writes: int,
    *,
    batch_size: int,
    users: int = 1,
    dop_hint: int | None = None,
    max_workers: int = 16,
    request_ms: float,
    record_ms: float,
    limits: OrgLimits | None = None,
) -> LoadEstimate:
    """The load time of ``writes`` planned writes and the limit that binds (see the module docstring)."""
    if batch_size < 1 or users < 1:
        raise ValueError("batch_size and users must be at least 1")
    lim = limits or OrgLimits()
    margin = min(max(lim.safety_margin, 0.01), 1.0)
    concurrency = max(1, min(lim.max_concurrency, max_workers, dop_hint or max_workers))
    batch = min(batch_size, max(writes, 1))
    batch_ms = max(request_ms, 0.0) + batch * max(record_ms, 0.0)
    per_user = {
        "requests": lim.max_requests * margin * batch / lim.window_seconds,
        "execution time": (lim.max_execution_ms * margin / batch_ms) * batch / lim.window_seconds
        if batch_ms > 0
        else float("inf"),
        "concurrency": concurrency * batch / (batch_ms / 1000) if batch_ms > 0 else float("inf"),
    }
    ceilings = {name: rate * users for name, rate in per_user.items()}
    binding = min(ceilings, key=lambda name: ceilings[name])
    rate = ceilings[binding]
    seconds = writes / rate if writes and rate > 0 else 0.0
    return LoadEstimate(
        writes, seconds, rate, binding, ceilings, users, concurrency, batch_ms, float(request_ms), float(record_ms)
    )


def estimate_text(est: LoadEstimate) -> str:
    """One line for the dry run's summary: the time, the rate, who sends, and which limit binds."""
    if not est.writes:
        return "load estimate: nothing to write"
    users = f"{est.users} application user{'s' if est.users != 1 else ''}"
    return (
        f"load estimate: {est.writes:,} writes in about {_duration(est.seconds)} at ≤ {est.leads_per_second:,.0f} "
        f"leads/s ({users}, {est.concurrency} parallel requests each; {est.request_ms:.0f} ms per request measured by "
        f"preflight + {est.record_ms:g} ms per record assumed); binding limit: {est.binding}"
    )


def _duration(seconds: float) -> str:
    if seconds < 90:
        return f"{max(seconds, 1):.0f} s"
    if seconds < 90 * 60:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} h"
