"""The preflight check of the mapping against the live lead schema (:mod:`d365.pipeline.fit_schema`).

``check_mapping(settings, schema)``: configuration errors against the live schema, one line each, naming
the attribute (the preflight task fails fast with them). ``mapping_warnings`` lists softer problems.
"""

from __future__ import annotations

import difflib
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from d365.pipeline.fit_schema import TEXT_TYPES, AttributeSpec, FitPolicy, _options_hint

if TYPE_CHECKING:
    from d365.pipeline.settings import FieldMapping, Settings

# --------------------------------------------------------------------------------------------------
# preflight
# --------------------------------------------------------------------------------------------------

# what a column type accepts, by the output kind of a mapping entry
_ACCEPTS: dict[str, set[str]] = {
    "String": {"text", "int", "float", "date", "datetime", "list"},
    "Memo": {"text", "int", "float", "date", "datetime", "list"},
    "Boolean": {"bool"},
    "DateTime": {"date", "datetime"},
    "Integer": {"int"},
    "BigInt": {"int"},
    "Double": {"int", "float"},
    "Decimal": {"int", "float"},
    "Money": {"int", "float"},
    "Picklist": {"int"},
}
_KIND_WORDS = {
    "text": "text",
    "int": "a whole number",
    "float": "a number",
    "bool": "a yes/no value",
    "date": "a date",
    "datetime": "a date/time",
    "list": "a list",
}


