"""Malformed applicant records, as a real DreamApply (or a proxy, an export bug, a migration) might serve them.

The sandbox renders every record from its typed model, so it could never send a name as a string or an id
like ``"12a"``. A :class:`WireOverride` attached to an applicant (``Applicant.wire``, set through the admin API)
changes the rendered JSON *after* rendering, so clients can be tested against records that break the
documented shape while the rest of the sandbox (filters, keyset order, journal) keeps working on the model:

- ``set``: dotted path → any JSON value (``{"name": "Maria Tamm"}``, ``{"id": "12a"}``,
  ``{"name.given": 42}``); intermediate objects are created, a non-object on the way is replaced by one;
- ``remove``: dotted paths deleted when present (``["name.family", "email"]``);
- ``replace``: the whole record replaced by any JSON value (a string, a list, ``null``);
- ``key``: the key of the record in ID-keyed collections (default: the applicant id).
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from typing import Any

from sandbox.data.mutations import MutationError

_ABSENT: Any = object()
SPEC_KEYS = frozenset({"set", "remove", "replace", "key", "journal"})


@dataclass
class WireOverride:
    set: dict[str, Any] = field(default_factory=dict)
    remove: list[str] = field(default_factory=list)
    replace: Any = _ABSENT
    key: str | None = None

    @classmethod
    def from_spec(cls, spec: Any) -> WireOverride:
        """Validate an admin request body; raises MutationError naming the problem."""
        if not isinstance(spec, dict):
            raise MutationError("expected an object with set, remove, replace and/or key")
        unknown = set(spec) - SPEC_KEYS
        if unknown:
            raise MutationError(f"unknown keys: {sorted(unknown)}")
        to_set = spec.get("set") or {}
        if not isinstance(to_set, dict) or not all(_path_ok(p) for p in to_set):
            raise MutationError("set must map dotted paths (a.b) to JSON values")
        to_remove = spec.get("remove") or []
        if not isinstance(to_remove, list) or not all(isinstance(p, str) and _path_ok(p) for p in to_remove):
            raise MutationError("remove must be a list of dotted paths")
        key = spec.get("key")
        if key is not None and (not isinstance(key, str | int) or isinstance(key, bool) or str(key) == ""):
            raise MutationError("key must be a non-empty string or an integer")
        override = cls(dict(to_set), list(to_remove), spec.get("replace", _ABSENT))
        override.key = None if key is None else str(key)
        if override.is_empty():
            raise MutationError("nothing to change: give set, remove, replace or key")
        return override

    def is_empty(self) -> bool:
        return not self.set and not self.remove and self.replace is _ABSENT and self.key is None

    def apply(self, record: dict[str, Any]) -> Any:
        """The wire record as served: ``record`` (freshly rendered, not shared) changed in place or replaced."""
        if self.replace is not _ABSENT:
            return copy.deepcopy(self.replace)
        for path in self.remove:
            *parents, last = path.split(".")
            node: Any = record
            for part in parents:
                node = node.get(part) if isinstance(node, dict) else None
            if isinstance(node, dict):
                node.pop(last, None)
        for path, value in self.set.items():
            *parents, last = path.split(".")
            node = record
            for part in parents:
                child = node.get(part)
                if not isinstance(child, dict):
                    child = node[part] = {}
                node = child
            node[last] = copy.deepcopy(value)
        return record

    def as_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"set": self.set, "remove": self.remove, "key": self.key}
        if self.replace is not _ABSENT:
            out["replace"] = self.replace
        return out


def _path_ok(path: Any) -> bool:
    return isinstance(path, str) and all(part for part in path.split("."))
