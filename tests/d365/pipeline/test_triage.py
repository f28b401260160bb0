"""Every extracted applicant ends in exactly one state: lead payload, skipped for consent, or quarantined."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from hypothesis import HealthCheck, given
from hypothesis import settings as hsettings
from hypothesis import strategies as st

from d365.pipeline.fit import LeadSchema
from d365.pipeline.mapping import Mapper
from d365.pipeline.settings import load_settings
from d365.pipeline.triage import (
    QUALITY_FIELD_ISSUES,
    QUALITY_GX_RESULT,
    QUALITY_QUARANTINE,
    QUALITY_SUMMARY,
    QUALITY_SUMMARY_JSON,
    TriageResult,
    triage_applicants,
    write_artifacts,
)

SCHEMA = LeadSchema.from_metadata_json()
DEFAULT = load_settings()
INSTANCE = "apply.example.edu"
CATALOG: dict[str, Any] = {
    "terms": {"21": {"id": 21, "name": "Fall 2025", "year": 2025, "type_name": "Fall semester"}},
    "courses": {"3": {"id": 3, "name": "Data Science", "code": "DS"}},
    "consents": {
        "1": {"id": 1, "type": "Mandatory", "text": "I agree to the privacy policy."},
        "2": {"id": 2, "type": "Voluntary", "text": "Marketing."},
    },
    "trackers": {},
    "offer_types": {},
}


def applicant(aid: Any = 1, **overrides: Any) -> dict[str, Any]:
    base: dict[str, Any] = {
        "applicant_id": aid,
        "type": "Natural",
        "registered": "2025-11-24T23:56:34+00:00",
        "name_full": "Ana Tamm",
        "name_given": "Ana",
        "name_middle": None,
        "name_family": "Tamm",
        "email": f"ana{aid}@example.com",
        "phone": "+372 5123 4567",
        "citizenship": "EE",
        "reference": None,
        "matriculation": None,
        "consents": {"1": "Accept"},
        "tracker_ids": [],
        "tracker_codes": [],
        "applications": [],
    }
    return base | overrides


def triage(records: list[Any], settings: Any = DEFAULT, **kw: Any) -> TriageResult:
    return triage_applicants(records, catalog=CATALOG, settings=settings, schema=SCHEMA, instance=INSTANCE, **kw)


def states(result: TriageResult) -> dict[int, str]:
    """row → "lead" / skipped_consent / quarantined; asserts every row has exactly one."""
    out: dict[int, str] = {}
    for row in result.lead_rows:
        assert row not in out
        out[row] = "lead"
    for o in result.outcomes:
        assert o["row"] not in out, o
        out[o["row"]] = o["state"]
    return out


def test_order_record_then_consent_then_identity_then_fields_then_mapping() -> None:
    records: list[Any] = [
        applicant(1),  # lead
        applicant(2, consents={}),  # undecided → skipped
        applicant(3, consents={"1": "Reject"}, email="broken@@"),  # no consent wins over bad data
        applicant(4, email="broken@@"),  # consented, bad e-mail → dropped, still a lead (the phone is identity)
        None,  # not a record → quarantined, no id
        applicant(None, consents={}),  # no id: quarantined even without consent
        applicant(7, name_given={"x": 1}),  # wrong type → dropped by quality, before the mapping
        applicant(8, email="broken@@", phone="12"),  # no usable e-mail or phone → no identity → quarantined
        applicant(9, malformed=["name: not an object"], consents={}),  # malformed: quarantined before consent
    ]
    result = triage(records)
    assert states(result) == {
        0: "lead",
        1: "skipped_consent",
        2: "skipped_consent",
        3: "lead",
        4: "quarantined",
        5: "quarantined",
        6: "lead",
        7: "quarantined",
        8: "quarantined",
    }
    by_row = {o["row"]: o for o in result.outcomes}
    leads = {lead["applicant_id"]: lead for lead in result.leads}
    assert by_row[1]["reason"] == "required consent not accepted: consent 1"
    assert "emailaddress1" in leads[4]["payload"] and leads[4]["payload"]["emailaddress1"] is None
    assert leads[4]["email"] is None  # an invalid address never adopts a lead
    assert leads[4]["payload"]["mobilephone"] == "+37251234567"
    assert leads[7]["payload"]["firstname"] is None and leads[7]["payload"]["lastname"] == "Tamm"
    assert by_row[7]["reasons"] == [
        "identity: no usable email or phone",
        "email: invalid syntax",
        "phone: not parseable to E.164",
    ]
    assert by_row[8]["reasons"] == ["record: malformed (name: not an object)"]
    assert by_row[4] == {
        "applicant_id": None,
        "row": 4,
        "state": "quarantined",
        "reason": "record: not an applicant record",
        "reasons": ["record: not an applicant record"],
    }
    assert by_row[5]["reasons"] == ["applicant_id: missing or not a positive integer"]
    # every row with a failed check counts as invalid for the batch, consent-skipped and sent ones too
    assert result.quality.invalid_rows == 7
    assert result.counts() == {"leads": 3, "skipped_consent": 2, "quarantined": 4}
    issues = {r["applicant_id"]: r for r in result.field_issue_rows()}
    assert issues[7] == {
        "applicant_id": 7,
        "row": 6,
        "state": "lead",
        "issues": [{"field": "name_given", "code": "not_text", "reason": "name_given: not text", "action": "drop"}],
    }
    assert issues[3]["state"] == "skipped_consent" and issues[8]["state"] == "quarantined"
    assert [i["field"] for i in issues[4]["issues"]] == ["email"]


def test_leads_are_exactly_what_the_mapper_makes() -> None:
    record = applicant(11, email="  Ana.Tamm@Example.com ")
    result = triage([record])
    mapped = Mapper(DEFAULT, SCHEMA, CATALOG, instance=INSTANCE).map(record)
    assert result.leads == [
        {
            "applicant_id": 11,
            "payload": mapped.payload,
            "payload_hash": mapped.hash,
            "email": "Ana.Tamm@Example.com",
            "issues": [i.to_dict() for i in mapped.issues],
        }
    ]
    assert result.leads[0]["payload"]["mobilephone"] == "+37251234567"


def test_mapping_quarantine_reasons_name_attribute_and_code_never_the_value() -> None:
    # a missing picklist option (uni_leadstage "Rejected" needs adding) and a wrong-typed template input
    offer = {"id": 1, "course_id": 3, "type_title": "Rejected", "decision": "None", "inserted": "2025-02-01"}
    app = {"id": 5, "status": "Submitted", "created": "2025-01-01", "academic_term_id": 21, "offers": [offer]}
    result = triage([applicant(21, applications=[app]), applicant(22, registered="1800-01-01T00:00:00Z")])
    reasons = {o["applicant_id"]: o["reason"] for o in result.outcomes}
    assert reasons[21] == "no picklist option for uni_leadstage='Rejected'"
    assert 22 not in reasons  # 1800 is fine for quality and for Dataverse (from 1753)


def test_duplicates_all_quarantined_and_written_once_per_id() -> None:
    result = triage([applicant(5), applicant(5), applicant(6), "garbage"])
    assert states(result) == {0: "quarantined", 1: "quarantined", 2: "lead", 3: "quarantined"}
    ledger = result.ledger_outcomes()
    assert [(o["applicant_id"], o["row"]) for o in ledger] == [(5, 0), (None, 3)]
    assert [q["row"] for q in result.quarantine_rows()] == [0, 1, 3]


def test_artifacts_hold_ids_and_reasons_only(tmp_path: Path) -> None:
    from d365.pipeline.runfolder import RunFolder

    secret = applicant(31, name_given="Zebulon", email="zebulon.secret@@mail", phone="call zebulon")
    result = triage([applicant(30), secret, applicant(32, consents={})])
    folder = RunFolder("file://" + str(tmp_path))
    paths = write_artifacts(folder, result)
    assert paths["summary"].endswith(QUALITY_SUMMARY) and paths["gx_result"].endswith(QUALITY_GX_RESULT)
    files = {name: (tmp_path / name).read_text() for name in (QUALITY_QUARANTINE, QUALITY_GX_RESULT, QUALITY_SUMMARY)}
    for text in files.values():
        assert "ebulon" not in text and "secret" not in text
    rows = [json.loads(line) for line in files[QUALITY_QUARANTINE].splitlines()]
    assert rows == [
        {
            "applicant_id": 31,
            "row": 1,
            "reasons": ["identity: no usable email or phone", "email: invalid syntax", "phone: not parseable to E.164"],
        }
    ]
    assert paths["field_issues"].endswith(QUALITY_FIELD_ISSUES)
    issues = [json.loads(line) for line in (tmp_path / QUALITY_FIELD_ISSUES).read_text().splitlines()]
    assert [(r["applicant_id"], r["state"], [i["field"] for i in r["issues"]]) for r in issues] == [
        (31, "quarantined", ["email", "phone"])
    ]
    assert "ebulon" not in (tmp_path / QUALITY_FIELD_ISSUES).read_text()
    summary = json.loads((tmp_path / QUALITY_SUMMARY_JSON).read_text())
    assert summary["ok"] and summary["counts"] == {"leads": 1, "quarantined": 1, "skipped_consent": 1}
    assert summary["field_issues"] == {"email": {"invalid": 1}, "phone": {"invalid": 1}}
    assert "| email: invalid syntax | 1 |" in files[QUALITY_SUMMARY]
    assert "| phone | invalid | 1 | drop |" in files[QUALITY_SUMMARY]
    assert json.loads(files[QUALITY_GX_RESULT])["success"] is False


def test_too_many_invalid_rows_fail_the_batch() -> None:
    records = [applicant(i, email="bad@@" if i <= 6 else f"a{i}@b.org") for i in range(1, 21)]
    result = triage(records)  # 6 of 20 = 30% > 25%: a broken extract must not clear good values either
    assert not result.ok
    assert result.batch_failures == ["invalid_fraction: 6 of 20 rows invalid (30.0%), limit 25.0%"]
    assert len(result.leads) == 20  # triage still decides every row (bad e-mails dropped); the caller writes nothing


# -- property: arbitrary records, including broken ones, never crash and never get lost -----------------

text = st.one_of(
    st.none(),
    st.text(max_size=12),
    st.text(alphabet=st.characters(min_codepoint=0x80, max_codepoint=0x10FFFF), max_size=8),  # many scripts
    st.sampled_from(["\ud800", "a\udfffb@example.com", "Zoë\u0308", "\u202e+372 5123 4567"]),  # lone surrogates
    st.just("x" * 5000),  # huge
    st.sampled_from(["ana@example.com", "bad@@", " ", "+372 5123 4567", "EE", "UK", "2025-01-01", "\u0000"]),
)
anything = st.one_of(text, st.integers(), st.booleans(), st.floats(allow_nan=True), st.lists(st.integers(), max_size=2))
ids = st.one_of(st.integers(-2, 6), st.none(), st.text(max_size=3), st.booleans(), st.just(2**70), st.floats())
application = st.one_of(
    st.none(),
    anything,
    st.dictionaries(st.sampled_from(["id", "status", "created", "submitted", "offers", "courses"]), anything),
)
record = st.one_of(
    st.fixed_dictionaries(
        {},
        optional={
            "applicant_id": ids,
            **{
                k: st.one_of(text, anything)
                for k in ("name_given", "name_family", "name_full", "email", "phone", "citizenship", "registered")
            },
            "consents": st.one_of(st.none(), anything, st.dictionaries(st.sampled_from(["1", "2"]), text)),
            "applications": st.one_of(st.none(), anything, st.lists(application, max_size=3)),
        },
    ),
    st.builds(applicant, ids),
    anything,
)


@hsettings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(st.lists(record, max_size=12))
def test_triage_never_raises_and_every_record_ends_in_exactly_one_state(records: list[Any]) -> None:
    result = triage(records)
    got = states(result)
    assert sorted(got) == list(range(len(records)))  # every row exactly once, none invented
    assert len(result.leads) + len(result.outcomes) == len(records)
    for o in result.outcomes:
        assert o["state"] in ("skipped_consent", "quarantined") and o["reason"]
        if o["applicant_id"] is None:
            assert o["state"] == "quarantined"
    for lead, row in zip(result.leads, result.lead_rows, strict=True):
        assert isinstance(lead["applicant_id"], int) and lead["applicant_id"] > 0
        assert records[row]["applicant_id"] in (lead["applicant_id"], str(lead["applicant_id"]))
        json.dumps(lead["payload"], allow_nan=False).encode("utf-8")
    lead_ids = [lead["applicant_id"] for lead in result.leads]
    assert len(lead_ids) == len(set(lead_ids))  # a duplicated id never becomes a lead
    # the outcomes file: one line per id plus every id-less row; nothing without a state
    ledger = result.ledger_outcomes()
    assert {o["applicant_id"] for o in ledger if o["applicant_id"] is not None} == {
        o["applicant_id"] for o in result.outcomes if o["applicant_id"] is not None
    }
