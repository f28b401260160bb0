"""The lead table's metadata: attributes, option sets, alternate keys, and their Web API JSON shapes.

Sources: ``lead-attributes.json`` (copied from the reference, the real lead table) plus
``custom-columns.json``: the columns a university adds, published by the ``uni`` publisher with
option-value prefix 72700 (custom option values 727000000, 727000001, ...):

=========================  ==========================  ==========================================
logical name               type                        notes
=========================  ==========================  ==========================================
uni_applicantid            String 100                  alternate key ``uni_applicantid_key``
uni_dreamapplyinstance     String 100
uni_programme              Picklist                    MSc Computer Science, MSc Data Science,
                                                       MBA, BSc Economics, MA International
                                                       Relations (727000000..727000004)
uni_programmeids           String 400
uni_academicterm           String 100
uni_academicyear           String 20
uni_academictermtype       Picklist                    Fall semester, Spring semester, Summer
                                                       term, Full academic year
uni_termstartdate          DateTime (DateOnly)
uni_leadstage              Picklist                    Registered, Applying, Submitted, Offer,
                                                       Accepted, Enrolled, Withdrawn
uni_stagechangedon         DateTime (UserLocal)
uni_registeredon           DateTime (UserLocal)
uni_citizenship            String 100
uni_reference              String 100
uni_matriculation          String 100
uni_consentgiven           Boolean (1 Yes / 0 No)      default false
=========================  ==========================  ==========================================

Decisions on [unverified] points:

* Attributes that are "AttributeOf" a lookup (``owneridname``, ``*yominame``, ``owneridtype``...)
  are not Web API properties: they are neither returned nor writable (the Web API exposes them as
  annotations only).
* Items of the polymorphic ``Attributes`` collection carry ``@odata.type`` (e.g.
  ``#Microsoft.Dynamics.CRM.StringAttributeMetadata``).
* Alternate keys: a key created with ``POST .../Keys`` turns Active after
  ``max(0, alternate_key_activation_seconds)``; when activation finds duplicate values it turns
  ``Failed`` instead (as the real asynchronous index job does).
"""

from __future__ import annotations

import copy
import json
import uuid
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

from sandbox.dataverse import errors

HERE = Path(__file__).parent
LEAD_ATTRIBUTES_FILE = HERE / "lead-attributes.json"
CUSTOM_COLUMNS_FILE = HERE / "custom-columns.json"

NS = uuid.UUID("3b0f6a52-9a59-4c55-8a1e-0d3c7d3e9a10")
LANGUAGE = 1033
LEAD_TYPE = "Microsoft.Dynamics.CRM.lead"


def meta_id(*parts: str) -> str:
    return str(uuid.uuid5(NS, "/".join(parts)))


# AttributeType → (metadata class, AttributeTypeName, value kind for queries)
TYPE_INFO: dict[str, tuple[str, str, str]] = {
    "String": ("StringAttributeMetadata", "StringType", "string"),
    "Memo": ("MemoAttributeMetadata", "MemoType", "string"),
    "Picklist": ("PicklistAttributeMetadata", "PicklistType", "int"),
    "Boolean": ("BooleanAttributeMetadata", "BooleanType", "bool"),
    "State": ("StateAttributeMetadata", "StateType", "int"),
    "Status": ("StatusAttributeMetadata", "StatusType", "int"),
    "Integer": ("IntegerAttributeMetadata", "IntegerType", "int"),
    "BigInt": ("BigIntAttributeMetadata", "BigIntType", "int"),
    "Double": ("DoubleAttributeMetadata", "DoubleType", "decimal"),
    "Decimal": ("DecimalAttributeMetadata", "DecimalType", "decimal"),
    "Money": ("MoneyAttributeMetadata", "MoneyType", "decimal"),
    "DateTime": ("DateTimeAttributeMetadata", "DateTimeType", "datetime"),
    "Lookup": ("LookupAttributeMetadata", "LookupType", "guid"),
    "Customer": ("LookupAttributeMetadata", "CustomerType", "guid"),
    "Owner": ("LookupAttributeMetadata", "OwnerType", "guid"),
    "Uniqueidentifier": ("UniqueIdentifierAttributeMetadata", "UniqueidentifierType", "guid"),
    "EntityName": ("EntityNameAttributeMetadata", "EntityNameType", "string"),
    "Image": ("ImageAttributeMetadata", "ImageType", "string"),
}
LOOKUP_TYPES = {"Lookup", "Customer", "Owner"}
ENUM_TYPES = {"Picklist", "State", "Status", "Boolean"}
CAST_CLASSES: dict[str, set[str]] = {}
for _type, (_cls, _, _) in TYPE_INFO.items():
    CAST_CLASSES.setdefault(_cls, set()).add(_type)
