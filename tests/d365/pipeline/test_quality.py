"""Great Expectations checks of an extract: one reason per failing check and row, batch limits, privacy."""

from __future__ import annotations

import json
from typing import Any

import pytest
from hypothesis import HealthCheck, given
from hypothesis import settings as hsettings
from hypothesis import strategies as st

from d365.pipeline import quality as Q
from d365.pipeline.fit import LeadSchema
from d365.pipeline.settings import load_settings

SCHEMA = LeadSchema.from_metadata_json()
DEFAULT = load_settings()


def applicant(aid: int = 1, **overrides: Any) -> dict[str, Any]:
    base: dict[str, Any] = {
        "applicant_id": aid,
        "type": "Natural",
        "registered": "2025-11-24T23:56:34+00:00",
        "name_full": "Seán O'Brien",
        "name_given": "Seán",
        "name_middle": None,
        "name_family": "O'Brien",
        "email": f"sean{aid}@example.com",
        "phone": "+372 5123 4567",
        "citizenship": "IE",
        "reference": None,
        "matriculation": None,
        "consents": {"1": "Accept"},
        "tracker_ids": [],
        "tracker_codes": [],
        "applications": [{"id": 9, "status": "Submitted", "created": "2025-01-01T10:00:00+02:00", "submitted": None}],
    }
    return base | overrides


def with_quality(**changes: Any) -> Any:
    return DEFAULT.model_copy(update={"quality": DEFAULT.quality.model_copy(update=changes)})


def validate(records: list[Any], settings: Any = DEFAULT, **kw: Any) -> Q.QualityResult:
    return Q.validate_applicants(records, settings=settings, schema=SCHEMA, **kw)


