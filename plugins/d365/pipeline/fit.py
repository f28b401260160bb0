"""Fit mapped values to the lead table's real columns: the schema, the preflight check, the per-value policy.

* ``AttributeSpec`` / ``LeadSchema``: the minimum this step needs from the org's lead metadata. The
  Dynamics hook's ``get_entity_metadata()`` output is adapted to it by the caller; tests and the sandbox use
  ``LeadSchema.from_metadata_json`` on ``sandbox/dataverse/lead-attributes.json`` + ``custom-columns.json``
  (it also reads Web API ``EntityDefinitions(...)/Attributes`` items).
* ``check_mapping(settings, schema)``: configuration errors against the live schema, one line each, naming
  the attribute (the preflight task fails fast with them). ``mapping_warnings`` lists softer problems.
* ``fit_value(spec, value, policy)``: one value → the JSON the Web API expects, or an issue. Never raises.

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

import difflib
import json
import math
import re
import unicodedata
from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass, field
from datetime import UTC, date, datetime, time
from decimal import Decimal
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal
from zoneinfo import ZoneInfo

from d365.pipeline.lead_stage import iso_utc, parse_instant

if TYPE_CHECKING:
    from d365.pipeline.settings import FieldMapping, Settings

REPO_ROOT = Path(__file__).resolve().parents[3]
SANDBOX_METADATA = (
    REPO_ROOT / "sandbox" / "dataverse" / "lead-attributes.json",
    REPO_ROOT / "sandbox" / "dataverse" / "custom-columns.json",
)

TEXT_TYPES = frozenset({"String", "Memo"})
INT_TYPES = frozenset({"Integer", "BigInt"})
NUMBER_TYPES = frozenset({"Double", "Decimal", "Money"})
INT_BOUNDS = {"Integer": (-(2**31), 2**31 - 1), "BigInt": (-(2**63), 2**63 - 1)}
MIN_DATETIME_YEAR = 1753  # Dataverse DateTime columns start at 1753-01-01

Action = Literal["sent", "truncated", "dropped", "quarantine", "needs_option"]


# --------------------------------------------------------------------------------------------------
# schema
# --------------------------------------------------------------------------------------------------


def normalize_label(text: str) -> str:
    """Case-, accent- and spacing-insensitive form of an option label ("fall SEMESTER" == "Fall semester")."""
    decomposed = unicodedata.normalize("NFKD", text)
    stripped = "".join(ch for ch in decomposed if not unicodedata.combining(ch))
    return " ".join(stripped.casefold().split())


@dataclass(frozen=True, eq=False)
class AttributeSpec:
    """What the mapping needs to know about one lead column."""

    logical_name: str
    type: str  # AttributeType: String, Memo, Picklist, Boolean, DateTime, Integer, Lookup, ...
    max_length: int | None = None
    valid_for_create: bool = True
    valid_for_update: bool = True
    options: dict[int, str] | None = None
    format: str | None = None  # String: Text, Email, Phone, Url, ...; DateTime: DateOnly, DateAndTime
    date_behavior: str | None = None  # UserLocal, DateOnly, TimeZoneIndependent
    required_level: str | None = None
    min_value: float | None = None
    max_value: float | None = None
    _label_index: dict[str, int] = field(default_factory=dict, init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        index: dict[str, int] = {}
        for value, label in (self.options or {}).items():
            if isinstance(label, str):
                index.setdefault(normalize_label(label), value)
        object.__setattr__(self, "_label_index", index)

    @property
    def is_date_only(self) -> bool:
        return self.format == "DateOnly" or self.date_behavior == "DateOnly"

    def option_for(self, label: str) -> int | None:
        return self._label_index.get(normalize_label(label))


def _label_text(label: Any) -> str | None:
    if isinstance(label, str):
        return label
    if isinstance(label, Mapping):
        user = label.get("UserLocalizedLabel")
        if isinstance(user, Mapping) and isinstance(user.get("Label"), str):
            return user["Label"]
        for item in label.get("LocalizedLabels") or []:
            if isinstance(item, Mapping) and isinstance(item.get("Label"), str):
                return item["Label"]
    return None


def _value_of(item: Any) -> Any:
    return item.get("Value") if isinstance(item, Mapping) else item


def spec_from_metadata(item: Mapping[str, Any]) -> AttributeSpec:
    """One attribute from the sandbox's flat JSON or a Web API AttributeMetadata item."""
    kind = item.get("Type") or item.get("AttributeType") or _value_of(item.get("AttributeTypeName")) or ""
    if isinstance(kind, str) and kind.endswith("Type") and kind not in ("EntityType",):
        kind = kind[: -len("Type")]
    raw_options = item.get("Options")
    option_set = item.get("OptionSet")
    if raw_options is None and isinstance(option_set, Mapping):
        raw_options = option_set.get("Options")
    options: dict[int, str] | None = None
    if isinstance(raw_options, list):
        options = {}
        for opt in raw_options:
            if isinstance(opt, Mapping) and isinstance(opt.get("Value"), int):
                options[opt["Value"]] = _label_text(opt.get("Label")) or str(opt["Value"])
    fmt = item.get("Format") or _value_of(item.get("FormatName"))
    return AttributeSpec(
        logical_name=str(item["LogicalName"]),
        type=str(kind),
        max_length=item.get("MaxLength") if isinstance(item.get("MaxLength"), int) else None,
        valid_for_create=bool(item.get("IsValidForCreate", True)),
        valid_for_update=bool(item.get("IsValidForUpdate", True)),
        options=options,
        format=fmt if isinstance(fmt, str) else None,
        date_behavior=_value_of(item.get("DateTimeBehavior")),
        required_level=_value_of(item.get("RequiredLevel")),
        min_value=item.get("MinValue") if isinstance(item.get("MinValue"), int | float) else None,
        max_value=item.get("MaxValue") if isinstance(item.get("MaxValue"), int | float) else None,
    )


