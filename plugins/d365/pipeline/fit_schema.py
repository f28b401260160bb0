"""The lead table's real columns, as far as fitting values needs them (:mod:`d365.pipeline.fit`).

``AttributeSpec`` / ``LeadSchema``: the minimum this step needs from the org's lead metadata. The
Dynamics hook's ``get_entity_metadata()`` output is adapted to it by the caller; tests and the sandbox use
``LeadSchema.from_metadata_json`` on ``sandbox/dataverse/lead-attributes.json`` + ``custom-columns.json``
(it also reads Web API ``EntityDefinitions(...)/Attributes`` items).
"""

from __future__ import annotations

import json
import unicodedata
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

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


def _options_hint(spec: AttributeSpec) -> str:
    labels = list((spec.options or {}).values())
    shown = ", ".join(labels[:8]) + (", ..." if len(labels) > 8 else "")
    return f" (options: {shown})" if labels else " (the column has no options)"
