"""The Dataverse Web API as a synchronous dispatcher: ``DataverseService.dispatch`` serves one operation.

Single HTTP requests (``sandbox.dataverse.server``) and ``$batch`` parts (``sandbox.dataverse.batch``)
both go through :meth:`DataverseService.dispatch`, so they behave identically. ``dispatch`` never
awaits, so each operation is atomic on the event loop, and it never raises for client errors: it
returns the OData error as a :class:`SubResponse`. Writes made with ``txn=service.begin()`` can be
rolled back (changesets).

Routes (under ``/api/data/v9.2/``): service document, ``$metadata`` (a small CSDL), ``WhoAmI``,
``RetrieveVersion``, ``leads`` (see ``leads.py``; ``fetchXml`` in ``fetchxml.py``; the bound
``CreateMultiple``/``UpdateMultiple``/``UpsertMultiple`` in ``bulk.py``), ``systemusers`` (and a user's roles,
``systemusers(<id>)/systemuserroles_association``, see ``users.py``), ``teams``,
``sdkmessagefilters`` (which messages the org offers per table, ``messages.py``),
``EntityDefinitions`` (see ``metadata_api.py``), ``InsertOptionValue``, ``PublishXml``,
``PublishAllXml``. ``BulkDelete`` (an asynchronous system job in the real service) is refused with
400 "… is not supported by the Dataverse sandbox" (see ``errors.not_supported``); anything else →
404 "Resource not found for the segment 'x'.".

Decision [unverified]: option values inserted with ``InsertOptionValue`` are accepted by writes at
once, before ``PublishXml``.
"""

from __future__ import annotations

import json
import logging
import urllib.parse
import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from sandbox.dataverse import errors, messages, odata
from sandbox.dataverse.leads import LeadOps, LeadTable
from sandbox.dataverse.metadata import KeyDef, LeadMetadata
from sandbox.dataverse.metadata_api import KEY_TYPES, MetadataApi
from sandbox.dataverse.store import LeadStore, Transaction
from sandbox.dataverse.users import (
    BUSINESS_UNIT_ID,
    ORGANIZATION_ID,
    TEAM_PROPERTIES,
    USER_PROPERTIES,
    USER_ROLES_NAVIGATION,
    RoleDirectory,
    SimpleTable,
    build_teams,
    build_users,
)
from sandbox.state import SandboxState

log = logging.getLogger(__name__)

API_PREFIX = "/api/data/v9.2"
JSON_TYPE = "application/json; odata.metadata=minimal"
JSON_STREAMING_TYPE = "application/json; odata.metadata=minimal; odata.streaming=true"

__all__ = ["Caller", "DataverseService", "SubResponse", "Transaction"]


@dataclass
class Caller:
    user_id: str  # systemuserid of the calling (application) user
    client_id: str


@dataclass
class SubResponse:
    status: int
    headers: dict[str, str]  # operation-specific headers (OData-EntityId, ETag, Preference-Applied, Content-Type...)
    body: bytes | None  # JSON bytes or None
    ops: int = 1  # operations it carried (a bulk message: its targets), for the request log
    # Simulated server time in units of ``operation_ms`` (protection.py); None: ``ops`` (a bulk message costs less)
    cost: float | None = None
    log: dict[str, Any] | None = None  # facts for the request log (a bulk message: its targets' types and ids)


