"""What the mapping makes of one applicant (``MappedLead``: the payload, or why it is quarantined) and
``payload_hash``, which tells whether a lead's mapped columns changed since they were last sent.

``MappedLead`` is the one shape between the applicant record and the planned request: the mapper returns it,
triage adds the e-mail adoption may use, the transform writes it (``to_dict``, ``transform/leads.jsonl``) and
the plan reads it back (``from_dict``) unchanged.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from functools import cached_property
from typing import Any

from d365.pipeline.fit import FitIssue


@dataclass
class MappedLead:
    applicant_id: int | None
    payload: dict[str, Any]  # logical name → JSON value; {} when quarantined
    issues: list[FitIssue] = field(default_factory=list)
    quarantine_reason: str | None = None
    options_needed: list[tuple[str, str]] = field(default_factory=list)  # (attribute, label) to add
    stage: str | None = None
    stage_changed: str | None = None
    owner_rule: int | None = None  # index of the first matching ``owner_rules`` entry (owners.first_match)
    email: str | None = None  # the address adoption by e-mail may match (None when the e-mail failed its checks)

    @property
    def ok(self) -> bool:
        return self.quarantine_reason is None

    @cached_property
    def hash(self) -> str:
        """The payload's hash; a changed payload is a new ``MappedLead`` (``dataclasses.replace``), never an edit."""
        return payload_hash(self.payload)

    def to_dict(self) -> dict[str, Any]:
        return {
            "applicant_id": self.applicant_id,
            "payload": self.payload,
            "payload_hash": self.hash,
            "email": self.email,
            "issues": [i.to_dict() for i in self.issues],
            "quarantine_reason": self.quarantine_reason,
            "options_needed": [list(o) for o in self.options_needed],
            "stage": self.stage,
            "stage_changed": self.stage_changed,
            "owner_rule": self.owner_rule,
        }

    @classmethod
    def from_dict(cls, row: Mapping[str, Any]) -> MappedLead:
        """A row of ``transform/leads.jsonl`` back as the mapper made it; the hash is taken again, not trusted."""
        aid = row.get("applicant_id")
        return cls(
            applicant_id=int(aid) if aid is not None else None,
            payload=dict(row.get("payload") or {}),
            issues=[FitIssue(**i) for i in row.get("issues") or ()],
            quarantine_reason=row.get("quarantine_reason"),
            options_needed=[(str(a), str(label)) for a, label in row.get("options_needed") or ()],
            stage=row.get("stage"),
            stage_changed=row.get("stage_changed"),
            owner_rule=row.get("owner_rule"),
            email=row.get("email"),
        )


def payload_hash(payload: Mapping[str, Any]) -> str:
    """sha256 of the canonical JSON (sorted keys, no spaces, UTF-8): stable across key order."""
    text = json.dumps(payload, sort_keys=True, separators=(",", ":"), ensure_ascii=False, default=str)
    return hashlib.sha256(text.encode("utf-8", "surrogatepass")).hexdigest()
