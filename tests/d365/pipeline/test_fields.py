"""The source-field registry (pipeline/fields.py) is the one list the extract, settings, mapping, quality and
privacy read: every entry is read from a DreamApply record, has a getter, a docs row and a privacy class."""

from __future__ import annotations

import dataclasses
import json
import re
from pathlib import Path
from typing import Any, get_args

import pytest

from d365.pipeline import extract_normalise, fields, mapping, privacy, quality, settings
from d365.pipeline.extract import normalise_applicant, normalise_application
from d365.pipeline.fields import (
    APPLICANT_FIELDS,
    QUALITY_FIELDS,
    REGISTRY,
    SOURCE_FIELDS,
    Privacy,
    SourceField,
    checked_fields,
    personal_sources,
    scrubbed_record_keys,
)
from d365.pipeline.mapping import SOURCE_GETTERS, Mapper, _Record
from d365.pipeline.privacy import scrub_run_files
from d365.pipeline.settings import load_settings
from sandbox.data.model import Applicant
from sandbox.dreamapply import render

DOCS = Path(__file__).resolve().parents[3] / "docs" / "settings.md"
# every record key that is not an applicant source field: the structure the steps add or derive
STRUCTURAL_KEYS = {"applicant_id", "consents", "tracker_ids", "tracker_codes", "applications", "reason"}
CATALOG: dict[str, Any] = {
    "terms": {
        "21": {
            "id": 21,
            "name": "Fall semester 2025/26",
            "year": 2025,
            "year_name": "2025/26",
            "type_id": 1,
            "type_name": "Fall semester",
            "start": "2025-09-01",
            "finish": "2026-01-31",
        }
    },
    "courses": {"3": {"id": 3, "name": "Data Science", "code": "DS-MSC", "type": "PG", "mode": "FT"}},
    "consents": {"1": {"id": 1, "type": "Mandatory", "text": "I agree to the terms of the privacy policy."}},
    "trackers": {"5": "WEBINAR"},
    "offer_types": {"2": "Conditional"},
}


def sample_applicant() -> Applicant:
    """An applicant whose every field holds a distinct value (so a field read from the wrong key shows)."""
    a = Applicant(
        id=4711,
        registered=1_732_492_594,
        given="Seán",
        middle="Maria",
        family="O'Brien-Ñúñez",
        email="sean.obrien@example.com",
        phone="+353 87 123 4567",
        citizenship="IE",
        type="Natural",
        reference="SIS-0042",
        matriculation="M-2025-17",
    )
    a.consents = {1: ("Accept", 1_732_492_600)}
    a.trackers = ((5, 1_732_492_610),)
    return a


def sample_wire() -> dict[str, Any]:
    """The applicant as the sandbox's DreamApply renders it (reference §2), consents and trackers expanded."""
    return render.applicant(sample_applicant(), expand={"consents", "trackers"})


def sample_application() -> dict[str, Any]:
    """A submitted application with one course, in DreamApply's wire shape (courses and offers expanded)."""
    return {
        "id": 9,
        "created": "2025-01-01T10:00:00+00:00",
        "revised": "2025-02-02T10:00:00+00:00",
        "submitted": "2025-02-01T10:00:00+00:00",
        "status": "Submitted",
        "academic_term": "/api/v9/academic-terms/21",
        "applicant": "/api/v9/applicants/4711",
        "courses": {"3": {"priority": 1, "course": "/api/v9/courses/3", "intake": None}},
        "offers": {},
    }


def wire_value(wire: dict[str, Any], path: str) -> Any:
    value: Any = wire
    for part in path.split("."):
        value = value[part]
    return value


def extracted() -> dict[str, Any]:
    app = normalise_application(sample_application(), CATALOG)
    return dict(normalise_applicant(sample_wire(), CATALOG, [app], "new"))


# -- one list --------------------------------------------------------------------------------------------------
def test_the_registry_is_the_only_list_every_module_reads() -> None:
    names = [f.name for f in REGISTRY]
    assert len(names) == len(set(names))
    assert settings.SOURCE_FIELDS is SOURCE_FIELDS and list(SOURCE_FIELDS) == names
    assert settings.QUALITY_FIELDS is QUALITY_FIELDS
    assert {f.name: f.get for f in REGISTRY} == SOURCE_GETTERS
    assert extract_normalise.APPLICANT_FIELDS is fields.APPLICANT_FIELDS
    assert quality.TEXT_FIELDS == checked_fields("text") == tuple(k for k in QUALITY_FIELDS if QUALITY_FIELDS[k])
    assert personal_sources() == privacy.PERSONAL_SOURCES
    # the length checks read raw record values: only fields sent as they are (kind text) qualify
    assert {f.name: f.record_key for f in APPLICANT_FIELDS if f.kind == "text"} == quality.SOURCE_KEYS
    assert "applicant.phone" not in quality.SOURCE_KEYS and "applicant.email" in quality.SOURCE_KEYS


