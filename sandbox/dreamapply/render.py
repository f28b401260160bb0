"""Wire shapes of DreamApply API v9 resources, built on demand from the compact records.

Field names follow the reference (§2, §3): snake_case ``academic_term`` on applications, hyphenated keys
on offers (``type-confirmed``...) and intakes (``academic-term``), links as ``/api/v9/...`` strings.
Association items (an applicant's consents and trackers, an application's courses) carry no ``id``,
exactly as the reference's v9 examples; records and definitions do.
"""

from __future__ import annotations

import time
from typing import Any

from sandbox.data.journal import EVENT_NAMES, Journal
from sandbox.data.model import (
    AcademicYear,
    Applicant,
    Application,
    Catalog,
    ConsentDefinition,
    Course,
    Dataset,
    Institution,
    Intake,
    Offer,
    OfferType,
    Purge,
    Status,
    Term,
    TermType,
    Tracker,
)

API = "/api/v9"
_gmtime = time.gmtime
_strftime = time.strftime


def ts(epoch: int) -> str | None:
    """``2025-11-24T10:56:34+00:00``; 0 → None."""
    if not epoch:
        return None
    return _strftime("%Y-%m-%dT%H:%M:%S+00:00", _gmtime(epoch))


# -- applicants ------------------------------------------------------------------------------
def consent_associations(a: Applicant) -> dict[str, Any]:
    return {
        str(cid): {"decided": ts(decided), "decision": decision, "consent": f"{API}/applicants/consents/{cid}"}
        for cid, (decision, decided) in sorted((a.consents or {}).items())
    }


def consent_association(a: Applicant, cid: int) -> dict[str, Any] | None:
    entry = (a.consents or {}).get(cid)
    if entry is None:
        return None
    return {"decided": ts(entry[1]), "decision": entry[0], "consent": f"{API}/applicants/consents/{cid}"}


def tracker_associations(a: Applicant) -> dict[str, Any]:
    return {
        str(tid): {"assigned": ts(assigned), "tracker": f"{API}/applicants/trackers/{tid}"}
        for tid, assigned in a.trackers or ()
    }


def applicant_key(a: Applicant) -> str:
    """The record's key in ID-keyed collections: its id, unless a wire override says otherwise."""
    return a.wire.key if a.wire is not None and a.wire.key is not None else str(a.id)


def applicant(a: Applicant, expand: set[str] | frozenset[str] = frozenset()) -> Any:
    """The wire record; an applicant with a wire override (``sandbox.data.wire``) is served malformed."""
    out = _applicant(a, expand)
    return a.wire.apply(out) if a.wire is not None else out


def _applicant(a: Applicant, expand: set[str] | frozenset[str]) -> dict[str, Any]:
    base = f"{API}/applicants/{a.id}"
    given, middle, family = a.given, a.middle, a.family
    return {
        "id": a.id,
        "type": a.type,
        "registered": ts(a.registered),
        "name": {
            "full": " ".join(p for p in (given, middle, family) if p),
            "given": given,
            "middle": middle,
            "family": family,
            "parent": a.parent,
            "legal": a.legal,
        },
        "email": a.email,
        "phone": a.phone,
        "reference": a.reference,
        "matriculation": a.matriculation,
        "citizenship": a.citizenship,
        "notes": a.notes,
        "address": None,
        "vatin": None,
        "applications": f"{base}/applications",
        "trackers": tracker_associations(a) if "trackers" in expand else f"{base}/trackers",
        "photo": f"{base}/photo",
        "consents": consent_associations(a) if "consents" in expand else f"{base}/consents",
        "invoices": {} if "invoices" in expand else f"{base}/invoices",
        "wishes": {} if "wishes" in expand else f"{base}/wishes",
        "documents": {} if "documents" in expand else f"{base}/documents",
        "emails": f"{base}/emails",
    }


def consent_definition(c: ConsentDefinition) -> dict[str, Any]:
    return {"id": c.id, "type": c.type, "text": c.text, "link": c.link}


def tracker(t: Tracker) -> dict[str, Any]:
    return {"id": t.id, "created": ts(t.created), "code": t.code, "notes": t.notes, "reduction": t.reduction}


