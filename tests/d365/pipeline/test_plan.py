"""Planning rules: unchanged costs nothing, known leads update, own keys and emails adopt, the rest create."""

from __future__ import annotations

import json

import pytest

from d365.pipeline.identity import lead_id_for
from d365.pipeline.ledger import LeadState, LedgerEntry
from d365.pipeline.mapping import payload_hash
from d365.pipeline.mapping_result import MappedLead
from d365.pipeline.owners import OwnerIds
from d365.pipeline.plan import (
    ADOPT,
    CREATE,
    ERASE,
    ERASED,
    NOT_SELECTED,
    OWNER_BIND,
    UNCHANGED,
    UPDATE,
    UPDATES_OFF,
    WITHDRAW,
    ExistingLead,
    Operation,
    PlanError,
    final_requests,
    needs_lookup,
    owner_for_create,
    plan_operations,
    summarize,
)

INSTANCE = "apply.example.edu"


def lead(aid: int, email: str | None = None) -> MappedLead:
    return MappedLead(aid, {"firstname": f"A{aid}", "uni_applicantid": str(aid)}, email=email)


SENT_AS_MAPPED = "the hash of lead(aid)"  # the ledger holds exactly what the transform mapped


def entry(
    aid: int, lead_id: str | None, h: str | None = SENT_AS_MAPPED, state: LeadState = LeadState.SENT
) -> LedgerEntry:
    return LedgerEntry(aid, lead_id, state, lead(aid).hash if h == SENT_AS_MAPPED else h, False, 0, None, None)


def by_id(ops):  # type: ignore[no-untyped-def]
    return {o.applicant_id: o for o in ops}


def test_unchanged_update_and_create() -> None:
    entries = {1: entry(1, "L1"), 2: entry(2, "L2", "old")}
    ops = by_id(plan_operations([lead(1), lead(2), lead(3)], entries, instance=INSTANCE))
    assert ops[1].action == UNCHANGED and ops[1].body == {}
    assert (ops[2].action, ops[2].lead_id) == (UPDATE, "L2")
    assert (ops[3].action, ops[3].lead_id) == (CREATE, lead_id_for(INSTANCE, 3))
    assert ops[3].body["firstname"] == "A3"


def test_failed_entries_are_retried_even_with_the_same_hash() -> None:
    ops = by_id(plan_operations([lead(1)], {1: entry(1, "L1", state=LeadState.FAILED)}, instance=INSTANCE))
    assert ops[1].action == UPDATE


def test_force_rewrites_unchanged() -> None:
    ops = by_id(plan_operations([lead(1)], {1: entry(1, "L1")}, instance=INSTANCE, force=True))
    assert ops[1].action == UPDATE


def test_lead_carrying_our_applicant_key_is_updated_not_duplicated() -> None:
    ops = by_id(
        plan_operations([lead(5)], {}, instance=INSTANCE, by_applicant_key={"5": ExistingLead("K5", applicant_key="5")})
    )
    assert (ops[5].action, ops[5].lead_id) == (UPDATE, "K5")


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


ANNA, BRUNO, EVA = "a0000000-0000-0000-0000-00000000000a", "b0000000-0000-0000-0000-00000000000b", "e000-e"
OWNERS = OwnerIds(ANNA, [BRUNO, EVA])


def final_plan(entries: dict[int, LedgerEntry], owner_rules: dict[int, int], **kwargs):  # type: ignore[no-untyped-def]
    existing = {"c@example.com": [ExistingLead("ADOPTED", email="c@example.com")]}
    mapped = [lead(1), lead(2), lead(3), lead(4, email="c@example.com"), lead(5), lead(6)]
    ops = plan_operations(
        mapped,
        entries,
        instance=INSTANCE,
        by_applicant_key={"5": ExistingLead("K5", applicant_key="5")},
        by_email=existing,
        **kwargs,
    )
    ops += [
        Operation(7, WITHDRAW, "L7", "", {"donotemail": True}, reason="consent withdrawn: flag"),
        Operation(8, ERASE, "L8", "", {}, method="DELETE", reason="right to be forgotten: delete"),
        Operation(9, ERASED, None, "", reason="right to be forgotten: no lead was sent"),
    ]
    return by_id(final_requests(ops, entity_set="uni_leads", owners=OWNERS, owner_rules=owner_rules))


