"""Changes to a generated dataset: simulated activity over a time interval (``advance``) and the exact
operations tests ask for (create, edit, consent decision, erase). Every change emits its journal events.
"""

from __future__ import annotations

import random
from typing import Any

from sandbox.data import journal as J
from sandbox.data.generator import (
    DAY,
    OFFER_OUTCOMES,
    EventSink,
    _weighted,
    add_application,
    add_consents,
    add_trackers,
    assign_ids,
    decide_offer,
    edit_offer_type,
    erase,
    make_matriculation,
    make_reference,
    new_applicant,
    submit,
)
from sandbox.data.messy import messy_edit
from sandbox.data.model import DECISION_ACCEPT, DECISION_REJECT, Applicant, Application, Dataset
from sandbox.data.names import ascii_fold
from sandbox.data.profiles import make_email, make_phone, make_profile

# Per-day probabilities (each applicant / application / offer independently), see ``advance``.
DEFAULT_RATES: dict[str, float] = {
    "new_applicants": 0.004,  # new registrations per day, as a fraction of the live applicants
    "edits": 0.02,  # applicants editing their profile
    "applications": 0.01,  # applicants starting a new application
    "submissions": 0.08,  # open (Blank/Prepare/Draft) applications being submitted
    "offer_edits": 0.05,  # Unreplied offers getting a type (Conditional, Rejected, ...)
    "offer_decisions": 0.1,  # positive offers the applicant accepts (Final) or declines
    "consent_withdrawals": 0.003,  # voluntary Accept -> Reject
    "consent_new": 0.01,  # undecided voluntary consent -> Accept/Reject
    "erasures": 0.0005,  # applicants asking to be forgotten
    "messy_edits": 0.0,  # applicants editing in a messy value (sandbox.data.messy): odd phone, country, encoding
}
EDITABLE = ("given", "middle", "family", "email", "phone", "citizenship", "reference", "matriculation", "notes", "type")
APPLICANT_TYPES = ("Natural", "Child", "Legal")


class MutationError(ValueError):
    """A request the data cannot satisfy (unknown consent, course, term...)."""


def _count(rng: random.Random, population: int, rate: float, days: float) -> int:
    if population <= 0 or rate <= 0 or days <= 0:
        return 0
    p = 1.0 - (1.0 - min(rate, 0.999999)) ** days
    expected = population * p
    k = int(expected)
    if rng.random() < expected - k:
        k += 1
    return min(k, population)


def _at(rng: random.Random, lo: int, hi: int) -> int:
    return lo if hi <= lo else rng.randrange(lo, hi + 1)


def _edit_profile(rng: random.Random, a: Applicant) -> list[str]:
    """A realistic profile edit; returns the changed journal fields."""
    r = rng.random()
    if r < 0.4:
        old = a.email
        if old and "@" in old and " " not in old.strip() and ".." not in old:
            local, _, domain = old.strip().partition("@")
            a.email = (
                f"{local}{rng.randrange(10, 99)}@{domain}"
                if rng.random() < 0.5
                else make_email(rng, ascii_fold(a.given or "") or local, ascii_fold(a.family or ""))
            )
        else:  # fixing a missing or broken address
            a.email = make_email(rng, ascii_fold(a.given or "") or "applicant", ascii_fold(a.family or "") or "x")
        return ["email"] if a.email != old else []
    if r < 0.7:
        old = a.phone
        a.phone = make_phone(rng, "372")
        return ["phone"] if a.phone != old else []
    if r < 0.9:
        old_name = (a.given, a.middle, a.family)
        if a.given and a.given != a.given.strip():
            a.given = a.given.strip()
            a.family = (a.family or "").strip() or a.family
        else:
            p = make_profile(rng)
            a.family = p["family"] if rng.random() < 0.7 else f"{a.family or ''}-{p['family'] or ''}".strip("-")
        return ["name"] if (a.given, a.middle, a.family) != old_name else []
    if r < 0.95:
        old = a.citizenship
        a.citizenship = make_profile(rng)["citizenship"] or "EE"
        return ["citizenship"] if a.citizenship != old else []
    a.reference = make_reference(rng)
    return ["reference"]