# (overrides, the reason expected; None = passes)
CASES: list[tuple[dict[str, Any], str | None]] = [
    ({}, None),
    ({"email": "  Sean.OBrien+apply@Example.COM "}, None),
    ({"email": "jürgen@müller.de"}, None),  # internationalised: email-validator, not the pre-screen
    ({"email": "sean@@example.com"}, "email: invalid syntax"),
    ({"email": "sean example.com"}, "email: invalid syntax"),
    ({"email": "sean@localhost"}, "email: invalid syntax"),
    ({"email": "sean@example.test"}, "email: invalid syntax"),
    ({"email": None}, None),
    ({"email": "   "}, None),
    ({"email": "a" * 95 + "@b.com"}, "emailaddress1 (email): longer than the column (100)"),
    ({"email": 12}, "email: not text"),
    ({"phone": ""}, None),
    ({"phone": None}, None),
    ({"phone": "087 123 4567"}, None),  # national form, region IE from the citizenship
    ({"phone": "+44 7400 123456 ext. 12"}, None),
    ({"phone": "0037251234567", "citizenship": "EE"}, None),
    ({"phone": "call me"}, "phone: not parseable to E.164"),
    ({"phone": "+372 5x1 2345"}, "phone: not parseable to E.164"),
    ({"phone": "123"}, "phone: not parseable to E.164"),
    ({"phone": "087 123 4567", "citizenship": None}, "phone: not parseable to E.164"),
    ({"citizenship": "XK", "phone": None}, None),
    ({"citizenship": "ee"}, None),
    ({"citizenship": ""}, None),
    ({"citizenship": "UK"}, "citizenship: not a known country (ISO 3166-1)"),
    ({"citizenship": "XX"}, "citizenship: not a known country (ISO 3166-1)"),
    ({"citizenship": "EST"}, None),  # alpha-3 and English names are known countries (mapping.country_code)
    ({"citizenship": "Estonia"}, None),
    ({"name_given": None}, None),
    ({"name_family": ""}, None),  # the full name is an identity too
    ({"name_full": None, "name_family": " "}, "identity: no usable name_family or name_full"),
    ({"email": None, "phone": " "}, "identity: no usable email or phone"),
    ({"email": "bad@@x", "phone": None}, "email: invalid syntax"),  # + identity (two reasons: see below)
    ({"name_family": "GarcÃ\xada"}, "name_family: wrong encoding (U+FFFD or mojibake)"),
    ({"name_given": "Se\ufffdn"}, "name_given: wrong encoding (U+FFFD or mojibake)"),
    ({"reference": "R\u00e9f \u00c3\u00a9"}, "reference: wrong encoding (U+FFFD or mojibake)"),
    ({"name_given": "Ãngel", "name_family": "SÃO"}, None),  # Ã followed by a letter: real text
    ({"phone": "127.555.6451"}, "phone: not parseable to E.164"),
    ({"phone": "(555) 123-4567"}, "phone: not parseable to E.164"),
    ({"phone": "+44 7700 9040040"}, "phone: not parseable to E.164"),
    ({"phone": "12"}, "phone: not parseable to E.164"),
    ({"name_given": "X" * 80, "name_family": "Y" * 80}, None),  # names truncate (policy), they pass
    ({"name_given": ["Seán"]}, "name_given: not text"),
    ({"registered": "yesterday"}, "registered: not an ISO 8601 date/time from 1753 on"),
    ({"registered": "1700-01-01T00:00:00Z"}, "registered: not an ISO 8601 date/time from 1753 on"),
    ({"registered": None}, None),
    ({"applications": []}, None),
    ({"applications": "none"}, "applications: not a list of application records"),
    ({"applications": [None]}, "applications: not a list of application records"),
    ({"applications": [{"id": 1, "created": "2025-13-45"}]}, Q.APPLICATION_DATES_CHECK.reason),
    ({"applications": [{"id": 1, "submitted": 17}]}, Q.APPLICATION_DATES_CHECK.reason),
    ({"applications": [{"id": 1, "revised": "soon"}]}, Q.APPLICATION_DATES_CHECK.reason),
    ({"malformed": ["name: not an object"]}, "record: malformed (name: not an object)"),
    (
        {"applications": [{"id": 1, "malformed": ["courses: not an object"]}]},
        "record: malformed (application: courses: not an object)",
    ),
    ({"applicant_id": 0}, "applicant_id: missing or not a positive integer"),
    ({"applicant_id": True}, "applicant_id: missing or not a positive integer"),
    ({"applicant_id": 2**63}, "applicant_id: missing or not a positive integer"),
    ({"applicant_id": "12a"}, "applicant_id: missing or not a positive integer"),
]


@pytest.mark.slow  # over a second (real Retry-After waits, sleeps or a subprocess): make test runs it
def test_each_check_names_its_field_and_passes_good_values() -> None:
    records = []
    for i, (overrides, _) in enumerate(CASES):
        records.append(applicant(1000 + i) | overrides)
    result = validate(records)
    for i, (overrides, expected) in enumerate(CASES):
        reasons = result.reasons(i)
        if expected is None:
            assert reasons == [], (overrides, reasons)
        else:
            assert expected in reasons, (overrides, reasons)
            extra = {"identity: no usable email or phone"} if overrides.get("email") == "bad@@x" else set()
            assert set(reasons) == {expected} | extra, (overrides, reasons)
    assert result.invalid_rows == sum(1 for _, e in CASES if e)


def test_duplicates_quarantine_every_row_of_the_id_and_non_records_fail_once() -> None:
    records: list[Any] = [applicant(1), applicant(2), applicant(1), None, "x", [1], applicant(3), {}]
    result = validate(records)
    dup = "applicant_id: duplicate (every row of the id quarantined)"
    assert result.reasons(0) == [dup] and result.reasons(2) == [dup]
    assert result.reasons(1) == [] and result.reasons(6) == []
    for row in (3, 4, 5):
        assert result.reasons(row) == ["record: not an applicant record"]
    assert "applicant_id: missing or not a positive integer" in result.reasons(7)
    assert result.applicant_ids[:3] == [1, 2, 1] and result.applicant_ids[3] is None


