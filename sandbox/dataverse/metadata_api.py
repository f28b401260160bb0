"""``EntityDefinitions`` routes: the lead entity, its attributes (with cast segments and OptionSet
expansion) and its alternate keys.

Only the ``lead`` entity is defined (other logical names → 404). Metadata queries are not paged.
``$expand=OptionSet`` without a cast segment → 400 "Could not find a property named 'OptionSet' on
type 'Microsoft.Dynamics.CRM.AttributeMetadata'."; a cast to ``EnumAttributeMetadata`` → 400.
``GlobalOptionSet`` always expands to null (every sandbox option set is local).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Any

from sandbox.dataverse import errors, odata
from sandbox.dataverse.metadata import (
    CAST_CLASSES,
    COMMON_PROPERTIES,
    ENUM_NAV,
    ENUM_TYPES,
    TYPE_PROPERTIES,
    AttributeDef,
)

if TYPE_CHECKING:
    from sandbox.dataverse.service import DataverseService, Request, SubResponse

PREFIX = "Microsoft.Dynamics.CRM."
KEY_TYPES = {"Decimal", "Integer", "String", "DateTime", "Lookup", "Picklist"}
ENTITY_PROPERTIES = [
    "MetadataId",
    "LogicalName",
    "SchemaName",
    "EntitySetName",
    "LogicalCollectionName",
    "CollectionSchemaName",
    "PrimaryIdAttribute",
    "PrimaryNameAttribute",
    "PrimaryImageAttribute",
    "ObjectTypeCode",
    "OwnershipType",
    "IsCustomEntity",
    "IsActivity",
    "IsPrivate",
    "IsIntersect",
    "IsLogicalEntity",
    "TableType",
    "HasActivities",
    "HasNotes",
    "IsManaged",
    "IsValidForAdvancedFind",
    "IsAuditEnabled",
    "ChangeTrackingEnabled",
    "HasChanged",
    "IntroducedVersion",
    "DisplayName",
    "DisplayCollectionName",
    "Description",
]
KEY_PROPERTIES = [
    "MetadataId",
    "HasChanged",
    "SchemaName",
    "LogicalName",
    "KeyAttributes",
    "EntityLogicalName",
    "EntityKeyIndexStatus",
    "IsManaged",
    "IntroducedVersion",
    "IsSynchronous",
    "AsyncJob",
    "DisplayName",
    "IsCustomizable",
]


class DictTable(odata.DictRows):
    """Query-engine adapter over a small list of metadata dicts (property paths like ``RequiredLevel/Value``)."""

    primary_id = "MetadataId"

    def __init__(self, type_name: str, rows: list[dict[str, Any]], allowed: Iterable[str]) -> None:
        self.type_name = type_name
        self.entity_set = type_name
        self.allowed = set(allowed)
        super().__init__(rows)

    def resolve(self, name: str) -> tuple[Callable[[Any], Any], str]:
        path = name.split("/")
        if path[0] not in self.allowed:
            raise errors.unknown_property(path[0], self.type_name)

        def getter(row: dict[str, Any]) -> Any:
            value: Any = row
            for part in path:
                if not isinstance(value, dict):
                    return None
                value = value.get(part)
            return value

        return getter, "any"


def _select(row: dict[str, Any], names: list[str] | None, keep: Iterable[str] = ("MetadataId",)) -> dict[str, Any]:
    if names is None:
        return dict(row)
    wanted = set(names) | set(keep)
    return {k: v for k, v in row.items() if k.startswith("@") or k in wanted}


def _check_select(names: list[str] | None, allowed: Iterable[str], type_name: str) -> None:
    allowed_set = set(allowed)
    for name in names or []:
        if name not in allowed_set:
            raise errors.unknown_property(name, type_name)


def _filter(
    rows: list[dict[str, Any]], text: str | None, table_type: str, allowed: Iterable[str]
) -> list[dict[str, Any]]:
    if not text:
        return rows
    table = DictTable(table_type, rows, allowed)
    predicate = odata.compile_filter(odata.parse_filter(text), table)
    return [row for row in rows if predicate(row)]


class MetadataApi:
    def __init__(self, service: DataverseService) -> None:
        self.service = service

    @property
    def meta(self) -> Any:
        return self.service.metadata

    def context(self, suffix: str) -> str:
        return f"{self.service.web_api_url}/$metadata#{suffix}"

    def handle(self, req: Request, segments: list[odata.Segment]) -> SubResponse:
        first = segments[0]
        for name in req.query:
            if name.startswith("$") and name not in ("$select", "$filter", "$expand"):
                raise errors.bad_request(f"The query parameter {name} is not supported")
        odata.check_custom_options(req.query, "EntityDefinitions")
        if first.args is None:
            if len(segments) > 1:
                raise errors.resource_not_found(segments[1].text)
            if req.method != "GET":
                raise errors.method_not_allowed(req.method)
            # $filter sees every property; $select trims the rows that matched.
            entity = self._entity(req, None, select=False)
            rows = _filter(
                [entity], req.query.get("$filter"), "Microsoft.Dynamics.CRM.EntityMetadata", ENTITY_PROPERTIES
            )
            names = odata.parse_list(req.query["$select"]) if req.query.get("$select") else None
            keep = ("MetadataId", "Attributes", "Keys")
            rows = [_select(row, names, keep) for row in rows]
            sel = req.query.get("$select")
            ctx = "EntityDefinitions" + (f"({sel})" if sel else "")
            return self.service.json_response(200, {"@odata.context": self.context(ctx), "value": rows})
        self._check_entity(first.args)
        entity_ref = f"EntityDefinitions({first.args})"
        if len(segments) == 1:
            if req.method != "GET":
                raise errors.method_not_allowed(req.method)
            sel = req.query.get("$select")
            body = self._entity(req, None)
            ctx = "EntityDefinitions" + (f"({sel})" if sel else "") + "/$entity"
            return self.service.json_response(200, {"@odata.context": self.context(ctx), **body})
        nav = segments[1]
        if nav.name == "Attributes":
            return self.attributes(req, entity_ref, nav, segments[2:])
        if nav.name == "Keys":
            return self.keys(req, entity_ref, nav, segments[2:])
        raise errors.resource_not_found(nav.text)

    def _check_entity(self, args: str) -> None:
        kind, value = odata.parse_key(args)
        if kind == "id" and value == self.meta.entity_metadata_id:
            return
        if kind == "named" and set(value) == {"LogicalName"} and value["LogicalName"] == "lead":
            return
        name = value.get("LogicalName") if isinstance(value, dict) else value
        raise errors.ODataError(404, errors.OBJECT_DOES_NOT_EXIST, f"Could not find entity with name '{name}'.")

    def _entity(self, req: Request, _unused: Any, select: bool = True) -> dict[str, Any]:
        names = odata.parse_list(req.query["$select"]) if req.query.get("$select") else None
        _check_select(names, ENTITY_PROPERTIES, "Microsoft.Dynamics.CRM.EntityMetadata")
        body = _select(self.meta.entity_json(), names if select else None)
        expand = odata.parse_expand(req.query.get("$expand", ""))
        for name, opts in expand.items():
            if name == "Attributes":
                attrs = [self._attribute_json(a, None) for a in self.meta.attributes.values()]
                attrs = _filter(
                    attrs, opts.get("$filter"), "Microsoft.Dynamics.CRM.AttributeMetadata", COMMON_PROPERTIES
                )
                sel = odata.parse_list(opts["$select"]) if opts.get("$select") else None
                _check_select(sel, COMMON_PROPERTIES, "Microsoft.Dynamics.CRM.AttributeMetadata")
                body["Attributes"] = [_select(a, sel) for a in attrs]
            elif name == "Keys":
                sel = odata.parse_list(opts["$select"]) if opts.get("$select") else None
                _check_select(sel, KEY_PROPERTIES, "Microsoft.Dynamics.CRM.EntityKeyMetadata")
                body["Keys"] = [_select(self.meta.key_json(k), sel) for k in self.meta.keys]
            else:
                raise errors.unknown_property(name, "Microsoft.Dynamics.CRM.EntityMetadata")
        return body

    # -- attributes --------------------------------------------------------------------
    def _attribute_json(self, attr: AttributeDef, cast: str | None) -> dict[str, Any]:
        return self.meta.attribute_json(attr, cast)

    def attributes(self, req: Request, entity_ref: str, nav: odata.Segment, rest: list[odata.Segment]) -> SubResponse:
        if req.method != "GET":
            raise errors.method_not_allowed(req.method)
        cast = None
        if rest:
            cast_name = rest[0].name
            if not cast_name.startswith(PREFIX) or len(rest) > 1:
                raise errors.resource_not_found(rest[0].text)
            cast = cast_name[len(PREFIX) :]
            if cast == "EnumAttributeMetadata" or cast not in CAST_CLASSES:
                raise errors.bad_request(
                    f"The type '{cast_name}' is not a valid cast for the Attributes navigation property."
                )
        type_name = PREFIX + (cast or "AttributeMetadata")
        allowed = list(COMMON_PROPERTIES) + (TYPE_PROPERTIES.get(cast, []) if cast else [])
        sel_text = req.query.get("$select")
        names = odata.parse_list(sel_text) if sel_text else None
        _check_select([n for n in names or [] if n not in ENUM_NAV or not cast], allowed, type_name)
        expand = odata.parse_expand(req.query.get("$expand", ""))
        enum_cast = cast is not None and (
            CAST_CLASSES[cast] & ENUM_TYPES or cast == "MultiSelectPicklistAttributeMetadata"
        )
        for name in expand:
            if name not in ENUM_NAV or not enum_cast:
                raise errors.unknown_property(name, type_name)
        if nav.args is not None:
            attr = self._find_attribute(nav.args)
            if cast is not None and attr.type not in CAST_CLASSES[cast]:
                raise errors.ODataError(
                    404, errors.OBJECT_DOES_NOT_EXIST, f"Attribute '{attr.logical}' is not of type {cast}."
                )
            row = self._attribute_row(attr, cast, names, expand)
            sel_ctx = _context_select(names, expand)
            ctx = f"{entity_ref}/Attributes" + (f"/{PREFIX}{cast}" if cast else "") + sel_ctx + "/$entity"
            return self.service.json_response(200, {"@odata.context": self.context(ctx), **row})
        attrs = [a for a in self.meta.attributes.values() if cast is None or a.type in CAST_CLASSES[cast]]
        filter_text = req.query.get("$filter")
        full = [self._attribute_json(a, cast) for a in attrs]
        if filter_text:
            matched = {r["MetadataId"] for r in _filter(full, filter_text, type_name, allowed)}
            attrs = [a for a in attrs if a.metadata_id in matched]
        rows = [self._attribute_row(a, cast, names, expand) for a in attrs]
        ctx = f"{entity_ref}/Attributes" + (f"/{PREFIX}{cast}" if cast else "") + _context_select(names, expand)
        return self.service.json_response(200, {"@odata.context": self.context(ctx), "value": rows})

    def _find_attribute(self, args: str) -> AttributeDef:
        kind, value = odata.parse_key(args)
        if kind == "id":
            for attr in self.meta.attributes.values():
                if attr.metadata_id == value:
                    return attr
            raise errors.ODataError(404, errors.OBJECT_DOES_NOT_EXIST, f"Could not find attribute with id '{value}'.")
        if kind == "named" and set(value) == {"LogicalName"}:
            attr = self.meta.attributes.get(value["LogicalName"])
            if attr is not None:
                return attr
            raise errors.ODataError(
                404,
                errors.OBJECT_DOES_NOT_EXIST,
                f"Could not find attribute with name '{value['LogicalName']}' on entity 'lead'.",
            )
        raise errors.bad_request("Attributes can be addressed by MetadataId or LogicalName only.")

    def _attribute_row(
        self, attr: AttributeDef, cast: str | None, names: list[str] | None, expand: dict[str, dict[str, str]]
    ) -> dict[str, Any]:
        full = self._attribute_json(attr, cast)
        if cast is not None:
            full.pop("@odata.type", None)
        row = _select(full, [n for n in names if n not in ENUM_NAV] if names else None)
        for name, opts in expand.items():
            if name == "GlobalOptionSet":
                row["GlobalOptionSet"] = None
                continue
            option_set = self.meta.option_set_json(attr) if attr.type in ENUM_TYPES else None
            if option_set is not None and opts.get("$select"):
                option_set = _select(option_set, odata.parse_list(opts["$select"]))
            row["OptionSet"] = option_set
        return row

    # -- keys --------------------------------------------------------------------------
    def keys(self, req: Request, entity_ref: str, nav: odata.Segment, rest: list[odata.Segment]) -> SubResponse:
        if rest:
            raise errors.resource_not_found(rest[0].text)
        sel_text = req.query.get("$select")
        names = odata.parse_list(sel_text) if sel_text else None
        _check_select(names, KEY_PROPERTIES, "Microsoft.Dynamics.CRM.EntityKeyMetadata")
        if nav.args is None:
            if req.method == "GET":
                rows = [_select(self.meta.key_json(k), names) for k in self.meta.keys]
                rows = _filter(
                    rows, req.query.get("$filter"), "Microsoft.Dynamics.CRM.EntityKeyMetadata", KEY_PROPERTIES
                )
                ctx = f"{entity_ref}/Keys" + (f"({sel_text})" if sel_text else "")
                return self.service.json_response(200, {"@odata.context": self.context(ctx), "value": rows})
            if req.method == "POST":
                key = self.service.create_key(req.json_body())
                entity_id = self.meta.entity_metadata_id
                url = f"{self.service.web_api_url}/EntityDefinitions({entity_id})/Keys({key.metadata_id})"
                return self.service.empty_response(204, {"OData-EntityId": url})
            raise errors.method_not_allowed(req.method)
        kind, value = odata.parse_key(nav.args)
        key = None
        for candidate in self.meta.keys:
            if (kind == "id" and candidate.metadata_id == value) or (
                kind == "named" and value.get("LogicalName") in (candidate.logical_name, candidate.schema_name)
            ):
                key = candidate
        if key is None:
            raise errors.ODataError(404, errors.OBJECT_DOES_NOT_EXIST, f"Could not find entity key {nav.args}.")
        if req.method == "GET":
            ctx = f"{entity_ref}/Keys" + (f"({sel_text})" if sel_text else "") + "/$entity"
            return self.service.json_response(
                200, {"@odata.context": self.context(ctx), **_select(self.meta.key_json(key), names)}
            )
        if req.method == "DELETE":
            self.service.delete_key(key)
            return self.service.empty_response(204)
        raise errors.method_not_allowed(req.method)


def _context_select(names: list[str] | None, expand: dict[str, dict[str, str]]) -> str:
    parts = list(names or [])
    for name in expand:
        if name not in parts:
            parts.append(name)
    return f"({','.join(parts)})" if parts else ""
