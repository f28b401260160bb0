"""Validation of lead write payloads against the table metadata.

Checks, in payload order (the first failure wins):

* ``@odata.*`` instance annotations are ignored; ``@odata.type`` must name the lead type.
* ``<nav>@odata.bind`` must use a declared navigation property, case-sensitively (``ownerid``,
  ``campaignid``, ``customerid_account``...): anything else is 400 0x80048d19 "An undeclared
  property 'OwnerId' which only has property annotations...". ``ownerid`` binds must be
  ``/systemusers(<guid>)`` or ``/teams(<guid>)`` (relative, or absolute under the Web API root).
  Decisions [unverified]: an unknown user/team → **404** 0x80040217 "systemuser With Id = <id> Does
  Not Exist"; a disabled user → **400** 0x80040225 "The specified user (Id = <id>) is disabled...";
  a malformed reference or a wrong entity set → 400 0x80048d19. Other lookups accept any GUID of
  the right entity set (the sandbox hosts no accounts/contacts/campaigns to check against).
* ``_x_value`` properties are read-only: 400 0x80048d19 "CRM do not support direct update of Entity
  Reference properties, Use Navigation properties instead."
* unknown property (or an AttributeOf annotation column such as ``owneridtype``) → 400 0x80060888
  "The property 'x' does not exist on type 'Microsoft.Dynamics.CRM.lead'. Make sure ...".
* not valid for create / update (``fullname``, ``statecode`` on create, ``leadid`` on update...)
  → 400 0x80040203 "The 'x' attribute of the 'lead' entity is not valid for Create." [unverified code].
* wrong JSON type → 400 0x80048d19 "... Cannot convert the literal 'v' to the expected type 'Edm.Int32'."
* string or memo over MaxLength → 400 0x80044331 (exact documented message).
* picklist/state/status value outside the option set → 400 0x8004431a "... Accepted Values: 1,2,3";
  numbers outside MinValue..MaxValue → the same code with "Accepted Values: <min> to <max>" [unverified].
* null for a SystemRequired column → 400 0x80040203 "Attribute 'x' cannot be set to NULL" [unverified].
"""

from __future__ import annotations

import math
import re
import uuid
from collections.abc import Callable
from datetime import UTC, date, datetime
from typing import Any

from sandbox.dataverse import errors
from sandbox.dataverse.metadata import LEAD_TYPE, LOOKUP_TYPES, AttributeDef, LeadMetadata

EDM_TYPES = {
    "String": "Edm.String",
    "Memo": "Edm.String",
    "Picklist": "Edm.Int32",
    "State": "Edm.Int32",
    "Status": "Edm.Int32",
    "Integer": "Edm.Int32",
    "BigInt": "Edm.Int64",
    "Double": "Edm.Double",
    "Decimal": "Edm.Decimal",
    "Money": "Edm.Decimal",
    "Boolean": "Edm.Boolean",
    "DateTime": "Edm.DateTimeOffset",
    "Uniqueidentifier": "Edm.Guid",
}
_BIND_RE = re.compile(r"^(?:.*/api/data/v[0-9.]+)?/?([A-Za-z_][A-Za-z0-9_]*)\(([^)]*)\)$")

_NAV_CACHE: dict[int, tuple[dict[str, AttributeDef], dict[str, tuple[AttributeDef, list[str]]]]] = {}

# (entity set, id) → logical name of the owner type; raises ODataError when it cannot own records.
OwnerResolver = Callable[[str, str], str]


def entity_set_of(logical: str) -> str:
    if logical.endswith("y") and not logical.endswith("ey"):
        return logical[:-1] + "ies"
    if logical.endswith("s"):
        return logical + "es"
    return logical + "s"


def navigation_properties(meta: LeadMetadata) -> dict[str, tuple[AttributeDef, list[str]]]:
    """Navigation property name → (lookup attribute, allowed target logical names), cached per attribute set."""
    cached = _NAV_CACHE.get(id(meta.attributes))
    if cached is not None and cached[0] is meta.attributes:
        return cached[1]
    navs: dict[str, tuple[AttributeDef, list[str]]] = {}
    for attr in meta.attributes.values():
        if attr.type not in LOOKUP_TYPES:
            continue
        targets = list(attr.raw.get("Targets") or [])
        if attr.type == "Customer":
            for target in targets:
                navs[f"{attr.logical}_{target}"] = (attr, [target])
        else:
            navs[attr.schema if attr.is_custom else attr.logical] = (attr, targets)
    _NAV_CACHE.clear()
    _NAV_CACHE[id(meta.attributes)] = (meta.attributes, navs)
    return navs