def test_gx_result_lists_the_failing_rows_and_holds_no_personal_values() -> None:
    marker = "zqxjv"
    bad = applicant(
        5,
        name_given=f"{marker}given",
        name_family=None,
        email=f"{marker}@@bad",
        phone=f"{marker} phone",
        citizenship=marker,
        registered=marker,
    )
    result = validate([applicant(4), bad])
    text = json.dumps(result.gx_result)
    assert marker not in text and marker not in json.dumps(result.summary())
    assert all(marker not in r for r in result.reasons(1))
    email = next(
        r for r in result.gx_result["results"] if r["expectation_config"]["kwargs"].get("column") == Q.EMAIL.column
    )
    assert email["success"] is False
    assert email["result"]["unexpected_index_list"] == [{Q.EMAIL.column: False, "row": 1, "applicant_id": 5}]


def test_missing_email_quarantines_when_configured() -> None:
    """``quarantine_missing_email: true`` still works: it adds [email] to the identity groups, so a missing
    and an invalid (dropped) address both withhold the applicant."""
    strict = with_quality(quarantine_missing_email=True)
    rows = [applicant(1, email=None), applicant(2, email=" "), applicant(3), applicant(4, email="bad@@x")]
    result = validate(rows, settings=strict)
    assert result.reasons(0) == ["identity: no usable email"] and result.reasons(1) == ["identity: no usable email"]
    assert result.reasons(2) == []
    assert result.withheld_reasons(3) == ["identity: no usable email"]
    lax = validate(rows)
    assert [lax.withheld_reasons(i) for i in range(4)] == [[], [], [], []]


def test_length_checks_follow_the_fit_policy() -> None:
    names = {c.reason for c, _, _ in Q.length_checks(DEFAULT, SCHEMA)}
    assert names == {"emailaddress1 (email): longer than the column (100)"}
    quarantine_names = DEFAULT.model_copy(
        update={"fit_policy": DEFAULT.fit_policy.model_copy(update={"too_long": "quarantine"})}
    )
    found = {c.column for c, _, _ in Q.length_checks(quarantine_names, SCHEMA)}
    assert {"chk_len_firstname", "chk_len_lastname", "chk_len_emailaddress1"} <= found
    # UTF-16: 40 astral characters are 80 units, 60 of them 120 units: over firstname's 50? both are
    result = validate([applicant(1, name_given="𝔸" * 20), applicant(2, name_given="𝔸" * 30)], settings=quarantine_names)
    assert result.reasons(0) == []
    assert result.reasons(1) == ["firstname (name_given): longer than the column (50)"]


# -- batch level --------------------------------------------------------------------------------------


def _batch(result: Q.QualityResult) -> dict[str, bool]:
    return {b["check"]: b["ok"] for b in result.batch}


def test_api_count_is_checked_on_full_extracts_only_with_tolerance() -> None:
    rows = [applicant(i) for i in range(1, 61)]
    assert _batch(validate(rows, api_count=61, full_extract=True))["row_count_vs_api"]  # 1% of 61 → 1
    assert not _batch(validate(rows, api_count=63, full_extract=True))["row_count_vs_api"]
    assert "row_count_vs_api" not in _batch(validate(rows, api_count=500, full_extract=False))
    exact = with_quality(api_count_tolerance=0)
    failed = validate(rows, settings=exact, api_count=61, full_extract=True)
    assert not failed.ok and failed.batch_failures == ["row_count_vs_api: 60 rows, expected 61..61"]


def test_a_sudden_drop_against_the_previous_full_extract_fails() -> None:
    rows = [applicant(i) for i in range(1, 41)]
    assert _batch(validate(rows, previous_full_count=80, full_extract=True))["row_count_vs_previous_full"]
    dropped = validate(rows, previous_full_count=81, full_extract=True)
    assert dropped.batch_failures == ["row_count_vs_previous_full: 40 rows, expected 41..any"]


