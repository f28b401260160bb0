"""Fit mapped values to the lead table's real columns: the schema, the preflight check, the per-value policy.

* ``AttributeSpec`` / ``LeadSchema``: the minimum this step needs from the org's lead metadata. The
  Dynamics hook's ``get_entity_metadata()`` output is adapted to it by the caller; tests and the sandbox use
  ``LeadSchema.from_metadata_json`` on ``sandbox/dataverse/lead-attributes.json`` + ``custom-columns.json``
  (it also reads Web API ``EntityDefinitions(...)/Attributes`` items).
* ``check_mapping(settings, schema)``: configuration errors against the live schema, one line each, naming
  the attribute (the preflight task fails fast with them). ``mapping_warnings`` lists softer problems.
* ``fit_value(spec, value, policy)``: one value → the JSON the Web API expects, or an issue. Never raises.

The schema types live in :mod:`d365.pipeline.fit_schema`, the preflight check in :mod:`d365.pipeline.fit_check`;
both are exported from here too.

The per-value policy (documented in docs/settings.md):

==================  ==============================================================================
column type         what is sent / what happens
==================  ==============================================================================
String, Memo        text, Unicode NFC (numbers and dates are rendered; yes/no values are a wrong
                    type). Control characters and lone surrogates are removed (issue ``sanitized``,
                    still sent).
                    Longer than MaxLength (counted in UTF-16 units, as Dataverse does):
                    ``truncate`` = plain cut at MaxLength, never inside a surrogate pair, no ellipsis
                    (issue ``truncated``, record sent); ``quarantine`` = the record is not sent.
Picklist            int option value. With ``picklist: true`` a text is matched to an option label,
                    ignoring case, accents and repeated spaces. No match: ``quarantine`` (default),
                    ``ignore`` (attribute left out, issue) or ``add`` (label in ``add_allowlist`` →
                    attribute left out and "needs option" reported for the load to add; otherwise
                    quarantine). An int must be one of the options.
Boolean             true/false (also 0/1 and yes/no/true/false texts).
DateTime            DateOnly columns get ``YYYY-MM-DD``; others ``YYYY-MM-DDTHH:MM:SSZ`` (UTC).
                    ``date`` = the UTC calendar date, ``date_local`` = the date in the configured
                    timezone, ``datetime_utc`` = the instant. Before 1753 or unparseable: wrong type.
Integer, BigInt     int within MinValue..MaxValue (int32 / int64 when unknown).
Double, Decimal,    finite number within MinValue..MaxValue.
Money
anything else       wrong type (Lookups/owner are bound by the load, not mapped).
==================  ==============================================================================

A wrong type always quarantines the record (the reason names the attribute). ``None`` is always
accepted (it clears the column).

Messages never quote the value (``describe_value``: its type and length): they reach quarantine files,
reports and the ledger, which carry applicant IDs and reasons, never names, e-mails or phones.
"""

from __future__ import annotations

import math
import re
import unicodedata
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from datetime import UTC, date, datetime, time
from decimal import Decimal
from typing import Any, Literal
from zoneinfo import ZoneInfo

from d365.pipeline.fit_check import check_mapping, mapping_warnings, output_kind
from d365.pipeline.fit_schema import (
    INT_BOUNDS,
    INT_TYPES,
    MIN_DATETIME_YEAR,
    NUMBER_TYPES,
    SANDBOX_METADATA,
    TEXT_TYPES,
    AttributeSpec,
    FitPolicy,
    LeadSchema,
    _options_hint,
    normalize_label,
    spec_from_metadata,
)
from d365.pipeline.lead_stage import iso_utc, parse_instant

# the public names, those of fit_schema and fit_check included (importers keep reading them from here)
__all__ = [
    "MIN_DATETIME_YEAR",
    "SANDBOX_METADATA",
    "TEXT_TYPES",
    "Action",
    "AttributeSpec",
    "FitIssue",
    "FitPolicy",
    "LeadSchema",
    "check_mapping",
    "cut_utf16",
    "describe_value",
    "fit_value",
    "format_temporal",
    "is_date_only_value",
    "mapping_warnings",
    "normalize_label",
    "output_kind",
    "spec_from_metadata",
    "utf16_len",
]

Action = Literal["sent", "truncated", "dropped", "quarantine", "needs_option"]


# --------------------------------------------------------------------------------------------------
# per-value policy
# --------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class FitIssue:
    attribute: str
    code: str  # truncated, sanitized, wrong_type, missing_option, option_ignored, invalid_phone, ...
    message: str
    action: Action = "sent"
    label: str | None = None  # the option label to add (action needs_option)

    @property
    def quarantines(self) -> bool:
        return self.action == "quarantine"

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


_BAD_CHARS = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\x7f\ud800-\udfff\ufffe\uffff]")


def utf16_len(text: str) -> int:
    return len(text) + sum(1 for ch in text if ord(ch) > 0xFFFF)


