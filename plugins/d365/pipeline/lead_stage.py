"""The applicant's lead stage and the date they entered it, computed from applications and offers.

DreamApply's API has no "lead stage" field (reference §2.7), so it is derived here. Pure and deterministic:
the same record, catalog and rules always give the same answer.

Stages, most advanced first (they match the sandbox's ``uni_leadstage`` options; ``Rejected`` is not an
option there, so the default settings let the load add it):

=============  ========================================================  ==================================
stage          an application is in this stage when                      stage date (the event that put it
                                                                         there)
=============  ========================================================  ==================================
Enrolled       it has an offer whose type title is an "enrolled" type     that offer's confirmed, else saved,
               (``enrolled_offer_types``) and that was not Declined       else inserted
Accepted       it has an offer with decision ``Final`` (not a rejection)  confirmed, else saved, else inserted
Offer          it has a positive offer with decision ``None`` (open)      saved, else inserted
Submitted      status is Submitted/Reopened/Resubmitted (or an unknown    submitted, else revised, else created
               status with a submitted timestamp), offers still pending
Applying       status is Blank/Prepare/Draft/Inactive (or unknown)        created
Rejected       every offer is a rejection (``rejected_offer_types``)      the last rejection's saved
Withdrawn      status is Withdrawn; or Closed with nothing accepted; or   revised (the last one), else created
               every positive offer was Declined by the applicant
Registered     the applicant has no applications                          applicant.registered
=============  ========================================================  ==================================

An offer is *positive* when its type title is known and is neither a rejection nor a pending type
(``pending_offer_types``: Unreplied, Waitlisted, Interview, Pending; DreamApply creates an "Unreplied"
offer for every course at submission, which is not an offer yet). Titles and statuses are matched
case-insensitively; the lists are configurable in the settings' ``lead_stage`` section.

The applicant's stage is the highest-ranked application stage (Enrolled > Accepted > Offer > Submitted >
Applying > Rejected > Withdrawn > Registered: an open application outranks a closed one). The stage
date is the earliest date among the applications in that stage (when the applicant *entered* it), except
for Rejected and Withdrawn, where it is the latest (the stage is reached when the last one closed).

The *current application* (the one whose programmes and term the lead shows) is the application with the
highest stage, ties broken by latest activity (max of created/revised/submitted/offer timestamps), then
by highest id.

Timestamps are returned as ISO 8601 UTC (``2025-11-24T10:56:34Z``); offsets are converted, naive values are
taken as UTC; unparseable ones are skipped. Timestamps later than ``now`` (clock skew) are clamped to
``now`` when ``now`` is given.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, date, datetime
from typing import Any

STAGES: tuple[str, ...] = (
    "Registered",
    "Withdrawn",
    "Rejected",
    "Applying",
    "Submitted",
    "Offer",
    "Accepted",
    "Enrolled",
)
RANK: dict[str, int] = {name: i for i, name in enumerate(STAGES)}
# stages reached when the *last* application got there (date = max); the others take the first (min)
_LAST_EVENT_STAGES = frozenset({"Rejected", "Withdrawn"})


@dataclass(frozen=True)
class StageRules:
    rejected_offer_types: tuple[str, ...] = ("Rejected", "Not admitted")
    pending_offer_types: tuple[str, ...] = ("Unreplied", "Waitlisted", "Interview", "Pending")
    enrolled_offer_types: tuple[str, ...] = ("Enrolled",)
    applying_statuses: tuple[str, ...] = ("Blank", "Prepare", "Draft", "Inactive")
    submitted_statuses: tuple[str, ...] = ("Submitted", "Reopened", "Resubmitted")
    withdrawn_statuses: tuple[str, ...] = ("Withdrawn",)
    closed_statuses: tuple[str, ...] = ("Closed",)

    def folded(self, name: str) -> frozenset[str]:
        return frozenset(v.strip().casefold() for v in getattr(self, name))


DEFAULT_RULES = StageRules()


@dataclass(frozen=True)
class StageResult:
    stage: str
    changed: str | None  # ISO UTC
    application: Mapping[str, Any] | None  # the current application (None for Registered)


def parse_instant(value: Any) -> datetime | None:
    """An aware UTC datetime from an ISO 8601 string/date/datetime, or None. Never raises."""
    try:
        if isinstance(value, datetime):
            dt = value
        elif isinstance(value, date):
            dt = datetime(value.year, value.month, value.day)
        elif isinstance(value, str):
            text = value.strip()
            if not text or len(text) > 64:
                return None
            dt = datetime.fromisoformat(text)
        else:
            return None
        if dt.tzinfo is None:
            dt = dt.replace(tzinfo=UTC)
        return dt.astimezone(UTC)
    except (ValueError, OverflowError, TypeError):
        return None


def iso_utc(dt: datetime | None) -> str | None:
    if dt is None:
        return None
    return dt.astimezone(UTC).replace(microsecond=0).strftime("%Y-%m-%dT%H:%M:%SZ")


def _fold(value: Any) -> str:
    return value.strip().casefold() if isinstance(value, str) else ""


def _get(record: Any, key: str) -> Any:
    return record.get(key) if isinstance(record, Mapping) else None


def _first(*values: datetime | None) -> datetime | None:
    return next((v for v in values if v is not None), None)


class _Evaluator:
    def __init__(self, catalog: Any, rules: StageRules, now: datetime | None) -> None:
        offer_types = _get(catalog, "offer_types")
        self.offer_types = offer_types if isinstance(offer_types, Mapping) else {}
        self.now = now
        self.rejected = rules.folded("rejected_offer_types")
        self.pending = rules.folded("pending_offer_types")
        self.enrolled = rules.folded("enrolled_offer_types")
        self.applying = rules.folded("applying_statuses")
        self.submitted = rules.folded("submitted_statuses")
        self.withdrawn = rules.folded("withdrawn_statuses")
        self.closed = rules.folded("closed_statuses")

    def ts(self, value: Any) -> datetime | None:
        dt = parse_instant(value)
        if dt is not None and self.now is not None and dt > self.now:
            return self.now
        return dt

    def offer_title(self, offer: Mapping[str, Any]) -> str:
        title = offer.get("type_title")
        if not isinstance(title, str) or not title.strip():
            type_id = offer.get("type_id")
            title = self.offer_types.get(str(type_id)) if type_id is not None else None
        return _fold(title)

    def application(self, app: Mapping[str, Any]) -> tuple[str, datetime | None, datetime | None]:
        """(stage, stage date, last activity) of one application."""
        status = _fold(app.get("status"))
        created = self.ts(app.get("created"))
        revised = self.ts(app.get("revised"))
        submitted = self.ts(app.get("submitted"))
        activity = [t for t in (created, revised, submitted) if t is not None]

        enrolled: list[datetime | None] = []
        accepted: list[datetime | None] = []
        open_offers: list[datetime | None] = []
        rejected: list[datetime | None] = []
        declined: list[datetime | None] = []
        pending = 0
        offers = app.get("offers")
        for offer in offers if isinstance(offers, list) else []:
            if not isinstance(offer, Mapping):
                continue
            inserted, saved, confirmed = (self.ts(offer.get(k)) for k in ("inserted", "saved", "confirmed"))
            activity.extend(t for t in (inserted, saved, confirmed) if t is not None)
            title = self.offer_title(offer)
            decision = _fold(offer.get("decision"))
            if title in self.rejected:
                rejected.append(_first(saved, inserted))
            elif decision == "declined":
                declined.append(_first(saved, confirmed, inserted))
            elif title in self.enrolled and title:
                enrolled.append(_first(confirmed, saved, inserted))
            elif decision == "final":
                accepted.append(_first(confirmed, saved, inserted))
            elif not title or title in self.pending:
                pending += 1
            else:
                open_offers.append(_first(saved, inserted))
        last = max(activity) if activity else None
        withdrawn_at = _first(revised, created)

        if status in self.withdrawn:
            return "Withdrawn", withdrawn_at, last
        if enrolled:
            return "Enrolled", _min(enrolled), last
        if accepted:
            return "Accepted", _min(accepted), last
        everything_rejected = bool(rejected) and not (open_offers or pending or declined)
        if status in self.closed:
            if everything_rejected:
                return "Rejected", _max(rejected), last
            return "Withdrawn", withdrawn_at, last
        if open_offers:
            return "Offer", _min(open_offers), last
        if everything_rejected:
            return "Rejected", _max(rejected), last
        if declined and not pending:
            return "Withdrawn", _max(declined), last
        if status in self.submitted or (status not in self.applying and submitted is not None):
            return "Submitted", _first(submitted, revised, created), last
        return "Applying", created, last


def _min(values: list[datetime | None]) -> datetime | None:
    known = [v for v in values if v is not None]
    return min(known) if known else None


def _max(values: list[datetime | None]) -> datetime | None:
    known = [v for v in values if v is not None]
    return max(known) if known else None


def evaluate(
    applicant: Any, catalog: Any, *, rules: StageRules | None = None, now: datetime | None = None
) -> StageResult:
    """Stage, stage date and current application. Tolerates broken records (never raises on data)."""
    now_utc = parse_instant(now) if now is not None else None
    ev = _Evaluator(catalog, rules or DEFAULT_RULES, now_utc)
    apps = _get(applicant, "applications")
    scored: list[tuple[int, datetime, int, str, datetime | None, Mapping[str, Any]]] = []
    floor = datetime.min.replace(tzinfo=UTC)
    for app in apps if isinstance(apps, list) else []:
        if not isinstance(app, Mapping):
            continue
        stage, when, last = ev.application(app)
        app_id = app.get("id")
        order = app_id if isinstance(app_id, int) and not isinstance(app_id, bool) else -1
        scored.append((RANK[stage], last or floor, order, stage, when, app))
    if not scored:
        return StageResult("Registered", iso_utc(ev.ts(_get(applicant, "registered"))), None)
    best = max(scored, key=lambda s: (s[0], s[1], s[2]))
    stage = best[3]
    dates = [s[4] for s in scored if s[3] == stage]
    when = _max(dates) if stage in _LAST_EVENT_STAGES else _min(dates)
    return StageResult(stage, iso_utc(when), best[5])


def derive_stage(
    applicant: Any, catalog: Any, *, now: datetime | None = None, rules: StageRules | None = None
) -> tuple[str, str | None]:
    """``(stage, stage change timestamp as ISO UTC or None)`` for one applicant. See the module docstring."""
    result = evaluate(applicant, catalog, rules=rules, now=now)
    return result.stage, result.changed


def current_application(applicant: Any, catalog: Any, *, rules: StageRules | None = None) -> Mapping[str, Any] | None:
    """The most advanced application (ties: latest activity, then highest id); None without applications."""
    return evaluate(applicant, catalog, rules=rules).application