def test_invalid_fraction_applies_from_min_rows() -> None:
    few = [applicant(1), applicant(2, email="bad@@x")]
    assert validate(few).ok  # 50% bad, but below min_rows_for_threshold (20)
    many = [applicant(i, email="bad@@x" if i % 3 == 0 else f"a{i}@x.org") for i in range(1, 31)]
    result = validate(many)  # 10 of 30 = 33% > 25%
    assert not result.ok and result.batch_failures[0].startswith("invalid_fraction: 10 of 30 rows invalid")
    assert Q.invalid_fraction_check(0, 0, DEFAULT.quality)[1]


def test_empty_extract_passes() -> None:
    result = validate([])
    assert result.ok and result.rows == 0 and result.failures == {}


def test_gx_exception_info_is_a_batch_failure_not_no_bad_rows(monkeypatch: pytest.MonkeyPatch) -> None:
    real = Q.run_gx

    def broken(*args: Any, **kwargs: Any) -> Any:
        result = real(*args, **kwargs)
        for res in result.results:
            if res.expectation_config.kwargs.get("column") == Q.EMAIL.column:
                res.exception_info = {"raised_exception": True, "exception_message": "boom", "exception_traceback": ""}
                res.result = {}
        return result

    monkeypatch.setattr(Q, "run_gx", broken)
    result = validate([applicant(1, email="bad@@x"), applicant(2)])
    assert not result.ok
    assert any("could not be evaluated: boom" in f for f in result.batch_failures)
    assert result.reasons(0) == []  # nothing read from the failed expectation


# -- the e-mail pre-screen accepts only what email-validator accepts -----------------------------------

_EMAIL_ALPHABET = st.sampled_from([*list("abcXYZ019.-_+@!#'`~"), "@", ".", "--", "ü", " ", ".com", ".test", "xn--"])


@hsettings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(st.lists(_EMAIL_ALPHABET, min_size=1, max_size=30).map("".join), min_size=1, max_size=60))
def test_fast_email_prescreen_is_a_subset_of_email_validator(values: list[str]) -> None:
    import pandas as pd

    fast = Q.fast_email_ok(pd.Series(values, dtype="str"))
    for value, ok in zip(values, fast, strict=True):
        if ok:
            assert Q.email_valid(value), value


def test_fast_email_prescreen_takes_the_common_case() -> None:
    import pandas as pd

    values = ["maria.garcia4@gmail.com", "j.smith+apply@uni.example.ac.uk", "bad@", "a@b.c0m", "x@y.local"]
    assert Q.fast_email_ok(pd.Series(values, dtype="str")).tolist() == [True, True, False, False, False]
    # the pre-screen only routes: a digit in the TLD goes to email-validator, which accepts it
    assert [Q.email_valid(v) for v in values] == [True, True, False, True, False]


# -- wrong encoding, field policy, default region, settings -------------------------------------------


@pytest.mark.parametrize(
    ("text", "wrong"),
    [
        ("José García", False),
        ("Zoë Ñúñez-Łukasiewicz", False),
        ("Ãngel", False),  # Ã followed by a letter: Portuguese/Spanish text, not mojibake
        ("SÃO PAULO", False),
        ("日本語 テキスト", False),
        ("Ⅻ ° ± ©", False),  # symbols alone are fine
        ("Â", False),
        ("Se\ufffdn", True),  # the replacement character
        ("JosÃ© GarcÃ\xada", True),  # UTF-8 read as cp1252/latin-1
        ("MÃ¼ller", True),
        ("Oâ€™Brien", True),  # a typographic apostrophe, three bytes
        ("ðŸ˜€ smile", True),  # an emoji, four bytes
        ("a\udc80b", True),  # a lone surrogate (surrogateescape of an undecodable byte)
    ],
)
def test_wrong_encoding_detection_is_conservative(text: str, wrong: bool) -> None:
    assert Q.wrong_encoding(text) is wrong