def advance(ds: Dataset, start: int, end: int, seed: int, rates: dict[str, float] | None = None) -> dict[str, Any]:
    """Simulate activity in ``[start, end]`` (epoch seconds); returns what changed, by kind."""
    unknown = set(rates or {}) - set(DEFAULT_RATES)
    if unknown:
        raise MutationError(f"unknown rates: {sorted(unknown)}")
    R = {**DEFAULT_RATES, **(rates or {})}
    rng = random.Random(f"dreamapply-advance:{ds.seed}:{seed}")
    start = max(start, ds.journal.last_logged)
    end = max(end, start)
    days = (end - start) / DAY
    sink = EventSink()
    last: dict[int, int] = {}  # applicant id -> time of its latest event in this step
    out: dict[str, Any] = {
        k: []
        for k in (
            "applicants_registered",
            "applicants_edited",
            "applications_created",
            "applications_submitted",
            "offers_edited",
            "offers_decided",
            "consents_changed",
            "applicants_erased",
            "applications_purged",
        )
    }
    live_before = list(ds.applicant_order)

    # 1. registrations
    k = _count(rng, max(len(live_before), 1), R["new_applicants"], days)
    for reg in sorted(_at(rng, start, end) for _ in range(k)):
        a = new_applicant(rng, ds, reg)
        add_consents(rng, a, reg, end, sink, later_rate=0.0)
        add_trackers(rng, a, ds.catalog)
        sink.add(reg, J.APPLICANT_REGISTERED, a.id, tracker=a.trackers[0][0] if a.trackers else 0)
        out["applicants_registered"].append(a.id)
        last[a.id] = reg
    live = list(ds.applicant_order)

    # 2. profile edits
    for a_id in sorted(rng.sample(live_before, _count(rng, len(live_before), R["edits"], days))):
        a = ds.applicants[a_id]
        at = _at(rng, max(start, a.registered), end)
        fields = _edit_profile(rng, a)
        if fields:
            sink.add(at, J.APPLICANT_EDITED, a.id, extra=J.edit_mask(fields))
            out["applicants_edited"].append(a.id)
            last[a.id] = max(last.get(a.id, 0), at)

    # 2b. messy edits (none by default: the default rates keep their seeded outcomes)
    out["applicants_messy"] = []
    for a_id in sorted(rng.sample(live_before, _count(rng, len(live_before), R["messy_edits"], days))):
        a = ds.applicants[a_id]
        at = _at(rng, max(start, a.registered), end)
        fields = messy_edit(rng, a)
        if fields:
            sink.add(at, J.APPLICANT_EDITED, a.id, extra=J.edit_mask(fields))
            out["applicants_messy"].append(a.id)
            if a.id not in out["applicants_edited"]:
                out["applicants_edited"].append(a.id)
            last[a.id] = max(last.get(a.id, 0), at)
    out["applicants_edited"].sort()

    # 3. new applications (IDs given in creation order)
    new_apps: list[Application] = []
    for a_id in sorted(rng.sample(live, _count(rng, len(live), R["applications"], days))):
        a = ds.applicants[a_id]
        at = _at(rng, max(start, a.registered, last.get(a_id, 0)), end)
        app = add_application(rng, ds, a, at, end, sink, cloned=bool(a.applications) and rng.random() < 0.25)
        new_apps.append(app)
        last[a_id] = max(last.get(a_id, 0), app.revised)
    assign_ids(ds, new_apps)
    out["applications_created"] = sorted(app.id for app in new_apps)
    out["applications_submitted"] = sorted(app.id for app in new_apps if app.submitted)

    # 4. submissions of open applications
    terms = ds.catalog.terms
    fresh = set(out["applications_created"])
    open_apps = [
        app_id
        for app_id in ds.application_order
        if app_id not in fresh
        and ds.applications[app_id].status in ("Blank", "Prepare", "Draft")
        and terms[ds.applications[app_id].term_id].grace_ts > start
    ]
    for app_id in sorted(rng.sample(open_apps, _count(rng, len(open_apps), R["submissions"], days))):
        app = ds.applications[app_id]
        at = _at(rng, max(start, app.revised, last.get(app.applicant_id, 0)), end)
        submit(None, ds, app, at, end, sink)
        out["applications_submitted"].append(app_id)
        last[app.applicant_id] = max(last.get(app.applicant_id, 0), at)

    # 5. offer edits and 6. decisions
    unreplied = ds.catalog.offer_type_by_title("Unreplied").id
    decidable = {t.id for t in ds.catalog.offer_types.values() if t.decide}
    pending, positive = [], []
    for offer in ds.offers.values():
        app = ds.applications[offer.application_id]
        if app.erased or app.status == "Withdrawn":
            continue
        if offer.type_id == unreplied:
            pending.append(offer.id)
        elif offer.type_id in decidable and offer.decision == "None":
            positive.append(offer.id)
    for offer_id in sorted(rng.sample(pending, _count(rng, len(pending), R["offer_edits"], days))):
        offer = ds.offers[offer_id]
        app = ds.applications[offer.application_id]
        at = _at(rng, max(start, offer.saved), end)
        edit_offer_type(ds, app, offer, _weighted(rng, OFFER_OUTCOMES), at, rng, sink)
        out["offers_edited"].append(offer_id)
        last[app.applicant_id] = max(last.get(app.applicant_id, 0), at)
    for offer_id in sorted(rng.sample(positive, _count(rng, len(positive), R["offer_decisions"], days))):
        offer = ds.offers[offer_id]
        app = ds.applications[offer.application_id]
        at = _at(rng, max(start, offer.saved), end)
        decide_offer(app, offer, "Final" if rng.random() < 0.7 else "Declined", at, sink)
        out["offers_decided"].append(offer_id)
        last[app.applicant_id] = max(last.get(app.applicant_id, 0), at)

    # 7. consents
    accepted = [
        (a_id, c)
        for a_id in live_before
        for c in (2, 3)
        if (ds.applicants[a_id].consents or {}).get(c, ("",))[0] == DECISION_ACCEPT
    ]
    undecided = [(a_id, c) for a_id in live_before for c in (2, 3) if c not in (ds.applicants[a_id].consents or {})]
    changes = [
        (p, DECISION_REJECT) for p in rng.sample(accepted, _count(rng, len(accepted), R["consent_withdrawals"], days))
    ]
    changes += [
        (p, DECISION_ACCEPT if rng.random() < 0.6 else DECISION_REJECT)
        for p in rng.sample(undecided, _count(rng, len(undecided), R["consent_new"], days))
    ]
    for (a_id, cid), decision in sorted(changes):
        a = ds.applicants[a_id]
        at = _at(rng, max(start, a.registered), end)
        set_consent_record(a, cid, decision, at)
        sink.add(at, J.CONSENT_CHANGED, a_id, extra=J.consent_extra(cid, decision))
        out["consents_changed"].append({"applicant": a_id, "consent": cid, "decision": decision})
        last[a_id] = max(last.get(a_id, 0), at)

    # 8. erasures (after anything else the applicant did in this step)
    for a_id in sorted(rng.sample(live, _count(rng, len(live), R["erasures"], days))):
        a = ds.applicants[a_id]
        at = _at(rng, max(start, a.registered, last.get(a_id, 0)), end)
        marked = max(a.registered, at - rng.randrange(0, 3 * DAY))
        out["applications_purged"] += erase(ds, a, at, marked, sink)
        out["applicants_erased"].append(a_id)

    ids = sink.flush(ds.journal)
    ds.purged.sort(key=lambda p: p.created)
    ds.advances += 1
    out["applications_submitted"].sort()
    out["journal"] = {"first": ids[0] if ids else None, "last": ids[-1] if ids else None, "count": len(ids)}
    return out