class Request:
    """One operation, as dispatch sees it."""

    def __init__(
        self,
        method: str,
        segments: list[odata.Segment],
        query: dict[str, str],
        headers: Mapping[str, str],
        body: bytes,
        caller: Caller,
        txn: Transaction | None,
    ) -> None:
        self.method = method
        self.segments = segments
        self.query = query
        self.headers = {k.lower(): v for k, v in headers.items()}
        self.body = body
        self.caller = caller
        self.txn = txn
        self.prefer = _parse_prefer(self.headers.get("prefer", ""))

    def header(self, name: str) -> str | None:
        return self.headers.get(name.lower())

    def json_body(self) -> Any:
        if not self.body or not self.body.strip():
            raise errors.payload_error("leads", "The request body is empty; a JSON payload was expected.")
        try:
            return json.loads(self.body)
        except (ValueError, UnicodeDecodeError) as exc:
            raise errors.payload_error("leads", f"Invalid JSON. {exc}") from exc

    @property
    def return_representation(self) -> bool:
        return self.prefer.get("return") == "representation"

    @property
    def prefer_max_page_size(self) -> int | None:
        value = self.prefer.get("odata.maxpagesize")
        if value is None:
            return None
        try:
            size = int(value)
        except ValueError as exc:
            raise errors.bad_request(f"The value '{value}' of odata.maxpagesize is not valid.") from exc
        if size <= 0:
            raise errors.bad_request(f"The value '{value}' of odata.maxpagesize is not valid.")
        return size

    @property
    def annotate(self) -> bool:
        return "odata.include-annotations" in self.prefer

    def wants_annotation(self, name: str) -> bool:
        """Whether ``Prefer: odata.include-annotations`` asks for ``name`` (exactly, by ``Ns.*`` or by ``*``)."""
        text = self.prefer.get("odata.include-annotations")
        if text is None:
            return False
        for pattern in text.strip().strip('"').split(","):
            pattern = pattern.strip()
            if pattern == "*" or pattern == name or (pattern.endswith(".*") and name.startswith(pattern[:-1])):
                return True
        return False

    @property
    def duplicate_detection(self) -> bool:
        return (self.header("mscrm.suppressduplicatedetection") or "").strip().lower() == "false"

    def preference_applied(self, page_size: bool = False, representation: bool = False) -> dict[str, str]:
        applied = []
        if representation and self.return_representation:
            applied.append("return=representation")
        if page_size and "odata.maxpagesize" in self.prefer:
            applied.append(f"odata.maxpagesize={self.prefer['odata.maxpagesize']}")
        if self.annotate:
            applied.append(f"odata.include-annotations={self.prefer['odata.include-annotations']}")
        return {"Preference-Applied": ",".join(applied)} if applied else {}


def _parse_prefer(text: str) -> dict[str, str]:
    prefs: dict[str, str] = {}
    for part in odata.split_top_level(text, ",", quote='"'):
        part = part.strip()
        if not part:
            continue
        name, _, value = part.partition("=")
        prefs[name.strip().lower()] = value.strip()
    return prefs


class UserDirectory:
    """systemusers and teams: tables for queries plus owner checks and display names."""

    def __init__(self, state: SandboxState) -> None:
        self.users = SimpleTable(
            "systemusers",
            "systemuser",
            "systemuserid",
            USER_PROPERTIES,
            build_users(state.apps.apps),
        )
        self.teams = SimpleTable("teams", "team", "teamid", TEAM_PROPERTIES, build_teams())
        self.roles = RoleDirectory(self.users.rows.values())

    def resolve_owner(self, entity_set: str, target_id: str) -> str:
        if entity_set == "systemusers":
            user = self.users.get_row(target_id)
            if user is None:
                raise errors.not_found_by_id("systemuser", target_id)
            if user["isdisabled"]:
                raise errors.ODataError(
                    400,
                    errors.USER_DISABLED,
                    f"The specified user (Id = {target_id}) is disabled. Consider enabling this user.",
                )
            return "systemuser"
        if entity_set == "teams":
            if self.teams.get_row(target_id) is None:
                raise errors.not_found_by_id("team", target_id)
            return "team"
        raise errors.payload_error("leads", f"The entity set '{entity_set}' cannot own records.")

    def display_name(self, record_id: str) -> str | None:
        user = self.users.get_row(record_id)
        if user is not None:
            return user["fullname"]
        team = self.teams.get_row(record_id)
        return team["name"] if team is not None else None

    def interactive_user_ids(self) -> list[str]:
        return [
            row["systemuserid"]
            for row in self.users.rows.values()
            if row["accessmode"] == 0
            and not row["isdisabled"]
            and row["azureactivedirectoryobjectid"]
            and not row["applicationid"]
        ]


