"""The normalised shapes that flow between pipeline steps (extract → quality → mapping → plan → load).

DreamApply's wire format (ID-keyed objects, link strings, hyphenated offer keys) is flattened once, in
extract, into these plain dicts; every later step reads only these keys. A wire record of the wrong shape is
never raised on: it becomes a record with ``malformed`` notes that the quality step can report per row.
All values are JSON-safe so a record round-trips through the run folder's files unchanged.
"""

from __future__ import annotations

from typing import NotRequired, TypedDict


class CourseChoice(TypedDict):
    course_id: int
    priority: int | None
    intake_id: int | None


class OfferRecord(TypedDict):
    id: int
    course_id: int | None
    type_id: int | None
    type_title: str | None  # resolved from /applications/offers/types
    decision: str | None  # "None", "Final", "Declined"
    inserted: str | None  # ISO 8601 with offset, as DreamApply sends it
    saved: str | None
    confirmed: str | None


class ApplicationRecord(TypedDict):
    id: int  # None only in a malformed record (see ``malformed``)
    status: str | None  # open set: Prepare, Draft, Submitted, Reopened, Withdrawn, Closed, ...
    created: str | None
    revised: str | None
    submitted: str | None
    academic_term_id: int | None
    courses: list[CourseChoice]
    offers: list[OfferRecord]
    # what extract could not read in the wire record (value-free notes, e.g. "courses: a list instead of an
    # object"): the applicant's record is then malformed and the quality step quarantines it
    malformed: NotRequired[list[str]]


class ApplicantRecord(TypedDict):
    """An applicant as the steps see it. Besides the keys below it holds one key per applicant field of the
    source-field registry (``fields.APPLICANT_FIELDS``: ``record_key`` ← DreamApply's ``wire`` path, e.g.
    ``name_given`` ← ``name.given``, ``email``, ``phone``), with the value as DreamApply sent it (text or None;
    a value of another type is kept for the quality step to report). The registry is the only list of them."""

    applicant_id: int  # None only in a malformed record whose id is not a positive integer
    # consent id (as string) -> "Accept" | "Reject"; an undecided consent is absent
    consents: dict[str, str]
    # tracker ids and codes assigned to the applicant
    tracker_ids: list[int]
    tracker_codes: list[str]
    applications: list[ApplicationRecord]
    # why extract fetched this applicant: "new", "changed", "requested" (manual send) or "resync"
    reason: NotRequired[str]
    # what extract could not read in the wire record, as value-free notes ("name: text instead of an
    # object", "id: text instead of a positive integer"); absent when the record has the documented shape.
    # The quality step quarantines such a record per row (reason "record: malformed (...)"), before consent.
    malformed: NotRequired[list[str]]


class AcademicTerm(TypedDict):
    id: int
    name: str | None
    year: int | None  # the academic year key, e.g. 2025
    year_name: str | None  # e.g. "2025/26"
    type_id: int | None
    type_name: str | None  # e.g. "Fall semester"
    start: str | None  # YYYY-MM-DD
    finish: str | None


class Course(TypedDict):
    id: int
    name: str | None
    code: str | None
    code_internal: NotRequired[str | None]
    type: str | None
    mode: str | None


class ConsentDefinition(TypedDict):
    id: int
    type: str | None  # Mandatory, Voluntary
    text: str | None


class Catalog(TypedDict):
    """Reference data resolved once per run (a handful of requests, never one per applicant)."""

    terms: dict[str, AcademicTerm]  # keyed by term id as string (JSON object keys)
    courses: dict[str, Course]
    consents: dict[str, ConsentDefinition]
    trackers: dict[str, str]  # tracker id -> code
    offer_types: dict[str, str]  # offer type id -> title
