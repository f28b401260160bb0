"""What the mapping makes of one applicant (``MappedLead``: the payload, or why it is quarantined) and
``payload_hash``, which tells whether a lead's mapped columns changed since they were last sent.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from dataclasses import dataclass, field
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

    @property
    def ok(self) -> bool:
        return self.quarantine_reason is None

    @property
    def hash(self) -> str:
        return payload_hash(self.payload)

    def to_dict(self) -> dict[str, Any]:
        return {
            "applicant_id": self.applicant_id,
            "payload": self.payload,
            "hash": self.hash,
            "issues": [i.to_dict() for i in self.issues],
            "quarantine_reason": self.quarantine_reason,
            "options_needed": [list(o) for o in self.options_needed],
            "stage": self.stage,
            "stage_changed": self.stage_changed,
            "owner_rule": self.owner_rule,
        }


def payload_hash(payload: Mapping[str, Any]) -> str:
    """sha256 of the canonical JSON (sorted keys, no spaces, UTF-8): stable across key order."""
    text = json.dumps(payload, sort_keys=True, separators=(",", ":"), ensure_ascii=False, default=str)
    return hashlib.sha256(text.encode("utf-8", "surrogatepass")).hexdigest()
