"""Applicant → lead payload: every source field, the default mapping, fit outcomes, and a never-raises property."""

from __future__ import annotations

import copy
import json
from typing import Any

import pytest
from hypothesis import HealthCheck, given
from hypothesis import settings as hsettings
from hypothesis import strategies as st

from d365.pipeline.fit import LeadSchema
from d365.pipeline.mapping import (
    MappedLead,
    Mapper,
    check_catalog,
    consent_status,
    country_code,
    map_applicant,
    map_applicants,
    payload_hash,
)
from d365.pipeline.picklists import fill_options, option_key
from d365.pipeline.settings import SOURCE_FIELDS, load_settings, parse_settings

SCHEMA = LeadSchema.from_metadata_json()
DEFAULT = load_settings()
INSTANCE = "apply.example.edu"

CATALOG: dict[str, Any] = {
    "terms": {
        "21": {
            "id": 21,
            "name": "Fall semester 2025/26",
            "year": 2025,
            "year_name": "2025/26",
            "type_id": 1,
            "type_name": "fall SEMESTER",
            "start": "2025-09-01",
            "finish": "2026-01-31",
        },
        "22": {
            "id": 22,
            "name": "Autumn 2026",
            "year": 2026,
            "year_name": None,
            "type_id": 9,
            "type_name": "Autumn semester",
            "start": "2026-09-01",
            "finish": None,
        },
    },
    "courses": {
        "3": {"id": 3, "name": "Data Science", "code": "DS-MSC", "type": "PG", "mode": "FT"},
        "5": {"id": 5, "name": "Law", "code": None, "type": "PG", "mode": "PT"},
    },
    "consents": {
        "1": {"id": 1, "type": "Mandatory", "text": "I agree to the terms of the privacy policy."},
        "2": {"id": 2, "type": "Voluntary", "text": "I would like to receive marketing communication."},
        "3": {"id": 3, "type": "Voluntary", "text": "Share with partners."},
    },
    "trackers": {"2": "FACEBOOK", "5": "WEBINAR"},
    "offer_types": {"1": "Unreplied", "2": "Conditional", "3": "Unconditional", "4": "Rejected"},
}


def make_applicant(**overrides: Any) -> dict[str, Any]:
    base: dict[str, Any] = {
        "applicant_id": 123,
        "type": "Natural",
        "registered": "2025-11-24T23:56:34+00:00",
        "name_full": "Seán O'Brien-Ñúñez",
        "name_given": "Seán",
        "name_middle": None,
        "name_family": "O'Brien-Ñúñez",
        "email": "sean.obrien@example.com",
        "phone": "087 123 4567",
        "citizenship": "IE",
        "reference": "SIS-0042",
        "matriculation": None,
        "consents": {"1": "Accept", "2": "Reject"},
        "tracker_ids": [5, 2],
        "tracker_codes": ["WEBINAR", "FACEBOOK"],
        "applications": [
            {
                "id": 9,
                "status": "Submitted",
                "created": "2025-01-01T10:00:00+02:00",
                "revised": "2025-02-02T10:00:00+00:00",
                "submitted": "2025-02-01T10:00:00+00:00",
                "academic_term_id": 21,
                "courses": [
                    {"course_id": 5, "priority": 2, "intake_id": None},
                    {"course_id": 3, "priority": 1, "intake_id": None},
                ],
                "offers": [
                    {
                        "id": 1,
                        "course_id": 3,
                        "type_id": 2,
                        "type_title": "Conditional",
                        "decision": "None",
                        "inserted": "2025-02-01T10:00:00+00:00",
                        "saved": "2025-03-01T10:00:00+00:00",
                        "confirmed": None,
                    }
                ],
            }
        ],
    }
    return base | overrides


def settings_with(mapping: dict[str, Any], **extra: Any) -> Any:
    return parse_settings({"data_mapping": mapping, **extra})


def run(applicant: Any, settings: Any = DEFAULT, catalog: Any = CATALOG) -> MappedLead:
    return map_applicant(applicant, catalog, settings, SCHEMA, instance=INSTANCE)


