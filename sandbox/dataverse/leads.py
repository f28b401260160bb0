"""The ``leads`` entity set: create, retrieve, query, update/upsert (by id or alternate key), delete.

Decisions on [unverified] points:

* Upsert by primary id with ``leadid`` in the body: on the update path it is rejected like any
  update of ``leadid`` (not valid for update); on the create path it must equal the URL id.
* Key columns in the body: stripped on the update path of a key-addressed upsert; on the create
  path the body value wins and the URL value only fills in a missing column (reference §5.1).
* A status reason that does not belong to the (new) state → 400 0x8004431a.
* Duplicate detection (``MSCRM.SuppressDuplicateDetection: false``): another lead with
  ``statecode`` 0 and the same ``emailaddress1`` (case-insensitive) → 500 0x80040333.
* ``$expand`` on leads is not supported by the sandbox (400).
* Read responses also carry an ``ETag`` header; 204 write responses carry only ``OData-EntityId``
  (batch parts add ``Location`` themselves).
* ``GET leads?fetchXml=…`` runs FetchXML (``fetchxml.py``); ``?sql=`` and every other query option
  without ``$`` are refused with 400 (``odata.check_custom_options``), never ignored.
* ``POST leads/Microsoft.Dynamics.CRM.CreateMultiple|UpdateMultiple|UpsertMultiple`` are the bulk
  messages (``bulk.py``).
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterable, Iterator
from typing import TYPE_CHECKING, Any

from sandbox.clock import odata_datetime
from sandbox.dataverse import bulk, errors, fetchxml, odata
from sandbox.dataverse.metadata import LEAD_TYPE, AttributeDef, KeyDef, LeadMetadata
from sandbox.dataverse.store import LeadStore, Transaction
from sandbox.dataverse.users import BUSINESS_UNIT_ID
from sandbox.dataverse.validation import validate_payload

if TYPE_CHECKING:
    from sandbox.dataverse.service import Caller, DataverseService, Request, SubResponse

FORMATTED = "OData.Community.Display.V1.FormattedValue"
LOOKUP_NAME = "Microsoft.Dynamics.CRM.lookuplogicalname"
NAV_NAME = "Microsoft.Dynamics.CRM.associatednavigationproperty"


class LeadTable:
    """Adapter of the lead store to the query engine, plus rendering of rows as Web API entities."""

    type_name = LEAD_TYPE
    primary_id = "leadid"

    def __init__(self, meta: LeadMetadata, store: LeadStore) -> None:
        self.meta = meta
        self.store = store
        self._getters: dict[str, tuple[Callable[[dict[str, Any]], Any], str]] = {}
        self._projection: list[tuple[str, Callable[[dict[str, Any]], Any]]] = []
        self.rebuild()

    @property
    def entity_set(self) -> str:
        """The lead table's entity set name as its metadata serves it (``leads`` unless configured)."""
        return str(self.meta.entity["EntitySetName"])

    def rebuild(self) -> None:
        getters: dict[str, tuple[Callable[[dict[str, Any]], Any], str]] = {}
        projection = []
        for attr in self.meta.attributes.values():
            if not attr.is_property:
                continue
            getter = self._getter_for(attr)
            getters[attr.output_name] = (getter, attr.kind)
            projection.append((attr.output_name, getter))
        self._getters = getters
        self._projection = projection

    @staticmethod
    def _getter_for(attr: AttributeDef) -> Callable[[dict[str, Any]], Any]:
        name = attr.logical
        if name == "owninguser":
            return lambda row: row.get("ownerid") if row.get("owneridtype") == "systemuser" else None
        if name == "owningteam":
            return lambda row: row.get("ownerid") if row.get("owneridtype") == "team" else None
        if name == "owningbusinessunit":
            return lambda row: BUSINESS_UNIT_ID
        default = attr.default
        if default is None:
            return lambda row: row.get(name)
        return lambda row: row.get(name, default)

    # -- Table protocol ----------------------------------------------------------------
    def resolve(self, name: str) -> tuple[Callable[[Any], Any], str]:
        found = self._getters.get(name)
        if found is None:
            attr = self.meta.attribute(name)
            if attr is not None and attr.is_lookup:  # the navigation property name
                return self._getters[attr.output_name]
            raise errors.unknown_property(name, LEAD_TYPE)
        return found

    def rows_by_id(self, ids: Iterable[str]) -> Iterator[dict[str, Any]]:
        return self.store.iter_rows(ids)

    def get_row(self, row_id: str) -> dict[str, Any] | None:
        return self.store.get(row_id)

    def sorted_ids(self) -> list[str]:
        return self.store.sorted_ids()

    def index_lookup(self, name: str, values: list[Any]) -> set[str] | None:
        if name == "leadid":
            return {str(v).lower() for v in values if str(v).lower() in self.store.rows}
        return self.store.lookup(name, values)

    def row_id(self, row: dict[str, Any]) -> str:
        return row["leadid"]

    # -- $select and rendering ---------------------------------------------------------
    def select_names(self, text: str | None) -> list[str] | None:
        if text is None:
            return None
        names = []
        for name in odata.parse_list(text):
            if name in self._getters:
                names.append(name)
                continue
            attr = self.meta.attribute(name)
            if attr is not None and attr.is_lookup and attr.is_property:
                names.append(attr.output_name)
                continue
            raise errors.unknown_property(name, LEAD_TYPE)
        return names

    def render(
        self, row: dict[str, Any], select: list[str] | None, annotate: bool = False, users: Any = None
    ) -> dict[str, Any]:
        out: dict[str, Any] = {"@odata.etag": f'W/"{row["versionnumber"]}"'}
        if select is None:
            for name, getter in self._projection:
                out[name] = getter(row)
        else:
            for name in select:
                out[name] = self._getters[name][0](row)
            out["leadid"] = row["leadid"]
        if annotate:
            self._annotate(out, users)
        return out

    def _annotate(self, out: dict[str, Any], users: Any) -> None:
        for name in list(out):
            value = out[name]
            if value is None or name.startswith("@"):
                continue
            attr = self.meta.property_attribute(name)
            if attr is None:
                continue
            if attr.type in ("Picklist", "State", "Status", "Boolean"):
                text = attr.option_label(value)
                if text is not None:
                    out[f"{name}@{FORMATTED}"] = text
            elif attr.is_lookup:
                if users is not None:
                    display = users.display_name(value)
                    if display is not None:
                        out[f"{name}@{FORMATTED}"] = display
                if attr.logical in ("ownerid", "owninguser", "owningteam"):
                    kind = (out.get("_owningteam_value") and "team") or "systemuser"
                    targets = [kind] if attr.logical == "ownerid" else attr.raw.get("Targets") or []
                else:
                    targets = attr.raw.get("Targets") or []
                out[f"{name}@{NAV_NAME}"] = attr.logical
                out[f"{name}@{LOOKUP_NAME}"] = targets[0] if targets else None
            elif isinstance(value, (int, float)) and not isinstance(value, bool) and attr.type != "BigInt":
                out[f"{name}@{FORMATTED}"] = f"{value:,}"


