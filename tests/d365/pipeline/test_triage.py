"""Every extracted applicant ends in exactly one state: lead payload, skipped for consent, or quarantined."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
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
    leads = {lead.applicant_id: lead.to_dict() for lead in result.leads}
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
    mapped.email = "Ana.Tamm@Example.com"  # triage adds the address adoption may match, as it was entered
    assert result.leads == [mapped]
    assert result.leads[0].hash == mapped.hash
    assert result.leads[0].payload["mobilephone"] == "+37251234567"


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
    from d365.runtime.runfolder import RunFolder

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


@pytest.mark.slow  # more than 3 s: make test runs it, make test-fast does not
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
        assert isinstance(lead.applicant_id, int) and lead.applicant_id > 0
        assert records[row]["applicant_id"] in (lead.applicant_id, str(lead.applicant_id))
        json.dumps(lead.to_dict(), allow_nan=False).encode("utf-8")
    lead_ids = [lead.applicant_id for lead in result.leads]
    assert len(lead_ids) == len(set(lead_ids))  # a duplicated id never becomes a lead
    # the outcomes file: one line per id plus every id-less row; nothing without a state
    ledger = result.ledger_outcomes()
    assert {o["applicant_id"] for o in ledger if o["applicant_id"] is not None} == {
        o["applicant_id"] for o in result.outcomes if o["applicant_id"] is not None
    }


# -- the per-field policy table of docs/settings.md, one promise per row --------------------------------

DOCS = Path(__file__).resolve().parents[3] / "docs" / "settings.md"


def with_quality(**changes: Any) -> Any:
    return DEFAULT.model_copy(update={"quality": DEFAULT.quality.model_copy(update=changes)})


def documented_policy_fields() -> list[str]:
    """The field names in the first column of the "Per-field policy" table of docs/settings.md."""
    text = DOCS.read_text(encoding="utf-8")
    section = text.split("#### Per-field policy", 1)[1]
    table = section[section.index("| field | default column |") :].split("\n\n", 1)[0]
    return [line.split("|")[1].strip().strip("`") for line in table.splitlines()[2:] if line.startswith("|")]


MOJIBAKE = "GarcÃ\xada"  # "García" encoded as UTF-8, read as cp1252
# field → (overrides that make it invalid, default-mapping column or None, the column's value under send_as_entered)
POLICY_ROWS: dict[str, tuple[dict[str, Any], str | None, Any]] = {
    "type": ({"type": 7}, None, None),
    "registered": ({"registered": "last tuesday"}, "uni_registeredon", None),  # a DateTime column takes no text
    "name_full": ({"name_full": MOJIBAKE}, None, None),  # only a fallback of lastname; wrong encoding never sent
    "name_given": ({"name_given": "An\ufffd"}, "firstname", None),
    "name_middle": ({"name_middle": ["Maria"]}, "middlename", None),  # a list does not fit a text column
    "name_family": ({"name_family": MOJIBAKE}, "lastname", "Ana Tamm"),  # dropped: the full name is the fallback
    "email": ({"email": "ana@@example.com"}, "emailaddress1", "ana@@example.com"),
    "phone": ({"phone": "127.555.6451"}, "mobilephone", "127.555.6451"),
    "citizenship": ({"citizenship": "UK"}, "uni_citizenship", "UK"),
    "reference": ({"reference": "R\u00c3\u00a9f-1"}, "uni_reference", None),
    "matriculation": ({"matriculation": 12345}, "uni_matriculation", "12345"),
    "application_dates": ({"applications": [{"id": 5, "status": "Draft", "created": "2025-13-45"}]}, None, None),
}


def test_the_policy_table_documents_every_field() -> None:
    from d365.pipeline.settings import QUALITY_FIELDS

    assert documented_policy_fields() == list(QUALITY_FIELDS) == list(POLICY_ROWS)


@pytest.mark.parametrize("name", list(POLICY_ROWS))
def test_an_invalid_value_follows_its_field_policy(name: str) -> None:
    """drop (default): still a lead, the column null (left empty on create, cleared on update);
    send_as_entered: as typed when it fits (wrong encoding and what does not fit: null);
    quarantine: withheld with the field's reason. Never the value in a reason."""
    overrides, column, as_entered = POLICY_ROWS[name]
    record = applicant(41, **overrides)
    dropped = triage([record])
    assert states(dropped) == {0: "lead"}, dropped.outcomes
    (issue_row,) = dropped.field_issue_rows()
    assert {i["field"] for i in issue_row["issues"]} == {name} and all(
        i["action"] == "drop" for i in issue_row["issues"]
    )
    if column is not None:
        payload = dropped.leads[0].payload
        expected_drop = "Ana Tamm" if name == "name_family" else None
        assert column in payload and payload[column] == expected_drop

    sent = triage([record], with_quality(field_policy={name: "send_as_entered"}))
    assert states(sent) == {0: "lead"}
    if column is not None:
        assert sent.leads[0].payload[column] == as_entered
    if name == "email":  # an invalid address never adopts a lead, dropped or sent as entered
        assert dropped.leads[0].email is None and sent.leads[0].email is None

    held = triage([record], with_quality(field_policy={name: "quarantine"}))
    assert states(held) == {0: "quarantined"}
    assert all(r.startswith(f"{name}:") for r in held.outcomes[0]["reasons"]), held.outcomes[0]["reasons"]
    for reasons in (held.outcomes[0]["reason"], json.dumps(dropped.field_issue_rows())):
        for value in overrides.values():
            if isinstance(value, str) and len(value) > 3:
                assert value not in reasons


