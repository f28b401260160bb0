"""The source side of the mapping (:mod:`d365.pipeline.mapping`): value helpers (countries, phones,
consents, the catalog check) and ``_Record``, the applicant view the registry's getters read (``SOURCE_GETTERS``).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Mapping
from functools import cached_property, lru_cache
from typing import Any, Protocol

import phonenumbers
import pycountry

from d365.pipeline.fields import REGISTRY
from d365.pipeline.lead_stage import StageResult, StageRules, evaluate
from d365.pipeline.settings import Settings, resolve_consents

# --------------------------------------------------------------------------------------------------
# small value helpers
# --------------------------------------------------------------------------------------------------

_EXTRA_COUNTRIES = {"XK": "Kosovo"}  # user-assigned code DreamApply and many registries use
# what a typed phone number looks like: digits and separators, optionally an extension
_PHONE_SHAPE = re.compile(r"[\d\s+\-().\/\u00a0]*(?:(?:ext\.?|x|#)\s*\d+)?\s*", re.IGNORECASE)


def _get(record: Any, key: str) -> Any:
    return record.get(key) if isinstance(record, Mapping) else None


def _empty(value: Any) -> bool:
    if isinstance(value, str):
        return not value.strip()
    return value is None or (isinstance(value, list | tuple) and not value)


def _trim(value: Any) -> Any:
    """Strings trimmed (empty → None); anything else unchanged (fit decides whether it is a wrong type)."""
    if isinstance(value, str):
        value = value.strip()
        return value or None
    return value


def _int(value: Any) -> int | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value
    if isinstance(value, str) and value.strip().isdigit() and len(value.strip()) < 19:
        return int(value.strip())
    return None


@lru_cache(maxsize=4096)
def country_code(value: str) -> str | None:
    """ISO 3166-1 alpha-2 for a code, alpha-3 or English name; None when unknown."""
    text = value.strip()
    if not text or len(text) > 80:
        return None
    upper = text.upper()
    if upper in _EXTRA_COUNTRIES:
        return upper
    if len(upper) == 2:
        return upper if pycountry.countries.get(alpha_2=upper) else None
    try:
        return pycountry.countries.lookup(text).alpha_2
    except (LookupError, KeyError, AttributeError):
        return None


def phone_regions(country: str | None, default_region: str | None) -> tuple[str | None, ...]:
    """The regions a phone typed without a country code is read with, in order: the citizenship's
    (ISO alpha-2; not ``XK``, which has no numbering plan), then ``quality.default_region``."""
    regions: list[str | None] = []
    for region in (country, default_region):
        if region and region not in _EXTRA_COUNTRIES and region not in regions:
            regions.append(region)
    return tuple(regions) or (None,)


@lru_cache(maxsize=65536)
def parse_phone(text: str, regions: tuple[str | None, ...] = (None,)) -> phonenumbers.PhoneNumber | None:
    """THE rule for E.164 (the quality check and the mapping both use it): a number typed with no letters
    that phonenumbers finds **valid** for one of ``regions`` (tried in order), or one typed in international
    form (+ or 00) with a **possible** length (E.164 then keeps the digits typed, while a national form would
    depend on guessing the trunk prefix). None otherwise."""
    if not _PHONE_SHAPE.fullmatch(text):  # no letters: phonenumbers would read "please" as vanity digits
        return None
    international = text.lstrip().startswith(("+", "00"))
    for region in regions or (None,):
        try:
            number = phonenumbers.parse(text, region)
        except phonenumbers.NumberParseException:
            continue
        if phonenumbers.is_valid_number(number) or (international and phonenumbers.is_possible_number(number)):
            return number
    return None


def country_name(code: str) -> str:
    if code in _EXTRA_COUNTRIES:
        return _EXTRA_COUNTRIES[code]
    country = pycountry.countries.get(alpha_2=code)
    return getattr(country, "common_name", None) or country.name


def consent_given(applicant: Any, consent_ids: Iterable[int]) -> bool:
    """True when every consent id has the decision "Accept". Undecided (absent) counts as not given."""
    decisions = _get(applicant, "consents")
    decisions = decisions if isinstance(decisions, Mapping) else {}
    return all(_get_decision(decisions, cid) == "accept" for cid in consent_ids)


def _get_decision(decisions: Mapping[Any, Any], cid: int) -> str:
    value = decisions.get(str(cid), decisions.get(cid))
    return value.strip().casefold() if isinstance(value, str) else ""


def consent_status(applicant: Any, catalog: Any, settings: Settings) -> tuple[bool, list[int]]:
    """For the consent step: ``(all consent.required accepted, ids not accepted)``. A ``required`` entry
    that matches no consent definition makes the answer False (nothing can prove that consent)."""
    ids, errors = settings.consent.resolve(_get(catalog, "consents") or {})
    decisions = _get(applicant, "consents")
    decisions = decisions if isinstance(decisions, Mapping) else {}
    missing = sorted(cid for cid in ids if _get_decision(decisions, cid) != "accept")
    return (not missing and not errors), missing


def check_catalog(settings: Settings, catalog: Any) -> list[str]:
    """Preflight against DreamApply's reference data: consent references that select nothing."""
    errors = [f"consent.required: {e}" for e in settings.consent.resolve(_get(catalog, "consents") or {})[1]]
    for attr, entry in settings.data_mapping.items():
        if entry.consents is not None:
            found = resolve_consents(entry.consents, _mapping(_get(catalog, "consents")))[1]
            errors += [f"data_mapping.{attr}.consents: {e}" for e in found]
    return errors