CAST_CLASSES["MultiSelectPicklistAttributeMetadata"] = set()
CAST_CLASSES["FileAttributeMetadata"] = set()

COMMON_PROPERTIES = [
    "MetadataId",
    "HasChanged",
    "AttributeOf",
    "AttributeType",
    "AttributeTypeName",
    "ColumnNumber",
    "Description",
    "DisplayName",
    "EntityLogicalName",
    "IntroducedVersion",
    "IsCustomAttribute",
    "IsCustomizable",
    "IsLogical",
    "IsManaged",
    "IsPrimaryId",
    "IsPrimaryName",
    "IsSecured",
    "IsValidForAdvancedFind",
    "IsValidForCreate",
    "IsValidForRead",
    "IsValidForUpdate",
    "IsValidODataAttribute",
    "LogicalName",
    "RequiredLevel",
    "SchemaName",
    "SourceType",
]
TYPE_PROPERTIES: dict[str, list[str]] = {
    "StringAttributeMetadata": [
        "MaxLength",
        "DatabaseLength",
        "Format",
        "FormatName",
        "ImeMode",
        "YomiOf",
        "IsLocalizable",
    ],
    "MemoAttributeMetadata": ["MaxLength", "DatabaseLength", "Format", "FormatName", "ImeMode", "IsLocalizable"],
    "PicklistAttributeMetadata": [
        "DefaultFormValue",
        "FormulaDefinition",
        "ParentPicklistLogicalName",
        "ChildPicklistLogicalNames",
    ],
    "BooleanAttributeMetadata": ["DefaultValue", "FormulaDefinition"],
    "StateAttributeMetadata": ["DefaultFormValue"],
    "StatusAttributeMetadata": ["DefaultFormValue"],
    "IntegerAttributeMetadata": ["MinValue", "MaxValue", "Format"],
    "BigIntAttributeMetadata": ["MinValue", "MaxValue"],
    "DoubleAttributeMetadata": ["MinValue", "MaxValue", "Precision", "ImeMode"],
    "DecimalAttributeMetadata": ["MinValue", "MaxValue", "Precision", "ImeMode"],
    "MoneyAttributeMetadata": ["MinValue", "MaxValue", "Precision", "PrecisionSource", "IsBaseCurrency", "ImeMode"],
    "DateTimeAttributeMetadata": [
        "Format",
        "DateTimeBehavior",
        "CanChangeDateTimeBehavior",
        "ImeMode",
        "MinSupportedValue",
        "MaxSupportedValue",
    ],
    "LookupAttributeMetadata": ["Targets", "Format"],
    "UniqueIdentifierAttributeMetadata": [],
    "EntityNameAttributeMetadata": ["IsEntityReferenceStored"],
    "ImageAttributeMetadata": ["IsPrimaryImage", "MaxHeight", "MaxWidth", "MaxSizeInKB", "CanStoreFullImage"],
    "MultiSelectPicklistAttributeMetadata": [],
    "FileAttributeMetadata": [],
}
ENUM_NAV = {"OptionSet", "GlobalOptionSet"}