def test_cleared_on_update_is_a_null_in_the_payload() -> None:
    """The same applicant, first valid then with an invalid phone: the second payload holds mobilephone null
    (a PATCH with null clears the column in Dataverse) and a new hash, so the plan sends the update."""
    first = triage([applicant(51)]).leads[0]
    second = triage([applicant(51, phone="(555) 123-4567")]).leads[0]
    assert first.payload["mobilephone"] == "+37251234567"
    assert "mobilephone" in second.payload and second.payload["mobilephone"] is None
    assert first.hash != second.hash


@pytest.mark.parametrize(
    ("overrides", "usable"),
    [
        ({}, True),
        ({"name_family": None}, True),  # the full name
        ({"name_family": None, "name_full": None}, False),
        ({"name_family": MOJIBAKE, "name_full": "  "}, False),  # a name in a wrong encoding is no identity
        ({"email": None}, True),  # the phone
        ({"email": None, "phone": "12"}, False),
        ({"email": "ana@@x", "phone": None}, False),
        ({"phone": None}, True),
    ],
)
def test_the_default_identity_rule(overrides: dict[str, Any], usable: bool) -> None:
    """A family or full name, and an e-mail or a phone, each present and valid."""
    result = triage([applicant(61, **overrides)])
    assert states(result) == {0: "lead" if usable else "quarantined"}
    if not usable:
        assert result.outcomes[0]["reasons"][0].startswith("identity: no usable")


def test_the_identity_rule_is_configurable() -> None:
    email_only = with_quality(identity=(("email",),))
    assert states(triage([applicant(71, name_family=None, name_full=None)], email_only)) == {0: "lead"}
    assert states(triage([applicant(72, email=None)], email_only)) == {0: "quarantined"}
    # the rule is applied after consent: without consent an applicant is skipped, whatever its identity
    no_consent = applicant(74, email=None, phone=None, consents={"1": "Reject"})
    assert states(triage([no_consent])) == {0: "skipped_consent"}
    nothing = with_quality(identity=())
    bare = applicant(73, name_family=None, name_full=None, name_given=None, email=None, phone=None)
    assert states(triage([bare], nothing)) == {0: "lead"}