# -- exact operations (admin API) ----------------------------------------------------------
def set_consent_record(a: Applicant, cid: int, decision: str | None, at: int) -> None:
    if decision is None:
        if a.consents:
            a.consents.pop(cid, None)
            if not a.consents:
                a.consents = None
        return
    if a.consents is None:
        a.consents = {}
    a.consents[cid] = (decision, at)


def _norm_decision(value: Any) -> str | None:
    if value is None or (isinstance(value, str) and value.lower() in ("", "undecided", "none")):
        return None
    if isinstance(value, str) and value.lower() in ("accept", "accepted"):
        return DECISION_ACCEPT
    if isinstance(value, str) and value.lower() in ("reject", "rejected"):
        return DECISION_REJECT
    raise MutationError(f"decision must be Accept, Reject or null, not {value!r}")


def set_consent(ds: Dataset, a: Applicant, cid: int, decision: Any, at: int) -> int:
    if cid not in ds.catalog.consents:
        raise MutationError(f"no consent {cid}")
    d = _norm_decision(decision)
    set_consent_record(a, cid, d, at)
    return ds.journal.append(at, J.CONSENT_CHANGED, a.id, extra=J.consent_extra(cid, d))


def _resolve_course(ds: Dataset, ref: Any) -> int:
    if isinstance(ref, int) and ref in ds.catalog.courses:
        return ref
    for c in ds.catalog.courses.values():
        if isinstance(ref, str) and c.code and c.code.lower() == ref.lower():
            return c.id
    raise MutationError(f"no course {ref!r}")


