"""Schema loading, the per-value fit policy, and the preflight check against the sandbox's lead metadata."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from d365.pipeline.fit import (
    AttributeSpec,
    FitPolicy,
    LeadSchema,
    check_mapping,
    cut_utf16,
    fit_value,
    mapping_warnings,
    normalize_label,
    utf16_len,
)
from d365.pipeline.settings import parse_settings

SCHEMA = LeadSchema.from_metadata_json()


def spec(name: str) -> AttributeSpec:
    return SCHEMA[name]


def settings_with(mapping: dict[str, Any], **extra: Any) -> Any:
    return parse_settings({"data_mapping": mapping, **extra})


# -- schema --------------------------------------------------------------------------------------------


def test_sandbox_schema_has_standard_and_custom_columns() -> None:
    first = spec("firstname")
    assert (first.type, first.max_length, first.required_level) == ("String", 50, "Recommended")
    assert spec("uni_leadstage").options[727000003] == "Offer"
    assert spec("uni_termstartdate").is_date_only
    assert not spec("uni_stagechangedon").is_date_only
    assert not spec("fullname").valid_for_create
    assert SCHEMA.alternate_keys == (("uni_applicantid",),)
    assert SCHEMA.entity == "lead"


def test_schema_from_web_api_shapes(tmp_path: Path) -> None:
    items = {
        "value": [
            {
                "LogicalName": "uni_x",
                "AttributeType": "Picklist",
                "AttributeTypeName": {"Value": "PicklistType"},
                "IsValidForCreate": True,
                "IsValidForUpdate": True,
                "RequiredLevel": {"Value": "None", "CanBeChanged": True},
                "OptionSet": {
                    "Options": [{"Value": 5, "Label": {"UserLocalizedLabel": {"Label": "Five"}, "LocalizedLabels": []}}]
                },
            },
            {"LogicalName": "uni_y", "AttributeTypeName": {"Value": "StringType"}, "MaxLength": 10},
        ]
    }
    path = tmp_path / "attrs.json"
    path.write_text(json.dumps(items))
    schema = LeadSchema.from_metadata_json(path)
    assert schema["uni_x"].options == {5: "Five"} and schema["uni_x"].required_level == "None"
    assert (schema["uni_y"].type, schema["uni_y"].max_length) == ("String", 10)


# -- strings -------------------------------------------------------------------------------------------


def test_text_fits_unchanged_with_apostrophes_and_unicode() -> None:
    for name in ("D'Artagnan", "Ñúñez-Øster", "李小龍", "Zoë 🎓"):
        assert fit_value(spec("firstname"), name) == (name, None)


def test_text_is_composed_to_nfc_silently() -> None:
    assert fit_value(spec("firstname"), "Zoe\u0308") == ("Zoë", None)


def test_too_long_truncates_with_an_issue() -> None:
    value, issue = fit_value(spec("firstname"), "x" * 60, FitPolicy(too_long="truncate"))
    assert value == "x" * 50
    assert issue.code == "truncated" and issue.action == "truncated" and issue.attribute == "firstname"


def test_too_long_quarantines_by_policy() -> None:
    value, issue = fit_value(spec("firstname"), "x" * 51, FitPolicy(too_long="quarantine"))
    assert value is None and issue.quarantines and "51" in issue.message


def test_length_is_counted_in_utf16_units_and_pairs_are_not_split() -> None:
    emoji = "🎓" * 30  # 60 UTF-16 units
    value, issue = fit_value(spec("firstname"), emoji)
    assert value == "🎓" * 25 and issue.code == "truncated"
    assert utf16_len("a🎓") == 3 and cut_utf16("a🎓b", 2) == "a"
    value, issue = fit_value(spec("firstname"), "🎓" * 25)
    assert issue is None


def test_control_characters_and_lone_surrogates_are_removed() -> None:
    value, issue = fit_value(spec("firstname"), "An\x00na\ud800")
    assert value == "Anna" and issue.code == "sanitized" and not issue.quarantines
    json.dumps(value).encode("utf-8")


def test_numbers_and_dates_render_into_text_but_dicts_are_wrong_type() -> None:
    assert fit_value(spec("uni_reference"), 123) == ("123", None)
    value, issue = fit_value(spec("firstname"), {"given": "x"})
    assert value is None and issue.code == "wrong_type" and issue.quarantines
    assert fit_value(spec("firstname"), True)[1].quarantines


def test_none_is_always_allowed() -> None:
    for name in ("firstname", "uni_leadstage", "uni_termstartdate", "uni_consentgiven"):
        assert fit_value(spec(name), None) == (None, None)


# -- picklists -----------------------------------------------------------------------------------------


@pytest.mark.parametrize("label", ["Fall semester", "fall SEMESTER", "  Fall   Semester ", "Fáll semëster"])
def test_picklist_label_matching_ignores_case_accents_and_spaces(label: str) -> None:
    assert fit_value(spec("uni_academictermtype"), label, FitPolicy(picklist=True)) == (727000000, None)


def test_picklist_option_value_ints() -> None:
    assert fit_value(spec("uni_leadstage"), 727000001) == (727000001, None)
    _value, issue = fit_value(spec("uni_leadstage"), 5)
    assert issue.code == "missing_option" and issue.quarantines


def test_picklist_label_without_picklist_flag_is_wrong_type() -> None:
    _value, issue = fit_value(spec("uni_leadstage"), "Offer")
    assert issue.code == "wrong_type" and issue.quarantines


def test_missing_option_quarantine() -> None:
    _value, issue = fit_value(spec("uni_leadstage"), "Rejected", FitPolicy(picklist=True))
    assert issue.code == "missing_option" and issue.quarantines
    # the message names the check, the label's length and the column's options, never the value itself
    assert "Rejected" not in issue.message and "8 characters" in issue.message and "Registered" in issue.message


def test_missing_option_ignore_leaves_attribute_out() -> None:
    _value, issue = fit_value(spec("uni_leadstage"), "Rejected", FitPolicy(picklist=True, on_missing_option="ignore"))
    assert issue.action == "dropped" and not issue.quarantines


def test_missing_option_add_reports_needs_option_only_when_allowed() -> None:
    policy = FitPolicy(picklist=True, on_missing_option="add", add_allowlist=("rejected",))
    _value, issue = fit_value(spec("uni_leadstage"), "Rejected", policy)
    assert issue.action == "needs_option" and issue.label == "Rejected"
    _value, issue = fit_value(spec("uni_leadstage"), "Dropped out", policy)
    assert issue.quarantines and "add_allowlist" in issue.message
    anything = FitPolicy(picklist=True, on_missing_option="add", add_allowlist=("*",))
    assert fit_value(spec("uni_leadstage"), "Dropped out", anything)[1].action == "needs_option"


def test_normalize_label() -> None:
    assert normalize_label("  Ärijuhtimine  (BA) ") == "arijuhtimine (ba)"
    assert normalize_label("STRASSE") == normalize_label("straße")


# -- booleans, numbers, dates --------------------------------------------------------------------------


def test_booleans() -> None:
    s = spec("uni_consentgiven")
    assert fit_value(s, True) == (True, None)
    assert fit_value(s, 0) == (False, None)
    assert fit_value(s, "Yes") == (True, None)
    assert fit_value(s, "maybe")[1].quarantines


def test_integers_and_ranges() -> None:
    s = spec("numberofemployees")
    assert fit_value(s, 5) == (5, None)
    assert fit_value(s, "42") == (42, None)
    assert fit_value(s, 2**40)[1].quarantines
    assert fit_value(s, 1.5)[1].quarantines
    assert fit_value(spec("estimatedvalue"), float("nan"))[1].quarantines


def test_date_only_column_gets_a_date() -> None:
    s = spec("uni_termstartdate")
    assert fit_value(s, "2025-09-01") == ("2025-09-01", None)
    late = "2025-09-01T23:30:00+00:00"
    assert fit_value(s, late, FitPolicy(date_format="date")) == ("2025-09-01", None)
    assert fit_value(s, late, FitPolicy(date_format="date_local", timezone="Europe/Tallinn")) == ("2025-09-02", None)


def test_date_time_column_gets_iso_utc() -> None:
    s = spec("uni_registeredon")
    assert fit_value(s, "2025-11-24T10:56:34+02:00") == ("2025-11-24T08:56:34Z", None)
    assert fit_value(s, "2025-11-24") == ("2025-11-24T00:00:00Z", None)
    local = FitPolicy(date_format="date_local", timezone="Europe/Tallinn")
    assert fit_value(s, "2025-11-24", local) == ("2025-11-23T22:00:00Z", None)
    assert fit_value(s, "2025-11-24T10:56:34Z", FitPolicy(date_format="date")) == ("2025-11-24T00:00:00Z", None)


def test_bad_dates_are_wrong_type() -> None:
    s = spec("uni_registeredon")
    for bad in ("yesterday", "1600-01-01T00:00:00Z", 17, "2025-02-30"):
        _value, issue = fit_value(s, bad)
        assert issue is not None and issue.code == "wrong_type" and issue.quarantines, bad


def test_unmappable_column_types() -> None:
    _value, issue = fit_value(spec("ownerid"), "x")
    assert issue.quarantines and "Owner" in issue.message


def test_fit_value_never_raises_on_weird_specs() -> None:
    odd = AttributeSpec("x", "DateTime", format="DateOnly")
    assert fit_value(odd, "2025-01-01", FitPolicy(timezone="Not/AZone"))[1].quarantines


# -- preflight -----------------------------------------------------------------------------------------


def test_check_mapping_accepts_a_good_mapping() -> None:
    s = settings_with(
        {"firstname": "applicant.name.given", "uni_leadstage": {"source": "lead.stage", "picklist": True}}
    )
    assert check_mapping(s, SCHEMA) == []


def test_unknown_attribute_is_named_with_a_suggestion() -> None:
    (err,) = check_mapping(settings_with({"firstnme": "applicant.name.given"}), SCHEMA)
    assert err.startswith("data_mapping.firstnme:") and "did you mean 'firstname'" in err


def test_read_only_attribute_is_named() -> None:
    errors = check_mapping(settings_with({"fullname": "applicant.name.full"}), SCHEMA)
    assert errors and all("fullname" in e for e in errors) and "not valid for create" in errors[0]
    errors = check_mapping(settings_with({"statecode": {"constant": 0}}), SCHEMA)
    assert "not valid for create" in errors[0] and all("statecode" in e for e in errors)


def test_date_into_picklist_is_a_type_mismatch() -> None:
    (err,) = check_mapping(settings_with({"uni_leadstage": "applicant.registered"}), SCHEMA)
    assert err.startswith("data_mapping.uni_leadstage:") and "Picklist" in err


def test_picklist_flag_on_a_text_column() -> None:
    (err,) = check_mapping(settings_with({"firstname": {"source": "lead.stage", "picklist": True}}), SCHEMA)
    assert "firstname" in err and "not a Picklist" in err


def test_other_type_mismatches() -> None:
    cases = {
        "uni_registeredon": "applicant.name.given",  # text into DateTime
        "uni_consentgiven": "applicant.email",  # text into Boolean
        "firstname": "consent.given",  # yes/no into text
        "numberofemployees": "term.name",  # text into Integer
        "uni_academictermtype": {"source": "tracker.codes", "picklist": True},  # list into Picklist
        "ownerid": "applicant.email",  # owner is bound by the load
        "telephone1": {"constant": 5},
    }
    for attr, source in cases.items():
        errors = check_mapping(settings_with({attr: source}), SCHEMA)
        if attr == "telephone1":
            assert errors == []  # a number renders as text
            continue
        assert len(errors) == 1 and errors[0].startswith(f"data_mapping.{attr}:"), (attr, errors)


def test_picklist_constants_and_value_map_targets_must_exist() -> None:
    mapping = {
        "leadsourcecode": {"source": "tracker.code", "picklist": True, "value_map": {"FB": "Advertisment"}},
        "uni_leadstage": {"constant": 99},
    }
    errors = check_mapping(settings_with(mapping), SCHEMA)
    assert any("leadsourcecode" in e and "'Advertisment'" in e for e in errors)
    assert any("uni_leadstage" in e and "99" in e for e in errors)


def test_identity_and_dedupe_columns_are_checked() -> None:
    s = settings_with(
        {"firstname": "applicant.name.given"},
        dynamics={"alternate_key": "uni_nosuch", "instance_column": "uni_leadstage"},
        dedupe={"email_column": "emailaddress9"},
    )
    errors = check_mapping(s, SCHEMA)
    assert any(e.startswith("dynamics.alternate_key:") and "uni_nosuch" in e for e in errors)
    assert any(e.startswith("dynamics.instance_column:") and "Picklist" in e for e in errors)
    assert any(e.startswith("dedupe.email_column:") for e in errors)


def test_warnings_for_unmapped_required_columns() -> None:
    warnings = mapping_warnings(settings_with({"firstname": "applicant.name.given"}), SCHEMA)
    assert any(w.startswith("lastname:") for w in warnings)
    assert any(w.startswith("subject:") for w in warnings)
    assert any(w.startswith("dedupe.email_column:") for w in warnings)


def test_warning_when_datetime_behaviour_is_unknown() -> None:
    schema = LeadSchema(
        [*SCHEMA.values(), AttributeSpec("uni_termstartdate", "DateTime")]  # as if the metadata had no Format
    )
    s = settings_with(
        {"lastname": "applicant.name.family", "subject": {"constant": "x"}, "uni_termstartdate": "term.start"}
    )
    (warning,) = [w for w in mapping_warnings(s, schema) if "uni_termstartdate" in w]
    assert "DateTimeBehavior" in warning
