"""Planned creates as the plan step emits them (final requests owned by the contact owner), for the load's tests."""

from __future__ import annotations

from typing import Any

from d365.pipeline.identity import lead_id_for
from d365.pipeline.owners import OwnerIds
from d365.pipeline.plan import CREATE, Operation, final_requests


def planned_create(aid: int, owner: str, *, instance: str, **columns: Any) -> Operation:
    """One create of applicant ``aid`` with a name, an e-mail and the key column; ``columns`` replace or add some."""
    body = {
        "firstname": f"Åsa {aid}",
        "lastname": f"O'Brien-{aid}",
        "emailaddress1": f"applicant{aid}@example.org",
        "subject": f"DreamApply applicant {aid}",
        "uni_applicantid": str(aid),
        **columns,
    }
    op = Operation(aid, CREATE, lead_id_for(instance, aid), f"hash-{aid}", body)
    return final_requests([op], entity_set="leads", owners=OwnerIds(owner), owner_rules={})[0]
