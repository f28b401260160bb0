"""``LeadTarget``: the pool preflight checked travels with the target; records written before pools still load."""

from __future__ import annotations

import pytest

from d365.pipeline.target import LeadTarget, TargetMissing

OLD = {"connection_id": "crm", "entity": "lead", "entity_set": "leads", "primary_id": "leadid"}


def test_a_record_without_a_pool_is_the_connection_alone() -> None:
    target = LeadTarget.from_json(OLD)
    assert target.pool == () and target.connections == ("crm",)
    assert target.to_json() == OLD  # written as before: no empty pool key


def test_the_pool_round_trips() -> None:
    target = LeadTarget.from_json({**OLD, "pool": ["crm_user2", "crm_user3"]})
    assert target.pool == ("crm_user2", "crm_user3")
    assert target.connections == ("crm", "crm_user2", "crm_user3")
    assert target.to_json() == {**OLD, "pool": ["crm_user2", "crm_user3"]}
    assert LeadTarget.from_json(target.to_json()) == target


@pytest.mark.parametrize("pool", ["crm_user2", [""], [None], {"a": 1}])
def test_a_pool_that_is_not_a_list_of_connection_ids_is_refused(pool: object) -> None:
    with pytest.raises(TargetMissing, match="pool recorded by preflight is not a list of connection ids"):
        LeadTarget.from_json({**OLD, "pool": pool})
