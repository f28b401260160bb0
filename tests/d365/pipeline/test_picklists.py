"""Picklist options on the fly: dedupe across leads, allowlist, case/accent matching, one publish per run."""

from __future__ import annotations

from typing import Any

import pytest

from d365.pipeline.fit import AttributeSpec, FitPolicy, LeadSchema, fit_value
from d365.pipeline.mapping_result import MappedLead
from d365.pipeline.picklists import ensure_options, fill_options, needed_options, option_key
from d365.pipeline.settings import load_settings, parse_settings
from d365.pipeline.triage import triage_applicants

SCHEMA = LeadSchema.from_metadata_json()
INSTANCE = "apply.example.edu"
CATALOG: dict[str, Any] = {
    "terms": {"21": {"id": 21, "name": "Fall 2025", "year": 2025, "type_name": "Fall semester"}},
    "courses": {"3": {"id": 3, "name": "Data Science", "code": "DS"}},
    "consents": {"1": {"id": 1, "type": "Mandatory", "text": "I agree to the privacy policy."}},
    "trackers": {},
    "offer_types": {},
}


def applicant(aid: int, **overrides: Any) -> dict[str, Any]:
    base: dict[str, Any] = {
        "applicant_id": aid,
        "type": "Natural",
        "registered": "2025-11-24T23:56:34+00:00",
        "name_full": "Ana Tamm",
        "name_given": "Ana",
        "name_family": "Tamm",
        "email": f"ana{aid}@example.com",
        "phone": "+372 5123 4567",
        "citizenship": "EE",
        "consents": {"1": "Accept"},
        "tracker_ids": [],
        "tracker_codes": [],
        "applications": [],
    }
    return base | overrides


TERM_TYPES = {727000000: "Fall semester", 727000001: "Spring semester"}


class FakeDynamics:
    """Records the calls ``ensure_options`` makes; options per attribute like the metadata."""

    def __init__(self, options: dict[str, dict[int, str]], fail: set[str] = frozenset()) -> None:  # type: ignore[assignment]
        self.options = {a: dict(o) for a, o in options.items()}
        self.fail = fail
        self.reads = 0
        self.inserts: list[tuple[str, str]] = []
        self.publishes = 0

    def current(self) -> dict[str, dict[int, str]]:
        self.reads += 1
        return {a: dict(o) for a, o in self.options.items()}

    def insert(self, attribute: str, label: str) -> int:
        if label in self.fail:
            raise RuntimeError("refused")
        self.inserts.append((attribute, label))
        value = max(self.options.get(attribute) or {727000000: ""}) + 1
        self.options.setdefault(attribute, {})[value] = label
        return value

    def publish(self) -> None:
        self.publishes += 1

    def ensure(self, wanted: Any) -> Any:
        return ensure_options(wanted, current=self.current, insert=self.insert, publish=self.publish)


def rows(*needs: list[tuple[str, str]]) -> list[MappedLead]:
    return [MappedLead(i, {}, options_needed=list(need)) for i, need in enumerate(needs, 1)]


def test_the_same_option_needed_by_many_leads_is_added_once_and_published_once() -> None:
    wanted = needed_options(
        rows(
            [("uni_academictermtype", "Winter school")],
            [("uni_academictermtype", "WINTER  SCHOOL")],
            [("uni_academictermtype", "winter school"), ("uni_leadstage", "Rejected")],
            [("uni_leadstage", "rejected")],
        )
    )
    assert sorted(wanted.values()) == [("uni_academictermtype", "Winter school"), ("uni_leadstage", "Rejected")]
    fake = FakeDynamics({"uni_academictermtype": TERM_TYPES, "uni_leadstage": {727000000: "Registered"}})
    result = fake.ensure(wanted)
    assert fake.inserts == [("uni_academictermtype", "Winter school"), ("uni_leadstage", "Rejected")]
    assert fake.publishes == 1 and fake.reads == 1 and result.published
    assert result.values[option_key("uni_academictermtype", "wínter SCHOOL")] == 727000002
    assert result.to_json()["added"][0] == {
        "attribute": "uni_academictermtype",
        "label": "Winter school",
        "value": 727000002,
    }

    # a second run finds them in the metadata: nothing added, nothing published
    again = fake.ensure(needed_options(rows([("uni_academictermtype", "Winter School")])))
    assert len(fake.inserts) == 2 and fake.publishes == 1 and not again.added and not again.published
    assert again.values == {("uni_academictermtype", "winter school"): 727000002}