class LeadSchema(dict[str, AttributeSpec]):
    """``{logical_name: AttributeSpec}`` for the lead table, plus its alternate keys."""

    def __init__(
        self,
        specs: Iterable[AttributeSpec] = (),
        *,
        entity: str = "lead",
        alternate_keys: Iterable[Iterable[str]] = (),
    ) -> None:
        super().__init__((s.logical_name, s) for s in specs)
        self.entity = entity
        self.alternate_keys: tuple[tuple[str, ...], ...] = tuple(tuple(k) for k in alternate_keys)

    @classmethod
    def from_metadata_json(cls, *sources: str | Path | Mapping[str, Any] | list[Any]) -> LeadSchema:
        """Merge attribute lists from files or parsed JSON: ``{"attributes": [...]}`` (sandbox files),
        ``{"value": [...]}`` (a Web API collection) or a bare list. Later sources override earlier ones.
        Without arguments: the sandbox's lead-attributes.json + custom-columns.json."""
        specs: dict[str, AttributeSpec] = {}
        keys: list[tuple[str, ...]] = []
        entity = "lead"
        for source in sources or SANDBOX_METADATA:
            data: Any = source
            if isinstance(source, str | Path):
                data = json.loads(Path(source).read_text(encoding="utf-8"))
            if isinstance(data, Mapping):
                ent = data.get("entity")
                if isinstance(ent, Mapping) and isinstance(ent.get("LogicalName"), str):
                    entity = ent["LogicalName"]
                for key in data.get("alternate_keys") or data.get("Keys") or []:
                    if isinstance(key, Mapping) and isinstance(key.get("KeyAttributes"), list):
                        keys.append(tuple(key["KeyAttributes"]))
                items = data.get("attributes") or data.get("Attributes") or data.get("value") or []
            else:
                items = data
            for item in items:
                if isinstance(item, Mapping) and item.get("LogicalName"):
                    spec = spec_from_metadata(item)
                    specs[spec.logical_name] = spec
        return cls(specs.values(), entity=entity, alternate_keys=keys)


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


@dataclass(frozen=True)
class FitPolicy:
    too_long: Literal["truncate", "quarantine"] = "truncate"
    picklist: bool = False
    on_missing_option: Literal["quarantine", "add", "ignore"] = "quarantine"
    add_allowlist: tuple[str, ...] = ()
    date_format: Literal["date", "date_local", "datetime_utc"] | None = None
    timezone: str = "UTC"

    def may_add(self, label: str) -> bool:
        allowed = {normalize_label(a) for a in self.add_allowlist}
        return "*" in allowed or normalize_label(label) in allowed


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


def _options_hint(spec: AttributeSpec) -> str:
    labels = list((spec.options or {}).values())
    shown = ", ".join(labels[:8]) + (", ..." if len(labels) > 8 else "")
    return f" (options: {shown})" if labels else " (the column has no options)"


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
