"""Dataverse table metadata for the Dynamics hook: column types, lengths, writability, option sets, keys, and
which bulk messages a table supports.

What the mapping step validates against before anything is sent. Option sets of Picklist, State, Status and
Boolean columns are read with one cast request per type that the table actually has; local picklist options
can be added (``InsertOptionValue``) and published (``PublishXml``). ``bulk_messages`` asks ``sdkmessagefilters``
with the query of Microsoft's "Use bulk operation messages" page (reference §12).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, NamedTuple

from d365.hooks.answers import Where, odata_entity
from d365.hooks.dynamics_core import DynamicsCore
from d365.hooks.errors import DynamicsAuthError, DynamicsError, DynamicsMalformedAnswer
from d365.hooks.odata import odata_literal, query_string

BULK_MESSAGES = ("CreateMultiple", "UpdateMultiple", "UpsertMultiple")
_OPTION_CASTS = {
    "Picklist": "PicklistAttributeMetadata",
    "State": "StateAttributeMetadata",
    "Status": "StatusAttributeMetadata",
}


@dataclass
class AttributeInfo:
    logical_name: str
    type: str
    max_length: int | None = None
    valid_for_create: bool = True
    valid_for_update: bool = True
    required_level: str = "None"
    options: dict[int, str] | None = None  # Picklist/State/Status/Boolean: value -> label
    format: str | None = None
    date_behavior: str | None = None  # DateTime: UserLocal, DateOnly, TimeZoneIndependent


@dataclass
class EntityMetadata:
    logical_name: str
    entity_set_name: str
    primary_id: str
    primary_name: str | None
    attributes: dict[str, AttributeInfo]


class AlternateKey(NamedTuple):
    schema_name: str
    key_attributes: list[str]
    status: str  # EntityKeyIndexStatus: Pending, InProgress, Active, Failed


def _label(label: Any, language_code: int = 1033) -> str | None:
    if not isinstance(label, dict):
        return None
    user = label.get("UserLocalizedLabel")
    if isinstance(user, dict) and user.get("Label") is not None:
        return str(user["Label"])
    localized = label.get("LocalizedLabels") or []
    for item in localized:
        if item.get("LanguageCode") == language_code:
            return str(item.get("Label"))
    return str(localized[0].get("Label")) if localized else None


class DynamicsMetadataReads(DynamicsCore):
    """Metadata reads and option-set changes of the Dynamics hook."""

    def _entity_ref(self, logical_name: str) -> str:
        return f"EntityDefinitions(LogicalName={odata_literal(logical_name)})"

    def _get_values(
        self, path: str, params: Mapping[str, Any], *, strong: bool = False, key: str = "LogicalName"
    ) -> list[dict[str, Any]]:
        """The rows of a metadata collection; each must carry ``key`` (what the caller indexes them by)."""
        headers = {"Consistency": "Strong"} if strong else None
        query = query_string(params)
        page = self._collection(f"{path}?{query}" if query else path, headers)
        rows: list[dict[str, Any]] = page["value"]
        if any(not isinstance(row.get(key), str) for row in rows):
            where = Where(DynamicsMalformedAnswer, "GET", self.api_path + path)
            raise where.fail("WrongShape", f"a metadata row without {key}")
        return rows

    def get_entity_metadata(self, logical_name: str = "lead", *, strong: bool = False) -> EntityMetadata:
        """What the mapping step validates against: types, lengths, writability and option values.

        ``strong`` sends ``Consistency: Strong`` (right after a metadata change, which caches ~30 s otherwise).
        """
        ref = self._entity_ref(logical_name)
        headers = {"Consistency": "Strong"} if strong else None
        select = {"$select": "LogicalName,EntitySetName,PrimaryIdAttribute,PrimaryNameAttribute"}
        entity = self._request_json(
            "GET",
            f"{ref}?{query_string(select)}",
            headers=headers,
            shape=lambda body, where: odata_entity(body, where, ("LogicalName", "EntitySetName", "PrimaryIdAttribute")),
        )[1]
        attributes: dict[str, AttributeInfo] = {}
        for row in self._get_values(
            f"{ref}/Attributes",
            {"$select": "LogicalName,AttributeType,IsValidForCreate,IsValidForUpdate,RequiredLevel"},
            strong=strong,
        ):
            required = row.get("RequiredLevel")
            attributes[row["LogicalName"]] = AttributeInfo(
                logical_name=row["LogicalName"],
                type=str(row.get("AttributeType") or ""),
                valid_for_create=bool(row.get("IsValidForCreate")),
                valid_for_update=bool(row.get("IsValidForUpdate")),
                required_level=str(required.get("Value")) if isinstance(required, dict) else str(required or "None"),
            )
        for cast, select in (
            ("StringAttributeMetadata", "LogicalName,MaxLength,Format"),
            ("MemoAttributeMetadata", "LogicalName,MaxLength"),
        ):
            for row in self._get_values(
                f"{ref}/Attributes/Microsoft.Dynamics.CRM.{cast}", {"$select": select}, strong=strong
            ):
                info = attributes.get(row["LogicalName"])
                if info is not None:
                    info.max_length = row.get("MaxLength")
                    info.format = row.get("Format") or info.format
        if any(a.type == "DateTime" for a in attributes.values()):
            # A DateOnly column takes "YYYY-MM-DD"; the mapping must know which columns those are.
            for row in self._get_values(
                f"{ref}/Attributes/Microsoft.Dynamics.CRM.DateTimeAttributeMetadata",
                {"$select": "LogicalName,Format,DateTimeBehavior"},
                strong=strong,
            ):
                info = attributes.get(row["LogicalName"])
                if info is not None:
                    behavior = row.get("DateTimeBehavior")
                    info.format = row.get("Format") or info.format
                    info.date_behavior = behavior.get("Value") if isinstance(behavior, dict) else behavior
        for kind, cast in _OPTION_CASTS.items():
            if not any(a.type == kind for a in attributes.values()):
                continue
            for row in self._get_values(
                f"{ref}/Attributes/Microsoft.Dynamics.CRM.{cast}",
                {"$select": "LogicalName", "$expand": "OptionSet($select=Options)"},
                strong=strong,
            ):
                info = attributes.get(row["LogicalName"])
                options = (row.get("OptionSet") or {}).get("Options") or []
                if info is not None:
                    info.options = {int(o["Value"]): _label(o.get("Label")) or str(o["Value"]) for o in options}
        if any(a.type == "Boolean" for a in attributes.values()):
            for row in self._get_values(
                f"{ref}/Attributes/Microsoft.Dynamics.CRM.BooleanAttributeMetadata",
                {"$select": "LogicalName", "$expand": "OptionSet($select=TrueOption,FalseOption)"},
                strong=strong,
            ):
                info = attributes.get(row["LogicalName"])
                option_set = row.get("OptionSet") or {}
                if info is not None:
                    info.options = {
                        int(o["Value"]): _label(o.get("Label")) or str(o["Value"])
                        for o in (option_set.get("FalseOption"), option_set.get("TrueOption"))
                        if isinstance(o, dict)
                    }
        metadata = EntityMetadata(
            logical_name=entity["LogicalName"],
            entity_set_name=entity["EntitySetName"],
            primary_id=entity["PrimaryIdAttribute"],
            primary_name=entity.get("PrimaryNameAttribute"),
            attributes=attributes,
        )
        self._primary_ids[metadata.entity_set_name] = metadata.primary_id
        return metadata

    def alternate_keys(self, logical_name: str = "lead") -> list[AlternateKey]:
        """Alternate keys and their index status: key-addressed upserts fail until the key is ``Active``."""
        rows = self._get_values(
            f"{self._entity_ref(logical_name)}/Keys",
            {"$select": "SchemaName,KeyAttributes,EntityKeyIndexStatus"},
            key="SchemaName",
        )
        return [
            AlternateKey(
                str(r.get("SchemaName")), list(r.get("KeyAttributes") or []), str(r.get("EntityKeyIndexStatus"))
            )
            for r in rows
        ]

    def bulk_messages(self, entity_logical_name: str = "lead") -> frozenset[str]:
        """Which of CreateMultiple, UpdateMultiple and UpsertMultiple the org supports for the table.

        One ``sdkmessagefilters`` query per message (a row means supported, an empty ``value`` not). UpsertMultiple
        counts as supported where the org lists it, and where it lists both CreateMultiple and UpdateMultiple
        (Microsoft: UpsertMultiple is available where both are). An application user without read access to
        ``sdkmessagefilters`` (403) gets an empty set and a warning: no bulk messages, ``$batch`` as before.
        """
        listed = set()
        for message in BULK_MESSAGES:
            where = (
                f"sdkmessageid/name eq {odata_literal(message)} and "
                f"primaryobjecttypecode eq {odata_literal(entity_logical_name)}"
            )
            try:
                rows = self._get_values(
                    "sdkmessagefilters",
                    {"$select": "sdkmessagefilterid", "$filter": where},
                    key="sdkmessagefilterid",
                )
            except DynamicsAuthError as exc:
                if exc.status != 403:
                    raise
                self.log.warning(
                    "Dynamics 365: cannot read sdkmessagefilters (%s): bulk messages are not used for %s",
                    exc.code or "HTTP 403",
                    entity_logical_name,
                )
                return frozenset()
            if rows:
                listed.add(message)
        if {"CreateMultiple", "UpdateMultiple"} <= listed:
            listed.add("UpsertMultiple")
        return frozenset(listed)

    def insert_option_value(
        self,
        entity: str,
        attribute: str,
        label: str,
        value: int | None = None,
        language_code: int = 1033,
        solution: str | None = None,
    ) -> int:
        """Add an option to a local picklist (``InsertOptionValue``); returns the option's value.

        Not idempotent (a POST action): callers check the metadata first. Follow with ``publish_xml``.
        """
        localized = {
            "@odata.type": "Microsoft.Dynamics.CRM.LocalizedLabel",
            "Label": label,
            "LanguageCode": language_code,
            "IsManaged": False,
        }
        body: dict[str, Any] = {
            "EntityLogicalName": entity,
            "AttributeLogicalName": attribute,
            "Value": value,
            "Label": {
                "@odata.type": "Microsoft.Dynamics.CRM.Label",
                "LocalizedLabels": [localized],
                "UserLocalizedLabel": localized,
            },
        }
        if solution:
            body["SolutionUniqueName"] = solution
        headers = {"MSCRM.SolutionUniqueName": solution} if solution else None
        response = self._request("POST", "InsertOptionValue", json_body=body, headers=headers, record=label)
        result = self._json(response) or {}
        if "NewOptionValue" not in result:
            raise DynamicsError("InsertOptionValue answered without NewOptionValue", status=response.status_code)
        return int(result["NewOptionValue"])

    def publish_xml(self, entity: str) -> None:
        """Publish an entity's customizations (forms and views see new options). Safe to repeat."""
        safe = entity.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")
        xml = f"<importexportxml><entities><entity>{safe}</entity></entities></importexportxml>"
        self._request("POST", "PublishXml", json_body={"ParameterXml": xml}, idempotent=True)