def test_every_applicant_field_is_read_by_the_extract_from_a_dreamapply_record() -> None:
    wire = sample_wire()
    record = extracted()
    assert "malformed" not in record
    for f in APPLICANT_FIELDS:
        assert f.wire is not None and f.record_key is not None
        expected = wire_value(wire, f.wire)
        assert expected is not None, f"the sample gives {f.name} no value"
        assert record[f.record_key] == expected, f.name
    # the record holds nothing but the registry's fields and the structure: no field outside the registry
    assert set(record) == STRUCTURAL_KEYS | {f.record_key for f in APPLICANT_FIELDS}
    # in registry order, right after the id (the run folder's files keep their key order)
    assert list(record)[: len(APPLICANT_FIELDS) + 1] == ["applicant_id", *(f.record_key for f in APPLICANT_FIELDS)]
    assert (
        tuple(f for f in REGISTRY if f.name.startswith("applicant.") and f.name != "applicant.id") == APPLICANT_FIELDS
    )


def test_a_field_added_to_the_registry_is_read_by_the_extract(monkeypatch: pytest.MonkeyPatch) -> None:
    """Adding a DreamApply field is one entry: the extract copies it with no change of its own."""
    notes = SourceField(
        "applicant.notes",
        "text",
        "identifying",
        lambda r: r.field("notes"),
        "Notes",
        "applicant: notes",
        "notes",
        "notes",
    )
    monkeypatch.setattr(extract_normalise, "APPLICANT_FIELDS", (*APPLICANT_FIELDS, notes))
    wire = sample_wire() | {"notes": "prefers e-mail"}
    record = normalise_applicant(wire, CATALOG, [], "new")
    assert record["notes"] == "prefers e-mail"  # type: ignore[typeddict-item]
    deep = dataclasses.replace(notes, name="applicant.name.parent.given", wire="name.parent.given")
    with pytest.raises(ValueError, match="deeper than one object"):
        extract_normalise._wire_plan((*APPLICANT_FIELDS, deep))
    malformed = normalise_applicant({"id": "x"}, CATALOG, [], "new", key_id=5)
    assert malformed["notes"] is None and malformed["malformed"]  # type: ignore[typeddict-item]


def test_a_wire_object_of_the_wrong_shape_is_noted_and_its_fields_read_as_empty() -> None:
    record = normalise_applicant(sample_wire() | {"name": "Seán O'Brien"}, CATALOG, [], "new")
    assert record["malformed"] == ["name: text instead of an object"]
    assert all(record[f.record_key] is None for f in APPLICANT_FIELDS if f.wire.startswith("name."))  # type: ignore[literal-required,union-attr]
    assert record["email"] == "sean.obrien@example.com"  # type: ignore[typeddict-item]
    assert "malformed" not in normalise_applicant(sample_wire() | {"name": None}, CATALOG, [], "new")


# -- getters ---------------------------------------------------------------------------------------------------
EXPECTED_VALUES: dict[str, Any] = {
    "applicant.id": 4711,
    "applicant.type": "Natural",
    "applicant.registered": "2024-11-24T23:56:34+00:00",
    "applicant.name.full": "Seán Maria O'Brien-Ñúñez",
    "applicant.name.given": "Seán",
    "applicant.name.middle": "Maria",
    "applicant.name.family": "O'Brien-Ñúñez",
    "applicant.email": "sean.obrien@example.com",
    "applicant.phone": "+353 87 123 4567",
    "applicant.citizenship": "IE",
    "applicant.reference": "SIS-0042",
    "applicant.matriculation": "M-2025-17",
    "lead.stage": "Submitted",
    "lead.stage_changed": "2025-02-01T10:00:00Z",
    "programme.ids": ["3"],
    "programme.codes": ["DS-MSC"],
    "programme.names": ["Data Science"],
    "programme.id": 3,
    "programme.code": "DS-MSC",
    "programme.name": "Data Science",
    "term.name": "Fall semester 2025/26",
    "term.year": "2025/26",
    "term.year_number": 2025,
    "term.type": "Fall semester",
    "term.start": "2025-09-01",
    "term.finish": "2026-01-31",
    "dreamapply.instance": "apply.example.edu",
    "consent.given": True,
    "tracker.codes": ["WEBINAR"],
    "tracker.code": "WEBINAR",
}


def test_every_field_has_a_getter_that_reads_it_from_the_extracted_record() -> None:
    assert set(EXPECTED_VALUES) == set(SOURCE_FIELDS)
    record = extracted()
    view = _Record(Mapper(load_settings(), {}, CATALOG, instance="apply.example.edu"), record, 4711, {})
    got = {f.name: f.get(view) for f in REGISTRY}
    assert got == EXPECTED_VALUES


def test_a_dropped_field_reads_as_empty() -> None:
    """The quality step's drop action reaches every applicant field through the registry's getter."""
    record = extracted()
    mapper = Mapper(load_settings(), {}, CATALOG, instance="apply.example.edu")
    for f in APPLICANT_FIELDS:
        view = _Record(mapper, record, 4711, {f.record_key: "drop"})  # type: ignore[dict-item]
        assert f.get(view) is None, f.name


