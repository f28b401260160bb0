"""A dry run's summary: owners per create come from the planned requests' owner binds, labelled by setting."""

from __future__ import annotations

from d365.pipeline.dry_run import plan_summary, summary_text
from d365.pipeline.owners import OwnerIds
from d365.pipeline.plan import CREATE, UNCHANGED, UPDATE, Operation, final_requests

ANNA, EVA = "a0000000-0000-0000-0000-00000000000a", "e0000000-0000-0000-0000-00000000000e"


def test_creates_per_owner_read_from_each_creates_bind() -> None:
    ops = [
        Operation(1, CREATE, "L1", "h", {"lastname": "A"}),
        Operation(2, CREATE, "L2", "h", {"lastname": "B"}),
        Operation(3, CREATE, "L3", "h", {"lastname": "C"}),
        Operation(4, UPDATE, "L4", "h", {"lastname": "D"}),
        Operation(5, UNCHANGED, "L5", "h"),
    ]
    owners = OwnerIds(ANNA, [EVA, ANNA])
    planned = final_requests(ops, entity_set="leads", owners=owners, owner_rules={1: 0, 3: 1})
    summary = plan_summary(planned, {"lookup_requests": 2}, owners)
    assert summary["creates_per_owner"] == {f"{EVA} (rule 0)": 1, f"{ANNA} (rule 1, contact owner)": 2}
    assert summary["counts"] == {CREATE: 3, UPDATE: 1, UNCHANGED: 1} and summary["writes"] == 4
    assert summary["applicants"][CREATE] == [1, 2, 3]
    text = summary_text(summary)
    assert f"creates owned by {EVA} (rule 0): 1" in text
    assert f"creates owned by {ANNA} (rule 1, contact owner): 2" in text


def test_a_create_whose_request_binds_no_owner_shows_as_none() -> None:
    """Only a plan from an older version lacks the bind (the load refuses it); the summary does not invent one."""
    summary = plan_summary([Operation(1, CREATE, "L1", "h", {"lastname": "A"})], {}, OwnerIds(ANNA))
    assert summary["creates_per_owner"] == {"none": 1}
