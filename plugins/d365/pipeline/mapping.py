"""Applicant → lead payload. THE place where a lead's fields are computed.

Which column gets what is data: ``data_mapping`` in include/mappings/settings.yaml (keys: docs/settings.md).
This module computes the named *source fields* (the getters of ``fields.REGISTRY`` over ``_Record``) and
fits them to the columns (fit.py). With the default settings:

=======================  =====================  ==========================================================
lead column              source field           how it is computed
=======================  =====================  ==========================================================
firstname / middlename   applicant.name.given   the record's name_given / name_middle, trimmed; kept as
                         / .middle              typed (apostrophes, accents); cut at 50 (fit_policy)
lastname                 applicant.name.family  name_family, else (fallback) name_full
emailaddress1            applicant.email        email, trimmed (quarantined if > 100: fit_policy override)
mobilephone              applicant.phone        ``_phone``: E.164 via phonenumbers (+ " ext. N") when valid
                                                (regions: citizenship, then quality.default_region) or
                                                possible and typed with +/00 (``parse_phone``); else the
                                                field policy: null (drop, default: cleared on update),
                                                as typed if it fits (send_as_entered), or quarantine
subject                  template               "DreamApply applicant {applicant.id}" (``_render``)
uni_applicantid          applicant.id           always written when dynamics.alternate_key is set
uni_dreamapplyinstance   dreamapply.instance    the ``instance`` argument (dynamics.instance_column)
uni_registeredon         applicant.registered   ISO UTC (fit: DateTime columns)
uni_citizenship          applicant.citizenship  ``_country``: ISO alpha-2 checked with pycountry (or the
                                                English name with ``format: country_name``); unknown:
                                                the field policy, as for phones
uni_reference, ...       applicant.reference,   trimmed text
uni_matriculation        .matriculation
uni_leadstage            lead.stage             lead_stage.evaluate → label → picklist option value
uni_stagechangedon       lead.stage_changed     lead_stage.evaluate (the event that entered the stage)
uni_programmeids         programme.ids          course ids of the *current application* (lead_stage) by
                                                priority, joined with ","
uni_academicterm, year,  term.name, .year,      catalog.terms[current application's academic_term_id]
termtype, termstartdate  .type, .start          (type is a picklist label, start a DateOnly date)
uni_consentgiven,        consent.given          ``consent_given``: every selected consent (here 2, marketing)
donotbulkemail                                  is "Accept"; donotbulkemail is its negation (value_map)
leadsourcecode           tracker.code           first tracker code → value_map → picklist label
=======================  =====================  ==========================================================

Per attribute (``Mapper.map``): source (then ``fallback`` sources while empty) | template | constant →
format (dates, e164, country) → ``value_map`` → ``default`` when empty → ``if_empty`` (null / omit /
quarantine) → ``fit.fit_value`` (type, MaxLength, picklist label → int, dates) → payload, issue or
quarantine. A source the quality step found invalid arrives with its field policy's action
(``Mapper.map(applicant, fields)``): ``drop`` reads it as empty and writes the column ``null`` (cleared on
update), ``send_as_entered`` sends it as typed only when it fits the column. Owner binding and lead ids
are the load's job. Consent *gating* (skip without consent) is the consent step's: use ``consent_status``.
Never raises on data: a broken record is quarantined.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import phonenumbers

from d365.pipeline.fit import (
    AttributeSpec,
    FitIssue,
    FitPolicy,
    describe_value,
    fit_value,
    format_temporal,
    is_date_only_value,
    normalize_label,
    utf16_len,
)
from d365.pipeline.lead_stage import iso_utc, parse_instant
from d365.pipeline.mapping_result import MappedLead, payload_hash
from d365.pipeline.mapping_source import (
    SOURCE_GETTERS,
    _empty,
    _get,
    _int,
    _mapping,
    _Record,
    check_catalog,
    consent_given,
    consent_status,
    country_code,
    country_name,
    parse_phone,
    phone_regions,
)
from d365.pipeline.settings import QUALITY_FIELDS, SOURCE_FIELDS, FieldMapping, Settings, resolve_consents

# the public names, those of mapping_source included (importers keep reading them from here)
__all__ = [
    "SOURCE_GETTERS",
    "MappedLead",
    "Mapper",
    "_Record",
    "check_catalog",
    "consent_given",
    "consent_status",
    "country_code",
    "country_name",
    "map_applicant",
    "map_applicants",
    "parse_phone",
    "payload_hash",
    "phone_regions",
]

# source field → the quality field (settings.QUALITY_FIELDS) whose checks it is subject to
_QUALITY_FIELD_OF = {source: name for name, source in QUALITY_FIELDS.items() if source}
# issues of the mapping's own checks that mean "an invalid value sent as entered"
_AS_ENTERED_CODES = frozenset({"invalid_phone", "invalid_country"})

_TEMPLATE = re.compile(r"\{\{|\}\}|\{([^{}]*)\}")


# --------------------------------------------------------------------------------------------------
# the mapper
# --------------------------------------------------------------------------------------------------


@dataclass
class _Plan:
    attribute: str
    entry: FieldMapping
    spec: AttributeSpec | None
    policy: FitPolicy
    value_map: dict[str, Any] | None
    consents: frozenset[int] | None


class Mapper:
    """Maps many applicants with one settings/schema/catalog (the per-run work is done once here)."""

    def __init__(self, settings: Settings, schema: Mapping[str, AttributeSpec], catalog: Any, *, instance: str):
        self.settings = settings
        self.schema = schema
        self.catalog = catalog
        self.instance = instance
        self.rules = settings.lead_stage.rules()
        self.timezone = settings.timezone
        self.terms = _mapping(_get(catalog, "terms"))
        self.courses = _mapping(_get(catalog, "courses"))
        self.trackers = _mapping(_get(catalog, "trackers"))
        consents = _mapping(_get(catalog, "consents"))
        ids, errors = settings.consent.resolve(consents)
        # a reference that selects nothing can never be satisfied: use an impossible id
        self.default_consents = frozenset(ids | ({-1} if errors else set()))
        self.plan: list[_Plan] = []
        self._template_plans: dict[str, _Plan] = {}
        for attribute, entry in settings.data_mapping.items():
            spec = schema.get(attribute)
            date_format = entry.format if entry.format in ("date", "date_local", "datetime_utc") else None
            policy = FitPolicy(
                too_long=settings.too_long_policy(attribute),
                picklist=entry.picklist,
                on_missing_option=entry.on_missing_option,
                add_allowlist=entry.add_allowlist,
                date_format=date_format,
                timezone=entry.timezone or settings.timezone,
            )
            value_map = None
            if entry.value_map is not None:
                value_map = {normalize_label(str(k)): v for k, v in entry.value_map.items()}
            entry_consents = None
            if entry.consents is not None:
                ids, errors = resolve_consents(entry.consents, consents)
                entry_consents = frozenset(ids | ({-1} if errors else set()))
            self.plan.append(_Plan(attribute, entry, spec, policy, value_map, entry_consents))

    # -- per applicant -----------------------------------------------------------------------------

    def map(self, applicant: Any, fields: Mapping[str, str] | None = None) -> MappedLead:
        """One applicant → MappedLead. Never raises: anything unexpected quarantines the record.

        ``fields``: what the quality step found invalid and its policy decided (``QualityResult.field_actions``):
        quality field (``settings.QUALITY_FIELDS``) → ``drop`` (the source reads as empty and the column is
        written ``null``: left empty on create, cleared on update, even with ``if_empty: omit``) or
        ``send_as_entered`` (sent as typed when it fits the column, else dropped the same way). Without it,
        the mapping's own phone and country checks follow ``quality.field_policy``."""
        raw_id = _get(applicant, "applicant_id")
        applicant_id = _int(raw_id)
        if not isinstance(applicant, Mapping):
            return MappedLead(None, {}, quarantine_reason=f"not an applicant record ({type(applicant).__name__})")
        if applicant_id is None or applicant_id <= 0:
            reason = f"applicant_id is missing or not a positive integer (got {describe_value(raw_id)})"
            return MappedLead(None, {}, quarantine_reason=reason)
        try:
            return self._map(applicant, applicant_id, fields or {})
        except Exception as exc:  # never raise on data
            reason = f"internal error while mapping: {type(exc).__name__}"  # the text may quote values
            return MappedLead(applicant_id, {}, quarantine_reason=reason)

    def _map(self, applicant: Mapping[str, Any], applicant_id: int, fields: Mapping[str, str]) -> MappedLead:
        record = _Record(self, applicant, applicant_id, fields)
        payload: dict[str, Any] = {}
        issues: list[FitIssue] = []
        needed: list[tuple[str, str]] = []

        def put(
            attribute: str, spec: AttributeSpec | None, value: Any, policy: FitPolicy, as_entered: bool = False
        ) -> None:
            if spec is None:
                issues.append(
                    FitIssue(attribute, "unknown_attribute", "not in the lead schema (run check_mapping)", "quarantine")
                )
                return
            fitted, issue = fit_value(spec, value, policy)
            if as_entered and issue is not None and issue.action in ("quarantine", "truncated"):
                # send_as_entered sends an invalid value only when it fits the column as it is: else dropped
                why = f"the invalid value does not fit the column as entered ({issue.code}); cleared"
                issues.append(FitIssue(attribute, "invalid_value_dropped", why, "dropped"))
                payload[attribute] = None
                return
            if issue is not None:
                issues.append(issue)
                if issue.action == "needs_option" and issue.label is not None:
                    needed.append((attribute, issue.label))
                if issue.action in ("dropped", "needs_option", "quarantine"):
                    return
            payload[attribute] = fitted

        for plan in self.plan:
            value, dropped, as_entered = self._value(plan, record, issues)
            if _empty(value):
                if plan.entry.if_empty == "quarantine":
                    issues.append(FitIssue(plan.attribute, "empty", "no value (if_empty: quarantine)", "quarantine"))
                    continue
                if plan.entry.if_empty == "omit" and not dropped:
                    continue
                value = None  # empty, or an invalid value dropped: null clears the column on update
            put(plan.attribute, plan.spec, value, plan.policy, as_entered)

        key = self.settings.dynamics.alternate_key
        if key:
            put(key, self.schema.get(key), str(applicant_id), FitPolicy(too_long="quarantine"))
        column = self.settings.dynamics.instance_column
        if column:
            put(column, self.schema.get(column), self.instance, FitPolicy(too_long="quarantine"))

        stage = record.stage
        reasons = [f"{i.attribute}: {i.message}" for i in issues if i.quarantines]
        if reasons:
            reason = "; ".join(reasons)
            if len(reason) > 1000:
                reason = reason[:997] + "..."
            return MappedLead(applicant_id, {}, issues, reason, [], stage.stage, stage.changed)
        rule = self._owner_rule(record) if self.settings.owner_rules else None
        return MappedLead(applicant_id, payload, issues, None, needed, stage.stage, stage.changed, rule)

    def _owner_rule(self, record: _Record) -> int | None:
        """The first ``owner_rules`` entry this applicant matches (citizenship compared as ISO codes)."""
        from d365.pipeline.owners import first_match

        def lookup(name: str) -> Any:
            raw = SOURCE_GETTERS[name](record)
            if SOURCE_FIELDS[name].kind == "country" and isinstance(raw, str):
                return country_code(raw) or raw
            return raw

        return first_match(self.settings.owner_rules, lookup)

    def _value(self, plan: _Plan, record: _Record, issues: list[FitIssue]) -> tuple[Any, bool, bool]:
        """(value before fitting, whether a source was dropped as invalid, whether the value is an invalid
        one sent as entered)."""
        entry = plan.entry
        dropped = as_entered = False
        if entry.form == "constant":
            value: Any = entry.constant
        elif entry.form == "template":
            value = self._render(entry.template or "", record)
        else:
            value = None
            for i, name in enumerate((entry.source or "", *entry.fallback)):
                action = record.actions.get(_QUALITY_FIELD_OF.get(name, ""))
                if action == "drop":
                    why = f"{_QUALITY_FIELD_OF[name]}: invalid value dropped (quality.field_policy); column cleared"
                    issues.append(FitIssue(plan.attribute, "invalid_value_dropped", why, "dropped"))
                    dropped = True
                    continue
                value, issue = self._source(name, entry.format if i == 0 else None, plan, record)
                if issue is not None:
                    issues.append(issue)
                    dropped = dropped or issue.action == "dropped"
                if not _empty(value):
                    dropped = False
                    as_entered = action == "send_as_entered" or bool(issue and issue.code in _AS_ENTERED_CODES)
                    break
        if plan.value_map is not None and not _empty(value):
            key = normalize_label(str(value).lower() if isinstance(value, bool) else str(value))
            if key in plan.value_map:
                value = plan.value_map[key]
            elif "*" in plan.value_map:
                value = plan.value_map["*"]
        if _empty(value) and "default" in entry.model_fields_set:
            value = entry.default
        return value, dropped, as_entered

    def _source(self, name: str, fmt: str | None, plan: _Plan, record: _Record) -> tuple[Any, FitIssue | None]:
        kind = SOURCE_FIELDS[name].kind
        if name == "consent.given" and plan.consents is not None:
            return consent_given(record.a, plan.consents), None
        raw = SOURCE_GETTERS[name](record)
        if raw is None:
            return None, None
        attribute, spec = plan.attribute, plan.spec
        if kind == "phone" and fmt != "text":
            return self._phone(raw, attribute, spec, record)
        if kind == "country":
            return self._country(raw, attribute, fmt, spec, record)
        if kind == "list":
            items = [str(v) for v in raw if v is not None] if isinstance(raw, list) else raw
            return (plan.entry.separator.join(items) if isinstance(items, list) else items), None
        if kind in ("date", "datetime"):
            if spec is not None and spec.type == "DateTime" and fmt != "text":
                return raw, None  # fit formats it with policy.date_format
            default = "date" if kind == "date" or is_date_only_value(raw) else "datetime_utc"
            use = default if fmt in (None, "text") else fmt
            text = format_temporal(raw, use, plan.policy.timezone)
            if text is None:
                why = f"not a date/time (got {describe_value(raw)})"
                return None, FitIssue(attribute, "wrong_type", why, "quarantine")
            return text, None
        if fmt == "text" and not isinstance(raw, str):
            if isinstance(raw, bool):
                return ("true" if raw else "false"), None
            if isinstance(raw, int):
                return str(raw), None
        return raw, None

    def _phone(
        self, raw: Any, attribute: str, spec: AttributeSpec | None, record: _Record
    ) -> tuple[Any, FitIssue | None]:
        if isinstance(raw, int) and not isinstance(raw, bool):
            raw = str(raw)
        if not isinstance(raw, str):
            return raw, None  # fit reports the wrong type
        regions = phone_regions(record.country, self.settings.quality.default_region)
        limit = spec.max_length if spec is not None else None
        number = parse_phone(raw, regions)
        if number is not None:
            e164 = phonenumbers.format_number(number, phonenumbers.PhoneNumberFormat.E164)
            if not number.extension:
                return e164, None
            with_extension = f"{e164} ext. {number.extension}"
            if limit is None or utf16_len(with_extension) <= limit:
                return with_extension, None
            why = f"the number with its extension does not fit in {limit} characters; sent without the extension"
            return e164, FitIssue(attribute, "phone_extension_dropped", why)
        where = " for the regions tried" if regions != (None,) else " (no country code, no citizenship or region)"
        return self._invalid(record, "phone", " ".join(raw.split()), attribute, limit, "invalid_phone", where)

    def _invalid(
        self, record: _Record, name: str, text: str, attribute: str, limit: int | None, code: str, where: str
    ) -> tuple[Any, FitIssue | None]:
        """An invalid phone or country found by the mapping: the quality step's decision for the record, else
        ``quality.field_policy``: sent as entered when it fits, else dropped (null: cleared), or quarantined."""
        action = record.actions.get(name) or self.settings.quality.policy(name)
        if action == "quarantine":
            return None, FitIssue(attribute, code, f"not valid{where} (quality.field_policy: quarantine)", "quarantine")
        if action == "send_as_entered" and (limit is None or utf16_len(text) <= limit):
            return text, FitIssue(attribute, code, f"not valid{where}; sent as entered")
        why = f"not valid{where}; left out (cleared)" if action == "drop" else f"not valid{where}; too long, cleared"
        return None, FitIssue(attribute, code, why, "dropped")

    def _country(
        self, raw: Any, attribute: str, fmt: str | None, spec: AttributeSpec | None, record: _Record
    ) -> tuple[Any, FitIssue | None]:
        if not isinstance(raw, str):
            return raw, None  # fit reports the wrong type
        if fmt == "text":
            return raw, None
        code = country_code(raw)
        if code is None:
            limit = spec.max_length if spec is not None else None
            where = f" (text of {len(raw)} characters is not an ISO 3166-1 country)"
            return self._invalid(record, "citizenship", raw, attribute, limit, "invalid_country", where)
        return (country_name(code) if fmt == "country_name" else code), None

    def _render(self, template: str, record: _Record) -> str | None:
        def text_of(name: str) -> str:
            kind = SOURCE_FIELDS[name].kind
            plan = self._template_plans.get(name)
            if plan is None:
                policy = FitPolicy(timezone=self.timezone)
                plan = self._template_plans[name] = _Plan(name, FieldMapping(source=name), None, policy, None, None)
            value, _ = self._source(name, None, plan, record)
            if value is None:
                return ""
            if isinstance(value, bool):
                return "yes" if value else "no"
            if isinstance(value, int | float | str):
                if kind == "datetime" and isinstance(value, str):
                    return iso_utc(parse_instant(value)) or value
                return str(value)
            return ""

        def repl(match: re.Match[str]) -> str:
            token = match.group(0)
            if token in ("{{", "}}"):
                return token[0]
            return text_of(match.group(1).strip())

        return _TEMPLATE.sub(repl, template).strip() or None


def map_applicant(
    applicant: Any,
    catalog: Any,
    settings: Settings,
    schema: Mapping[str, AttributeSpec],
    *,
    instance: str,
) -> MappedLead:
    """One applicant → MappedLead (payload, issues, quarantine reason, options needed). Never raises on
    data. For many applicants build one ``Mapper`` and call ``Mapper.map``."""
    return Mapper(settings, schema, catalog, instance=instance).map(applicant)


def map_applicants(
    applicants: Iterable[Any],
    catalog: Any,
    settings: Settings,
    schema: Mapping[str, AttributeSpec],
    *,
    instance: str,
) -> list[MappedLead]:
    mapper = Mapper(settings, schema, catalog, instance=instance)
    return [mapper.map(a) for a in applicants]