def _resolve_tracker(ds: Dataset, ref: Any) -> int:
    if isinstance(ref, int) and ref in ds.catalog.trackers:
        return ref
    for t in ds.catalog.trackers.values():
        if isinstance(ref, str) and t.code.lower() == ref.lower():
            return t.id
    raise MutationError(f"no tracker {ref!r}")


def _resolve_term(ds: Dataset, spec: dict[str, Any], at: int) -> int:
    if spec.get("term") is not None:
        if int(spec["term"]) not in ds.catalog.terms:
            raise MutationError(f"no academic term {spec['term']!r}")
        return int(spec["term"])
    if spec.get("year") is not None:
        for t in ds.catalog.terms.values():
            if t.year == int(spec["year"]):
                return t.id
        raise MutationError(f"no academic year {spec['year']!r}")
    upcoming = [t for t in ds.catalog.terms.values() if t.start_ts > at]
    return min(upcoming, key=lambda t: t.start_ts).id if upcoming else max(ds.catalog.terms)


def create_application(ds: Dataset, a: Applicant, spec: dict[str, Any], at: int, sink: EventSink) -> Application:
    """An application as specified.

    ``{"term"|"year", "courses": [id|code], "status", "offers": [{"type", "decision"}]}``
    """
    status = spec.get("status", "Prepare")
    if status not in [s.title for s in ds.catalog.statuses.values()]:
        raise MutationError(f"unknown status {status!r}")
    courses = [_resolve_course(ds, c) for c in spec.get("courses") or [1]]
    if len(set(courses)) != len(courses):
        raise MutationError("duplicate course")
    term_id = _resolve_term(ds, spec, at)
    intakes = ds.catalog.intakes_of_term(term_id)
    app = Application(0, a.id, term_id, "Prepare", at)
    app.courses = tuple((c, intakes[0].id if intakes else 0) for c in courses)
    sink.add(at, J.APPLICATION_CREATED, a.id, app)
    app.id = ds.next_application_id
    ds.next_application_id += 1
    ds.applications[app.id] = app
    ds.application_order.append(app.id)
    a.applications = [*(a.applications or []), app.id]
    if status in ("Submitted", "Reopened", "Closed") or spec.get("offers"):
        submit(None, ds, app, at, at, sink)
        for offer_id, ospec in zip(app.offers or [], spec.get("offers") or [], strict=False):
            edit_offer(ds, offer_id, ospec, at, sink)
    app.status = status
    return app