# -- applications ----------------------------------------------------------------------------
def application_courses(app: Application, ds: Dataset) -> dict[str, Any]:
    return {
        str(cid): {
            "priority": prio,
            "submitted": ts(app.submitted),
            "modifier": None,
            "course": f"{API}/courses/{cid}",
            "intake": f"{API}/intakes/{iid}" if iid else None,
        }
        for prio, (cid, iid) in enumerate(app.courses, start=1)
    }


def offer(o: Offer, cat: Catalog) -> dict[str, Any]:
    otype = cat.offer_types.get(o.type_id)
    return {
        "id": o.id,
        "priority": o.priority,
        "inserted": ts(o.inserted),
        "saved": ts(o.saved),
        "confirmed": ts(o.confirmed),
        "course": f"{API}/courses/{o.course_id}",
        "intake": f"{API}/intakes/{o.intake_id}" if o.intake_id else None,
        "type": f"{API}/applications/offers/types/{o.type_id}",
        "type-confirmed": f"{API}/applications/offers/types/{o.type_confirmed_id}" if o.type_confirmed_id else None,
        "comments": None,
        "comments-confirmed": None,
        "decision": o.decision,
        "decision-policy": "Required" if otype is not None and otype.decide else "None",
        "decision-deadline": o.decision_deadline,
        "decided": ts(o.decided),
        "score": {"auto": o.score, "extra": None},
        "scored": ts(o.scored),
        "subject": None,
        "reason": None,
        "notes": None,
    }


def application_offers(app: Application, ds: Dataset) -> dict[str, Any]:
    return {str(oid): offer(ds.offers[oid], ds.catalog) for oid in app.offers or ()}


def application(app: Application, ds: Dataset, expand: set[str] | frozenset[str] = frozenset()) -> dict[str, Any]:
    base = f"{API}/applications/{app.id}"
    term = ds.catalog.terms[app.term_id]
    out: dict[str, Any] = {
        "id": app.id,
        "created": ts(app.created),
        "revised": ts(app.revised),
        "submitted": ts(app.submitted),
        "status": app.status,
        "commence_year": str(term.year),
        "academic_term": f"{API}/academic-terms/{app.term_id}",
        "applicant": f"{API}/applicants/{app.applicant_id}",
        "flags": f"{base}/flags",
        "courses": f"{base}/courses",
        "offers": f"{base}/offers",
        "exports": f"{base}/exports",
        "documents": f"{base}/documents",
    }
    if expand:
        if "applicant" in expand:
            out["applicant"] = applicant(ds.applicants[app.applicant_id])
        if "flags" in expand:
            out["flags"] = {}
        if "courses" in expand:
            out["courses"] = application_courses(app, ds)
        if "offers" in expand:
            out["offers"] = application_offers(app, ds)
        if "documents" in expand:
            out["documents"] = {}
    return out


def _birth(seed: int) -> str:
    year = 1970 + seed % 36
    return f"{year}-{seed // 7 % 12 + 1:02d}-{seed // 11 % 28 + 1:02d}"


def application_record(
    app: Application, ds: Dataset, expand: set[str] | frozenset[str] = frozenset()
) -> dict[str, Any]:
    """``/applications/{id}``: the list fields plus the application contents (a sandbox-sized subset)."""
    a = ds.applicants[app.applicant_id]
    out = application(app, ds, expand)
    out["pdf"] = f"{API}/applications/{app.id}/pdf"
    for key in ("tasks", "scores", "references"):
        if key in expand:
            out[key] = {}
    out.update(
        {
            "profile": {
                "name": {"given": a.given, "middle": a.middle, "family": a.family},
                "birth": {"date": _birth(a.id * 7919 + app.id), "place": None},
                "nationality": a.citizenship,
                "citizenship": a.citizenship,
                "gender": "FM"[app.id % 2],
            },
            "legal": {},
            "contact": {"email": a.email, "phone": a.phone},
            "home": {"country": a.citizenship},
            "host": {},
            "education": {},
            "grades": {},
            "languages": {},
            "career": {},
            "activities": {},
            "residences": {},
            "motivation": {},
            "visa": {},
            "misc": {},
            "extras": {},
        }
    )
    return out