def cut_utf16(text: str, limit: int) -> str:
    """The longest prefix of ``text`` that is at most ``limit`` UTF-16 units (never half a pair)."""
    units = 0
    for i, ch in enumerate(text):
        units += 2 if ord(ch) > 0xFFFF else 1
        if units > limit:
            return text[:i]
    return text


def describe_value(value: Any) -> str:
    """What a value is, never what it says: messages end up in quarantine files, reports and the ledger,
    which must not carry names, e-mails or phones (data minimisation)."""
    if value is None:
        return "null"
    if isinstance(value, str):
        return f"text of {len(value)} characters"
    if isinstance(value, bool):
        return "a yes/no value"
    if isinstance(value, int):
        return "a whole number"
    if isinstance(value, float | Decimal):
        return "a number"
    if isinstance(value, datetime):
        return "a date/time"
    if isinstance(value, date):
        return "a date"
    if isinstance(value, list | tuple):
        return f"a list of {len(value)} items"
    if isinstance(value, Mapping):
        return f"an object of {len(value)} keys"
    return f"a {type(value).__name__}"


def is_date_only_value(value: Any) -> bool:
    if isinstance(value, date) and not isinstance(value, datetime):
        return True
    return isinstance(value, str) and bool(re.fullmatch(r"\s*\d{4}-\d{2}-\d{2}\s*", value))


def format_temporal(value: Any, fmt: str, timezone: str = "UTC") -> str | None:
    """A date/datetime value as text: ``date`` (UTC date), ``date_local`` (date in ``timezone``),
    ``datetime_utc`` (ISO Z; a pure date becomes midnight UTC, or local midnight for date_local).
    None when unparseable."""
    if is_date_only_value(value):
        try:
            d = value if isinstance(value, date) else date.fromisoformat(value.strip())
        except ValueError:
            return None
        if fmt == "datetime_utc":
            return f"{d.isoformat()}T00:00:00Z"
        return d.isoformat()
    instant = parse_instant(value)
    if instant is None:
        return None
    if fmt == "date":
        return instant.date().isoformat()
    if fmt == "date_local":
        return instant.astimezone(ZoneInfo(timezone)).date().isoformat()
    return iso_utc(instant)


def _fit_datetime(spec: AttributeSpec, value: Any, policy: FitPolicy) -> tuple[Any, FitIssue | None]:
    name = spec.logical_name
    fmt = policy.date_format or ("date_local" if spec.is_date_only else "datetime_utc")
    tz = ZoneInfo(policy.timezone)
    if is_date_only_value(value):
        try:
            day = value if isinstance(value, date) else date.fromisoformat(value.strip())
        except ValueError:
            return None, _wrong(name, value, "not a valid date")
        if spec.is_date_only:
            result_day = day
        else:
            zone = tz if fmt == "date_local" else UTC
            instant = datetime.combine(day, time(0, 0), tzinfo=zone).astimezone(UTC)
            if instant.year < MIN_DATETIME_YEAR:
                return None, _wrong(name, value, f"dates before {MIN_DATETIME_YEAR} are not accepted")
            return iso_utc(instant), None
    else:
        instant = parse_instant(value)
        if instant is None:
            return None, _wrong(name, value, "not an ISO 8601 date/time")
        if not spec.is_date_only:
            if fmt in ("date", "date_local"):
                zone = tz if fmt == "date_local" else UTC
                day = instant.astimezone(zone).date()
                instant = datetime.combine(day, time(0, 0), tzinfo=zone).astimezone(UTC)
            if instant.year < MIN_DATETIME_YEAR:
                return None, _wrong(name, value, f"dates before {MIN_DATETIME_YEAR} are not accepted")
            return iso_utc(instant), None
        result_day = instant.astimezone(tz).date() if fmt == "date_local" else instant.date()
    if result_day.year < MIN_DATETIME_YEAR:
        return None, _wrong(name, value, f"dates before {MIN_DATETIME_YEAR} are not accepted")
    return result_day.isoformat(), None


def _wrong(attribute: str, value: Any, why: str) -> FitIssue:
    return FitIssue(attribute, "wrong_type", f"{why} (got {describe_value(value)})", "quarantine")


def _as_text(value: Any, policy: FitPolicy) -> str | None:
    if isinstance(value, str):
        return value
    if isinstance(value, bool):
        return None
    if isinstance(value, int | Decimal):
        return str(value)
    if isinstance(value, float):
        return repr(value) if math.isfinite(value) else None
    if isinstance(value, date):
        default = "date" if is_date_only_value(value) else "datetime_utc"
        return format_temporal(value, policy.date_format or default, policy.timezone)
    return None