def _literal(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (dict, list)):
        return "[object]"
    return str(value)


def _convert_error(value: Any, edm: str) -> errors.ODataError:
    return errors.payload_error(
        "leads", f"Cannot convert the literal '{_literal(value)}' to the expected type '{edm}'."
    )


def normalize_datetime(value: str) -> str:
    text = value.strip()
    if text.endswith(("Z", "z")):
        text = text[:-1] + "+00:00"
    parsed = datetime.fromisoformat(text)
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=UTC)
    return parsed.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def check_value(attr: AttributeDef, value: Any) -> Any:
    """Type/range check of one non-null value; returns the stored (normalized) value."""
    t = attr.type
    edm = EDM_TYPES.get(t, "Edm.String")
    if t in ("String", "Memo"):
        if not isinstance(value, str):
            raise _convert_error(value, edm)
        max_length = attr.max_length
        if max_length is not None and len(value) > max_length:
            raise errors.string_too_long(attr.logical, "lead", max_length)
        return value
    if t in ("Picklist", "State", "Status"):
        if isinstance(value, bool) or not isinstance(value, int):
            if isinstance(value, float) and value.is_integer():
                value = int(value)
            else:
                raise _convert_error(value, edm)
        allowed = attr.option_values()
        if value not in allowed:
            raise errors.out_of_range(value, attr.logical, "lead", ",".join(str(v) for v in allowed))
        return value
    if t == "Boolean":
        if not isinstance(value, bool):
            raise _convert_error(value, edm)
        return value
    if t in ("Integer", "BigInt"):
        if isinstance(value, bool) or not isinstance(value, int):
            raise _convert_error(value, edm)
        _check_range(attr, value)
        return value
    if t in ("Double", "Decimal", "Money"):
        if (
            isinstance(value, bool)
            or not isinstance(value, (int, float))
            or (isinstance(value, float) and not math.isfinite(value))
        ):
            raise _convert_error(value, edm)
        _check_range(attr, value)
        return value
    if t == "DateTime":
        date_only = attr.kind == "date"
        if not isinstance(value, str):
            raise _convert_error(value, "Edm.Date" if date_only else edm)
        try:
            if date_only:
                if len(value.strip()) == 10:
                    return date.fromisoformat(value.strip()).isoformat()
                return normalize_datetime(value)[:10]
            if len(value.strip()) == 10:
                return date.fromisoformat(value.strip()).isoformat() + "T00:00:00Z"
            return normalize_datetime(value)
        except ValueError as exc:
            raise _convert_error(value, "Edm.Date" if date_only else edm) from exc
    if t == "Uniqueidentifier":
        if not isinstance(value, str):
            raise _convert_error(value, edm)
        try:
            return str(uuid.UUID(value))
        except ValueError as exc:
            raise _convert_error(value, edm) from exc
    raise errors.payload_error(
        "leads", f"Does not support untyped value in non-open type for property '{attr.logical}'."
    )


def _check_range(attr: AttributeDef, value: float) -> None:
    low, high = attr.raw.get("MinValue"), attr.raw.get("MaxValue")
    if (low is not None and value < low) or (high is not None and value > high):
        raise errors.ODataError(
            400,
            errors.VALUE_OUT_OF_RANGE,
            f"A validation error occurred. The value {value} of '{attr.logical}' on record of type 'lead' is outside "
            f"the valid range. Accepted Values: {low} to {high}",
        )