# -- the default settings ------------------------------------------------------------------------------


def test_default_mapping_payload() -> None:
    lead = run(make_applicant())
    assert lead.ok and lead.issues == [] and lead.options_needed == []
    assert lead.payload == {
        "uni_applicantid": "123",
        "uni_dreamapplyinstance": INSTANCE,
        "firstname": "Seán",
        "middlename": None,
        "lastname": "O'Brien-Ñúñez",
        "emailaddress1": "sean.obrien@example.com",
        "mobilephone": "+353871234567",
        "subject": "DreamApply applicant 123",
        "uni_registeredon": "2025-11-24T23:56:34Z",
        "uni_citizenship": "IE",
        "uni_reference": "SIS-0042",
        "uni_matriculation": None,
        "uni_leadstage": 727000003,  # Offer
        "uni_stagechangedon": "2025-03-01T10:00:00Z",
        "uni_programmeids": "3,5",
        "uni_academicterm": "Fall semester 2025/26",
        "uni_academicyear": "2025/26",
        "uni_academictermtype": 727000000,  # "fall SEMESTER" → Fall semester
        "uni_termstartdate": "2025-09-01",
        "uni_consentgiven": False,
        "donotbulkemail": True,
        "leadsourcecode": 1,  # FACEBOOK (tracker 2, the lowest id) → Advertisement
    }
    assert (lead.stage, lead.stage_changed) == ("Offer", "2025-03-01T10:00:00Z")
    json.dumps(lead.to_dict(), ensure_ascii=False).encode("utf-8")


def test_registered_applicant_without_applications() -> None:
    lead = run(make_applicant(applications=[], tracker_ids=[], tracker_codes=[]))
    assert lead.ok
    assert lead.payload["uni_leadstage"] == 727000000
    assert lead.payload["uni_stagechangedon"] == "2025-11-24T23:56:34Z"
    for column in ("uni_programmeids", "uni_academicterm", "uni_academicyear", "uni_termstartdate"):
        assert lead.payload[column] is None
    assert "leadsourcecode" not in lead.payload  # if_empty: omit


def test_rejected_stage_needs_an_option_in_the_sandbox() -> None:
    record = make_applicant()
    record["applications"][0]["offers"][0].update(type_id=4, type_title="Rejected")
    lead = run(record)
    assert lead.ok and lead.stage == "Rejected"
    assert lead.options_needed == [("uni_leadstage", "Rejected")]
    assert "uni_leadstage" not in lead.payload
    added = {option_key("uni_leadstage", "Rejected"): 727000007}
    filled, missing = fill_options(lead.payload, lead.options_needed, added)
    assert filled["uni_leadstage"] == 727000007 and missing == []
    assert "uni_leadstage" not in lead.payload  # the mapped lead is unchanged


def test_new_term_type_is_reported_as_needed_option() -> None:
    record = make_applicant()
    record["applications"][0]["academic_term_id"] = 22
    lead = run(record)
    assert lead.ok and lead.options_needed == [("uni_academictermtype", "Autumn semester")]
    assert lead.payload["uni_academicyear"] == "2026"  # no year name: the year number


# -- every source field --------------------------------------------------------------------------------