def status(s: Status) -> dict[str, Any]:
    return {"id": s.id, "title": s.title, "colour": s.colour, "verbose": s.verbose}


def offer_type(t: OfferType) -> dict[str, Any]:
    return {
        "id": t.id,
        "title": t.title,
        "colour": t.colour,
        "ranking": t.ranking,
        "confirm": t.confirm,
        "freeze": t.freeze,
        "decide": t.decide,
        "decline": t.decline,
        "reopen": t.reopen,
        "silence": t.silence,
        "subject": None,
        "comments": None,
    }


# -- academic set-up -------------------------------------------------------------------------
def academic_year(y: AcademicYear) -> dict[str, Any]:
    return {"id": y.year, "name": y.name, "start": y.start}


def term_type(t: TermType) -> dict[str, Any]:
    return {"id": t.id, "name": t.name}


def academic_term(t: Term) -> dict[str, Any]:
    return {
        "id": t.id,
        "year": f"{API}/academic-years/{t.year}",
        "name": t.name,
        "type": f"{API}/academic-terms/types/{t.type_id}",
        "start": t.start,
        "grace": t.grace,
        "finish": t.finish,
    }


def intake(i: Intake, cat: Catalog) -> dict[str, Any]:
    deadlines: dict[str, Any] = {"001": {"deadline": i.deadline, "info": None}}
    if i.late_deadline:
        deadlines["150"] = {"deadline": i.late_deadline, "info": "EU/EEA applicants"}
    return {
        "id": i.id,
        "name": i.name,
        "start": i.start,
        "pre": {"deadline": None, "info": "Pre-application questions are optional.", "mask": False},
        "policy": i.policy,
        "deadlines": deadlines,
        "decision": {"policy": "Required", "days": i.decision_days},
        "arrival": i.arrival,
        "commence": i.commence,
        "academic-term": academic_term(cat.terms[i.term_id]),
    }


def institution(i: Institution) -> dict[str, Any]:
    return {"id": i.id, "name": i.name, "country": i.country, "www": i.www}


def course(c: Course, cat: Catalog) -> dict[str, Any]:
    return {
        "id": c.id,
        "status": c.status,
        "updated": ts(c.updated),
        "institution": f"{API}/institutions/{c.institution_id}",
        "intakes": {str(i): f"{API}/intakes/{i}" for i in cat.intakes},
        "featured": c.featured,
        "type": c.type,
        "awards": [{"abbr": c.award_abbr, "full": c.award_full}],
        "name": c.name,
        "mode": c.mode,
        "duration": c.duration,
        "credits": c.credits,
        "language": c.language,
        "country": c.country,
        "location": c.location,
        "code": c.code,
        "code_internal": c.code_internal,
        "accreditation": c.accreditation,
        "quota": c.quota,
        "prospect": {"uri": None},
    }


# -- journal and purges ----------------------------------------------------------------------
def journal_item(j: Journal, event_id: int) -> dict[str, Any]:
    i = event_id - 1
    applicant_id = j.applicant[i]
    app_id = j.application[i]
    offer_id = j.offer[i]
    course_id = j.course[i]
    tracker_id = j.tracker[i]
    return {
        "id": event_id,
        "logged": ts(j.logged[i]),
        "event": EVENT_NAMES[j.event[i]],
        "bind": j.bind(event_id),
        "administrator": None,
        "applicant": f"{API}/applicants/{applicant_id}" if applicant_id else None,
        "application": f"{API}/applications/{app_id}" if app_id else None,
        "course": f"{API}/courses/{course_id}" if course_id else None,
        "institution": None,
        "invoice": None,
        "offer": f"{API}/applications/{app_id}/offers/{offer_id}" if offer_id else None,
        "document": None,
        "flag": None,
        "tracker": f"{API}/applicants/trackers/{tracker_id}" if tracker_id else None,
    }


def purge(p: Purge) -> dict[str, Any]:
    return {
        "id": p.id,
        "type": p.type,
        "created": ts(p.created),
        "request_to_be_forgotten": p.request_to_be_forgotten,
        "marked": {"at": ts(p.marked)},
    }
