"""Compact in-memory records of the synthetic DreamApply instance.

Records use ``__slots__`` and store times as integer epoch seconds (UTC); JSON is produced on demand by
``sandbox.dreamapply.render``. 200 000 applicants with their applications, offers and journal fit in a
few hundred MiB this way.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from sandbox.data.journal import Journal

DECISION_ACCEPT = "Accept"
DECISION_REJECT = "Reject"


class Applicant:
    __slots__ = (
        "applications",
        "citizenship",
        "consents",
        "email",
        "erased",
        "family",
        "given",
        "id",
        "legal",
        "matriculation",
        "middle",
        "notes",
        "parent",
        "phone",
        "reference",
        "registered",
        "trackers",
        "type",
        "wire",
    )

    def __init__(
        self,
        id: int,
        registered: int,
        given: str | None,
        middle: str | None,
        family: str | None,
        email: str | None,
        phone: str | None,
        citizenship: str | None,
        type: str = "Natural",
        reference: str | None = None,
        matriculation: str | None = None,
        notes: str | None = None,
        parent: str | None = None,
        legal: str | None = None,
    ) -> None:
        self.id = id
        self.registered = registered
        self.given = given
        self.middle = middle
        self.family = family
        self.email = email
        self.phone = phone
        self.citizenship = citizenship
        self.type = type
        self.reference = reference
        self.matriculation = matriculation
        self.notes = notes
        self.parent = parent
        self.legal = legal
        # consent id -> (decision "Accept"/"Reject", decided epoch); None when no decision at all.
        self.consents: dict[int, tuple[str, int]] | None = None
        # tuple of (tracker id, assigned epoch)
        self.trackers: tuple[tuple[int, int], ...] | None = None
        # application ids, oldest first
        self.applications: list[int] | None = None
        # epoch of erasure, 0 while live
        self.erased = 0
        # how the API misrenders this record (sandbox.data.wire.WireOverride), None = as DreamApply renders it
        self.wire: Any = None

    def full_name(self) -> str:
        return " ".join(p for p in (self.given, self.middle, self.family) if p)

    def as_dict(self) -> dict[str, Any]:
        """The raw internal record (admin API)."""
        return {
            "id": self.id,
            "type": self.type,
            "registered": self.registered,
            "given": self.given,
            "middle": self.middle,
            "family": self.family,
            "parent": self.parent,
            "legal": self.legal,
            "email": self.email,
            "phone": self.phone,
            "citizenship": self.citizenship,
            "reference": self.reference,
            "matriculation": self.matriculation,
            "notes": self.notes,
            "consents": {str(k): {"decision": d, "decided": t} for k, (d, t) in (self.consents or {}).items()},
            "trackers": [{"tracker": t, "assigned": a} for t, a in (self.trackers or ())],
            "applications": list(self.applications or ()),
            "erased": bool(self.erased),
            "erased_at": self.erased or None,
            "wire": self.wire.as_dict() if self.wire is not None else None,
        }


class Application:
    __slots__ = (
        "applicant_id",
        "courses",
        "created",
        "erased",
        "id",
        "offers",
        "revised",
        "status",
        "submitted",
        "term_id",
    )

    def __init__(self, id: int, applicant_id: int, term_id: int, status: str, created: int) -> None:
        self.id = id
        self.applicant_id = applicant_id
        self.term_id = term_id
        self.status = status
        self.created = created
        self.revised = created
        self.submitted = 0
        # tuple of (course id, intake id) in priority order (index 0 = priority 1)
        self.courses: tuple[tuple[int, int], ...] = ()
        # offer ids in priority order; None before submission
        self.offers: list[int] | None = None
        self.erased = 0

    def as_dict(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "applicant": self.applicant_id,
            "academic_term": self.term_id,
            "status": self.status,
            "created": self.created,
            "revised": self.revised,
            "submitted": self.submitted or None,
            "courses": [{"course": c, "intake": i} for c, i in self.courses],
            "offers": list(self.offers or ()),
            "erased": bool(self.erased),
        }


class Offer:
    __slots__ = (
        "application_id",
        "confirmed",
        "course_id",
        "decided",
        "decision",
        "decision_deadline",
        "id",
        "inserted",
        "intake_id",
        "priority",
        "saved",
        "score",
        "scored",
        "type_confirmed_id",
        "type_id",
    )

    def __init__(
        self, id: int, application_id: int, course_id: int, intake_id: int, priority: int, type_id: int, inserted: int
    ) -> None:
        self.id = id
        self.application_id = application_id
        self.course_id = course_id
        self.intake_id = intake_id
        self.priority = priority
        self.type_id = type_id
        self.type_confirmed_id = 0
        self.inserted = inserted
        self.saved = inserted
        self.confirmed = 0
        self.decision = "None"
        self.decided = 0
        self.decision_deadline: str | None = None
        self.score: str | None = None
        self.scored = 0

    def as_dict(self) -> dict[str, Any]:
        return {s: getattr(self, s) for s in self.__slots__}


@dataclass
class Purge:
    """One purged resource (an erased applicant or one of its applications)."""

    id: int
    type: str  # "Applicant" | "Application"
    created: int  # when the purge happened
    marked: int  # when it was marked for purging (the erasure request)
    request_to_be_forgotten: bool


@dataclass
class AcademicYear:
    year: int
    name: str
    start: str


@dataclass
class TermType:
    id: int
    name: str


@dataclass
class Term:
    id: int
    year: int
    name: str
    type_id: int
    start: str
    grace: str
    finish: str
    # epoch of start and grace, for status decisions
    start_ts: int = 0
    grace_ts: int = 0


@dataclass
class Intake:
    id: int
    name: str
    term_id: int
    start: str
    deadline: str
    late_deadline: str | None
    policy: str
    decision_days: int
    arrival: str
    commence: str
    open_ts: int = 0
    close_ts: int = 0


@dataclass
class Institution:
    id: int
    name: str
    country: str
    www: str


@dataclass
class Course:
    id: int
    name: str
    code: str | None
    code_internal: str | None
    status: str
    type: str
    mode: str
    award_abbr: str
    award_full: str
    duration: str
    credits: str | None
    language: str
    country: str
    location: str
    institution_id: int
    quota: int | None
    featured: bool
    updated: int
    accreditation: str | None = None


@dataclass
class Tracker:
    id: int
    code: str
    created: int
    notes: str | None
    reduction: dict[str, Any] | None


@dataclass
class ConsentDefinition:
    id: int
    type: str  # Mandatory | Voluntary
    text: str
    link: str | None


@dataclass
class OfferType:
    id: int
    title: str
    colour: str
    ranking: str
    positive: bool
    confirm: bool = False
    freeze: bool = False
    decide: bool = False
    decline: bool = False
    reopen: bool = False
    silence: bool = False


@dataclass
class Status:
    id: int
    title: str
    colour: str
    verbose: str


@dataclass
class Catalog:
    years: dict[int, AcademicYear]
    term_types: dict[int, TermType]
    terms: dict[int, Term]
    intakes: dict[int, Intake]
    institutions: dict[int, Institution]
    courses: dict[int, Course]
    trackers: dict[int, Tracker]
    consents: dict[int, ConsentDefinition]
    offer_types: dict[int, OfferType]
    statuses: dict[int, Status]

    def intakes_of_term(self, term_id: int) -> list[Intake]:
        return [i for i in self.intakes.values() if i.term_id == term_id]

    def offer_type_by_title(self, title: str) -> OfferType:
        for t in self.offer_types.values():
            if t.title.lower() == title.lower():
                return t
        raise KeyError(title)


# The application ID space starts here so applicant and application IDs never collide in
# /purged-resources (one ID-keyed map for both types).
APPLICATION_ID_BASE = 1_000_000


@dataclass
class Dataset:
    seed: int
    anchor: int  # epoch second the data was generated "as of"
    catalog: Catalog
    applicants: dict[int, Applicant] = field(default_factory=dict)
    # live (not erased) applicant ids, ascending (= registration order)
    applicant_order: list[int] = field(default_factory=list)
    applications: dict[int, Application] = field(default_factory=dict)
    # live application ids, ascending (= creation order)
    application_order: list[int] = field(default_factory=list)
    offers: dict[int, Offer] = field(default_factory=dict)
    journal: Journal = field(default_factory=Journal)
    purged: list[Purge] = field(default_factory=list)
    next_applicant_id: int = 1
    next_application_id: int = APPLICATION_ID_BASE + 1
    next_offer_id: int = 1
    advances: int = 0
