"""Dataverse (Dynamics 365 Web API v9.2) sandbox server: the aiohttp app and the sandbox-only admin routes.

The request handlers are thin wrappers over :meth:`DataverseService.dispatch`, so a single request and
a ``$batch`` part behave the same. Middlewares: authentication (``auth.py``), then service protection
(``protection.py``); ``POST /api/data/v9.2/$batch`` is handled by ``batch.py``.

Admin routes (registered on the admin server under ``prefix``, e.g. ``/_sandbox``):

* ``GET  {prefix}/dataverse/leads[?applicant_id=]`` → JSON list of leads (non-null properties only).
* ``POST {prefix}/dataverse/leads`` (a list of attribute dicts, or ``{"leads": [...]}``) → preload leads
  that existed before the integration: validated like creates, plus ``statecode``/``statuscode``,
  ``createdon``/``modifiedon`` and ``ownerid`` (a user id) are allowed; the owner defaults to the first
  interactive CRM user. → 201 ``{"created": n, "ids": [...]}``; 400 ``{"index": i, "error": {...}}``.
* ``PATCH {prefix}/dataverse/leads/{id}`` → a CRM-side edit (same rules, statecode allowed) → 200 lead.
* ``DELETE {prefix}/dataverse/leads/{id}`` → a CRM user deletes the lead → 204 / 404.
* ``GET  {prefix}/dataverse/stats`` → counts (leads, InsertOptionValue / PublishXml / PublishAllXml calls, keys).
* ``POST {prefix}/dataverse/reset`` → clear leads, restore metadata and counters → 204.
"""

from __future__ import annotations

import json
from typing import Any

from aiohttp import web

from sandbox.dataverse import auth, batch, errors, protection
from sandbox.dataverse.service import Caller, DataverseService
from sandbox.dreamapply import shape_faults
from sandbox.httpcommon import LOG_EXTRA, OPS_KEY, STATE_KEY, make_app
from sandbox.state import SandboxState

__all__ = ["build_app", "create_service", "register_admin_routes"]


def create_service(state: SandboxState) -> DataverseService:
    return DataverseService(state)


def build_app(state: SandboxState) -> web.Application:
    protection.install(state)
    app = make_app(state, "dataverse", middlewares=[auth.middleware, protection.middleware, shape_faults.middleware])
    app.router.add_post("/api/data/v9.2/$batch", batch.handle_batch)
    app.router.add_route("*", "/api/data/v9.2", handle)
    app.router.add_route("*", "/api/data/v9.2/{tail:.*}", handle)
    return app


async def handle(request: web.Request) -> web.StreamResponse:
    state = request.app[STATE_KEY]
    service: DataverseService = state.dataverse
    caller: Caller = request[auth.CALLER_KEY]
    body = await request.read() if request.can_read_body else b""
    result = service.dispatch(request.method, request.raw_path, request.headers, body, caller)
    request[OPS_KEY] = result.ops
    request[protection.COST_KEY] = float(result.cost if result.cost is not None else result.ops)
    if result.log:
        request[LOG_EXTRA].update(result.log)
    if result.status >= 400 and result.body:
        try:
            request[LOG_EXTRA]["error_code"] = json.loads(result.body)["error"]["code"]
        except (ValueError, KeyError, TypeError):
            request[LOG_EXTRA]["error_code"] = ""
    response = web.Response(status=result.status, body=result.body)
    for name, value in result.headers.items():
        response.headers[name] = value
    return response


# -- admin -------------------------------------------------------------------------------
def register_admin_routes(app: web.Application, prefix: str) -> None:
    base = f"{prefix}/dataverse"
    app.router.add_get(f"{base}/leads", admin_list_leads)
    app.router.add_post(f"{base}/leads", admin_preload_leads)
    app.router.add_patch(f"{base}/leads/{{lead_id}}", admin_edit_lead)
    app.router.add_delete(f"{base}/leads/{{lead_id}}", admin_delete_lead)
    app.router.add_get(f"{base}/stats", admin_stats)
    app.router.add_post(f"{base}/reset", admin_reset)


def _service(request: web.Request) -> DataverseService:
    return request.app[STATE_KEY].dataverse


def _plain(service: DataverseService, row: dict[str, Any]) -> dict[str, Any]:
    rendered = service.lead_table.render(row, None)
    return {k: v for k, v in rendered.items() if v is not None}


async def admin_list_leads(request: web.Request) -> web.Response:
    service = _service(request)
    service.refresh_keys()
    applicant = request.query.get("applicant_id")
    if applicant is not None:
        ids = sorted(service.store.lookup("uni_applicantid", [applicant]) or ())
    else:
        ids = service.store.sorted_ids()
    return web.json_response([_plain(service, row) for row in service.store.iter_rows(ids)])


async def admin_preload_leads(request: web.Request) -> web.Response:
    service = _service(request)
    service.refresh_keys()
    payload = await request.json()
    items = payload.get("leads") if isinstance(payload, dict) else payload
    if not isinstance(items, list):
        return web.json_response({"error": "expected a list of lead attribute dicts"}, status=400)
    txn = service.begin()
    ids = []
    caller = service.crm_user_caller
    for index, item in enumerate(items):
        try:
            changes = service.leads.validate(item, "create", system_fields=True)
            row = service.leads.insert_row(changes, caller, txn)
        except errors.ODataError as exc:
            txn.rollback()
            return web.json_response({"index": index, "status": exc.status, **exc.body()}, status=400)
        ids.append(row["leadid"])
    txn.commit()
    return web.json_response({"created": len(ids), "ids": ids}, status=201)


async def admin_edit_lead(request: web.Request) -> web.Response:
    service = _service(request)
    service.refresh_keys()
    row = service.store.get(request.match_info["lead_id"].lower())
    if row is None:
        return web.json_response({"error": "lead not found"}, status=404)
    try:
        changes = service.leads.validate(await request.json(), "update", system_fields=True)
        row = service.leads._apply_update(None, row, changes, service.crm_user_caller)
    except errors.ODataError as exc:
        return web.json_response({"status": exc.status, **exc.body()}, status=400)
    return web.json_response(_plain(service, row))


async def admin_delete_lead(request: web.Request) -> web.Response:
    service = _service(request)
    removed = service.store.delete(request.match_info["lead_id"].lower())
    return web.Response(status=204 if removed is not None else 404)


async def admin_stats(request: web.Request) -> web.Response:
    service = _service(request)
    service.refresh_keys()
    meta = service.metadata
    return web.json_response(
        {
            "leads": len(service.store.rows),
            "insert_option_value_calls": meta.insert_option_value_calls,
            "publish_xml_calls": meta.publish_xml_calls,
            "publish_all_xml_calls": meta.publish_all_xml_calls,
            "keys": {key.schema_name: key.status for key in meta.keys},
        }
    )


async def admin_reset(request: web.Request) -> web.Response:
    _service(request).reset()
    return web.Response(status=204)