def _fit_text(spec: AttributeSpec, value: Any, policy: FitPolicy) -> tuple[Any, FitIssue | None]:
    name = spec.logical_name
    text = _as_text(value, policy)
    if text is None:
        return None, _wrong(name, value, f"a {type(value).__name__} cannot go into a text column")
    issue: FitIssue | None = None
    clean = _BAD_CHARS.sub("", text)
    if clean != text:
        issue = FitIssue(name, "sanitized", "control characters or invalid code points removed")
    text = unicodedata.normalize("NFC", clean)  # "e" + U+0308 → "ë": the same text, composed
    limit = spec.max_length
    if limit is not None and utf16_len(text) > limit:
        size = utf16_len(text)
        if policy.too_long == "quarantine":
            return None, FitIssue(name, "too_long", f"{size} characters, the column holds {limit}", "quarantine")
        text = cut_utf16(text, limit)
        issue = FitIssue(name, "truncated", f"cut from {size} to {limit} characters", "truncated")
    return text, issue


def _fit_picklist(spec: AttributeSpec, value: Any, policy: FitPolicy) -> tuple[Any, FitIssue | None]:
    name = spec.logical_name
    options = spec.options or {}
    if isinstance(value, int) and not isinstance(value, bool):
        if value in options:
            return value, None
        why = f"the whole number is not an option value{_options_hint(spec)}"
        return None, FitIssue(name, "missing_option", why, "quarantine")
    if not (policy.picklist and isinstance(value, str)):
        return None, _wrong(name, value, "a picklist takes an option value (or a label with picklist: true)")
    label = " ".join(_BAD_CHARS.sub("", value).split())
    found = spec.option_for(label)
    if found is not None:
        return found, None
    # Messages describe the label (its length), never quote it: ``label`` carries it where the load needs it.
    size = f"a label of {len(label)} characters"
    if policy.on_missing_option == "ignore":
        return None, FitIssue(name, "option_ignored", f"no option matches {size}; attribute left out", "dropped")
    if policy.on_missing_option == "add" and policy.may_add(label):
        return None, FitIssue(name, "option_needed", f"needs a new option for {size}", "needs_option", label=label)
    why = " and it is not in add_allowlist" if policy.on_missing_option == "add" else ""
    why = f"no option matches {size}{why}{_options_hint(spec)}"
    return None, FitIssue(name, "missing_option", why, "quarantine")


_TRUE = {"true", "yes", "1", "y"}
_FALSE = {"false", "no", "0", "n"}


def _fit_boolean(spec: AttributeSpec, value: Any) -> tuple[Any, FitIssue | None]:
    if isinstance(value, bool):
        return value, None
    if isinstance(value, int) and value in (0, 1):
        return bool(value), None
    if isinstance(value, str):
        folded = value.strip().casefold()
        if folded in _TRUE:
            return True, None
        if folded in _FALSE:
            return False, None
    return None, _wrong(spec.logical_name, value, "not a yes/no value")


def _fit_number(spec: AttributeSpec, value: Any) -> tuple[Any, FitIssue | None]:
    name = spec.logical_name
    if isinstance(value, str) and re.fullmatch(r"\s*[-+]?\d{1,20}\s*", value):
        value = int(value)
    if spec.type in INT_TYPES:
        if not isinstance(value, int) or isinstance(value, bool):
            return None, _wrong(name, value, "not a whole number")
        low, high = INT_BOUNDS[spec.type]
    else:
        if isinstance(value, bool) or not isinstance(value, int | float | Decimal):
            return None, _wrong(name, value, "not a number")
        if isinstance(value, float | Decimal) and not math.isfinite(value):
            return None, _wrong(name, value, "not a finite number")
        low, high = -math.inf, math.inf
    low = spec.min_value if spec.min_value is not None else low
    high = spec.max_value if spec.max_value is not None else high
    if not low <= value <= high:
        return None, _wrong(name, value, f"outside {low}..{high}")
    return (float(value) if isinstance(value, Decimal) else value), None


def fit_value(spec: AttributeSpec, value: Any, policy: FitPolicy | None = None) -> tuple[Any, FitIssue | None]:
    """``(json_value, issue)``. When the issue's action is ``dropped``, ``needs_option`` or ``quarantine``
    the value is meaningless (leave the attribute out / quarantine the record). Never raises."""
    policy = policy or FitPolicy()
    try:
        if value is None:
            return None, None
        kind = spec.type
        if kind in TEXT_TYPES:
            return _fit_text(spec, value, policy)
        if kind == "Picklist":
            return _fit_picklist(spec, value, policy)
        if kind == "Boolean":
            return _fit_boolean(spec, value)
        if kind == "DateTime":
            if not isinstance(value, str | date):
                return None, _wrong(spec.logical_name, value, "not a date/time")
            return _fit_datetime(spec, value, policy)
        if kind in INT_TYPES or kind in NUMBER_TYPES:
            return _fit_number(spec, value)
        return None, _wrong(spec.logical_name, value, f"columns of type {kind or 'unknown'} cannot be mapped")
    except Exception as exc:  # never raise on data
        return None, FitIssue(spec.logical_name, "error", f"could not fit value: {type(exc).__name__}", "quarantine")