SOURCE_CASES: list[tuple[str, str, dict[str, Any], Any]] = [
    ("applicant.id", "description", {}, "123"),
    ("applicant.type", "description", {}, "Natural"),
    ("applicant.name.full", "description", {}, "Seán O'Brien-Ñúñez"),
    ("applicant.name.given", "firstname", {}, "Seán"),
    ("applicant.name.middle", "middlename", {}, None),
    ("applicant.name.family", "lastname", {}, "O'Brien-Ñúñez"),
    ("applicant.email", "emailaddress1", {}, "sean.obrien@example.com"),
    ("applicant.phone", "mobilephone", {}, "+353871234567"),
    ("applicant.registered", "uni_registeredon", {}, "2025-11-24T23:56:34Z"),
    ("applicant.citizenship", "uni_citizenship", {}, "IE"),
    ("applicant.reference", "uni_reference", {}, "SIS-0042"),
    ("applicant.matriculation", "uni_matriculation", {}, None),
    ("lead.stage", "uni_leadstage", {"picklist": True}, 727000003),
    ("lead.stage_changed", "uni_stagechangedon", {}, "2025-03-01T10:00:00Z"),
    ("programme.ids", "uni_programmeids", {}, "3,5"),
    ("programme.codes", "description", {"separator": "; "}, "DS-MSC"),
    ("programme.names", "description", {"separator": "; "}, "Data Science; Law"),
    ("programme.id", "numberofemployees", {}, 3),
    ("programme.code", "description", {}, "DS-MSC"),
    ("programme.name", "description", {}, "Data Science"),
    ("term.name", "uni_academicterm", {}, "Fall semester 2025/26"),
    ("term.year", "uni_academicyear", {}, "2025/26"),
    ("term.year_number", "numberofemployees", {}, 2025),
    ("term.type", "uni_academictermtype", {"picklist": True}, 727000000),
    ("term.start", "uni_termstartdate", {}, "2025-09-01"),
    ("term.finish", "estimatedclosedate", {}, "2026-01-31"),
    ("dreamapply.instance", "description", {}, INSTANCE),
    ("consent.given", "uni_consentgiven", {}, True),  # consent.required = [1], accepted
    ("tracker.codes", "description", {}, "FACEBOOK,WEBINAR"),
    ("tracker.code", "description", {}, "FACEBOOK"),
]


def test_source_cases_cover_every_source_field() -> None:
    assert {c[0] for c in SOURCE_CASES} == set(SOURCE_FIELDS)


@pytest.mark.parametrize(("source", "attribute", "options", "expected"), SOURCE_CASES, ids=[c[0] for c in SOURCE_CASES])
def test_every_source_field(source: str, attribute: str, options: dict[str, Any], expected: Any) -> None:
    s = settings_with({attribute: {"source": source, **options}}, consent={"required": [1]})
    lead = run(make_applicant(), s)
    assert lead.ok, lead.quarantine_reason
    assert lead.payload[attribute] == expected
    assert lead.payload["uni_applicantid"] == "123" and lead.payload["uni_dreamapplyinstance"] == INSTANCE


def test_template_renders_every_kind() -> None:
    template = "{applicant.name.full} | {programme.name} | {term.start} | {applicant.registered} | {consent.given}"
    s = settings_with({"description": {"template": template + " | {{literal}} | {programme.ids}"}})
    lead = run(make_applicant(), s)
    assert lead.payload["description"] == (
        "Seán O'Brien-Ñúñez | Data Science | 2025-09-01 | 2025-11-24T23:56:34Z | yes | {literal} | 3,5"
    )


def test_constant_value_map_default_fallback_and_if_empty() -> None:
    s = settings_with(
        {
            "jobtitle": {"constant": "Prospective student"},
            "leadqualitycode": {"constant": 2},
            "description": {"source": "applicant.matriculation", "default": "not matriculated"},
            "lastname": {"source": "applicant.name.family", "fallback": ["applicant.name.full"]},
            "middlename": {"source": "applicant.name.middle", "if_empty": "omit"},
            "leadsourcecode": {"source": "tracker.code", "picklist": True, "value_map": {"facebook": "Web"}},
        }
    )
    lead = run(make_applicant(name_family="   "), s)
    assert lead.payload["jobtitle"] == "Prospective student"
    assert lead.payload["leadqualitycode"] == 2
    assert lead.payload["description"] == "not matriculated"
    assert lead.payload["lastname"] == "Seán O'Brien-Ñúñez"
    assert "middlename" not in lead.payload
    assert lead.payload["leadsourcecode"] == 8  # Web
    required = settings_with({"uni_matriculation": {"source": "applicant.matriculation", "if_empty": "quarantine"}})
    lead = run(make_applicant(), required)
    assert not lead.ok and "uni_matriculation" in lead.quarantine_reason and lead.payload == {}