def test_wrong_encoding_is_a_field_issue_recorded_by_gx_without_the_value() -> None:
    result = validate([applicant(1, name_family="GarcÃ\xada", reference="Ref\ufffd"), applicant(2)])
    assert result.reasons(0) == [
        "name_family: wrong encoding (U+FFFD or mojibake)",
        "reference: wrong encoding (U+FFFD or mojibake)",
    ]
    assert result.withheld_reasons(0) == []  # the full name is still an identity: the row is sent
    assert result.field_actions(0) == {"name_family": "drop", "reference": "drop"}
    encoding = next(
        r for r in result.gx_result["results"] if r["expectation_config"]["kwargs"].get("column") == Q.ENCODING.column
    )
    assert encoding["success"] is False
    assert encoding["result"]["unexpected_index_list"] == [
        {Q.ENCODING.column: "name_family,reference", "row": 0, "applicant_id": 1}
    ]
    assert "Garc" not in json.dumps(result.gx_result)


def test_field_issue_counts_per_field_and_reason_and_the_policy_decides_the_action() -> None:
    rows = [
        applicant(1, phone="12", citizenship="XX"),
        applicant(2, phone="(555) 123-4567"),
        applicant(3, phone=5551234),
        applicant(4, email="Se\ufffdn@example.com"),  # email-validator accepts it: the encoding check does not
    ]
    result = validate(rows)
    assert result.summary()["field_issues"] == {
        "citizenship": {"invalid": 1},
        "email": {"wrong_encoding": 1},
        "phone": {"invalid": 2, "not_text": 1},
    }
    assert result.invalid_rows == 4 and all(result.withheld_reasons(i) == [] for i in range(4))
    opted = validate(rows, settings=with_quality(field_policy={"phone": "quarantine", "email": "send_as_entered"}))
    assert opted.withheld_reasons(0) == ["phone: not parseable to E.164"]
    assert opted.field_actions(0) == {"citizenship": "drop"}
    assert opted.field_actions(3) == {"email": "drop"}  # a wrong encoding is never sent as entered


def test_phones_are_read_with_the_citizenship_then_the_default_region() -> None:
    rows = [applicant(1, phone="5123 4567", citizenship="FR"), applicant(2, phone="5123 4567", citizenship=None)]
    assert validate(rows).reasons(0) == ["phone: not parseable to E.164"]
    assert validate(rows).reasons(1) == ["phone: not parseable to E.164"]
    estonian = with_quality(default_region="EE")
    assert validate(rows, settings=estonian).reasons(0) == [] and validate(rows, settings=estonian).reasons(1) == []


@pytest.mark.parametrize(
    ("quality", "error"),
    [
        ({"field_policy": {"phon": "drop"}}, "quality.field_policy: unknown field 'phon'; did you mean 'phone'?"),
        ({"field_policy": {"phone": "ignore"}}, "quality.field_policy.phone"),
        ({"identity": [["email", "fax"]]}, "quality.identity: unknown identity field 'fax'"),
        ({"identity": [[]]}, "quality.identity: each identity group lists at least one field"),
        ({"default_region": "XX"}, "quality.default_region: 'XX' is not a region phonenumbers knows"),
        ({"default_regio": "EE"}, "quality.default_regio: unknown key; did you mean 'default_region'?"),
    ],
)
def test_quality_settings_are_strict(quality: dict[str, Any], error: str) -> None:
    from d365.pipeline.settings import SettingsError, parse_settings

    with pytest.raises(SettingsError) as info:
        parse_settings({"data_mapping": {"firstname": "applicant.name.given"}, "quality": quality})
    assert any(line.startswith(error) for line in info.value.errors), info.value.errors


def test_default_region_is_normalised_and_quarantine_missing_email_joins_the_identity() -> None:
    from d365.pipeline.settings import parse_settings

    s = parse_settings(
        {
            "data_mapping": {"firstname": "applicant.name.given"},
            "quality": {"default_region": "ee", "quarantine_missing_email": True},
        }
    )
    assert s.quality.default_region == "EE"
    assert s.quality.identity_groups() == (("name_family", "name_full"), ("email", "phone"), ("email",))
    assert s.quality.policy("phone") == "drop"
