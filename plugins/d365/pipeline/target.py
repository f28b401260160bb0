"""Where the leads go: the Dynamics 365 connection, the lead table and its Web API names, resolved once.

Preflight reads the lead table's live metadata through ``settings.dynamics.connection_id`` and records the
result in ``preflight.json`` (``target``); every later Dynamics call of the run (plan lookups, picklist
options, the load) uses that record, and the reconciliation DAG resolves it the same way. Nothing falls back
to a default connection or to the entity set name ``leads``: an org may name its lead table's entity set
differently, and a run must write where its preflight looked. A record that lacks a part is an error.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass
from typing import Any

FIELDS = ("connection_id", "entity", "entity_set", "primary_id")


class TargetMissing(ValueError):
    """The run has no complete target (preflight did not run, or wrote an older record): nothing is sent."""


@dataclass(frozen=True)
class LeadTarget:
    """The lead table one run writes to.

    :param connection_id: the Airflow connection of the Dynamics 365 organization
    :param entity: the table's logical name (metadata calls: options, keys)
    :param entity_set: its Web API entity set name (``EntitySetName``; every data call)
    :param primary_id: its primary key column (``PrimaryIdAttribute``; lookups by lead id)
    """

    connection_id: str
    entity: str
    entity_set: str
    primary_id: str

    @classmethod
    def from_metadata(cls, connection_id: str, meta: Any) -> LeadTarget:
        """From the hook's ``EntityMetadata`` of the lead table, read through ``connection_id``."""
        return cls(connection_id, meta.logical_name, meta.entity_set_name, meta.primary_id)

    @classmethod
    def from_json(cls, doc: Mapping[str, Any] | None) -> LeadTarget:
        """From ``preflight.json``'s ``target``; every part must be a non-empty text."""
        doc = doc or {}
        missing = [f for f in FIELDS if not (isinstance(doc.get(f), str) and doc[f])]
        if missing:
            raise TargetMissing(
                f"no Dynamics 365 target recorded by preflight (missing {', '.join(missing)}): "
                "the run writes only where its preflight looked"
            )
        return cls(*(str(doc[f]) for f in FIELDS))

    def to_json(self) -> dict[str, str]:
        return asdict(self)
