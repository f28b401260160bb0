"""Messy values (odd phones, unknown countries, wrong encodings) and malformed wire records of the sandbox."""

from __future__ import annotations

import phonenumbers
import pycountry
import pytest

from sandbox.data import journal as J
from sandbox.data.generator import generate
from sandbox.data.messy import MESSY_CITIZENSHIPS, MESSY_PHONES, REPLACEMENT, mojibake, replacement_chars
from sandbox.data.mutations import MutationError, advance
from sandbox.data.wire import WireOverride

ANCHOR = 1_780_000_000


def _e164(raw: str, region: str | None) -> str | None:
    try:
        number = phonenumbers.parse(raw, region)
    except phonenumbers.NumberParseException:
        return None
    return phonenumbers.format_number(number, 0) if phonenumbers.is_valid_number(number) else None


@pytest.mark.parametrize("region", [None, "US", "EE"])
def test_messy_phones_are_not_valid_numbers_without_a_region_or_for_us_and_estonia(region: str | None) -> None:
    assert all(_e164(raw, region) is None for raw in MESSY_PHONES)
    # messy is relative: "(555) 123-4567" is a valid number in the United Kingdom's plan
    assert _e164("(555) 123-4567", "GB") == "+445551234567"
    assert _e164("+372 5123 4567", region) == "+37251234567"  # the check itself can say yes


def test_messy_citizenships_are_not_iso_countries() -> None:
    for code in MESSY_CITIZENSHIPS:
        with pytest.raises(LookupError):
            pycountry.countries.lookup(code)
    assert pycountry.countries.lookup("GB").alpha_2 == "GB"


def test_wrong_encodings() -> None:
    assert mojibake("José") == "JosÃ©"
    assert mojibake("Jose") == "JosÃ©"  # an ASCII name gets an accent first, so it really breaks
    assert replacement_chars("José") == "Jos" + REPLACEMENT
    assert replacement_chars("Łukasz") == REPLACEMENT + "ukasz"
    assert replacement_chars("Smith") == "Sm" + REPLACEMENT + "th"  # ASCII: accented first ("Smíth")


def test_wire_override_set_remove_replace_key() -> None:
    record = {"id": 12, "name": {"given": "Mari", "family": "Tamm"}, "email": "m@example.ee"}
    served = WireOverride.from_spec({"set": {"id": "12a", "name.given": 42, "x.y": [1]}, "remove": ["email"]}).apply(
        dict(record, name=dict(record["name"]))
    )
    assert served == {"id": "12a", "name": {"given": 42, "family": "Tamm"}, "x": {"y": [1]}}
    as_string = WireOverride.from_spec({"set": {"name": "Mari Tamm"}}).apply(dict(record))
    assert as_string["name"] == "Mari Tamm" and as_string["email"] == "m@example.ee"
    assert WireOverride.from_spec({"replace": "not a record"}).apply(dict(record)) == "not a record"
    assert WireOverride.from_spec({"replace": None}).apply(dict(record)) is None
    keyed = WireOverride.from_spec({"key": 13})
    assert keyed.key == "13" and keyed.apply(dict(record)) == record


@pytest.mark.parametrize(
    "spec",
    [[], {}, {"journal": True}, {"sett": {}}, {"set": {"": 1}}, {"set": {"a..b": 1}}, {"remove": "email"}, {"key": ""}],
)
def test_wire_override_rejects_bad_specs(spec: object) -> None:
    with pytest.raises(MutationError):
        WireOverride.from_spec(spec)


def test_messy_edits_in_advance_are_journaled_and_off_by_default() -> None:
    plain, messy = generate(5, 300, ANCHOR), generate(5, 300, ANCHOR)
    out = advance(plain, ANCHOR + 10, ANCHOR + 86400, 3)
    assert out["applicants_messy"] == []
    out_messy = advance(messy, ANCHOR + 10, ANCHOR + 86400, 3, {"edits": 0.0, "messy_edits": 0.2})
    changed = out_messy["applicants_messy"]
    assert len(changed) >= 30
    assert set(changed) <= set(out_messy["applicants_edited"])
    before = generate(5, 300, ANCHOR).applicants
    kinds = set()
    for aid in changed:
        a, old = messy.applicants[aid], before[aid]
        if a.phone != old.phone:
            assert a.phone in MESSY_PHONES
            kinds.add("phone")
        elif a.citizenship != old.citizenship:
            assert a.citizenship in MESSY_CITIZENSHIPS
            kinds.add("citizenship")
        else:
            assert a.given in (mojibake(old.given or "Jose"), replacement_chars(old.given or "Jose"))
            kinds.add("name")
    assert kinds == {"phone", "citizenship", "name"}
    j = messy.journal
    edited = {j.applicant[i - 1] for i in range(1, len(j) + 1) if j.name(i) == J.APPLICANT_EDITED}
    assert set(changed) <= edited
