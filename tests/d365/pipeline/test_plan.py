"""Planning rules: unchanged costs nothing, known leads update, own keys and emails adopt, the rest create."""

from __future__ import annotations

from d365.pipeline.identity import lead_id_for
from d365.pipeline.ledger import LeadState, LedgerEntry
from d365.pipeline.plan import (
    ADOPT,
    CREATE,
    NOT_SELECTED,
    UNCHANGED,
    UPDATE,
    UPDATES_OFF,
    ExistingLead,
    LeadPayload,
    needs_lookup,
    plan_operations,
    summarize,
)

INSTANCE = "apply.example.edu"


def lead(aid: int, h: str = "h", email: str | None = None) -> LeadPayload:
    return LeadPayload(aid, {"firstname": f"A{aid}", "uni_applicantid": str(aid)}, h, email)


def entry(aid: int, lead_id: str | None, h: str | None = "h", state: LeadState = LeadState.SENT) -> LedgerEntry:
    return LedgerEntry(aid, lead_id, state, h, False, 0, None, None)


def by_id(ops):  # type: ignore[no-untyped-def]
    return {o.applicant_id: o for o in ops}


def test_unchanged_update_and_create() -> None:
    entries = {1: entry(1, "L1", "h"), 2: entry(2, "L2", "old")}
    ops = by_id(plan_operations([lead(1), lead(2), lead(3)], entries, instance=INSTANCE))
    assert ops[1].action == UNCHANGED and ops[1].payload == {}
    assert (ops[2].action, ops[2].lead_id) == (UPDATE, "L2")
    assert (ops[3].action, ops[3].lead_id, ops[3].set_owner) == (CREATE, lead_id_for(INSTANCE, 3), True)
    assert ops[3].payload["firstname"] == "A3"


def test_failed_entries_are_retried_even_with_the_same_hash() -> None:
    ops = by_id(plan_operations([lead(1)], {1: entry(1, "L1", "h", LeadState.FAILED)}, instance=INSTANCE))
    assert ops[1].action == UPDATE


def test_force_rewrites_unchanged() -> None:
    ops = by_id(plan_operations([lead(1)], {1: entry(1, "L1")}, instance=INSTANCE, force=True))
    assert ops[1].action == UPDATE


def test_lead_carrying_our_applicant_key_is_updated_not_duplicated() -> None:
    ops = by_id(
        plan_operations([lead(5)], {}, instance=INSTANCE, by_applicant_key={"5": ExistingLead("K5", applicant_key="5")})
    )
    assert (ops[5].action, ops[5].lead_id, ops[5].set_owner) == (UPDATE, "K5", False)


def test_existing_lead_with_same_email_is_adopted_once() -> None:
    existing = {
        "ann@example.com": [
            ExistingLead("NEWER", email="ann@example.com", createdon="2025-02-01T00:00:00Z"),
            ExistingLead("OLDER", email="ann@example.com", createdon="2024-01-01T00:00:00Z"),
        ]
    }
    mapped = [lead(10, email="Ann@Example.com"), lead(11, email="ann@example.com"), lead(12, email="ann@example.com")]
    ops = by_id(plan_operations(mapped, {}, instance=INSTANCE, by_email=existing))
    assert (ops[10].action, ops[10].lead_id, ops[10].adopted) == (ADOPT, "OLDER", True)
    assert (ops[11].action, ops[11].lead_id) == (ADOPT, "NEWER")
    assert (ops[12].action, ops[12].lead_id) == (CREATE, lead_id_for(INSTANCE, 12))


def test_leads_of_other_applicants_are_never_adopted() -> None:
    existing = {"bob@example.com": [ExistingLead("X", applicant_key="99", email="bob@example.com")]}
    ops = by_id(plan_operations([lead(7, email="bob@example.com")], {}, instance=INSTANCE, by_email=existing))
    assert ops[7].action == CREATE


def test_adoption_can_be_switched_off() -> None:
    existing = {"c@example.com": [ExistingLead("X", email="c@example.com")]}
    ops = by_id(
        plan_operations(
            [lead(1, email="c@example.com")], {}, instance=INSTANCE, by_email=existing, adopt_by_email=False
        )
    )
    assert ops[1].action == CREATE


def test_send_all_new_and_automatic_updates_switches_respect_manual_requests() -> None:
    entries = {1: entry(1, "L1", "old")}
    ops = by_id(
        plan_operations(
            [lead(1), lead(2), lead(3)],
            entries,
            instance=INSTANCE,
            send_all_new=False,
            automatic_updates=False,
            requested=[3],
        )
    )
    assert ops[1].action == UPDATES_OFF
    assert ops[2].action == NOT_SELECTED
    assert ops[3].action == CREATE
    assert summarize(ops.values()) == {UPDATES_OFF: 1, NOT_SELECTED: 1, CREATE: 1}


def test_only_unknown_applicants_need_lookups() -> None:
    entries = {1: entry(1, "L1"), 2: entry(2, None, None, LeadState.QUARANTINED)}
    assert [m.applicant_id for m in needs_lookup([lead(1), lead(2), lead(3)], entries)] == [2, 3]