def test_dates_and_utc_dates() -> None:
    s = settings_with(
        {
            "uni_reference": {"source": "applicant.registered", "format": "date_local"},
            "uni_matriculation": {"source": "applicant.registered", "format": "date"},
            "estimatedclosedate": {"source": "applicant.registered", "format": "date_local"},
            "uni_registeredon": {"source": "applicant.registered", "format": "datetime_utc"},
            "description": {"source": "applicant.registered", "format": "text"},
        },
        timezone="Europe/Tallinn",
    )
    lead = run(make_applicant(), s)
    assert lead.payload["uni_reference"] == "2025-11-25"  # local date (UTC+2)
    assert lead.payload["uni_matriculation"] == "2025-11-24"  # UTC date
    assert lead.payload["estimatedclosedate"] == "2025-11-25"
    assert lead.payload["uni_registeredon"] == "2025-11-24T23:56:34Z"
    assert lead.payload["description"] == "2025-11-24T23:56:34Z"


# -- names, unicode, length policy ---------------------------------------------------------------------


@pytest.mark.parametrize(
    "name", ["D'Angelo", "O’Connor", "Zoë Ñúñez", "李小龍", "Ólafur Þór", "Nguyễn Thị", "Jean-Luc 🎓", "Łukasz"]
)
def test_apostrophes_and_unicode_are_preserved(name: str) -> None:
    lead = run(make_applicant(name_given=name, name_family=name, name_full=f"{name} {name}"))
    assert lead.ok and lead.payload["firstname"] == name and lead.payload["lastname"] == name


def test_long_names_are_truncated_by_default_policy() -> None:
    long_name = "Maximiliana-Josefina " * 4  # 84 characters
    lead = run(make_applicant(name_given=long_name))
    assert lead.ok
    assert lead.payload["firstname"] == long_name[:50]
    (issue,) = lead.issues
    assert (issue.attribute, issue.code, issue.action) == ("firstname", "truncated", "truncated")


def test_long_names_quarantine_under_quarantine_policy() -> None:
    s = parse_settings(
        {
            "data_mapping": {"firstname": "applicant.name.given", "lastname": "applicant.name.family"},
            "fit_policy": {"too_long": "quarantine"},
        }
    )
    lead = run(make_applicant(name_given="A" * 51), s)
    assert not lead.ok and lead.payload == {}
    assert lead.quarantine_reason.startswith("firstname:") and "51" in lead.quarantine_reason


def test_long_email_quarantines_by_default_override() -> None:
    lead = run(make_applicant(email="a" * 95 + "@example.com"))
    assert not lead.ok and "emailaddress1" in lead.quarantine_reason


def test_wrong_types_quarantine_with_the_attribute_named() -> None:
    lead = run(make_applicant(name_given={"first": "x"}))
    assert not lead.ok and lead.quarantine_reason.startswith("firstname:")
    lead = run(make_applicant(registered="last tuesday"))
    assert not lead.ok and "uni_registeredon" in lead.quarantine_reason


# -- phones and countries ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("phone", "citizenship", "expected"),
    [
        ("087 123 4567", "IE", "+353871234567"),
        ("+372 5123 4567", None, "+37251234567"),
        ("+44 20 7946 0958", "IE", "+442079460958"),  # an explicit country code wins over citizenship
        ("(202) 555-0143", "us", "+12025550143"),
    ],
)
def test_phones_are_e164(phone: str, citizenship: str | None, expected: str) -> None:
    lead = run(make_applicant(phone=phone, citizenship=citizenship))
    assert lead.payload["mobilephone"] == expected


@pytest.mark.parametrize(
    ("phone", "citizenship", "expected"),
    [
        ("00372-12-123456", "EE", "+37212123456"),  # possible, international form: formatted
        ("555.123.4567", "US", None),  # national form, not a valid number: dropped (null clears it)
        ("+372 5123 4567 ext. 12", "EE", "+37251234567 ext. 12"),
        ("+372 5x1 2345", "EE", None),  # letters are never read as vanity digits
    ],
)
def test_phone_edge_cases(phone: str, citizenship: str, expected: str | None) -> None:
    lead = run(make_applicant(phone=phone, citizenship=citizenship))
    assert lead.ok and "mobilephone" in lead.payload and lead.payload["mobilephone"] == expected