def test_malformed_wire_records_are_quarantined_per_row_with_their_id() -> None:
    """Extract's normalisation never raises; quality quarantines what it could not read, before consent,
    with the applicant id when it can be read and a value-free reason."""
    from d365.pipeline.extract import normalise_applicant, normalise_application

    catalog: Any = {"trackers": {}, "offer_types": {}}
    good = {"id": 81, "name": {"given": "Ana", "family": "Tamm"}, "email": "ana81@example.com", "consents": {}}
    wire: list[Any] = [
        good | {"consents": {"1": {"consent": 1, "decision": "Accept"}}},
        good | {"id": 82, "name": "Maria Tamm"},  # a name as a string
        good | {"id": "12a"},  # a non-integer id
        good | {"id": 84, "consents": ["Accept"]},  # consents as a list
        good | {"id": 85, "trackers": "garbage"},
        "not a record",
        good | {"id": 87, "consents": [], "trackers": []},  # PHP's empty array: fine (and no consent)
    ]
    apps = {81: [normalise_application({"id": "x", "courses": [1]}, catalog)]}
    records = [
        normalise_applicant(raw, catalog, apps.get(raw.get("id") if isinstance(raw, dict) else None, []), "new")
        for raw in wire
    ]
    result = triage(records)
    by_row = {o["row"]: o for o in result.outcomes}
    assert states(result) == {i: "quarantined" for i in range(6)} | {6: "skipped_consent"}
    assert by_row[0]["applicant_id"] == 81 and by_row[0]["reasons"] == [
        "record: malformed (application: application id: text instead of a positive integer; "
        "application: courses: a list instead of an object)"
    ]
    assert (by_row[1]["applicant_id"], by_row[1]["reasons"]) == (
        82,
        ["record: malformed (name: text instead of an object)"],
    )
    assert by_row[2]["applicant_id"] is None
    no_id = "applicant_id: missing or not a positive integer"
    assert by_row[2]["reasons"] == [no_id, "record: malformed (id: text instead of a positive integer)"]
    assert by_row[3]["reasons"] == ["record: malformed (consents: a list instead of an object)"]
    assert by_row[4]["reasons"] == ["record: malformed (trackers: text instead of an object)"]
    assert by_row[5]["reasons"] == [no_id, "record: malformed (record: text instead of an object)"]
    assert "Maria" not in json.dumps(result.outcomes)
    # the id the collection lists the record under names it when its own id cannot be read
    keyed = normalise_applicant(good | {"id": "83a"}, catalog, [], "changed", key_id=83)
    assert keyed["applicant_id"] == 83 and keyed["malformed"] == ["id: text instead of a positive integer"]
    (held,) = triage([keyed]).outcomes
    assert (held["applicant_id"], held["reasons"]) == (
        83,
        ["record: malformed (id: text instead of a positive integer)"],
    )


wire_value = st.recursive(
    st.one_of(st.none(), st.booleans(), st.integers(), st.floats(), st.text(max_size=6)),
    lambda inner: st.one_of(st.lists(inner, max_size=3), st.dictionaries(st.text(max_size=4), inner, max_size=3)),
    max_leaves=12,
)
wire_record = st.one_of(
    wire_value,
    st.fixed_dictionaries(
        {},
        optional={
            k: wire_value
            for k in ("id", "name", "email", "phone", "consents", "trackers", "courses", "offers", "academic_term")
        },
    ),
)


@hsettings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(wire_record, wire_record)
def test_normalisation_never_raises_on_any_json(applicant_raw: Any, application_raw: Any) -> None:
    from d365.pipeline.extract import normalise_applicant, normalise_application

    catalog: Any = {"trackers": {"1": "X"}, "offer_types": {}}
    app = normalise_application(application_raw, catalog)
    record = normalise_applicant(applicant_raw, catalog, [app], "new")
    json.dumps(record)
    assert record["applicant_id"] is None or (isinstance(record["applicant_id"], int) and record["applicant_id"] > 0)
