"""Who owns a created lead: owner rules (first match wins) with ``contact_owner`` as the fallback.

Airflow-free. Three parts:

* ``first_match(rules, lookup)``: the index of the first ``owner_rules`` entry whose conditions all hold
  for one applicant (``lookup(source_name)`` gives the applicant's value of a source field; list values
  match when any item does). Values compare case-, accent- and spacing-insensitively. The mapper calls
  it per applicant (``MappedLead.owner_rule``), because rules may read fields the payload does not carry.
* ``owner_problem(user, ...)``: why a Dynamics ``systemuser`` cannot own leads (missing, disabled, the
  application user itself, a non-interactive or built-in user), or None; ``ineligibility`` / ``can_own_leads``
  hold the rule for a user that exists (``python -m d365 owners`` lists the users it admits).
* ``resolve_owners(settings, find, caller_id)``: the preflight's check of ``contact_owner`` and of every
  rule owner; returns the ids (``OwnerIds``) and one error line per bad owner, naming the setting.

This is the one owner resolution of a run: preflight stores the ids in ``preflight.json`` (``owners``). The
plan binds them to creates (``plan.final_requests``: the rule's user, else the contact owner, the one
fallback); updates and adoptions keep the owner the lead has. The load only sends what the plan holds.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from d365.pipeline.fit import normalize_label
from d365.pipeline.settings import ContactOwner, OwnerRule, Settings

BUILT_IN_USERS = frozenset({"SYSTEM", "INTEGRATION"})
NON_INTERACTIVE = 4  # systemuser.accessmode 4: application / non-interactive users

FIND_KEYWORD = {"email": "email", "domainname": "domainname", "id": "user_id"}


def _texts(value: Any) -> list[str]:
    if value is None:
        return []
    if isinstance(value, list | tuple | set | frozenset):
        return [t for v in value for t in _texts(v)]
    if isinstance(value, bool):
        return ["true" if value else "false"]
    return [str(value)]


def rule_matches(rule: OwnerRule, lookup: Callable[[str], Any]) -> bool:
    """Every condition holds: the applicant's value (or one item of a list) is among the rule's values."""
    for source, accepted in rule.sources().items():
        wanted = {normalize_label(v) for v in accepted}
        if not any(normalize_label(t) in wanted for t in _texts(lookup(source))):
            return False
    return True


def first_match(rules: Sequence[OwnerRule], lookup: Callable[[str], Any]) -> int | None:
    """Index of the first rule that matches, or None (the fallback owner applies)."""
    cache: dict[str, Any] = {}

    def cached(source: str) -> Any:
        if source not in cache:
            cache[source] = lookup(source)
        return cache[source]

    for index, rule in enumerate(rules):
        if rule_matches(rule, cached):
            return index
    return None


def describe(owner: ContactOwner) -> str:
    return f"{owner.by} {owner.value!r}"


def ineligibility(user: Mapping[str, Any], *, caller_id: str | None = None) -> str | None:
    """Why this ``systemuser`` row cannot own leads (``is disabled``, ``is a non-interactive user; ...``), or None.
    The one rule behind preflight's owner checks and the owner listing (``python -m d365 owners``)."""
    if user.get("isdisabled"):
        return "is disabled"
    user_id = str(user.get("systemuserid") or "").lower()
    if user.get("applicationid") or (caller_id and user_id == str(caller_id).lower()):
        return "is the application user this sync signs in as; name a person"
    if user.get("accessmode") == NON_INTERACTIVE:
        return "is a non-interactive user; name a person"
    if str(user.get("fullname") or "").strip().upper() in BUILT_IN_USERS:
        return f"is the built-in {str(user.get('fullname')).strip()} user; name a person"
    return None


def can_own_leads(user: Mapping[str, Any], *, caller_id: str | None = None) -> bool:
    """An enabled person: not an application, non-interactive or built-in user (``ineligibility``)."""
    return ineligibility(user, caller_id=caller_id) is None


def owner_problem(user: Mapping[str, Any] | None, owner: ContactOwner, *, caller_id: str | None = None) -> str | None:
    """Why this user cannot own the leads, or None when it can."""
    if user is None:
        return f"no Dynamics user with {describe(owner)}"
    reason = ineligibility(user, caller_id=caller_id)
    return None if reason is None else f"the Dynamics user with {describe(owner)} {reason}"


@dataclass
class OwnerIds:
    """systemuserids: the fallback (``contact_owner``) and one per rule (None where it could not be resolved)."""

    default: str | None = None
    rules: list[str | None] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        return {"default": self.default, "rules": list(self.rules)}

    @classmethod
    def from_json(cls, data: Mapping[str, Any] | None, default: str | None = None) -> OwnerIds:
        data = data or {}
        return cls(data.get("default", default), list(data.get("rules") or []))


def resolve_owners(
    settings: Settings,
    find: Callable[..., Mapping[str, Any] | None],
    *,
    caller_id: str | None = None,
) -> tuple[OwnerIds, list[str]]:
    """Look up ``contact_owner`` and every rule owner once each (``find(email=|domainname=|user_id=)``);
    errors name the setting (``contact_owner: ...``, ``owner_rules[1].owner: ...``)."""
    seen: dict[tuple[str, str], tuple[str | None, str | None]] = {}
    errors: list[str] = []

    def resolve(owner: ContactOwner, where: str) -> str | None:
        key = (owner.by, owner.value.casefold())
        if key not in seen:
            user = find(**{FIND_KEYWORD[owner.by]: owner.value})
            problem = owner_problem(user, owner, caller_id=caller_id)
            seen[key] = (None if problem else str(user["systemuserid"]) if user else None, problem)
        user_id, problem = seen[key]
        if problem:
            errors.append(f"{where}: {problem}")
        return user_id

    ids = OwnerIds()
    if settings.contact_owner is not None:
        ids.default = resolve(settings.contact_owner, "contact_owner")
    ids.rules = [resolve(rule.owner, f"owner_rules[{i}].owner") for i, rule in enumerate(settings.owner_rules)]
    return ids, errors
