"""MappedLead is the one shape between the applicant record and the planned request: it survives the run folder."""

from __future__ import annotations

import dataclasses
import json

from d365.pipeline.fit import FitIssue
from d365.pipeline.mapping_result import MappedLead, payload_hash


def test_a_mapped_lead_round_trips_through_transform_leads_jsonl_unchanged() -> None:
    lead = MappedLead(
        7,
        {"firstname": "Zoë", "mobilephone": None, "uni_leadstage": 727000001},
        issues=[FitIssue("mobilephone", "invalid_phone", "not E.164", "drop")],
        options_needed=[("uni_academictermtype", "Winter school")],
        stage="Offer",
        stage_changed="2025-11-24T10:56:34Z",
        owner_rule=1,
        email="zoe@example.org",
    )
    row = json.loads(json.dumps(lead.to_dict(), ensure_ascii=False))
    assert row["payload_hash"] == payload_hash(lead.payload)
    again = MappedLead.from_dict(row)
    assert again == lead and again.hash == lead.hash


def test_the_hash_is_taken_from_the_payload_not_trusted_from_the_file() -> None:
    row = MappedLead(3, {"lastname": "Tamm"}).to_dict() | {"payload_hash": "edited by hand"}
    assert MappedLead.from_dict(row).hash == payload_hash({"lastname": "Tamm"})


def test_a_filled_payload_is_a_new_lead_with_a_new_hash() -> None:
    pending = MappedLead(3, {"lastname": "Tamm"}, options_needed=[("uni_leadstage", "Rejected")])
    before = pending.hash
    filled = dataclasses.replace(pending, payload={**pending.payload, "uni_leadstage": 1}, options_needed=[])
    assert pending.hash == before and filled.hash != before and filled.options_needed == []