def test_an_option_that_exists_with_other_case_or_accents_is_reused_not_added() -> None:
    fake = FakeDynamics({"uni_academictermtype": TERM_TYPES})
    result = fake.ensure(
        needed_options(rows([("uni_academictermtype", "fall SEMESTER")], [("uni_academictermtype", "Fàll semester")]))
    )
    assert fake.inserts == [] and fake.publishes == 0
    assert result.values == {("uni_academictermtype", "fall semester"): 727000000}


def test_nothing_wanted_means_no_metadata_read_and_no_publish() -> None:
    fake = FakeDynamics({})
    result = fake.ensure({})
    assert (fake.reads, fake.publishes, result.values) == (0, 0, {})


def test_a_failed_insert_fails_only_its_leads_and_publish_still_happens_once() -> None:
    fake = FakeDynamics({"uni_leadstage": {727000000: "Registered"}}, fail={"Rejected"})
    wanted = needed_options(rows([("uni_leadstage", "Rejected")], [("uni_leadstage", "Dropped out")]))
    result = ensure_options(
        wanted, current=fake.current, insert=fake.insert, publish=fake.publish, error_code=lambda e: "0x80044191"
    )
    assert result.failed == {("uni_leadstage", "rejected"): "0x80044191"}
    assert fake.publishes == 1 and [a["label"] for a in result.added] == ["Dropped out"]
    assert result.to_json()["failed"] == [{"attribute": "uni_leadstage", "error_code": "0x80044191"}]

    payload, missing = fill_options({"firstname": "A"}, [["uni_leadstage", "REJECTED"]], result.values)
    assert missing == ["uni_leadstage"] and "uni_leadstage" not in payload
    payload, missing = fill_options({"firstname": "A"}, [["uni_leadstage", "dropped OUT"]], result.values)
    assert missing == [] and payload == {
        "firstname": "A",
        "uni_leadstage": result.values[("uni_leadstage", "dropped out")],
    }


def test_publish_failure_is_reported_not_raised() -> None:
    def broken() -> None:
        raise RuntimeError("down")

    fake = FakeDynamics({"uni_leadstage": {}})
    result = ensure_options(
        needed_options(rows([("uni_leadstage", "Rejected")])), current=fake.current, insert=fake.insert, publish=broken
    )
    assert result.values and not result.published and result.publish_error == "RuntimeError"


def test_the_allowlist_decides_add_or_quarantine_case_and_accent_insensitively() -> None:
    spec = AttributeSpec("uni_leadstage", "Picklist", options={727000000: "Registered"})
    policy = FitPolicy(picklist=True, on_missing_option="add", add_allowlist=("Réjected",))
    value, issue = fit_value(spec, "  REJECTED ", policy)
    assert value is None and issue is not None and issue.action == "needs_option" and issue.label == "REJECTED"
    value, issue = fit_value(spec, "Dropped out", policy)
    assert issue is not None and issue.action == "quarantine" and "add_allowlist" in issue.message
    assert "Dropped" not in issue.message  # the message describes the label, never quotes it
    assert fit_value(spec, "registered", policy) == (727000000, None)


def _rejected(aid: int) -> dict[str, Any]:
    offer = {"id": 1, "course_id": 3, "type_title": "Rejected", "decision": "None", "inserted": "2025-02-01"}
    app = {"id": aid, "status": "Submitted", "created": "2025-01-01", "academic_term_id": 21, "offers": [offer]}
    return applicant(aid, applications=[app])


@pytest.mark.slow  # over a second (real Retry-After waits, sleeps or a subprocess): make test runs it
def test_transform_keeps_allowed_missing_options_as_pending_leads() -> None:
    settings = load_settings()
    result = triage_applicants(
        [_rejected(21), applicant(22)],
        catalog=CATALOG,
        settings=settings,
        schema=SCHEMA,
        instance=INSTANCE,
        add_options=True,
    )
    assert result.outcomes == []
    pending = {lead.applicant_id: lead for lead in result.leads}
    assert pending[21].options_needed == [("uni_leadstage", "Rejected")]
    assert "uni_leadstage" not in pending[21].payload
    assert pending[22].options_needed == []


def test_transform_quarantines_a_not_allowed_option_naming_the_attribute_not_the_value() -> None:
    data = load_settings().model_dump(exclude_unset=True)
    data["data_mapping"]["uni_leadstage"]["add_allowlist"] = ["Dropped out"]
    result = triage_applicants(
        [_rejected(21)],
        catalog=CATALOG,
        settings=parse_settings(data),
        schema=SCHEMA,
        instance=INSTANCE,
        add_options=True,
    )
    assert result.leads == []
    [outcome] = result.outcomes
    assert outcome["state"] == "quarantined"
    assert outcome["reason"] == "mapping: uni_leadstage: missing_option"