def quality_with(**changes: Any) -> Any:
    return DEFAULT.model_copy(update={"quality": DEFAULT.quality.model_copy(update=changes)})


def test_default_region_reads_national_numbers_after_the_citizenship() -> None:
    """The citizenship's region first, then quality.default_region: a local number of the university's
    country typed by a foreign applicant becomes E.164 too."""
    assert run(make_applicant(phone="5123 4567", citizenship="FR")).payload["mobilephone"] is None
    estonian = quality_with(default_region="EE")
    assert run(make_applicant(phone="5123 4567", citizenship="FR"), estonian).payload["mobilephone"] == "+37251234567"
    assert run(make_applicant(phone="5123 4567", citizenship=None), estonian).payload["mobilephone"] == "+37251234567"
    # the citizenship wins where it gives a valid number
    assert run(make_applicant(phone="087 123 4567", citizenship="IE"), estonian).payload["mobilephone"] == (
        "+353871234567"
    )


def test_phone_extension_that_does_not_fit_is_dropped_with_an_issue() -> None:
    lead = run(make_applicant(phone="+372 5123 4567 ext. 12345", citizenship="EE"))
    assert lead.payload["mobilephone"] == "+37251234567"
    assert [i.code for i in lead.issues] == ["phone_extension_dropped"]


def test_unparseable_phone_is_dropped_by_default_and_clears_the_column() -> None:
    lead = run(make_applicant(phone="call after 6pm"))
    assert lead.ok and "mobilephone" in lead.payload and lead.payload["mobilephone"] is None
    (issue,) = lead.issues
    assert issue.code == "invalid_phone" and issue.action == "dropped"


def test_unparseable_phone_sent_as_entered_only_when_it_fits() -> None:
    as_entered = quality_with(field_policy={"phone": "send_as_entered"})
    lead = run(make_applicant(phone="call after 6pm"), as_entered)
    assert lead.ok and lead.payload["mobilephone"] == "call after 6pm"
    (issue,) = lead.issues
    assert issue.code == "invalid_phone" and issue.action == "sent"
    lead = run(make_applicant(phone="ring my mum, ask for extension 4411 please"), as_entered)
    assert lead.ok and lead.payload["mobilephone"] is None
    (issue,) = lead.issues
    assert issue.code == "invalid_phone" and issue.action == "dropped"


def test_unparseable_phone_quarantines_only_when_the_policy_says_so() -> None:
    lead = run(make_applicant(phone="call after 6pm"), quality_with(field_policy={"phone": "quarantine"}))
    assert not lead.ok and lead.quarantine_reason.startswith("mobilephone:")


def test_fields_dropped_by_the_quality_step_are_null_even_with_if_empty_omit() -> None:
    """``Mapper.map(applicant, fields)``: a dropped field reads as empty (fallbacks still apply) and its
    column is null: cleared on update, whatever if_empty says (except quarantine)."""
    s = settings_with(
        {
            "lastname": {"source": "applicant.name.family", "fallback": ["applicant.name.full"]},
            "firstname": {"source": "applicant.name.given", "if_empty": "omit"},
            "uni_registeredon": "applicant.registered",
            "uni_reference": "applicant.reference",
        }
    )
    mapper = Mapper(s, SCHEMA, CATALOG, instance=INSTANCE)
    record = make_applicant(name_family="GarcÃ\xada", name_given="Se\ufffdn", registered="soon", reference="R1")
    lead = mapper.map(record, {"name_family": "drop", "name_given": "drop", "registered": "drop"})
    assert lead.ok
    assert lead.payload["lastname"] == "Seán O'Brien-Ñúñez"  # the full name is the fallback
    assert lead.payload["firstname"] is None and lead.payload["uni_registeredon"] is None
    assert lead.payload["uni_reference"] == "R1"
    assert {i.attribute for i in lead.issues if i.code == "invalid_value_dropped"} == {
        "lastname",
        "firstname",
        "uni_registeredon",
    }
    # send_as_entered: a registration date that is not a date does not fit a DateTime column → null
    lead = mapper.map(record, {"registered": "send_as_entered"})
    assert lead.ok and lead.payload["uni_registeredon"] is None
    # if_empty: quarantine is the mapping's own opt-in: a dropped value leaves the column empty → quarantined
    strict = settings_with({"uni_reference": {"source": "applicant.reference", "if_empty": "quarantine"}})
    lead = Mapper(strict, SCHEMA, CATALOG, instance=INSTANCE).map(record, {"reference": "drop"})
    assert not lead.ok and lead.quarantine_reason.startswith("uni_reference:")