# --------------------------------------------------------------------------------------------------
# source fields: the getters are the registry's (fields.py); _Record is what they read (fields.SourceView)
# --------------------------------------------------------------------------------------------------


class MapperView(Protocol):
    """What a ``_Record`` reads of the mapper that made it (``mapping.Mapper``): the catalog and the stage rules."""

    catalog: Any
    rules: StageRules
    terms: Mapping[str, Any]
    courses: Mapping[str, Any]
    trackers: Mapping[str, Any]
    instance: str
    default_consents: frozenset[int]


class _Record:
    """One applicant with its derived facts, computed lazily and once."""

    def __init__(
        self, mapper: MapperView, applicant: Mapping[str, Any], applicant_id: int, actions: Mapping[str, str]
    ) -> None:
        self.m = mapper
        self.a = applicant
        self.applicant_id = applicant_id
        self.actions = actions  # quality field → "drop" / "send_as_entered" (invalid values only)

    def field(self, key: str) -> Any:
        if self.actions.get(key) == "drop":
            return None
        return _trim(self.a.get(key))

    @cached_property
    def stage(self) -> StageResult:
        return evaluate(self.a, self.m.catalog, rules=self.m.rules)

    @cached_property
    def courses(self) -> list[Mapping[str, Any]]:
        """The current application's course choices, by priority (unknown priorities last), then course id."""
        app = self.stage.application
        choices = _get(app, "courses")
        valid = [c for c in (choices if isinstance(choices, list) else []) if _int(_get(c, "course_id")) is not None]

        def order(c: Mapping[str, Any]) -> tuple[int, int]:
            priority = _int(c.get("priority"))
            return (priority if priority is not None else 1 << 30, _int(c.get("course_id")) or 0)

        return sorted(valid, key=order)

    def course(self, choice: Mapping[str, Any]) -> Mapping[str, Any]:
        found = self.m.courses.get(str(_int(choice.get("course_id"))))
        return found if isinstance(found, Mapping) else {}

    def course_texts(self, key: str) -> list[str]:
        texts = (_trim(self.course(c).get(key)) for c in self.courses)
        return [t for t in texts if isinstance(t, str)]

    @cached_property
    def term(self) -> Mapping[str, Any]:
        term_id = _int(_get(self.stage.application, "academic_term_id"))
        found = self.m.terms.get(str(term_id)) if term_id is not None else None
        return found if isinstance(found, Mapping) else {}

    @cached_property
    def country(self) -> str | None:
        raw = self.field("citizenship")
        return country_code(raw) if isinstance(raw, str) else None

    def course_ids(self) -> list[int]:
        return [_int(c.get("course_id")) for c in self.courses]  # type: ignore[misc] - courses are valid ids

    def first_course(self, key: str) -> Any:
        return _trim(self.course(self.courses[0]).get(key)) if self.courses else None

    def term_text(self, key: str) -> Any:
        return _trim(self.term.get(key))

    def term_number(self, key: str) -> int | None:
        return _int(self.term.get(key))

    def term_year_name(self) -> Any:
        """The academic year's name, else its number as text."""
        name = _trim(self.term.get("year_name"))
        if name is not None:
            return name
        year = _int(self.term.get("year"))
        return str(year) if year is not None else None

    @property
    def instance(self) -> str | None:
        return self.m.instance

    def consent_given(self) -> bool:
        return consent_given(self.a, self.m.default_consents)

    @cached_property
    def tracker_codes(self) -> list[str]:
        ids = self.a.get("tracker_ids")
        codes: list[str] = []
        for tid in sorted(i for i in (ids if isinstance(ids, list) else []) if _int(i) is not None):
            code = self.m.trackers.get(str(tid))
            if isinstance(code, str) and code.strip():
                codes.append(code.strip())
        listed = self.a.get("tracker_codes")
        codes += [c.strip() for c in (listed if isinstance(listed, list) else []) if isinstance(c, str) and c.strip()]
        return list(dict.fromkeys(codes))


# source field → how it is read from a ``_Record`` (the registry's getters; one entry per field by construction)
SOURCE_GETTERS: dict[str, Callable[[_Record], Any]] = {f.name: f.get for f in REGISTRY}


def _mapping(value: Any) -> Mapping[str, Any]:
    return value if isinstance(value, Mapping) else {}