def edit_offer(ds: Dataset, offer_id: int, spec: dict[str, Any], at: int, sink: EventSink) -> None:
    offer = ds.offers.get(offer_id)
    if offer is None:
        raise MutationError(f"no offer {offer_id}")
    app = ds.applications[offer.application_id]
    if spec.get("type") is not None:
        try:
            title = ds.catalog.offer_type_by_title(str(spec["type"])).title
        except KeyError:
            raise MutationError(f"unknown offer type {spec['type']!r}") from None
        edit_offer_type(ds, app, offer, title, at, None, sink)
    if spec.get("decision") not in (None, "None"):
        if spec["decision"] not in ("Final", "Declined"):
            raise MutationError("offer decision must be Final, Declined or None")
        decide_offer(app, offer, spec["decision"], at, sink)


def create_applicant(ds: Dataset, spec: dict[str, Any], at: int, rng: random.Random) -> Applicant:
    """An applicant registered at ``at``: given fields as specified, the rest generated."""
    bad = set(spec) - {*EDITABLE, "consents", "trackers", "applications"}
    if bad:
        raise MutationError(f"unknown fields: {sorted(bad)}")
    sink = EventSink()
    a = new_applicant(rng, ds, at)
    if "consents" not in spec:
        add_consents(rng, a, at, at, sink, later_rate=0.0)
    if "trackers" not in spec:
        add_trackers(rng, a, ds.catalog)
    try:
        _apply_fields(a, spec)
        consents = spec.get("consents") or {}
        if isinstance(consents, list):
            consents = {str(c["consent"]): c.get("decision") for c in consents}
        a.consents = None
        for cid, decision in consents.items():
            if int(cid) not in ds.catalog.consents:
                raise MutationError(f"no consent {cid}")
            set_consent_record(a, int(cid), _norm_decision(decision), at)
        if "trackers" in spec:
            a.trackers = tuple((_resolve_tracker(ds, t), at) for t in spec["trackers"] or ()) or None
        sink.add(at, J.APPLICANT_REGISTERED, a.id, tracker=a.trackers[0][0] if a.trackers else 0)
        for app_spec in spec.get("applications") or ():
            create_application(ds, a, app_spec, at, sink)
    except (MutationError, KeyError, TypeError, ValueError):
        # undo the registration: the ID stays used, like a failed insert
        ds.applicant_order.remove(a.id)
        del ds.applicants[a.id]
        raise
    sink.flush(ds.journal)
    return a


def _apply_fields(a: Applicant, changes: dict[str, Any]) -> list[str]:
    changed: list[str] = []
    for key in EDITABLE:
        if key not in changes:
            continue
        value = changes[key]
        if value is not None and not isinstance(value, str):
            raise MutationError(f"{key} must be a string or null")
        if key == "type" and value not in APPLICANT_TYPES:
            raise MutationError(f"type must be one of {APPLICANT_TYPES}")
        if getattr(a, key) != value:
            setattr(a, key, value)
            field = "name" if key in ("given", "middle", "family") else key
            if field not in changed:
                changed.append(field)
    return changed


def edit_applicant(ds: Dataset, a: Applicant, changes: dict[str, Any], at: int) -> tuple[list[str], int | None]:
    bad = set(changes) - set(EDITABLE)
    if bad:
        raise MutationError(f"unknown or read-only fields: {sorted(bad)}")
    fields = _apply_fields(a, changes)
    if not fields:
        return fields, None
    return fields, ds.journal.append(at, J.APPLICANT_EDITED, a.id, extra=J.edit_mask(fields))


def erase_applicant(ds: Dataset, a: Applicant, at: int, forgotten: bool = True) -> tuple[list[int], int]:
    sink = EventSink()
    apps = erase(ds, a, at, at, sink, forgotten)
    ids = sink.flush(ds.journal)
    return apps, ids[-1]


__all__ = [
    "DEFAULT_RATES",
    "MutationError",
    "advance",
    "create_applicant",
    "create_application",
    "edit_applicant",
    "edit_offer",
    "erase_applicant",
    "make_matriculation",
    "set_consent",
]