def test_phone_as_typed_with_format_text() -> None:
    s = settings_with({"telephone1": {"source": "applicant.phone", "format": "text"}})
    assert run(make_applicant(), s).payload["telephone1"] == "087 123 4567"


def test_empty_phone_is_null() -> None:
    assert run(make_applicant(phone="")).payload["mobilephone"] is None


def test_citizenship_codes_names_and_invalid_values() -> None:
    assert run(make_applicant(citizenship="ie")).payload["uni_citizenship"] == "IE"
    assert run(make_applicant(citizenship="Ireland")).payload["uni_citizenship"] == "IE"
    lead = run(make_applicant(citizenship="ZZ"))
    assert lead.ok and "uni_citizenship" in lead.payload and lead.payload["uni_citizenship"] is None
    assert any(i.code == "invalid_country" and i.action == "dropped" for i in lead.issues)
    lead = run(make_applicant(citizenship="UK"), quality_with(field_policy={"citizenship": "send_as_entered"}))
    assert lead.ok and lead.payload["uni_citizenship"] == "UK"
    s = settings_with({"uni_citizenship": {"source": "applicant.citizenship", "format": "country_name"}})
    assert run(make_applicant(citizenship="GB"), s).payload["uni_citizenship"] == "United Kingdom"
    assert run(make_applicant(citizenship="BO"), s).payload["uni_citizenship"] == "Bolivia"
    assert run(make_applicant(citizenship="XK"), s).payload["uni_citizenship"] == "Kosovo"
    assert country_code("DEU") == "DE" and country_code("") is None


# -- picklists -----------------------------------------------------------------------------------------


def test_picklist_missing_option_quarantines_when_configured() -> None:
    s = settings_with({"uni_academictermtype": {"source": "term.type", "picklist": True}})
    record = make_applicant()
    record["applications"][0]["academic_term_id"] = 22
    lead = run(record, s)
    assert not lead.ok and "uni_academictermtype" in lead.quarantine_reason
    assert "no option matches" in lead.quarantine_reason and "Autumn semester" not in lead.quarantine_reason


def test_picklist_missing_option_ignore() -> None:
    s = settings_with({"uni_programme": {"source": "programme.name", "picklist": True, "on_missing_option": "ignore"}})
    lead = run(make_applicant(), s)
    assert lead.ok and "uni_programme" not in lead.payload
    assert [i.code for i in lead.issues] == ["option_ignored"]


# -- consent, identity, hash ---------------------------------------------------------------------------


def test_consent_status() -> None:
    assert consent_status(make_applicant(), CATALOG, DEFAULT) == (True, [])
    assert consent_status(make_applicant(consents={"2": "Accept"}), CATALOG, DEFAULT) == (False, [1])
    assert consent_status(make_applicant(consents={"1": "Reject"}), CATALOG, DEFAULT) == (False, [1])
    by_text = parse_settings(
        {"data_mapping": {"lastname": "applicant.name.family"}, "consent": {"required": [{"text": "MARKETING"}]}}
    )
    assert consent_status(make_applicant(), CATALOG, by_text) == (False, [2])
    missing = parse_settings(
        {"data_mapping": {"lastname": "applicant.name.family"}, "consent": {"required": [{"text": "nope"}]}}
    )
    assert consent_status(make_applicant(), CATALOG, missing) == (False, [])