def _scalar_kind(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "bool"
    if isinstance(value, int):
        return "int"
    if isinstance(value, float):
        return "float"
    return "text"


def output_kind(entry: FieldMapping) -> str:
    """The kind of value a mapping entry produces: text, int, float, bool, date, datetime, list, null, mixed."""
    from d365.pipeline.settings import SOURCE_FIELDS

    if entry.value_map is not None:
        kinds = {_scalar_kind(v) for v in entry.value_map.values()} - {"null"}
        if "default" in entry.model_fields_set:
            kinds |= {_scalar_kind(entry.default)} - {"null"}
        return kinds.pop() if len(kinds) == 1 else ("null" if not kinds else "mixed")
    if entry.form == "constant":
        return _scalar_kind(entry.constant)
    if entry.form == "template":
        return "text"
    kind = SOURCE_FIELDS[entry.source or ""].kind
    if entry.format == "text" or kind in ("phone", "country"):
        return "text"
    if kind == "list":
        return "list"
    if entry.format in ("date", "date_local"):
        return "date"
    if entry.format == "datetime_utc":
        return "datetime"
    return kind


def _labels_to_check(entry: FieldMapping) -> list[str]:
    labels: list[Any] = []
    if entry.form == "constant":
        labels.append(entry.constant)
    if entry.value_map is not None:
        labels.extend(entry.value_map.values())
    if "default" in entry.model_fields_set:
        labels.append(entry.default)
    return [v for v in labels if isinstance(v, str)]


def _close_attr(name: str, schema: Mapping[str, AttributeSpec]) -> str:
    match = difflib.get_close_matches(name, list(schema), n=1, cutoff=0.7)
    return f"; did you mean {match[0]!r}?" if match else ""


def _check_identity_column(role: str, column: str, schema: Mapping[str, AttributeSpec]) -> list[str]:
    spec = schema.get(column)
    if spec is None:
        return [f"dynamics.{role}: the lead has no attribute {column!r}{_close_attr(column, schema)}"]
    if spec.type != "String":
        return [f"dynamics.{role}: attribute {column!r} is {spec.type}, a text column is needed"]
    if not (spec.valid_for_create and spec.valid_for_update):
        return [f"dynamics.{role}: attribute {column!r} is not writable"]
    return []


def check_mapping(settings: Settings, schema: Mapping[str, AttributeSpec]) -> list[str]:
    """Configuration errors against the live lead schema; each line names the attribute. Empty = fit."""
    errors: list[str] = []
    entity = getattr(schema, "entity", settings.dynamics.entity)
    if settings.dynamics.entity != entity:
        errors.append(f"dynamics.entity: settings name {settings.dynamics.entity!r} but the schema is {entity!r}")
    for attr, entry in settings.data_mapping.items():
        where = f"data_mapping.{attr}"
        spec = schema.get(attr)
        if spec is None:
            errors.append(f"{where}: the {entity} table has no attribute {attr!r}{_close_attr(attr, schema)}")
            continue
        if not spec.valid_for_create:
            errors.append(f"{where}: attribute {attr!r} is not valid for create")
        if not spec.valid_for_update:
            errors.append(f"{where}: attribute {attr!r} is not valid for update (the load writes by upsert)")
        kind = output_kind(entry)
        if entry.picklist and spec.type != "Picklist":
            errors.append(f"{where}: 'picklist: true' but attribute {attr!r} is {spec.type}, not a Picklist")
            continue
        if entry.format == "e164" and spec.type not in TEXT_TYPES:
            errors.append(f"{where}: format e164 needs a text column, attribute {attr!r} is {spec.type}")
            continue
        if spec.type == "Picklist":
            if entry.picklist:
                if kind not in ("text", "int", "null"):
                    errors.append(f"{where}: {_KIND_WORDS.get(kind, kind)} cannot go into Picklist {attr!r}")
                for label in _labels_to_check(entry):
                    if spec.option_for(label) is None and not (
                        entry.on_missing_option == "add" and FitPolicy(add_allowlist=entry.add_allowlist).may_add(label)
                    ):
                        errors.append(f"{where}: Picklist {attr!r} has no option {label!r}{_options_hint(spec)}")
            elif kind not in ("int", "null"):
                errors.append(
                    f"{where}: attribute {attr!r} is a Picklist; {_KIND_WORDS.get(kind, kind)} needs 'picklist: true'"
                    " (match option labels) or an int option value"
                )
            constant = entry.constant if entry.form == "constant" else None
            if isinstance(constant, int) and not isinstance(constant, bool) and constant not in (spec.options or {}):
                errors.append(f"{where}: {entry.constant} is not an option of Picklist {attr!r}")
            continue
        accepts = _ACCEPTS.get(spec.type)
        if accepts is None:
            errors.append(f"{where}: attribute {attr!r} is of type {spec.type}, which the mapping cannot write")
            continue
        if kind == "mixed":
            errors.append(f"{where}: value_map mixes value types; attribute {attr!r} is {spec.type}")
        elif kind != "null" and kind not in accepts:
            errors.append(f"{where}: {_KIND_WORDS.get(kind, kind)} cannot go into {spec.type} attribute {attr!r}")
    if settings.dynamics.alternate_key:
        errors += _check_identity_column("alternate_key", settings.dynamics.alternate_key, schema)
        keys = getattr(schema, "alternate_keys", ())
        if keys and not any(k == (settings.dynamics.alternate_key,) for k in keys):
            errors.append(
                f"dynamics.alternate_key: no alternate key on {settings.dynamics.alternate_key!r} alone "
                f"(keys: {', '.join('+'.join(k) for k in keys)})"
            )
    if settings.dynamics.instance_column:
        errors += _check_identity_column("instance_column", settings.dynamics.instance_column, schema)
    if settings.dedupe.adopt_existing_by_email:
        column = settings.dedupe.email_column
        spec = schema.get(column)
        if spec is None or spec.type != "String":
            errors.append(f"dedupe.email_column: {column!r} is not a text attribute of the {entity} table")
    errors += _check_privacy_columns(settings, schema, entity)
    return errors


def _check_privacy_columns(settings: Settings, schema: Mapping[str, AttributeSpec], entity: str) -> list[str]:
    """The columns consent withdrawal and erasure write: the withdrawal flags (Boolean, updatable) when an
    action flags, the state and status when withdrawal deactivates."""
    errors: list[str] = []
    if "flag" in (settings.consent.on_withdrawal, settings.erasure.action):
        for column in settings.consent.withdrawal_flags:
            spec = schema.get(column)
            where = "consent.withdrawal_flags"
            if spec is None:
                errors.append(f"{where}: the {entity} table has no attribute {column!r}{_close_attr(column, schema)}")
            elif spec.type != "Boolean":
                errors.append(f"{where}: attribute {column!r} is {spec.type}, a Boolean column is needed")
            elif not spec.valid_for_update:
                errors.append(f"{where}: attribute {column!r} is not valid for update")
    if settings.consent.on_withdrawal == "deactivate":
        for column in ("statecode", "statuscode"):
            spec = schema.get(column)
            if spec is None or not spec.valid_for_update:
                errors.append(f"consent.on_withdrawal: deactivate needs an updatable {column!r} on the {entity} table")
    return errors


def mapping_warnings(settings: Settings, schema: Mapping[str, AttributeSpec]) -> list[str]:
    """Softer problems worth a log line: ApplicationRequired columns left unmapped, DateTime columns whose
    DateOnly-ness is unknown, dedupe without a mapped e-mail column."""
    warnings: list[str] = []
    mapped = set(settings.data_mapping)
    mapped |= {c for c in (settings.dynamics.alternate_key, settings.dynamics.instance_column) if c}
    for name, spec in schema.items():
        writable = spec.type in _ACCEPTS
        if spec.required_level == "ApplicationRequired" and spec.valid_for_create and name not in mapped and writable:
            warnings.append(f"{name}: the {spec.type} column is ApplicationRequired but not mapped")
    for name in settings.data_mapping:
        spec = schema.get(name)
        if spec is not None and spec.type == "DateTime" and spec.format is None and spec.date_behavior is None:
            warnings.append(
                f"{name}: the metadata gives no Format/DateTimeBehavior; values are sent as date and time "
                "(a DateOnly column needs YYYY-MM-DD: read DateTimeAttributeMetadata)"
            )
    if settings.dedupe.adopt_existing_by_email and settings.dedupe.email_column not in mapped:
        column = settings.dedupe.email_column
        warnings.append(f"dedupe.email_column: {column!r} is not mapped; adopt-by-email finds nothing")
    return warnings