class DataverseService:
    def __init__(self, state: SandboxState) -> None:
        self.state = state
        self.metadata = LeadMetadata(state.config.lead_entity_set)
        self.store = LeadStore()
        self.users = UserDirectory(state)
        self.lead_table = LeadTable(self.metadata, self.store)
        self.leads = LeadOps(self)
        self.metadata_api = MetadataApi(self)
        self._message_filters: messages.MessageFilterTable | None = None
        self.reset()

    # -- lifecycle ---------------------------------------------------------------------
    def reset(self) -> None:
        """Clear the leads and restore the metadata (options, keys, counters) to the start state."""
        self.store.clear()
        self.metadata.reset_attributes()
        for key in list(self.store.key_indexes):
            self.store.drop_key_index(key)
        self.metadata.reset_keys(self.state.clock.now(), self.state.config.alternate_key_activation_seconds)
        for key in self.metadata.keys:
            self.store.add_key_index(key.schema_name, key.key_attributes)
        self.lead_table.rebuild()

    def begin(self) -> Transaction:
        return Transaction()

    @property
    def web_api_url(self) -> str:
        return self.state.endpoints.web_api_url

    @property
    def message_filters(self) -> messages.MessageFilterTable:
        """The sdkmessagefilters catalogue for the configured bulk support (rebuilt when the config changes)."""
        table = self._message_filters
        wanted = tuple(self.state.config.lead_bulk_messages)
        if table is None or table.lead_bulk_messages != wanted:
            table = self._message_filters = messages.MessageFilterTable(wanted)
        return table

    @property
    def crm_user_caller(self) -> Caller:
        """The caller used for sandbox-admin changes ("a CRM user"): the first interactive user."""
        return Caller(user_id=self.users.interactive_user_ids()[0], client_id="")

    def refresh_keys(self) -> None:
        now = self.state.clock.now()
        for key in self.metadata.keys:
            if key.status == "Pending" and (key.activate_at is None or key.activate_at <= now):
                key.status = "Failed" if self.store.key_has_duplicates(key.schema_name) else "Active"

    def create_key(self, body: Any) -> KeyDef:
        if not isinstance(body, dict):
            raise errors.payload_error("EntityKeyMetadata", "The request body must be a JSON object.")
        schema = body.get("SchemaName")
        attributes = body.get("KeyAttributes")
        if not isinstance(schema, str) or not schema:
            raise errors.bad_request("SchemaName is required for an entity key.", code=errors.INVALID_ARGUMENT)
        if not isinstance(attributes, list) or not attributes or not all(isinstance(a, str) for a in attributes):
            raise errors.bad_request(
                "KeyAttributes must be a non-empty list of attribute logical names.", code=errors.INVALID_ARGUMENT
            )
        if len(attributes) > 16:
            raise errors.bad_request("An entity key can have at most 16 attributes.", code=errors.INVALID_ARGUMENT)
        if len(self.metadata.keys) >= 10:
            raise errors.bad_request(
                "The lead entity already has the maximum of 10 keys.", code=errors.INVALID_ARGUMENT
            )
        for name in attributes:
            attr = self.metadata.attribute(name)
            if attr is None:
                raise errors.bad_request(
                    f"Attribute '{name}' does not exist on entity 'lead'.", code=errors.INVALID_ARGUMENT
                )
            if attr.type not in KEY_TYPES:
                raise errors.bad_request(
                    f"Attribute '{name}' of type {attr.type} cannot be part of an entity key.",
                    code=errors.INVALID_ARGUMENT,
                )
        for key in self.metadata.keys:
            if key.schema_name.lower() == schema.lower():
                raise errors.bad_request(
                    f"An entity key with the name {schema} already exists.", code=errors.INVALID_ARGUMENT
                )
            if {a.lower() for a in key.key_attributes} == {a.lower() for a in attributes}:
                raise errors.bad_request(
                    "An entity key with the same attributes already exists.", code=errors.INVALID_ARGUMENT
                )
        display = body.get("DisplayName")
        display_text = schema
        if isinstance(display, dict):
            user = display.get("UserLocalizedLabel") or {}
            labels = display.get("LocalizedLabels") or [{}]
            display_text = user.get("Label") or labels[0].get("Label") or schema
        delay = max(0.0, float(self.state.config.alternate_key_activation_seconds))
        key = self.metadata.add_key(schema, attributes, display_text, self.state.clock.now(), delay)
        self.store.add_key_index(key.schema_name, key.key_attributes)
        self.refresh_keys()
        return key

    def delete_key(self, key: KeyDef) -> None:
        self.metadata.keys.remove(key)
        self.store.drop_key_index(key.schema_name)

    # -- responses ---------------------------------------------------------------------
    def json_response(
        self, status: int, body: Any, headers: Mapping[str, str] | None = None, streaming: bool = False
    ) -> SubResponse:
        out = {"Content-Type": JSON_STREAMING_TYPE if streaming else JSON_TYPE, "OData-Version": "4.0"}
        if headers:
            out.update(headers)
        return SubResponse(status, out, json.dumps(body, separators=(",", ":"), ensure_ascii=False).encode())

    def empty_response(self, status: int, headers: Mapping[str, str] | None = None) -> SubResponse:
        out = {"OData-Version": "4.0"}
        if headers:
            out.update(headers)
        return SubResponse(status, out, None)

    def text_response(self, status: int, text: str) -> SubResponse:
        return SubResponse(status, {"Content-Type": "text/plain", "OData-Version": "4.0"}, text.encode())

    def error_response(self, exc: errors.ODataError) -> SubResponse:
        headers = {"Content-Type": JSON_TYPE, "OData-Version": "4.0", "REQ_ID": str(uuid.uuid4())}
        headers.update(exc.headers)
        return SubResponse(exc.status, headers, json.dumps(exc.body(), separators=(",", ":")).encode())

    # -- dispatch ----------------------------------------------------------------------
    def dispatch(
        self,
        method: str,
        url: str,
        headers: Mapping[str, str],
        body: bytes,
        caller: Caller,
        txn: Transaction | None = None,
    ) -> SubResponse:
        try:
            parts = urllib.parse.urlsplit(url)
            path = parts.path
            if not path.startswith(API_PREFIX):
                first = path.strip("/").split("/")[0] if path.strip("/") else path
                raise errors.resource_not_found(urllib.parse.unquote(first))
            rest = path[len(API_PREFIX) :]
            if rest and not rest.startswith("/"):
                raise errors.resource_not_found(urllib.parse.unquote(path.strip("/").split("/")[-1]))
            req = Request(
                method.upper(),
                odata.split_path(rest),
                odata.parse_query_string(parts.query),
                headers,
                body or b"",
                caller,
                txn,
            )
            self.refresh_keys()
            return self._route(req)
        except errors.ODataError as exc:
            return self.error_response(exc)
        except Exception:  # pragma: no cover - a sandbox bug must still look like a Dataverse 500
            log.exception("dataverse dispatch failed for %s %s", method, url)
            return self.error_response(errors.ODataError(500, errors.UNEXPECTED, "An unexpected error occurred."))

    def _route(self, req: Request) -> SubResponse:
        segments = req.segments
        if not segments:
            if req.method != "GET":
                raise errors.method_not_allowed(req.method)
            return self.service_document()
        first = segments[0]
        name = first.name
        if name == self.lead_table.entity_set:
            return self.leads.handle(req, segments)
        if name in ("systemusers", "teams"):
            return self.simple_entity_set(
                req, segments, self.users.users if name == "systemusers" else self.users.teams
            )
        if name == "EntityDefinitions":
            return self.metadata_api.handle(req, segments)
        if name == "sdkmessagefilters":
            req.query = messages.resolve_aliases(req.query)
            return self.simple_entity_set(req, segments, self.message_filters)
        if len(segments) == 1 and name == "WhoAmI" and first.args in (None, ""):
            if req.method != "GET":
                raise errors.method_not_allowed(req.method)
            return self.json_response(
                200,
                {
                    "@odata.context": f"{self.web_api_url}/$metadata#Microsoft.Dynamics.CRM.WhoAmIResponse",
                    "BusinessUnitId": BUSINESS_UNIT_ID,
                    "UserId": req.caller.user_id,
                    "OrganizationId": ORGANIZATION_ID,
                },
            )
        if len(segments) == 1 and name == "RetrieveVersion" and first.args in (None, ""):
            return self.json_response(
                200,
                {
                    "@odata.context": f"{self.web_api_url}/$metadata#Microsoft.Dynamics.CRM.RetrieveVersionResponse",
                    "Version": "9.2.25031.00000",
                },
            )
        if len(segments) == 1 and name in ("InsertOptionValue", "PublishXml", "PublishAllXml") and first.args is None:
            if req.method != "POST":
                raise errors.method_not_allowed(req.method)
            return self.action(req, name)
        if len(segments) == 1 and name == "BulkDelete" and first.args is None:
            raise errors.not_supported(
                "The BulkDelete action (an asynchronous bulk deletion job)",
                "delete leads one by one with DELETE leads(<id>), or several in a $batch",
            )
        if len(segments) == 1 and name == "$metadata":
            return SubResponse(200, {"Content-Type": "application/xml", "OData-Version": "4.0"}, self.csdl().encode())
        raise errors.resource_not_found(first.text)

    # -- small routes ------------------------------------------------------------------
    def service_document(self) -> SubResponse:
        sets = [self.lead_table.entity_set, "systemusers", "teams", "sdkmessagefilters", "EntityDefinitions"]
        return self.json_response(
            200,
            {
                "@odata.context": f"{self.web_api_url}/$metadata",
                "value": [{"name": name, "kind": "EntitySet", "url": name} for name in sets],
            },
        )

    def action(self, req: Request, name: str) -> SubResponse:
        if name == "InsertOptionValue":
            params = req.json_body()
            if not isinstance(params, dict):
                raise errors.payload_error("InsertOptionValue", "The request body must be a JSON object.")
            value = self.metadata.insert_option_value(params)
            return self.json_response(
                200,
                {
                    "@odata.context": f"{self.web_api_url}/$metadata#Microsoft.Dynamics.CRM.InsertOptionValueResponse",
                    "NewOptionValue": value,
                },
            )
        if name == "PublishXml":
            params = req.json_body()
            if (
                not isinstance(params, dict)
                or not isinstance(params.get("ParameterXml"), str)
                or not params["ParameterXml"].strip()
            ):
                raise errors.bad_request("The ParameterXml parameter is required.", code=errors.INVALID_ARGUMENT)
            if "<importexportxml" not in params["ParameterXml"]:
                raise errors.bad_request(
                    "The ParameterXml is not a valid importexportxml document.", code=errors.INVALID_ARGUMENT
                )
            self.metadata.publish_xml_calls += 1
            return self.empty_response(204)
        self.metadata.publish_all_xml_calls += 1
        return self.empty_response(204)

    def simple_entity_set(self, req: Request, segments: list[odata.Segment], table: SimpleTable) -> SubResponse:
        first = segments[0]
        if len(segments) == 2 and table is self.users.users and segments[1].text == USER_ROLES_NAVIGATION:
            return self.simple_entity_set(req, segments[1:], self.users.roles.table_of(self._user_key(first.args)))
        if len(segments) > 1:
            raise errors.resource_not_found(segments[1].text)
        if req.method != "GET":
            raise errors.method_not_allowed(req.method)
        for name in req.query:
            if name == "$skip":
                raise errors.bad_request("The query parameter $skip is not supported")
            if name.startswith("$") and name not in ("$select", "$filter", "$orderby", "$top", "$count", "$skiptoken"):
                raise errors.bad_request(f"The query parameter {name} is not supported")
        odata.check_custom_options(req.query, table.entity_set)
        sel = req.query.get("$select")
        names = odata.parse_list(sel) if sel else None
        table.check_select(names or [])
        suffix = f"({','.join(names)})" if names else ""

        def render(row: dict[str, Any]) -> dict[str, Any]:
            out: dict[str, Any] = {"@odata.etag": f'W/"{row["versionnumber"]}"'}
            if names is None:
                out.update(row)
            else:
                for name in names:
                    out[name] = row.get(name)
                out[table.primary_id] = row[table.primary_id]
            return out

        if first.args is not None:
            kind, value = odata.parse_key(first.args)
            if kind != "id":
                raise errors.bad_request(f"The key value '{first.args}' is not a valid GUID.")
            row = table.get_row(value)
            if row is None:
                raise errors.not_found_by_id(table.logical, value)
            ctx = f"{self.web_api_url}/$metadata#{table.entity_set}{suffix}/$entity"
            return self.json_response(200, {"@odata.context": ctx, **render(row)}, streaming=True)
        options = odata.QueryOptions()
        if req.query.get("$filter"):
            options.filter_ast = odata.parse_filter(req.query["$filter"])
        if req.query.get("$orderby"):
            options.orderby = odata.parse_orderby(req.query["$orderby"])
        if "$top" in req.query:
            try:
                options.top = int(req.query["$top"])
            except ValueError as exc:
                raise errors.bad_request(f"Invalid value '{req.query['$top']}' for $top query option found.") from exc
        options.count = req.query.get("$count", "").lower() == "true"
        options.page_size = req.prefer_max_page_size
        if "$skiptoken" in req.query:
            options.cursor = odata.decode_skiptoken(req.query["$skiptoken"])
        result = odata.run_query(table, options)
        body: dict[str, Any] = {"@odata.context": f"{self.web_api_url}/$metadata#{table.entity_set}{suffix}"}
        if options.count:
            body["@odata.count"] = result.count
        body["value"] = [render(row) for row in result.rows]
        if result.next_cursor is not None:
            body["@odata.nextLink"] = odata.build_next_link(
                f"{self.web_api_url}/{table.entity_set}", req.query, result.next_cursor
            )
        return self.json_response(200, body, req.preference_applied(page_size=True), streaming=True)

    def _user_key(self, args: str | None) -> str:
        """The systemuserid a ``systemusers(<id>)`` segment names (404 if there is no such user)."""
        kind, value = odata.parse_key(args or "")
        if kind != "id":
            raise errors.bad_request(f"The key value '{args}' is not a valid GUID.")
        if self.users.users.get_row(value) is None:
            raise errors.not_found_by_id("systemuser", value)
        return str(value)

    def csdl(self) -> str:
        """A small CSDL document: the lead, systemuser and team entity types (properties and keys only)."""
        edm = {
            "string": "Edm.String",
            "int": "Edm.Int32",
            "decimal": "Edm.Decimal",
            "bool": "Edm.Boolean",
            "guid": "Edm.Guid",
            "datetime": "Edm.DateTimeOffset",
            "date": "Edm.Date",
        }
        lines = [
            '<?xml version="1.0" encoding="utf-8"?>',
            '<edmx:Edmx Version="4.0" xmlns:edmx="http://docs.oasis-open.org/odata/ns/edmx">',
            "<edmx:DataServices>",
            '<Schema Namespace="Microsoft.Dynamics.CRM" Alias="mscrm" xmlns="http://docs.oasis-open.org/odata/ns/edm">',
            '<EntityType Name="crmbaseentity" Abstract="true"/>',
            '<EntityType Name="lead" BaseType="mscrm.crmbaseentity"><Key><PropertyRef Name="leadid"/></Key>',
        ]
        for attr in self.metadata.attributes.values():
            if attr.is_property:
                lines.append(f'<Property Name="{attr.output_name}" Type="{edm.get(attr.kind, "Edm.String")}"/>')
        lines.append('<NavigationProperty Name="ownerid" Type="mscrm.principal" Nullable="false"/>')
        lines.append("</EntityType>")
        for table in (self.users.users, self.users.teams, self.message_filters):
            lines.append(
                f'<EntityType Name="{table.logical}" BaseType="mscrm.crmbaseentity">'
                f'<Key><PropertyRef Name="{table.primary_id}"/></Key>'
            )
            for name, kind in table.properties.items():
                lines.append(f'<Property Name="{name}" Type="{edm.get(kind, "Edm.String")}"/>')
            lines.append("</EntityType>")
        lines.append('<EntityContainer Name="System">')
        lead_set = self.lead_table.entity_set
        entity_sets = ((lead_set, "lead"), ("systemusers", "systemuser"), ("teams", "team"))
        for entity_set, logical in (*entity_sets, ("sdkmessagefilters", "sdkmessagefilter")):
            lines.append(f'<EntitySet Name="{entity_set}" EntityType="Microsoft.Dynamics.CRM.{logical}"/>')
        lines.extend(["</EntityContainer>", "</Schema>", "</edmx:DataServices>", "</edmx:Edmx>"])
        return "\n".join(lines)
