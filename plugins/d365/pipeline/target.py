"""Where the leads go: the Dynamics 365 connection, the lead table and its Web API names, resolved once.

Preflight reads the lead table's live metadata through ``settings.dynamics.connection_id`` and records the
result in ``preflight.json`` (``target``); every later Dynamics call of the run (plan lookups, picklist
options, the load) uses that record, and the reconciliation DAG resolves it the same way. Nothing falls back
to a default connection or to the entity set name ``leads``: an org may name its lead table's entity set
differently, and a run must write where its preflight looked. A record that lacks a part is an error.

``pool`` lists the further connections (application users of the same org, the connection's ``pool`` extra) that
preflight checked: the load spreads its writes over the connection and exactly these. A record without it (older
``preflight.json`` files, or a connection without a pool) means the connection alone.

``bulk_messages`` lists the bulk messages (``UpsertMultiple``…) preflight found the org supports for the table
(``sdkmessagefilters``) and the settings allow (``dynamics.bulk_messages``); empty: every write goes as ``$batch``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
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
    :param pool: connection ids of the further application users the load may write through (checked by preflight)
    :param bulk_messages: the bulk messages the load may use for upserts (found by preflight; empty: ``$batch``)
    """

    connection_id: str
    entity: str
    entity_set: str
    primary_id: str
    pool: tuple[str, ...] = ()
    bulk_messages: tuple[str, ...] = ()

    @classmethod
    def from_metadata(
        cls, connection_id: str, meta: Any, pool: Sequence[str] = (), bulk_messages: Sequence[str] = ()
    ) -> LeadTarget:
        """From the hook's ``EntityMetadata`` of the lead table, read through ``connection_id``."""
        return cls(
            connection_id,
            meta.logical_name,
            meta.entity_set_name,
            meta.primary_id,
            tuple(pool),
            tuple(sorted(bulk_messages)),
        )

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
        pool = doc.get("pool") or []
        if not isinstance(pool, list) or not all(isinstance(c, str) and c for c in pool):
            raise TargetMissing("the target's pool recorded by preflight is not a list of connection ids")
        bulk = doc.get("bulk_messages") or []
        if not isinstance(bulk, list) or not all(isinstance(m, str) and m for m in bulk):
            raise TargetMissing("the target's bulk messages recorded by preflight are not a list of message names")
        return cls(*(str(doc[f]) for f in FIELDS), pool=tuple(pool), bulk_messages=tuple(bulk))

    @property
    def connections(self) -> tuple[str, ...]:
        """Every connection the load writes through: the target's own, then its pool."""
        return (self.connection_id, *self.pool)

    def to_json(self) -> dict[str, Any]:
        doc: dict[str, Any] = {f: getattr(self, f) for f in FIELDS}
        if self.pool:  # a target without a pool is recorded as before
            doc["pool"] = list(self.pool)
        if self.bulk_messages:  # likewise without bulk messages
            doc["bulk_messages"] = list(self.bulk_messages)
        return doc