def test_each_write_carries_its_final_request() -> None:
    """Method, URL (preflight's entity set + the lead id), headers and the exact body the load will send."""
    entries = {1: entry(1, "L1", "old"), 6: entry(6, "L6")}
    ops = final_plan(entries, {2: 1, 3: 0, 1: 0, 4: 0, 5: 0})
    create = ops[2]
    assert (create.action, create.method) == (CREATE, "PATCH")
    assert create.url == f"uni_leads({lead_id_for(INSTANCE, 2)})?$select=leadid"
    assert create.headers == {"Prefer": "return=representation"}
    assert create.body == {"firstname": "A2", "uni_applicantid": "2", OWNER_BIND: f"/systemusers({EVA})"}
    assert (ops[1].action, ops[1].url, ops[1].headers) == (UPDATE, "uni_leads(L1)?$select=leadid", create.headers)
    assert (ops[4].action, ops[4].url) == (ADOPT, "uni_leads(ADOPTED)?$select=leadid")
    assert (ops[5].action, ops[5].url) == (UPDATE, "uni_leads(K5)?$select=leadid")
    assert (ops[7].method, ops[7].url, ops[7].headers) == ("PATCH", "uni_leads(L7)", {"If-Match": "*"})
    assert ops[7].body == {"donotemail": True}
    assert (ops[8].method, ops[8].url, ops[8].headers, ops[8].body) == ("DELETE", "uni_leads(L8)", {}, None)
    for no_request in (ops[6], ops[9]):  # unchanged, erased: nothing to send
        assert no_request.url is None and no_request.headers == {}
    # the final request survives the run folder's JSON Lines unchanged
    assert Operation.from_json(json.loads(json.dumps(create.to_json()))) == create


def test_the_owner_is_bound_on_creates_only_never_on_updates_or_adoptions() -> None:
    entries = {1: entry(1, "L1", "old")}
    ops = final_plan(entries, {1: 0, 2: 1, 3: 0, 4: 0, 5: 0})  # every applicant matches a rule
    assert {aid: op.owner_id for aid, op in ops.items() if op.action == CREATE} == {2: EVA, 3: BRUNO, 6: ANNA}
    for op in ops.values():
        if op.action != CREATE:
            assert OWNER_BIND not in (op.body or {}) and op.owner_id is None, op
    # an owner bind that reached an update's payload some other way is removed, never sent
    stray = Operation(1, UPDATE, "L1", "h", {"lastname": "X", OWNER_BIND: f"/systemusers({EVA})"})
    (update,) = final_requests([stray], entity_set="leads", owners=OWNERS, owner_rules={1: 1})
    assert update.body == {"lastname": "X"}


def test_owner_for_create_rule_first_then_the_contact_owner_and_never_nobody() -> None:
    assert owner_for_create(OWNERS, None, 1) == ANNA  # no rule matched: the contact owner (the one fallback)
    assert owner_for_create(OWNERS, 1, 1) == EVA
    with pytest.raises(PlanError, match=r"applicant 7: owner_rules\[2\] matched but preflight resolved no owner"):
        owner_for_create(OWNERS, 2, 7)
    with pytest.raises(PlanError, match=r"owner_rules\[0\] matched"):
        owner_for_create(OwnerIds(ANNA, [None]), 0, 7)
    with pytest.raises(PlanError, match="applicant 3 would be created without an owner: set contact_owner"):
        final_requests([Operation(3, CREATE, "L3", "h", {"a": 1})], entity_set="l", owners=OwnerIds(), owner_rules={})


def test_the_payload_hash_leaves_the_owner_out_so_an_owner_change_resends_nothing() -> None:
    """The hash is the mapped columns' (transform); the plan binds the owner after it, so ledger rows sent under
    another owner stay unchanged, and a new owner changes a create's body but not its hash."""
    mapped = {"firstname": "A1", "uni_applicantid": "1"}
    h = payload_hash(mapped)
    first = final_requests(
        plan_operations([MappedLead(1, mapped)], {}, instance=INSTANCE),
        entity_set="leads",
        owners=OwnerIds(ANNA),
        owner_rules={},
    )[0]
    other = final_requests(
        plan_operations([MappedLead(1, mapped)], {}, instance=INSTANCE),
        entity_set="leads",
        owners=OwnerIds(BRUNO),
        owner_rules={},
    )[0]
    assert (first.owner_id, other.owner_id) == (ANNA, BRUNO)
    assert first.payload_hash == other.payload_hash == h != payload_hash(first.body or {})
    # next run, owner changed in the settings: the lead the ledger holds with that hash is left alone
    (again,) = final_requests(
        plan_operations([MappedLead(1, mapped)], {1: entry(1, first.lead_id, h)}, instance=INSTANCE),
        entity_set="leads",
        owners=OwnerIds(BRUNO),
        owner_rules={},
    )
    assert (again.action, again.url, again.body) == (UNCHANGED, None, {})
