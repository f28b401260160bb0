"""The source-field registry: every field a ``data_mapping`` entry may read, declared once.

One :class:`SourceField` per name says where the value comes from in DreamApply (the JSON path the extract
reads into the applicant record, or how it is derived), its kind, whether it is personal data, which quality
checks apply and what an invalid value does by default, how the mapping reads it and how the docs describe it.
The extract (``normalise_applicant``), the settings (names, kinds, quality field names), the mapping
(getters), the quality step (text fields, length checks) and privacy (personal columns, scrubbed keys) all
read this tuple, so adding a DreamApply field is one entry here plus its ``data_mapping`` entry.

Deliberately imports nothing from the pipeline: settings imports it, and settings must stay below mapping.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any, Literal, Protocol

Kind = Literal["text", "int", "bool", "date", "datetime", "list", "phone", "country"]
FieldPolicy = Literal["drop", "send_as_entered", "quarantine"]
# How personal a field is. ``identifying``: names the person on its own (a name, an e-mail address, a phone, a
# reference number); its column is personal and ``privacy.scrub_run_files`` removes its values from every run
# file. ``personal``: about the person but shared by many (a country, a timestamp); its column is personal
# (anonymise clears it) but its values are not hunted in other files, where they equal other applicants'.
# ``none``: not personal data (ids, the lead stage, the programme).
Privacy = Literal["identifying", "personal", "none"]
# Quality checks of an applicant field (quality.py): ``text`` (a non-string value), ``encoding`` (mojibake,
# U+FFFD), ``email`` (syntax), ``phone`` (E.164 rule), ``country`` (ISO 3166-1), ``instant`` (ISO 8601 from 1753).
QualityCheck = Literal["text", "encoding", "email", "phone", "country", "instant"]
TEXT_CHECKS: tuple[QualityCheck, ...] = ("text", "encoding")
# The one quality field that is no source field: an application's created/submitted/revised dates (they feed
# the lead stage, not a column).
APPLICATION_DATES = "application_dates"


class StageView(Protocol):
    stage: str | None
    changed: str | None


class SourceView(Protocol):
    """What a getter reads: one applicant with its derived facts (``mapping._Record`` implements it)."""

    applicant_id: int
    instance: str | None
    stage: StageView
    tracker_codes: list[str]

    def field(self, key: str) -> Any: ...  # the record's value, trimmed; None when the field policy drops it
    def course_ids(self) -> list[int]: ...  # current application's course ids, by priority
    def course_texts(self, key: str) -> list[str]: ...  # those courses' texts (code, name), by priority
    def first_course(self, key: str) -> Any: ...  # the first-priority course's text
    def term_text(self, key: str) -> Any: ...  # the current application's academic term's text
    def term_number(self, key: str) -> int | None: ...
    def term_year_name(self) -> Any: ...
    def consent_given(self) -> bool: ...


@dataclass(frozen=True)
class SourceField:
    """One source field. ``wire`` and ``record_key`` are set together: the extract copies the DreamApply
    applicant's ``wire`` path (dots walk into objects, e.g. ``name.given``) to the record's ``record_key``."""

    name: str  # what data_mapping names (applicant.phone)
    kind: Kind  # drives the format checks in settings and the type checks in fit
    privacy: Privacy
    get: Callable[[SourceView], Any]  # how the mapping reads it
    description: str  # short; docs/settings.md holds the full text
    origin: str  # where it comes from in DreamApply (the docs and the reader of this table)
    wire: str | None = None  # JSON path in DreamApply's applicant object the extract reads; None: derived
    record_key: str | None = None  # key in records.ApplicantRecord (also the quality field name)
    checks: tuple[QualityCheck, ...] = ()  # quality checks of the record value (record fields only)
    default_policy: FieldPolicy = "drop"  # what an invalid value does unless quality.field_policy says otherwise

    def __post_init__(self) -> None:
        if (self.wire is None) != (self.record_key is None):
            raise ValueError(f"{self.name}: wire and record_key are set together")
        if self.checks and self.record_key is None:
            raise ValueError(f"{self.name}: quality checks read a record value; give wire and record_key")
        if self.privacy == "identifying" and self.record_key is None:
            # scrub_run_files finds personal values by record key: an identifying field without one could
            # not be scrubbed
            raise ValueError(f"{self.name}: an identifying field needs a record_key (what scrub_run_files removes)")


def _applicant(
    name: str,
    wire: str,
    kind: Kind,
    privacy: Privacy,
    description: str,
    checks: tuple[QualityCheck, ...] = TEXT_CHECKS,
) -> SourceField:
    """A field the extract copies from the applicant object (its record key is the wire path, dots as _)."""
    key = wire.replace(".", "_")
    return SourceField(
        name=name,
        kind=kind,
        privacy=privacy,
        get=lambda r: r.field(key),
        description=description,
        origin=f"GET /applicants/{{id}}: {wire}",
        wire=wire,
        record_key=key,
        checks=checks,
    )


_CURRENT = "the current application (lead_stage)"
REGISTRY: tuple[SourceField, ...] = (
    SourceField(
        "applicant.id", "int", "none", lambda r: r.applicant_id, "DreamApply applicant ID", "GET /applicants/{id}: id"
    ),
    _applicant("applicant.type", "type", "text", "none", "Applicant type: Natural, Child or Legal"),
    _applicant(
        "applicant.registered",
        "registered",
        "datetime",
        "personal",
        "Registration timestamp",
        (*TEXT_CHECKS, "instant"),
    ),
    _applicant("applicant.name.full", "name.full", "text", "identifying", "Full name as DreamApply shows it"),
    _applicant("applicant.name.given", "name.given", "text", "identifying", "Given (first) name"),
    _applicant("applicant.name.middle", "name.middle", "text", "identifying", "Middle name"),
    _applicant("applicant.name.family", "name.family", "text", "identifying", "Family (last) name"),
    _applicant("applicant.email", "email", "text", "identifying", "E-mail address", (*TEXT_CHECKS, "email")),
    _applicant(
        "applicant.phone",
        "phone",
        "phone",
        "identifying",
        "Phone; E.164 by default (format e164), `format: text` keeps it as entered",
        (*TEXT_CHECKS, "phone"),
    ),
    _applicant(
        "applicant.citizenship",
        "citizenship",
        "country",
        "personal",
        "Citizenship: ISO 3166-1 alpha-2 code; `format: country_name` for the name",
        (*TEXT_CHECKS, "country"),
    ),
    _applicant("applicant.reference", "reference", "text", "identifying", "Reference (often the SIS student ID)"),
    _applicant("applicant.matriculation", "matriculation", "text", "identifying", "Matriculation number"),
    SourceField(
        "lead.stage",
        "text",
        "none",
        lambda r: r.stage.stage,
        "Lead stage label (Registered, Applying, Submitted, Offer, ...; see lead_stage.py)",
        "applications (status, offers) and the journal, evaluated by lead_stage",
    ),
    SourceField(
        "lead.stage_changed",
        "datetime",
        "none",
        lambda r: r.stage.changed,
        "When the applicant entered the current lead stage",
        "applications (created, submitted, offers), evaluated by lead_stage",
    ),
    SourceField(
        "programme.ids",
        "list",
        "none",
        lambda r: [str(i) for i in r.course_ids()],
        "Course IDs of the current application, by priority (joined with `separator`)",
        f"courses of {_CURRENT}",
    ),
    SourceField(
        "programme.codes",
        "list",
        "none",
        lambda r: r.course_texts("code"),
        "Course codes of the current application, by priority (no code: skipped)",
        f"courses of {_CURRENT}, codes from GET /courses",
    ),
    SourceField(
        "programme.names",
        "list",
        "none",
        lambda r: r.course_texts("name"),
        "Course names of the current application, by priority",
        f"courses of {_CURRENT}, names from GET /courses",
    ),
    SourceField(
        "programme.id",
        "int",
        "none",
        lambda r: (r.course_ids() or [None])[0],
        "Course ID of the first-priority course of the current application",
        f"courses of {_CURRENT}",
    ),
    SourceField(
        "programme.code",
        "text",
        "none",
        lambda r: r.first_course("code"),
        "Course code of the first-priority course",
        f"courses of {_CURRENT}, code from GET /courses",
    ),
    SourceField(
        "programme.name",
        "text",
        "none",
        lambda r: r.first_course("name"),
        "Course name of the first-priority course",
        f"courses of {_CURRENT}, name from GET /courses",
    ),
    SourceField(
        "term.name",
        "text",
        "none",
        lambda r: r.term_text("name"),
        "Academic term name of the current application, e.g. 'Fall semester 2025/26'",
        f"academic_term of {_CURRENT}, from GET /academic-terms",
    ),
    SourceField(
        "term.year",
        "text",
        "none",
        lambda r: r.term_year_name(),
        "Academic year name, e.g. '2025/26' (the year number when the name is unknown)",
        "GET /academic-years, by the term's year",
    ),
    SourceField(
        "term.year_number",
        "int",
        "none",
        lambda r: r.term_number("year"),
        "Academic year key, e.g. 2025",
        "GET /academic-terms: year",
    ),
    SourceField(
        "term.type",
        "text",
        "none",
        lambda r: r.term_text("type_name"),
        "Academic term type name, e.g. 'Fall semester'",
        "GET /academic-terms/types, by the term's type",
    ),
    SourceField(
        "term.start", "date", "none", lambda r: r.term_text("start"), "Academic term start date", "GET /academic-terms"
    ),
    SourceField(
        "term.finish", "date", "none", lambda r: r.term_text("finish"), "Academic term end date", "GET /academic-terms"
    ),
    SourceField(
        "dreamapply.instance",
        "text",
        "none",
        lambda r: r.instance,
        "The DreamApply instance (host) the applicant comes from",
        "the DreamApply connection's host",
    ),
    SourceField(
        "consent.given",
        "bool",
        "none",
        lambda r: r.consent_given(),  # per-entry `consents`: Mapper
        "True when every consent of `consents` (default: consent.required) is accepted",
        "GET /applicants/{id}?expand=consents",
    ),
    SourceField(
        "tracker.codes",
        "list",
        "none",
        lambda r: r.tracker_codes,
        "Tracker codes assigned to the applicant (joined with `separator`)",
        "GET /applicants/{id}?expand=trackers, codes from GET /applicants/trackers",
    ),
    SourceField(
        "tracker.code",
        "text",
        "none",
        lambda r: r.tracker_codes[0] if r.tracker_codes else None,
        "The first tracker code (lowest tracker ID)",
        "GET /applicants/{id}?expand=trackers, codes from GET /applicants/trackers",
    ),
)

# -- views derived from the registry (never a second hand-written list) -------------------------------------
SOURCE_FIELDS: dict[str, SourceField] = {f.name: f for f in REGISTRY}
# the fields the extract copies from DreamApply's applicant object, in registry order
APPLICANT_FIELDS: tuple[SourceField, ...] = tuple(f for f in REGISTRY if f.wire is not None)
# quality field name (the record key) → the source field that reads it; application dates feed no column
QUALITY_FIELDS: dict[str, str | None] = {
    **{f.record_key: f.name for f in REGISTRY if f.checks and f.record_key},
    APPLICATION_DATES: None,
}
DEFAULT_POLICIES: dict[str, FieldPolicy] = {
    **{f.record_key: f.default_policy for f in REGISTRY if f.checks and f.record_key},
    APPLICATION_DATES: "drop",
}


def personal_sources(fields: Iterable[SourceField] = REGISTRY) -> frozenset[str]:
    """Source fields holding personal data: a column fed by one of them is a personal column."""
    return frozenset(f.name for f in fields if f.privacy != "none")


def scrubbed_record_keys(fields: Iterable[SourceField] = REGISTRY) -> frozenset[str]:
    """Record keys whose values ``scrub_run_files`` removes: every identifying field (a record key is
    required for one, so an identifying field cannot be left out)."""
    return frozenset(f.record_key for f in fields if f.privacy == "identifying" and f.record_key)


def checked_fields(check: QualityCheck, fields: Iterable[SourceField] = REGISTRY) -> tuple[str, ...]:
    """Record keys of the fields a quality check applies to, in registry order."""
    return tuple(f.record_key for f in fields if check in f.checks and f.record_key)