def test_check_catalog_reports_consents_that_match_nothing() -> None:
    assert check_catalog(DEFAULT, CATALOG) == []
    s = settings_with(
        {"uni_consentgiven": {"source": "consent.given", "consents": [{"text": "newsletter"}]}},
        consent={"required": [9]},
    )
    errors = check_catalog(s, CATALOG)
    assert errors[0].startswith("consent.required: consent id 9")
    assert errors[1].startswith("data_mapping.uni_consentgiven.consents:")
    assert run(make_applicant(), s).payload["uni_consentgiven"] is False


def test_attribute_missing_from_the_schema_quarantines() -> None:
    schema = LeadSchema(v for k, v in SCHEMA.items() if k != "firstname")
    lead = map_applicant(make_applicant(), CATALOG, DEFAULT, schema, instance=INSTANCE)
    assert not lead.ok and lead.quarantine_reason.startswith("firstname: not in the lead schema")


def test_identity_columns_can_be_switched_off() -> None:
    s = settings_with({"firstname": "applicant.name.given"}, dynamics={"alternate_key": None, "instance_column": None})
    assert run(make_applicant(), s).payload == {"firstname": "Seán"}


@pytest.mark.parametrize("bad_id", [None, 0, -3, "abc", True, 1.5, [1]])
def test_missing_applicant_id_quarantines(bad_id: Any) -> None:
    lead = run(make_applicant(applicant_id=bad_id))
    assert not lead.ok and "applicant_id" in lead.quarantine_reason and lead.payload == {}


def test_payload_hash_is_stable_across_key_order() -> None:
    a = {"firstname": "Seán", "lastname": "O'Brien", "uni_leadstage": 1, "x": None}
    b = dict(reversed(list(a.items())))
    assert list(a) != list(b)
    assert payload_hash(a) == payload_hash(b)
    assert payload_hash(a) != payload_hash({**a, "uni_leadstage": 2})
    assert len(payload_hash(a)) == 64
    lead1, lead2 = run(make_applicant()), run(copy.deepcopy(make_applicant()))
    assert lead1.hash == lead2.hash


def test_mapper_is_reusable_and_does_not_mutate_input() -> None:
    record = make_applicant()
    snapshot = copy.deepcopy(record)
    mapper = Mapper(DEFAULT, SCHEMA, CATALOG, instance=INSTANCE)
    first, second = mapper.map(record), mapper.map(record)
    assert first.payload == second.payload and record == snapshot
    leads = map_applicants([record, make_applicant(applicant_id=124)], CATALOG, DEFAULT, SCHEMA, instance=INSTANCE)
    assert [lead.applicant_id for lead in leads] == [123, 124]


# -- property: never raises, always a payload or a reason ----------------------------------------------

odd_text = st.text(
    alphabet=st.characters(codec=None, min_codepoint=0, max_codepoint=0x10FFFF),
    max_size=40,
)
surrogates = st.text(alphabet=st.characters(min_codepoint=0xD800, max_codepoint=0xDFFF), min_size=1, max_size=3)
huge = st.builds(lambda s, n: s * n, st.text(min_size=1, max_size=4), st.integers(200, 3000))
timestamps = st.sampled_from(
    [
        "2025-01-01T00:00:00+00:00",
        "2025-13-45T00:00:00Z",
        "0001-01-01T00:00:00+05:00",
        "9999-12-31T23:59:59-12:00",
        "1700-01-01",
        "2025-06-01",
        "",
    ]
)
scalars = st.one_of(
    st.none(),
    odd_text,
    surrogates,
    huge,
    timestamps,
    st.integers(min_value=-(2**70), max_value=2**70),
    st.floats(allow_nan=True, allow_infinity=True),
    st.booleans(),
)
junk = st.recursive(
    scalars,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=3), inner, max_size=3),
    max_leaves=6,
)
maybe = st.one_of(junk, scalars)