def label(text: str | None, managed: bool, *id_parts: str) -> dict[str, Any]:
    if not text:
        return {"LocalizedLabels": [], "UserLocalizedLabel": None}
    localized = {
        "Label": text,
        "LanguageCode": LANGUAGE,
        "IsManaged": managed,
        "MetadataId": meta_id("label", *id_parts),
        "HasChanged": None,
    }
    return {"LocalizedLabels": [localized], "UserLocalizedLabel": dict(localized)}


@dataclass
class AttributeDef:
    logical: str
    schema: str
    type: str
    raw: dict[str, Any]
    is_custom: bool = False
    options: list[dict[str, Any]] = field(default_factory=list)
    # Set when the attribute is only an annotation in the Web API (owneridname, owneridtype, ...).
    attribute_of: str | None = None
    metadata_id: str = ""

    @property
    def max_length(self) -> int | None:
        return self.raw.get("MaxLength")

    @property
    def is_property(self) -> bool:
        return self.attribute_of is None and self.type != "Image"

    @property
    def is_lookup(self) -> bool:
        return self.type in LOOKUP_TYPES

    @property
    def output_name(self) -> str:
        return f"_{self.logical}_value" if self.is_lookup else self.logical

    @property
    def kind(self) -> str:
        if self.type == "DateTime" and (
            self.raw.get("Format") == "DateOnly" or self.raw.get("DateTimeBehavior") == "DateOnly"
        ):
            return "date"
        return TYPE_INFO[self.type][2]

    @property
    def valid_for_create(self) -> bool:
        return bool(self.raw.get("IsValidForCreate"))

    @property
    def valid_for_update(self) -> bool:
        return bool(self.raw.get("IsValidForUpdate"))

    @property
    def required_level(self) -> str:
        return self.raw.get("RequiredLevel") or "None"

    @property
    def default(self) -> Any:
        value = self.raw.get("DefaultValue")
        if self.type == "Boolean":
            return bool(value) if value is not None else False
        return None

    def option_values(self) -> list[int]:
        return [o["Value"] for o in self.options]

    def option_label(self, value: Any) -> str | None:
        if self.type == "Boolean":
            value = 1 if value else 0
        for option in self.options:
            if option["Value"] == value:
                return option["Label"]
        return None


@dataclass
class KeyDef:
    schema_name: str
    key_attributes: list[str]
    display_name: str
    metadata_id: str
    activate_at: datetime | None  # None: Active from the start
    status: str = "Pending"  # Pending, Active, Failed

    @property
    def logical_name(self) -> str:
        return self.schema_name.lower()


