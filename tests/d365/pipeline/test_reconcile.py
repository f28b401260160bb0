"""Reconciliation's comparison of the CRM's values with the ledger's payload hash (no copy of the payload)."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

from d365.pipeline.mapping import payload_hash
from d365.pipeline.reconcile import (
    DATE_ONLY,
    INSTANT,
    NUMBER,
    column_kinds,
    crm_candidates,
    payload_matches,
    summary_text,
)

COLUMNS = ["firstname", "lastname", "emailaddress1", "mobilephone", "uni_termstartdate", "uni_registeredon"]
KINDS = {"uni_termstartdate": DATE_ONLY, "uni_registeredon": INSTANT}
SENT = {
    "firstname": "Zoë",
    "lastname": "O'Brien",
    "emailaddress1": "zoe@example.org",
    "uni_termstartdate": "2026-09-01",
    "uni_registeredon": "2025-11-03T09:15:00Z",
}


def crm_row(**changes: Any) -> dict[str, Any]:
    """What Dataverse answers for the lead: every selected column, nulls included, instants as ``…Z``."""
    row = {c: None for c in COLUMNS} | SENT | {"leadid": "L", "statecode": 0}
    row.update(changes)
    return row


def test_a_create_that_left_empty_columns_out_matches() -> None:
    assert payload_matches(crm_row(), COLUMNS, payload_hash(SENT), KINDS) is True


def test_an_update_that_sent_empty_columns_as_null_matches() -> None:
    sent = SENT | {"mobilephone": None}
    assert payload_matches(crm_row(), COLUMNS, payload_hash(sent), KINDS) is True


def test_a_changed_or_cleared_value_does_not_match() -> None:
    expected = payload_hash(SENT)
    assert payload_matches(crm_row(firstname="Edited"), COLUMNS, expected, KINDS) is False
    assert payload_matches(crm_row(emailaddress1=None), COLUMNS, expected, KINDS) is False
    assert payload_matches(crm_row(mobilephone="+3725551234"), COLUMNS, expected, KINDS) is False  # filled in CRM
    # a column outside what the sync sends is no drift
    assert payload_matches(crm_row(description="note"), COLUMNS, expected, KINDS) is True


def test_dataverse_representations_are_mapped_back_to_what_was_sent() -> None:
    # instants: with fractions or offsets Dataverse would not send, still the same instant
    row = crm_row(uni_registeredon="2025-11-03T10:15:00.000+01:00")
    assert payload_matches(row, COLUMNS, payload_hash(SENT), KINDS) is True
    # a date sent into a date-and-time column comes back at midnight UTC
    sent = SENT | {"uni_registeredon": "2025-11-03"}
    assert payload_matches(crm_row(uni_registeredon="2025-11-03T00:00:00Z"), COLUMNS, payload_hash(sent), KINDS)
    # a whole number sent into a decimal column comes back as a float
    assert crm_candidates(3.0, NUMBER) == [3.0, 3] and crm_candidates(2.5, NUMBER) == [2.5]
    assert crm_candidates("2026-09-01T00:00:00Z", DATE_ONLY) == ["2026-09-01"]
    assert crm_candidates(True, None) == [True]


def test_too_many_combinations_are_not_checked() -> None:
    columns = [f"c{i}" for i in range(13)]  # 2**13 ways to include the empty columns
    assert payload_matches({c: None for c in columns}, columns, payload_hash({}), {}) is None
    assert payload_matches({c: None for c in columns[:12]}, columns[:12], payload_hash({}), {}) is True


def test_column_kinds_from_the_lead_metadata() -> None:
    attrs = {
        "a": SimpleNamespace(type="DateTime", format="DateOnly", date_behavior="UserLocal"),
        "b": SimpleNamespace(type="DateTime", format="DateAndTime", date_behavior="UserLocal"),
        "c": SimpleNamespace(type="DateTime", format=None, date_behavior="DateOnly"),
        "d": SimpleNamespace(type="Decimal", format=None, date_behavior=None),
        "e": SimpleNamespace(type="String", format="Email", date_behavior=None),
    }
    assert column_kinds(attrs) == {"a": DATE_ONLY, "b": INSTANT, "c": DATE_ONLY, "d": NUMBER}


def test_the_summary_says_when_marking_was_refused() -> None:
    report = {
        "instance": "x",
        "checked": 20,
        "counts": {"deleted": 20, "deactivated": 0, "edited": 0, "not_checked": 0, "marked_for_resend": 0},
        "recreate_deleted": True,
        "refused": "20 of 20 leads read as deleted in the CRM, more than reconcile.max_deleted_fraction",
        "deleted": [{"applicant_id": i} for i in range(20)],
        "deactivated": [],
        "edited": [],
    }
    text = summary_text(report)
    assert "REFUSED: 20 of 20 leads" in text and "marked for re-send" not in text