class LeadOps:
    def __init__(self, service: DataverseService) -> None:
        self.service = service

    @property
    def meta(self) -> LeadMetadata:
        return self.service.metadata

    @property
    def store(self) -> LeadStore:
        return self.service.store

    @property
    def table(self) -> LeadTable:
        return self.service.lead_table

    # -- routing -----------------------------------------------------------------------
    def handle(self, req: Request, segments: list[odata.Segment]) -> SubResponse:
        first = segments[0]
        method = req.method
        if first.args is None:
            if len(segments) == 1:
                if method == "GET":
                    return self.query(req)
                if method == "POST":
                    return self.create(req)
                raise errors.method_not_allowed(method)
            if len(segments) == 2 and segments[1].text == "$count" and method == "GET":
                result = odata.run_query(self.table, self._query_options(req, count_only=True))
                return self.service.text_response(200, str(result.count or 0))
            if len(segments) == 2 and segments[1].name in bulk.MESSAGES and segments[1].args is None:
                if method != "POST":
                    raise errors.method_not_allowed(method)
                return bulk.handle(self, req, bulk.MESSAGES[segments[1].name])
            raise errors.resource_not_found(segments[1].text)
        target = self.parse_target(first.args)
        if len(segments) == 1:
            if method == "GET":
                return self.retrieve(req, target)
            if method == "PATCH":
                return self.upsert(req, target)
            if method == "DELETE":
                return self.delete(req, target)
            raise errors.method_not_allowed(method)
        if len(segments) == 2:
            return self.single_property(req, target, segments[1].text)
        raise errors.resource_not_found(segments[2].text)

    # -- addressing --------------------------------------------------------------------
    def parse_target(self, args: str) -> tuple[str, Any, KeyDef | None]:
        """("id", guid, None) or ("key", {attr: value}, KeyDef)."""
        kind, value = odata.parse_key(args)
        if kind == "id":
            return "id", value, None
        if kind == "single":
            raise errors.bad_request(f"The key value '{args}' is not a valid GUID for the leadid key.")
        names = {name.lower(): v for name, v in value.items()}
        if set(names) == {"leadid"}:
            raw = names["leadid"]
            if not isinstance(raw, str) or not odata.is_guid(raw):
                raise errors.bad_request("The key value for leadid is not a valid GUID.")
            return "id", raw.lower(), None
        for key in self.meta.keys:
            if key.status == "Active" and {a.lower() for a in key.key_attributes} == set(names):
                return "key", value, key
        raise errors.key_not_defined("lead")

    def entity_id_url(self, target: tuple[str, Any, KeyDef | None], row_id: str | None = None) -> str:
        base = f"{self.service.web_api_url}/{self.table.entity_set}"
        if target[0] == "id" or (row_id is not None and target[0] != "key"):
            return f"{base}({row_id or target[1]})"
        parts = ",".join(f"{name}={odata.format_key_literal(v)}" for name, v in target[1].items())
        return f"{base}({parts})"

    def find(self, target: tuple[str, Any, KeyDef | None]) -> dict[str, Any] | None:
        if target[0] == "id":
            return self.store.get(target[1])
        key = target[2]
        assert key is not None
        values = {name.lower(): v for name, v in target[1].items()}
        ids = self.store.find_by_key(key.schema_name, tuple(values[a.lower()] for a in key.key_attributes))
        if not ids:
            return None
        return self.store.get(sorted(ids)[0])

    def not_found(self, target: tuple[str, Any, KeyDef | None]) -> errors.ODataError:
        if target[0] == "id":
            return errors.not_found_by_id("lead", target[1])
        return errors.not_found_by_key("lead")

    # -- reads -------------------------------------------------------------------------
    def _query_options(self, req: Request, count_only: bool = False) -> odata.QueryOptions:
        q = req.query
        odata.check_custom_options(q, self.table.entity_set, implemented=() if count_only else ("fetchXml",))
        for name in q:
            if name == "$skip":
                raise errors.bad_request("The query parameter $skip is not supported")
            if name.startswith("$") and name not in (
                "$select",
                "$filter",
                "$orderby",
                "$top",
                "$count",
                "$skiptoken",
                "$expand",
            ):
                raise errors.bad_request(f"The query parameter {name} is not supported")
        if "$expand" in q:
            raise errors.bad_request("The query option $expand is not supported on leads by the sandbox.")
        options = odata.QueryOptions()
        if q.get("$filter"):
            options.filter_ast = odata.parse_filter(q["$filter"])
            odata.compile_filter(options.filter_ast, self.table)  # type-check early
        if q.get("$orderby"):
            options.orderby = odata.parse_orderby(q["$orderby"])
            for name, _ in options.orderby:
                self.table.resolve(name)
        if "$top" in q:
            options.top = _parse_top(q["$top"])
        if count_only:
            options.count = True
            options.top = 0
            return options
        if "$count" in q:
            value = q["$count"].lower()
            if value not in ("true", "false"):
                raise errors.bad_request(f"'{q['$count']}' is not a valid count option.")
            options.count = value == "true"
        options.page_size = req.prefer_max_page_size
        if "$skiptoken" in q:
            options.cursor = odata.decode_skiptoken(q["$skiptoken"])
        return options

    def query(self, req: Request) -> SubResponse:
        if "fetchXml" in req.query:
            users = self.service.users
            body = fetchxml.response_body(req, self.table, self.service.web_api_url, req.query["fetchXml"], users)
            applied = {}
            if "odata.include-annotations" in req.prefer:
                applied = {"Preference-Applied": f"odata.include-annotations={req.prefer['odata.include-annotations']}"}
            return self.service.json_response(200, body, applied, streaming=True)
        select = self.table.select_names(req.query.get("$select"))
        options = self._query_options(req)
        result = odata.run_query(self.table, options)
        sel = req.query.get("$select")
        context = f"{self.service.web_api_url}/$metadata#{self.table.entity_set}" + (
            f"({','.join(odata.parse_list(sel))})" if sel else ""
        )
        body: dict[str, Any] = {"@odata.context": context}
        if options.count:
            body["@odata.count"] = result.count
            if result.count_exceeded:
                body["@Microsoft.Dynamics.CRM.totalrecordcount"] = -1
                body["@Microsoft.Dynamics.CRM.totalrecordcountlimitexceeded"] = True
        annotate = req.annotate
        users = self.service.users if annotate else None
        body["value"] = [self.table.render(row, select, annotate, users) for row in result.rows]
        if result.next_cursor is not None:
            body["@odata.nextLink"] = odata.build_next_link(
                f"{self.service.web_api_url}/{self.table.entity_set}", req.query, result.next_cursor
            )
        return self.service.json_response(200, body, req.preference_applied(page_size=True), streaming=True)

    def retrieve(self, req: Request, target: tuple[str, Any, KeyDef | None]) -> SubResponse:
        odata.check_custom_options(req.query, self.table.entity_set)
        for name in req.query:
            if name.startswith("$") and name not in ("$select", "$expand"):
                raise errors.bad_request(f"The query parameter {name} is not supported")
        if "$expand" in req.query:
            raise errors.bad_request("The query option $expand is not supported on leads by the sandbox.")
        self.table.select_names(req.query.get("$select"))
        row = self.find(target)
        if row is None:
            raise self.not_found(target)
        etag = f'W/"{row["versionnumber"]}"'
        if_none = req.header("if-none-match")
        if if_none and if_none != "null" and if_none.strip() in (etag, "*"):
            return self.service.empty_response(304, {"ETag": etag})
        return self._representation(req, row, 200, {"ETag": etag}, representation=False)

    def _representation(
        self, req: Request, row: dict[str, Any], status: int, headers: dict[str, str], representation: bool = True
    ) -> SubResponse:
        sel = req.query.get("$select")
        select = self.table.select_names(sel)
        context = (
            f"{self.service.web_api_url}/$metadata#{self.table.entity_set}"
            + (f"({','.join(odata.parse_list(sel))})" if sel else "")
            + "/$entity"
        )
        annotate = req.annotate
        body = {
            "@odata.context": context,
            **self.table.render(row, select, annotate, self.service.users if annotate else None),
        }
        out = dict(headers)
        out["ETag"] = f'W/"{row["versionnumber"]}"'
        applied = req.preference_applied(representation=representation)
        out.update(applied)
        return self.service.json_response(status, body, out, streaming=not representation)

    def single_property(self, req: Request, target: tuple[str, Any, KeyDef | None], name: str) -> SubResponse:
        getter, _ = self.table.resolve(name)
        row = self.find(target)
        if row is None:
            raise self.not_found(target)
        if req.method == "GET":
            value = getter(row)
            if value is None:
                return self.service.empty_response(204)
            context = f"{self.service.web_api_url}/$metadata#{self.table.entity_set}({row['leadid']})/{name}"
            return self.service.json_response(200, {"@odata.context": context, "value": value})
        if req.method in ("PUT", "DELETE"):
            if req.method == "PUT":
                payload = req.json_body()
                if not isinstance(payload, dict) or "value" not in payload:
                    raise errors.payload_error("leads", "The request body must contain a 'value' property.")
                value = payload["value"]
            else:
                value = None
            changes = self.validate({name: value}, "update")
            self._apply_update(req, row, changes, req.caller)
            return self.service.empty_response(204)
        raise errors.method_not_allowed(req.method)

    # -- writes ------------------------------------------------------------------------
    def validate(self, body: Any, mode: str, system_fields: bool = False) -> dict[str, Any]:
        return validate_payload(self.meta, body, mode, self.service.users.resolve_owner, system_fields=system_fields)

    def create(self, req: Request) -> SubResponse:
        self.table.select_names(req.query.get("$select"))
        changes = self.validate(req.json_body(), "create")
        row = self.insert_row(changes, req.caller, req.txn, duplicate_detection=req.duplicate_detection)
        url = self.entity_id_url(("id", row["leadid"], None))
        if req.return_representation:
            return self._representation(req, row, 201, {"OData-EntityId": url})
        return self.service.empty_response(204, {"OData-EntityId": url})

    def insert_row(
        self,
        changes: dict[str, Any],
        caller: Caller,
        txn: Transaction | None,
        duplicate_detection: bool = False,
    ) -> dict[str, Any]:
        row_id = changes.pop("leadid", None) or str(uuid.uuid4())
        if row_id in self.store.rows:
            raise errors.ODataError(412, errors.DUPLICATE_RECORD, "Cannot insert duplicate key.")
        now = odata_datetime(self.service.state.clock.now())
        row: dict[str, Any] = {"leadid": row_id}
        for name, value in changes.items():
            if value is not None:
                row[name] = value
        row.setdefault("ownerid", caller.user_id)
        row.setdefault("owneridtype", "systemuser")
        row.setdefault("createdon", now)
        row.setdefault("modifiedon", row["createdon"])
        row["createdby"] = caller.user_id
        row["modifiedby"] = caller.user_id
        row["ownerid"] = _intern(row["ownerid"])
        row["createdby"] = _intern(row["createdby"])
        row["modifiedby"] = _intern(row["modifiedby"])
        self._reconcile_state(row, {**changes}, None)
        _compute_fullname(row)
        self._check_keys(row, None)
        if duplicate_detection:
            self._detect_duplicates(row)
        row["versionnumber"] = self.store.next_version()
        self.store.insert(row, txn)
        return row

    def upsert(self, req: Request, target: tuple[str, Any, KeyDef | None]) -> SubResponse:
        self.table.select_names(req.query.get("$select"))
        body = req.json_body()
        if not isinstance(body, dict):
            raise errors.payload_error("leads", "The request body must be a JSON object.")
        existing = self.find(target)
        if_match = req.header("if-match")
        if_none = req.header("if-none-match")
        if if_none == "null":
            if_none = None
        url = self.entity_id_url(target)
        if existing is not None:
            if if_none is not None and if_none.strip() == "*":
                raise errors.duplicate_key()
            if (
                if_match is not None
                and if_match.strip() != "*"
                and if_match.strip() != f'W/"{existing["versionnumber"]}"'
            ):
                raise errors.version_mismatch()
            if target[0] == "key":
                key_columns = {a.lower() for a in target[2].key_attributes}  # type: ignore[union-attr]
                body = {k: v for k, v in body.items() if k.lower() not in key_columns}
            changes = self.validate(body, "update")
            row = self._apply_update(req, existing, changes, req.caller)
            if req.return_representation:
                return self._representation(req, row, 200, {"OData-EntityId": url})
            return self.service.empty_response(204, {"OData-EntityId": url})
        if if_match is not None:
            raise self.not_found(target)
        if target[0] == "id":
            if "leadid" in body and str(body["leadid"]).lower() != target[1]:
                raise errors.bad_request(
                    "The leadid in the request body does not match the id in the URL.", code=errors.INVALID_ARGUMENT
                )
            body = {**body, "leadid": target[1]}
        else:
            for name, value in target[1].items():
                if name.lower() not in {k.lower() for k in body}:
                    body = {**body, name.lower(): value}
        changes = self.validate(body, "create")
        row = self.insert_row(changes, req.caller, req.txn, duplicate_detection=req.duplicate_detection)
        if req.return_representation:
            return self._representation(req, row, 201, {"OData-EntityId": url})
        return self.service.empty_response(204, {"OData-EntityId": url})

    def _apply_update(
        self,
        req: Request | None,
        old: dict[str, Any],
        changes: dict[str, Any],
        caller: Caller,
        txn: Transaction | None = None,
        duplicate_detection: bool | None = None,
    ) -> dict[str, Any]:
        if req is not None:
            txn = req.txn
            if duplicate_detection is None:
                duplicate_detection = req.duplicate_detection
        row = dict(old)
        for name, value in changes.items():
            if value is None:
                row.pop(name, None)
            else:
                row[name] = value
        row["ownerid"] = _intern(row["ownerid"])
        self._reconcile_state(row, changes, old)
        _compute_fullname(row)
        self._check_keys(row, old["leadid"])
        if duplicate_detection:
            self._detect_duplicates(row)
        if "modifiedon" not in changes:
            row["modifiedon"] = odata_datetime(self.service.state.clock.now())
        row["modifiedby"] = _intern(caller.user_id)
        row["versionnumber"] = self.store.next_version()
        self.store.replace(row, txn)
        return row

    def delete(self, req: Request, target: tuple[str, Any, KeyDef | None]) -> SubResponse:
        row = self.find(target)
        if row is None:
            raise self.not_found(target)
        if_match = req.header("if-match")
        if if_match is not None and if_match.strip() != "*" and if_match.strip() != f'W/"{row["versionnumber"]}"':
            raise errors.version_mismatch()
        self.store.delete(row["leadid"], req.txn)
        return self.service.empty_response(204)

    # -- rules -------------------------------------------------------------------------
    def _reconcile_state(self, row: dict[str, Any], changes: dict[str, Any], old: dict[str, Any] | None) -> None:
        state_attr = self.meta.attributes["statecode"]
        status_attr = self.meta.attributes["statuscode"]
        state = row.get("statecode", 0)
        row["statecode"] = state
        if "statuscode" in changes and changes["statuscode"] is not None:
            status = changes["statuscode"]
        elif old is None or "statecode" in changes:
            default = next((o.get("DefaultStatus") for o in state_attr.options if o["Value"] == state), None)
            status = default if default is not None else row.get("statuscode", 1)
        else:
            status = row.get("statuscode", 1)
        status_state = next((o.get("State") for o in status_attr.options if o["Value"] == status), None)
        if status_state is not None and status_state != state:
            invariant = next((o.get("InvariantName") for o in state_attr.options if o["Value"] == state), state)
            raise errors.ODataError(
                400,
                errors.VALUE_OUT_OF_RANGE,
                f"{status} is not a valid status code for state code LeadState.{invariant} "
                f"on lead with Id {row['leadid']}.",
            )
        row["statuscode"] = status

    def _check_keys(self, row: dict[str, Any], own_id: str | None) -> None:
        for key in self.meta.keys:
            if key.status != "Active":
                continue
            values = []
            for name in key.key_attributes:
                value = row.get(name)
                if value is None:
                    break
                values.append(value)
            else:
                ids = self.store.find_by_key(key.schema_name, tuple(values))
                ids.discard(row["leadid"])
                if own_id is not None:
                    ids.discard(own_id)
                if ids:
                    raise errors.duplicate_key()

    def _detect_duplicates(self, row: dict[str, Any]) -> None:
        email = row.get("emailaddress1")
        if not email:
            return
        for other_id in self.store.lookup("emailaddress1", [email]) or ():
            if other_id == row["leadid"]:
                continue
            other = self.store.get(other_id)
            if other is not None and other.get("statecode", 0) == 0:
                raise errors.duplicate_detected()


def _parse_top(text: str) -> int:
    try:
        value = int(text)
    except ValueError as exc:
        raise errors.bad_request(f"Invalid value '{text}' for $top query option found.") from exc
    if value < 0:
        raise errors.bad_request(f"Invalid value '{text}' for $top query option found.")
    return value


_INTERNED: dict[str, str] = {}


def _intern(value: str) -> str:
    return _INTERNED.setdefault(value, value)


def _compute_fullname(row: dict[str, Any]) -> None:
    parts = [row.get("firstname"), row.get("lastname")]
    full = " ".join(p for p in parts if p)
    if full:
        row["fullname"] = full
    else:
        row.pop("fullname", None)