class LeadMetadata:
    """Mutable metadata of the lead table (option values can be inserted, keys created)."""

    def __init__(self, entity_set: str = "leads") -> None:
        base = json.loads(LEAD_ATTRIBUTES_FILE.read_text())
        custom = json.loads(CUSTOM_COLUMNS_FILE.read_text())
        # the lead table's Web API name: ``leads`` in a stock org; another name when set (``--lead-entity-set``)
        self.entity = {**base["entity"], "EntitySetName": entity_set}
        self.publisher = custom["publisher"]
        self.initial_keys = custom["alternate_keys"]
        self.entity_metadata_id = meta_id("entity", "lead")
        self._base_attributes = base["attributes"]
        self._custom_attributes = custom["attributes"]
        self.attributes: dict[str, AttributeDef] = {}
        self.keys: list[KeyDef] = []
        self.insert_option_value_calls = 0
        self.publish_xml_calls = 0
        self.publish_all_xml_calls = 0
        self.reset_attributes()

    # -- set up ------------------------------------------------------------------------
    def reset_attributes(self) -> None:
        attrs: dict[str, AttributeDef] = {}
        for raw, custom in [(a, False) for a in self._base_attributes] + [(a, True) for a in self._custom_attributes]:
            raw = copy.deepcopy(raw)
            options = []
            for option in raw.get("Options") or []:
                entry = dict(option)
                entry["IsManaged"] = not custom
                options.append(entry)
            attrs[raw["LogicalName"]] = AttributeDef(
                logical=raw["LogicalName"],
                schema=raw["SchemaName"],
                type=raw["Type"],
                raw=raw,
                is_custom=custom,
                options=options,
                metadata_id=meta_id("attribute", "lead", raw["LogicalName"]),
            )
        lookups = {name for name, a in attrs.items() if a.is_lookup}
        for name, attr in attrs.items():
            if attr.type == "EntityName" and name.endswith("type") and name[:-4] in lookups:
                attr.attribute_of = name[:-4]
            elif (
                attr.type == "String"
                and not attr.valid_for_create
                and not attr.valid_for_update
                and name not in ("fullname", "yomifullname")
                and name.endswith("name")
            ):
                base = name[: -len("yominame")] if name.endswith("yominame") else name[: -len("name")]
                attr.attribute_of = base if base in lookups else (base + "id" if base + "id" in lookups else base)
        self.attributes = attrs
        self.insert_option_value_calls = 0
        self.publish_xml_calls = 0
        self.publish_all_xml_calls = 0

    def reset_keys(self, now: datetime, activation_seconds: float) -> None:
        self.keys = []
        if activation_seconds < 0:
            return
        for spec in self.initial_keys:
            self.add_key(
                spec["SchemaName"],
                spec["KeyAttributes"],
                spec.get("DisplayName", spec["SchemaName"]),
                now,
                activation_seconds,
            )

    def add_key(self, schema_name: str, attributes: list[str], display: str, now: datetime, delay: float) -> KeyDef:
        key = KeyDef(
            schema_name=schema_name,
            key_attributes=list(attributes),
            display_name=display,
            metadata_id=meta_id("key", "lead", schema_name.lower()),
            activate_at=None if delay <= 0 else now + timedelta(seconds=delay),
            status="Active" if delay <= 0 else "Pending",
        )
        self.keys.append(key)
        return key

    # -- lookups -----------------------------------------------------------------------
    def attribute(self, name: str) -> AttributeDef | None:
        return self.attributes.get(name)

    def property_attribute(self, name: str) -> AttributeDef | None:
        """The attribute behind a Web API property name (``_ownerid_value`` → ownerid)."""
        if name.startswith("_") and name.endswith("_value"):
            attr = self.attributes.get(name[1:-6])
            return attr if attr is not None and attr.is_lookup else None
        attr = self.attributes.get(name)
        if attr is None or not attr.is_property:
            return None
        return attr

    def next_option_value(self, attr: AttributeDef) -> int:
        prefix = int(self.publisher["CustomizationOptionValuePrefix"]) * 10000
        used = [v for v in attr.option_values() if prefix <= v < prefix + 10000]
        return max(used) + 1 if used else prefix

    # -- JSON shapes -------------------------------------------------------------------
    def entity_json(self) -> dict[str, Any]:
        e = self.entity
        return {
            "MetadataId": self.entity_metadata_id,
            "LogicalName": e["LogicalName"],
            "SchemaName": "Lead",
            "EntitySetName": e["EntitySetName"],
            "LogicalCollectionName": "leads",
            "CollectionSchemaName": "Leads",
            "PrimaryIdAttribute": e["PrimaryIdAttribute"],
            "PrimaryNameAttribute": e["PrimaryNameAttribute"],
            "PrimaryImageAttribute": "entityimage",
            "ObjectTypeCode": 4,
            "OwnershipType": "UserOwned",
            "IsCustomEntity": False,
            "IsActivity": False,
            "IsPrivate": False,
            "IsIntersect": False,
            "IsLogicalEntity": False,
            "TableType": "Standard",
            "HasActivities": True,
            "HasNotes": True,
            "IsManaged": True,
            "IsValidForAdvancedFind": True,
            "IsAuditEnabled": {
                "Value": True,
                "CanBeChanged": True,
                "ManagedPropertyLogicalName": "canmodifyauditsettings",
            },
            "ChangeTrackingEnabled": True,
            "HasChanged": None,
            "IntroducedVersion": "5.0.0.0",
            "DisplayName": label("Lead", True, "entity", "lead", "display"),
            "DisplayCollectionName": label("Leads", True, "entity", "lead", "collection"),
            "Description": label(
                "Prospect or potential sales opportunity. Leads are converted into accounts, contacts, or "
                "opportunities "
                "when they are qualified. Otherwise, they are deleted or archived.",
                True,
                "entity",
                "lead",
                "description",
            ),
        }

    def key_json(self, key: KeyDef) -> dict[str, Any]:
        return {
            "MetadataId": key.metadata_id,
            "HasChanged": None,
            "SchemaName": key.schema_name,
            "LogicalName": key.logical_name,
            "KeyAttributes": list(key.key_attributes),
            "EntityLogicalName": "lead",
            "EntityKeyIndexStatus": key.status,
            "IsManaged": False,
            "IntroducedVersion": "1.0",
            "IsSynchronous": False,
            "AsyncJob": None,
            "DisplayName": label(key.display_name, False, "key", key.logical_name),
            "IsCustomizable": {"Value": True, "CanBeChanged": True, "ManagedPropertyLogicalName": "iscustomizable"},
        }

    def cast_class(self, attr: AttributeDef) -> str:
        return TYPE_INFO[attr.type][0]

    def attribute_json(self, attr: AttributeDef, cast: str | None) -> dict[str, Any]:
        """Common properties, plus the type-specific ones (always, the caller trims with $select)."""
        raw = attr.raw
        cls, type_name, _ = TYPE_INFO[attr.type]
        managed = not attr.is_custom
        required = attr.required_level
        index = list(self.attributes).index(attr.logical) + 1
        body: dict[str, Any] = {
            "@odata.type": f"#Microsoft.Dynamics.CRM.{cls}",
            "MetadataId": attr.metadata_id,
            "HasChanged": None,
            "AttributeOf": attr.attribute_of,
            "AttributeType": "Virtual" if attr.type == "Image" else attr.type,
            "AttributeTypeName": {"Value": type_name},
            "ColumnNumber": index,
            "Description": label(raw.get("Description"), managed, "attr", attr.logical, "description"),
            "DisplayName": label(raw.get("DisplayName"), managed, "attr", attr.logical, "display"),
            "EntityLogicalName": "lead",
            "IntroducedVersion": "1.0" if attr.is_custom else "5.0.0.0",
            "IsCustomAttribute": attr.is_custom,
            "IsCustomizable": {"Value": True, "CanBeChanged": False, "ManagedPropertyLogicalName": "iscustomizable"},
            "IsLogical": attr.attribute_of is not None,
            "IsManaged": managed,
            "IsPrimaryId": attr.logical == self.entity["PrimaryIdAttribute"],
            "IsPrimaryName": attr.logical == self.entity["PrimaryNameAttribute"],
            "IsSecured": False,
            "IsValidForAdvancedFind": {
                "Value": True,
                "CanBeChanged": False,
                "ManagedPropertyLogicalName": "canmodifysearchsettings",
            },
            "IsValidForCreate": attr.valid_for_create,
            "IsValidForRead": bool(raw.get("IsValidForRead", True)),
            "IsValidForUpdate": attr.valid_for_update,
            "IsValidODataAttribute": attr.is_property or attr.type == "Image",
            "LogicalName": attr.logical,
            "RequiredLevel": {
                "Value": required,
                "CanBeChanged": required != "SystemRequired",
                "ManagedPropertyLogicalName": "canmodifyrequirementlevelsettings",
            },
            "SchemaName": attr.schema,
            "SourceType": 0,
        }
        t = attr.type
        if t in ("String", "Memo"):
            fmt = raw.get("Format") or ("TextArea" if t == "Memo" else "Text")
            body.update(
                {
                    "MaxLength": raw.get("MaxLength"),
                    "DatabaseLength": (raw.get("MaxLength") or 0) * 2,
                    "Format": fmt,
                    "FormatName": {"Value": fmt},
                    "ImeMode": "Auto",
                    "IsLocalizable": False,
                }
            )
            if t == "String":
                body["YomiOf"] = None
        elif t in ("Picklist", "State", "Status"):
            default = raw.get("DefaultValue")
            body["DefaultFormValue"] = (
                default if default is not None else (1 if t == "Status" else (0 if t == "State" else -1))
            )
            if t == "Picklist":
                body.update(
                    {"FormulaDefinition": None, "ParentPicklistLogicalName": None, "ChildPicklistLogicalNames": []}
                )
        elif t == "Boolean":
            body.update({"DefaultValue": attr.default, "FormulaDefinition": None})
        elif t in ("Integer", "BigInt", "Double", "Decimal", "Money"):
            body.update({"MinValue": raw.get("MinValue"), "MaxValue": raw.get("MaxValue")})
            if t == "Integer":
                body["Format"] = raw.get("Format") or "None"
            if t in ("Double", "Decimal", "Money"):
                body["Precision"] = raw.get("Precision") if raw.get("Precision") is not None else 2
                body["ImeMode"] = "Auto"
            if t == "Money":
                body.update({"PrecisionSource": 2, "IsBaseCurrency": attr.logical.endswith("_base")})
        elif t == "DateTime":
            behavior = raw.get("DateTimeBehavior") or "UserLocal"
            fmt = raw.get("Format") or "DateAndTime"
            body.update(
                {
                    "Format": fmt,
                    "DateTimeBehavior": {"Value": behavior},
                    "CanChangeDateTimeBehavior": {
                        "Value": attr.is_custom,
                        "CanBeChanged": False,
                        "ManagedPropertyLogicalName": "canchangedatetimebehavior",
                    },
                    "ImeMode": "Auto",
                    "MinSupportedValue": "1753-01-01T00:00:00Z",
                    "MaxSupportedValue": "9999-12-30T23:59:59Z",
                }
            )
        elif t in LOOKUP_TYPES:
            body.update({"Targets": list(raw.get("Targets") or []), "Format": None})
        elif t == "EntityName":
            body["IsEntityReferenceStored"] = True
        elif t == "Image":
            body.update(
                {
                    "IsPrimaryImage": True,
                    "MaxHeight": 144,
                    "MaxWidth": 144,
                    "MaxSizeInKB": 10240,
                    "CanStoreFullImage": True,
                }
            )
        return body

    def option_json(self, attr: AttributeDef, option: dict[str, Any]) -> dict[str, Any]:
        managed = bool(option.get("IsManaged", True))
        entry: dict[str, Any] = {
            "Value": option["Value"],
            "Label": label(option["Label"], managed, "option", attr.logical, str(option["Value"])),
            "Description": {"LocalizedLabels": [], "UserLocalizedLabel": None},
            "Color": None,
            "IsManaged": managed,
            "ExternalValue": None,
            "ParentValues": [],
            "Tag": None,
            "IsHidden": False,
            "MetadataId": None,
            "HasChanged": None,
        }
        if attr.type == "Status":
            entry["State"] = option.get("State")
            entry["TransitionData"] = None
        if attr.type == "State":
            entry["DefaultStatus"] = option.get("DefaultStatus")
            entry["InvariantName"] = option.get("InvariantName")
        return entry

    def option_set_json(self, attr: AttributeDef) -> dict[str, Any]:
        managed = not attr.is_custom
        kind = {"Picklist": "Picklist", "State": "State", "Status": "Status", "Boolean": "Boolean"}[attr.type]
        body: dict[str, Any] = {}
        if attr.type == "Boolean":
            true_option = next((o for o in attr.options if o["Value"] == 1), {"Value": 1, "Label": "Yes"})
            false_option = next((o for o in attr.options if o["Value"] == 0), {"Value": 0, "Label": "No"})
            body["TrueOption"] = self.option_json(attr, true_option)
            body["FalseOption"] = self.option_json(attr, false_option)
        else:
            body["Options"] = [self.option_json(attr, o) for o in attr.options]
        body.update(
            {
                "MetadataId": meta_id("optionset", "lead", attr.logical),
                "HasChanged": None,
                "IsCustomOptionSet": attr.is_custom,
                "IsGlobal": False,
                "IsManaged": managed,
                "Name": f"lead_{attr.logical}",
                "ExternalTypeName": None,
                "OptionSetType": kind,
                "IntroducedVersion": "1.0" if attr.is_custom else "5.0.0.0",
                "ParentOptionSetName": None,
                "Description": label(attr.raw.get("Description"), managed, "optionset", attr.logical, "description"),
                "DisplayName": label(attr.raw.get("DisplayName"), managed, "optionset", attr.logical, "display"),
                "IsCustomizable": {
                    "Value": True,
                    "CanBeChanged": False,
                    "ManagedPropertyLogicalName": "iscustomizable",
                },
            }
        )
        return body

    # -- InsertOptionValue -------------------------------------------------------------
    def insert_option_value(self, params: dict[str, Any]) -> int:
        if params.get("OptionSetName"):
            raise errors.ODataError(
                404, errors.OBJECT_DOES_NOT_EXIST, f"Could not find optionset with name {params['OptionSetName']}"
            )
        entity = params.get("EntityLogicalName")
        attr_name = params.get("AttributeLogicalName")
        if entity != "lead":
            raise errors.ODataError(404, "0x80040217", f"Could not find entity with name '{entity}'")
        attr = self.attributes.get(str(attr_name))
        if attr is None:
            raise errors.ODataError(
                404, "0x80040217", f"Could not find attribute with name '{attr_name}' on entity 'lead'"
            )
        if attr.type != "Picklist":
            raise errors.bad_request(
                f"InsertOptionValue is not valid for attribute '{attr.logical}' of type {attr.type}: "
                "use InsertStatusValue for status attributes; boolean and state option sets cannot be extended.",
                code=errors.INVALID_ARGUMENT,
            )
        text = _label_text(params.get("Label"))
        if not text:
            raise errors.bad_request(
                "The Label parameter is required to insert an option value.", code=errors.INVALID_ARGUMENT
            )
        value = params.get("Value")
        if value is None:
            value = self.next_option_value(attr)
        if not isinstance(value, int) or isinstance(value, bool):
            raise errors.bad_request(f"Invalid option value '{value}'.", code=errors.INVALID_ARGUMENT)
        if value in attr.option_values():
            raise errors.bad_request(
                f"An option with the value {value} already exists in the option set lead_{attr.logical}.",
                code=errors.INVALID_ARGUMENT,
            )
        if any(o["Label"].casefold() == text.casefold() for o in attr.options):
            raise errors.bad_request(
                f"An option with the label '{text}' already exists in the option set lead_{attr.logical}.",
                code=errors.INVALID_ARGUMENT,
            )
        attr.options.append({"Value": value, "Label": text, "State": None, "IsManaged": False})
        self.insert_option_value_calls += 1
        return value


def _label_text(value: Any) -> str | None:
    if isinstance(value, str):
        return value
    if not isinstance(value, dict):
        return None
    user = value.get("UserLocalizedLabel")
    if isinstance(user, dict) and user.get("Label"):
        return str(user["Label"])
    for item in value.get("LocalizedLabels") or []:
        if isinstance(item, dict) and item.get("Label"):
            return str(item["Label"])
    return None