def mostly(good: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
    """Four times in five ``good``, else anything at all (one_of alone would weigh by flattened branches)."""
    return st.integers(0, 4).flatmap(lambda n: good if n else maybe)


names = st.one_of(st.none(), st.text(max_size=30), st.sampled_from(["O'Brien", "Zoë Ñúñez", "李小龍", "a" * 60]))
statuses = mostly(st.sampled_from(["Blank", "Prepare", "Submitted", "Withdrawn", "Closed", "Inactive", "Reopened"]))
offer = st.fixed_dictionaries(
    {},
    optional={
        "id": mostly(st.integers(1, 99)),
        "course_id": mostly(st.sampled_from([3, 5, 99])),
        "type_id": mostly(st.sampled_from([1, 2, 3, 4])),
        "type_title": mostly(st.sampled_from(["Rejected", "Conditional", "Unreplied", None])),
        "decision": mostly(st.sampled_from(["None", "Final", "Declined"])),
        "inserted": mostly(timestamps),
        "saved": mostly(timestamps),
        "confirmed": mostly(timestamps),
    },
)
course = st.fixed_dictionaries(
    {},
    optional={
        "course_id": mostly(st.sampled_from([3, 5, 99])),
        "priority": mostly(st.integers(1, 3)),
        "intake_id": maybe,
    },
)
application = mostly(
    st.fixed_dictionaries(
        {},
        optional={
            "id": mostly(st.integers(1, 50)),
            "status": statuses,
            "created": mostly(timestamps),
            "revised": mostly(timestamps),
            "submitted": mostly(timestamps),
            "academic_term_id": mostly(st.sampled_from([21, 22, 99])),
            "courses": mostly(st.lists(mostly(course), max_size=3)),
            "offers": mostly(st.lists(mostly(offer), max_size=3)),
        },
    )
)
TEXT_KEYS = ("type", "name_full", "name_given", "name_middle", "name_family", "email", "reference", "matriculation")
consents = st.dictionaries(st.sampled_from(["1", "2", "3"]), st.sampled_from(["Accept", "Reject"]))
applicant_strategy = mostly(
    st.fixed_dictionaries(
        {"applicant_id": mostly(st.integers(1, 10**9))},
        optional={
            **{key: st.one_of(names, odd_text, surrogates, huge, maybe) for key in TEXT_KEYS},
            "registered": mostly(timestamps),
            "phone": mostly(st.sampled_from(["+372 5123 4567", "087 123 4567", "+" + "9" * 30, "", "n/a"])),
            "citizenship": mostly(st.sampled_from(["IE", "EE", "ZZ", "XK", "Ireland", "", None])),
            "consents": mostly(consents),
            "tracker_ids": mostly(st.lists(mostly(st.integers(0, 6)), max_size=3)),
            "tracker_codes": mostly(st.lists(mostly(st.sampled_from(["FACEBOOK", "X"])), max_size=3)),
            "applications": mostly(st.lists(application, max_size=3)),
        },
    )
)


@hsettings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(record=applicant_strategy)
def test_map_applicant_never_raises_and_always_decides(record: Any) -> None:
    lead = run(record)
    assert isinstance(lead, MappedLead)
    if lead.quarantine_reason is None:
        assert lead.payload, "a sent lead has at least its identity columns"
        text = json.dumps(lead.payload, ensure_ascii=False, allow_nan=False)
        text.encode("utf-8")  # no lone surrogates reach the wire
        for attribute, value in lead.payload.items():
            spec = SCHEMA[attribute]
            if isinstance(value, str) and spec.max_length is not None:
                assert len(value.encode("utf-16-le")) // 2 <= spec.max_length, attribute
            if spec.type == "Picklist" and value is not None:
                assert value in spec.options
        assert len(lead.hash) == 64
    else:
        assert isinstance(lead.quarantine_reason, str) and lead.quarantine_reason
        assert lead.payload == {}
    json.dumps(lead.to_dict(), default=str)