def validate_payload(
    meta: LeadMetadata,
    body: Any,
    mode: str,
    resolve_owner: OwnerResolver,
    system_fields: bool = False,
) -> dict[str, Any]:
    """Check a create (``mode="create"``) or update (``"update"``) body; returns logical name → value.

    ``system_fields`` (sandbox admin only) additionally allows statecode on create, ``createdon`` /
    ``modifiedon`` overrides and ``ownerid`` as a plain user id.
    """
    if not isinstance(body, dict):
        raise errors.payload_error("leads", "The request body must be a JSON object.")
    op = "Create" if mode == "create" else "Update"
    navs = navigation_properties(meta)
    changes: dict[str, Any] = {}
    for key, value in body.items():
        if key.startswith("@"):
            if key == "@odata.type" and str(value).lstrip("#") not in (LEAD_TYPE, "Microsoft.Dynamics.CRM.lead"):
                raise errors.payload_error(
                    "leads",
                    f"A resource with type '{value}' was found, but it is not assignable to the expected type "
                    f"'{LEAD_TYPE}'.",
                )
            continue
        if "@" in key:
            name, annotation = key.split("@", 1)
            if annotation != "odata.bind":
                continue  # other property annotations are ignored
            nav = navs.get(name)
            if nav is None:
                raise errors.payload_error(
                    "leads",
                    f"An undeclared property '{name}' which only has property annotations in the payload but no "
                    "property "
                    "value was found in the payload. In OData, only declared navigation properties and declared named "
                    "streams can be represented as properties without values.",
                )
            attr, targets = nav
            _check_writable(attr, mode, op, system_fields)
            if value is None:
                _check_nullable(attr)
                changes[attr.logical] = None
                continue
            target_set, target_logical, target_id = _parse_bind(name, value, targets)
            if attr.type == "Owner":
                changes["owneridtype"] = resolve_owner(target_set, target_id)
            elif attr.type == "Customer":
                changes[f"{attr.logical}type"] = target_logical
            changes[attr.logical] = target_id
            continue
        if key.startswith("_") and key.endswith("_value") and meta.property_attribute(key) is not None:
            raise errors.payload_error(
                "leads",
                "CRM do not support direct update of Entity Reference properties, Use Navigation properties instead.",
            )
        if system_fields and key in ("createdon", "modifiedon"):
            if not isinstance(value, str):
                raise _convert_error(value, "Edm.DateTimeOffset")
            try:
                changes[key] = normalize_datetime(value)
            except ValueError as exc:
                raise _convert_error(value, "Edm.DateTimeOffset") from exc
            continue
        if system_fields and key == "ownerid":
            changes["owneridtype"] = resolve_owner("systemusers", str(value).lower())
            changes["ownerid"] = str(value).lower()
            continue
        attr = meta.attribute(key)
        if attr is None or not attr.is_property or attr.type in LOOKUP_TYPES:
            raise errors.undeclared_property(key, LEAD_TYPE)
        _check_writable(attr, mode, op, system_fields)
        if value is None:
            _check_nullable(attr)
            changes[attr.logical] = None
            continue
        changes[attr.logical] = check_value(attr, value)
    return changes


def _check_nullable(attr: AttributeDef) -> None:
    if attr.required_level == "SystemRequired":
        raise errors.bad_request(f"Attribute '{attr.logical}' cannot be set to NULL", code=errors.INVALID_ARGUMENT)


def _check_writable(attr: AttributeDef, mode: str, op: str, system_fields: bool) -> None:
    if system_fields and attr.logical in ("statecode", "statuscode"):
        return
    valid = attr.valid_for_create if mode == "create" else attr.valid_for_update
    if not valid:
        raise errors.bad_request(
            f"The '{attr.logical}' attribute of the 'lead' entity is not valid for {op}.", code=errors.INVALID_ARGUMENT
        )


def _parse_bind(nav: str, value: Any, targets: list[str]) -> tuple[str, str, str]:
    """``/systemusers(<guid>)`` → (entity set, target logical name, guid)."""
    if not isinstance(value, str):
        raise errors.payload_error("leads", f"The value of '{nav}@odata.bind' must be a URI string.")
    match = _BIND_RE.match(value.strip())
    if not match:
        raise errors.payload_error("leads", f"The URI '{value}' in '{nav}@odata.bind' is not a valid entity reference.")
    entity_set, raw_id = match.group(1), match.group(2)
    allowed_sets = {entity_set_of(t): t for t in targets}
    if entity_set not in allowed_sets:
        raise errors.payload_error(
            "leads",
            f"The entity set '{entity_set}' in '{nav}@odata.bind' is not a valid target for navigation property "
            f"'{nav}' "
            f"(expected {', '.join(sorted(allowed_sets))}).",
        )
    try:
        target_id = str(uuid.UUID(raw_id))
    except ValueError as exc:
        raise errors.payload_error("leads", f"The key '{raw_id}' in '{nav}@odata.bind' is not a valid GUID.") from exc
    return entity_set, allowed_sets[entity_set], target_id
