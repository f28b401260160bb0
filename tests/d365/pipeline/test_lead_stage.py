"""Lead stage and stage date: one row per rule, plus current-application choice and broken input."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import pytest

from d365.pipeline.lead_stage import STAGES, StageRules, current_application, derive_stage, evaluate, parse_instant

CATALOG: dict[str, Any] = {
    "terms": {},
    "courses": {},
    "consents": {},
    "trackers": {},
    "offer_types": {
        "1": "Unreplied",
        "2": "Conditional",
        "3": "Unconditional",
        "4": "Rejected",
        "5": "Waitlisted",
        "6": "Interview",
        "7": "Not admitted",
        "8": "Enrolled",
    },
}
T = {
    "reg": "2025-01-01T08:00:00+00:00",
    "created": "2025-02-01T10:00:00+02:00",  # 08:00Z
    "submitted": "2025-03-01T12:00:00+00:00",
    "revised": "2025-03-05T12:00:00+00:00",
    "inserted": "2025-03-01T12:00:00+00:00",
    "saved": "2025-04-01T09:30:00+00:00",
    "confirmed": "2025-04-10T15:00:00+00:00",
}


def offer(type_id: int | None, decision: str | None = "None", **kw: Any) -> dict[str, Any]:
    base = {
        "id": 1,
        "course_id": 1,
        "type_id": type_id,
        "type_title": None,
        "decision": decision,
        "inserted": T["inserted"],
        "saved": T["saved"],
        "confirmed": None,
    }
    return base | kw


def app(status: str | None, offers: list[dict[str, Any]] | None = None, **kw: Any) -> dict[str, Any]:
    base = {
        "id": 10,
        "status": status,
        "created": T["created"],
        "revised": T["revised"],
        "submitted": T["submitted"] if status in ("Submitted", "Reopened", "Resubmitted", "Closed") else None,
        "academic_term_id": 21,
        "courses": [{"course_id": 1, "priority": 1, "intake_id": None}],
        "offers": offers or [],
    }
    return base | kw


def applicant(*apps: dict[str, Any]) -> dict[str, Any]:
    return {"applicant_id": 1, "registered": T["reg"], "applications": list(apps), "consents": {}}


CASES = [
    ("no applications", applicant(), "Registered", "2025-01-01T08:00:00Z"),
    ("blank", applicant(app("Blank")), "Applying", "2025-02-01T08:00:00Z"),
    ("prepare", applicant(app("Prepare")), "Applying", "2025-02-01T08:00:00Z"),
    ("draft", applicant(app("Draft")), "Applying", "2025-02-01T08:00:00Z"),
    ("inactive", applicant(app("Inactive")), "Applying", "2025-02-01T08:00:00Z"),
    ("submitted", applicant(app("Submitted", [offer(1)])), "Submitted", "2025-03-01T12:00:00Z"),
    ("reopened", applicant(app("Reopened")), "Submitted", "2025-03-01T12:00:00Z"),
    ("resubmitted", applicant(app("Resubmitted")), "Submitted", "2025-03-01T12:00:00Z"),
    ("waitlisted is pending", applicant(app("Submitted", [offer(5)])), "Submitted", "2025-03-01T12:00:00Z"),
    ("conditional offer", applicant(app("Submitted", [offer(2)])), "Offer", "2025-04-01T09:30:00Z"),
    ("offer by title only", applicant(app("Submitted", [offer(None, type_title="Unconditional")])), "Offer", None),
    (
        "accepted",
        applicant(app("Submitted", [offer(3, "Final", confirmed=T["confirmed"])])),
        "Accepted",
        "2025-04-10T15:00:00Z",
    ),
    (
        "enrolled",
        applicant(app("Submitted", [offer(8, "Final", confirmed=T["confirmed"])])),
        "Enrolled",
        "2025-04-10T15:00:00Z",
    ),
    ("all rejected", applicant(app("Submitted", [offer(4), offer(7)])), "Rejected", "2025-04-01T09:30:00Z"),
    ("rejected + pending", applicant(app("Submitted", [offer(4), offer(1)])), "Submitted", "2025-03-01T12:00:00Z"),
    ("rejected + offer", applicant(app("Submitted", [offer(4), offer(2)])), "Offer", "2025-04-01T09:30:00Z"),
    ("declined only", applicant(app("Submitted", [offer(2, "Declined")])), "Withdrawn", "2025-04-01T09:30:00Z"),
    ("withdrawn", applicant(app("Withdrawn")), "Withdrawn", "2025-03-05T12:00:00Z"),
    ("withdrawn beats offer", applicant(app("Withdrawn", [offer(2)])), "Withdrawn", "2025-03-05T12:00:00Z"),
    ("closed", applicant(app("Closed")), "Withdrawn", "2025-03-05T12:00:00Z"),
    ("closed, rejected", applicant(app("Closed", [offer(4)])), "Rejected", "2025-04-01T09:30:00Z"),
    ("closed, open offer expired", applicant(app("Closed", [offer(2)])), "Withdrawn", "2025-03-05T12:00:00Z"),
    (
        "closed keeps acceptance",
        applicant(app("Closed", [offer(3, "Final", confirmed=T["confirmed"])])),
        "Accepted",
        "2025-04-10T15:00:00Z",
    ),
    ("unknown status, submitted ts", applicant(app("Exported", submitted=T["submitted"])), "Submitted", None),
    ("unknown status", applicant(app("Mystery")), "Applying", "2025-02-01T08:00:00Z"),
    ("status case-insensitive", applicant(app("sUbMiTtEd")), "Submitted", None),
]


@pytest.mark.parametrize(("label", "record", "stage", "changed"), CASES, ids=[c[0] for c in CASES])
def test_stage_table(label: str, record: dict[str, Any], stage: str, changed: str | None) -> None:
    got_stage, got_changed = derive_stage(record, CATALOG)
    assert got_stage == stage
    if changed is not None:
        assert got_changed == changed
    assert got_stage in STAGES


def test_every_stage_is_covered_by_the_table() -> None:
    assert {c[2] for c in CASES} == set(STAGES)


def test_most_advanced_application_wins_and_open_beats_closed() -> None:
    rejected = app("Submitted", [offer(4)], id=11)
    applying = app("Prepare", id=12, created="2025-05-01T00:00:00+00:00")
    assert derive_stage(applicant(rejected, applying), CATALOG) == ("Applying", "2025-05-01T00:00:00Z")
    withdrawn = app("Withdrawn", id=13)
    assert derive_stage(applicant(withdrawn, rejected), CATALOG)[0] == "Rejected"


def test_stage_date_is_when_the_stage_was_first_entered() -> None:
    early = app("Submitted", [offer(2, saved="2025-04-01T00:00:00+00:00")], id=1)
    late = app("Submitted", [offer(2, saved="2025-06-01T00:00:00+00:00")], id=2)
    assert derive_stage(applicant(late, early), CATALOG) == ("Offer", "2025-04-01T00:00:00Z")


def test_withdrawn_date_is_the_last_withdrawal() -> None:
    a = app("Withdrawn", id=1, revised="2025-03-01T00:00:00+00:00")
    b = app("Withdrawn", id=2, revised="2025-05-01T00:00:00+00:00")
    assert derive_stage(applicant(a, b), CATALOG) == ("Withdrawn", "2025-05-01T00:00:00Z")


def test_current_application_ties_broken_by_latest_activity_then_id() -> None:
    old = app("Submitted", id=5, revised="2025-03-01T00:00:00+00:00")
    new = app("Submitted", id=4, revised="2025-06-01T00:00:00+00:00")
    assert current_application(applicant(old, new), CATALOG)["id"] == 4
    twin = app("Submitted", id=9, revised="2025-06-01T00:00:00+00:00")
    assert current_application(applicant(new, twin), CATALOG)["id"] == 9
    assert current_application(applicant(), CATALOG) is None


def test_rules_are_configurable() -> None:
    rules = StageRules(rejected_offer_types=("Waitlisted",), pending_offer_types=("Unreplied",))
    record = applicant(app("Submitted", [offer(5)]))
    assert derive_stage(record, CATALOG, rules=rules)[0] == "Rejected"
    assert derive_stage(record, CATALOG)[0] == "Submitted"


def test_offer_titles_match_case_insensitively() -> None:
    record = applicant(app("Submitted", [offer(None, type_title="  REJECTED ")]))
    assert derive_stage(record, CATALOG)[0] == "Rejected"


def test_future_timestamps_are_clamped_to_now() -> None:
    now = datetime(2025, 3, 1, tzinfo=UTC)
    record = applicant(app("Prepare", created="2030-01-01T00:00:00+00:00"))
    assert derive_stage(record, CATALOG, now=now) == ("Applying", "2025-03-01T00:00:00Z")
    assert derive_stage(record, CATALOG) == ("Applying", "2030-01-01T00:00:00Z")


def test_deterministic_and_pure() -> None:
    record = applicant(app("Submitted", [offer(2), offer(4)]), app("Prepare", id=11))
    snapshot = repr(record)
    assert len({derive_stage(record, CATALOG) for _ in range(5)}) == 1
    assert repr(record) == snapshot


@pytest.mark.parametrize(
    "broken",
    [
        None,
        {},
        {"applications": None},
        {"applications": "x"},
        {"applications": [None, 3, "x"]},
        {"applications": [{"status": 5, "offers": [None, {"decision": 3, "saved": "nonsense"}]}]},
        {"registered": "not a date", "applications": []},
        {"applications": [{"status": None, "created": 12345, "offers": "nope"}]},
    ],
)
def test_broken_records_do_not_raise(broken: Any) -> None:
    stage, changed = derive_stage(broken, CATALOG)
    assert stage in STAGES
    assert changed is None or changed.endswith("Z")
    assert evaluate(broken, None).stage in STAGES


def test_parse_instant() -> None:
    assert parse_instant("2025-11-24T10:56:34+02:00") == datetime(2025, 11, 24, 8, 56, 34, tzinfo=UTC)
    assert parse_instant("2025-11-24T10:56:34Z") == datetime(2025, 11, 24, 10, 56, 34, tzinfo=UTC)
    assert parse_instant("2025-11-24T10:56:34") == datetime(2025, 11, 24, 10, 56, 34, tzinfo=UTC)
    assert parse_instant("2025-11-24") == datetime(2025, 11, 24, tzinfo=UTC)
    for bad in ("", "yesterday", None, 5, "9" * 100, [], "0000-00-00"):
        assert parse_instant(bad) is None