# -- docs, quality, privacy ------------------------------------------------------------------------------------
DOC_KINDS = {"int": "number", "datetime": "date/time", "bool": "yes/no"}


def test_every_field_has_a_docs_row_with_its_kind() -> None:
    doc = DOCS.read_text(encoding="utf-8")
    table = doc.split("### Source fields", 1)[1].split("\n\n| source field |", 1)[1].split("\n\n", 1)[0]
    rows = {m.group(1): m.group(2) for m in re.finditer(r"^\| `([^`]+)` \| ([^|]+?) \|", table, re.MULTILINE)}
    assert set(rows) == set(SOURCE_FIELDS)
    for f in REGISTRY:
        assert rows[f.name] == DOC_KINDS.get(f.kind, f.kind), f.name


def test_declared_quality_checks_are_the_checks_quality_runs() -> None:
    assert checked_fields("email") == (quality.EMAIL.field,)
    assert checked_fields("phone") == (quality.PHONE.field,)
    assert checked_fields("country") == (quality.CITIZENSHIP.field,)
    assert checked_fields("instant") == (quality.REGISTERED.field,)
    assert set(checked_fields("encoding")) == set(checked_fields("text")) == {f.record_key for f in APPLICANT_FIELDS}
    defaults = settings.QualitySettings()
    assert {name: defaults.policy(name) for name in QUALITY_FIELDS} == fields.DEFAULT_POLICIES
    assert set(fields.DEFAULT_POLICIES.values()) == {"drop"}


def test_every_field_has_a_privacy_classification() -> None:
    for f in REGISTRY:
        assert f.privacy in get_args(Privacy), f.name
    by_class = {p: {f.name for f in REGISTRY if f.privacy == p} for p in get_args(Privacy)}
    assert by_class["personal"] == {"applicant.registered", "applicant.citizenship"}
    assert {"applicant.email", "applicant.phone", "applicant.name.given"} <= by_class["identifying"]
    assert by_class["identifying"] | by_class["personal"] == privacy.PERSONAL_SOURCES
    # a column fed by a personal field is a personal column (what anonymise clears)
    columns = privacy.personal_columns(load_settings())
    assert {"firstname", "lastname", "emailaddress1", "mobilephone", "uni_citizenship"} <= set(columns)
    assert "subject" not in columns and "uni_applicantid" not in columns


def test_an_identifying_field_outside_the_scrub_cannot_be_declared() -> None:
    """scrub_run_files finds values by record key: an identifying field must have one, and every one is in the
    scrub's keys (derived, so a new identifying field is scrubbed with no second edit)."""
    with pytest.raises(ValueError, match="identifying field needs a record_key"):
        SourceField("applicant.nickname", "text", "identifying", lambda r: None, "Nickname", "derived")
    with pytest.raises(ValueError, match="set together"):
        SourceField("applicant.nickname", "text", "none", lambda r: None, "Nickname", "x", wire="nickname")
    assert scrubbed_record_keys() <= privacy.PERSONAL_RECORD_KEYS
    assert scrubbed_record_keys() == {f.record_key for f in REGISTRY if f.privacy == "identifying"}
    added = dataclasses.replace(APPLICANT_FIELDS[0], name="applicant.notes", wire="notes", record_key="notes")
    added = dataclasses.replace(added, privacy="identifying")
    assert "notes" in scrubbed_record_keys((*REGISTRY, added))
    assert "notes" not in scrubbed_record_keys()


def test_scrub_removes_the_value_of_every_identifying_field(tmp_path: Path) -> None:
    """The real scrub, on a run folder holding the extracted record and a report that quotes its values."""
    record = extracted()
    identifying = [f for f in APPLICANT_FIELDS if f.privacy == "identifying"]
    values = {f.record_key: record[f.record_key] for f in identifying}
    run = tmp_path / "runs" / "dag" / "run1"
    (run / "extract").mkdir(parents=True)
    (run / "extract" / "applicants.jsonl").write_text(json.dumps(record) + "\n", encoding="utf-8")
    (run / "quality").mkdir()
    quoted = {"partial_unexpected_list": list(values.values()), "note": " / ".join(map(str, values.values()))}
    (run / "quality" / "result.json").write_text(json.dumps(quoted), encoding="utf-8")

    assert scrub_run_files(tmp_path / "runs", [4711]) > len(values)
    assert (run / "extract" / "applicants.jsonl").read_text(encoding="utf-8") == ""
    report = json.loads((run / "quality" / "result.json").read_text(encoding="utf-8"))
    assert report["partial_unexpected_list"] == [privacy.SCRUBBED] * len(values)  # every one, as a whole string
    # inside a longer text: every value long enough to be found safely (privacy.MIN_SUBSTRING)
    left = [k for k, v in values.items() if len(v) >= privacy.MIN_SUBSTRING and v in report["note"]]
    assert left == [], f"values of {left} survived the scrub"
    assert mapping.SOURCE_GETTERS  # the registry's getters are importable alongside privacy (no cycle)
