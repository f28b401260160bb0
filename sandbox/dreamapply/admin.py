"""Sandbox-only DreamApply controls, mounted on the admin server under ``{prefix}/dreamapply``.

- ``POST   /dreamapply/advance`` ``{"hours": 24, "seed": 1, "rates": {...}}`` → what changed (IDs per kind)
  and the journal range of the new events. Rates are per-day probabilities, see
  ``sandbox.data.mutations.DEFAULT_RATES``; they may also be given at the top level.
- ``GET    /dreamapply/stats`` → counts, last journal event ID, clock, generation time.
- ``POST   /dreamapply/applicants`` one spec, a list, or ``{"applicants": [...]}`` → ``{"ids": [...]}``.
  Spec fields: given, middle, family, email, phone, citizenship, type, reference, matriculation, notes
  (absent = generated, null = null), ``consents`` (``{"1": "Accept", "2": "Reject"}``; absent = generated,
  ``{}`` = none), ``trackers`` (IDs or codes), ``applications``
  (``[{"term": 25 | "year": 2026, "courses": [1, "CS-BSC"], "status": "Submitted",
  "offers": [{"type": "Conditional", "decision": "Final"}]}]``). Registered now; emits the events.
- ``GET    /dreamapply/applicants/{id}`` → the raw record, erased ones included (``"erased": true``).
- ``PATCH  /dreamapply/applicants/{id}`` → edit fields; emits ``Applicant was edited``.
- ``PUT    /dreamapply/applicants/{id}/wire`` ``{"set": {"name": "Maria Tamm", "id": "12a"}, "remove": ["email"],
  "replace": <any JSON>, "key": "12a", "journal": true}`` → the API serves the record malformed from now on
  (``sandbox.data.wire``); ``GET`` → the override and the record as served; ``DELETE`` (``?journal=false``)
  → served as rendered again. Both changes emit ``Applicant was edited`` unless ``journal`` is false.
- ``POST   /dreamapply/applicants/{id}/consents`` ``{"consent": 2, "decision": "Accept"|"Reject"|null}``;
  emits ``Applicant consent was changed``.
- ``POST   /dreamapply/applicants/{id}/erase`` ``{"request_to_be_forgotten": true}`` → purged; emits
  ``Applicant was deleted``.
- ``POST   /dreamapply/applicants/{id}/applications`` an application spec (as above) → its ID.
- ``GET    /dreamapply/applications/{id}`` → raw application record.
- ``PATCH  /dreamapply/offers/{id}`` ``{"type": "Unconditional", "decision": "Final"}``; emits
  ``Offer was edited: ?``.
- ``POST   /dreamapply/ratelimit`` ``{"requests_per_minute": 5}`` (optional) → resets the windows.
"""

from __future__ import annotations

import json
from typing import Any

from aiohttp import web

from sandbox.data.mutations import MutationError
from sandbox.dreamapply import render
from sandbox.dreamapply.store import DreamApplyStore, isoformat_epoch
from sandbox.httpcommon import STATE_KEY


def _store(request: web.Request) -> DreamApplyStore:
    return request.app[STATE_KEY].dreamapply


def _error(status: int, message: str) -> web.Response:
    return web.json_response({"error": message}, status=status)


async def _body(request: web.Request) -> Any:
    if not request.can_read_body:
        return {}
    try:
        return await request.json()
    except json.JSONDecodeError as exc:
        raise MutationError(f"invalid JSON body: {exc}") from None


def _id(request: web.Request) -> int:
    raw = request.match_info["id"]
    if not raw.isdigit():
        raise MutationError(f"invalid id {raw!r}")
    return int(raw)


def _guard(handler):
    async def wrapped(request: web.Request) -> web.StreamResponse:
        try:
            return await handler(request)
        except (MutationError, ValueError, TypeError, KeyError) as exc:
            return _error(400, str(exc))

    wrapped.__name__ = handler.__name__
    return wrapped


def register(app: web.Application, prefix: str) -> None:
    base = f"{prefix}/dreamapply"
    r = app.router
    r.add_post(f"{base}/advance", _guard(advance))
    r.add_get(f"{base}/stats", _guard(stats))
    r.add_post(f"{base}/applicants", _guard(create_applicants))
    r.add_get(f"{base}/applicants/{{id}}", _guard(get_applicant))
    r.add_patch(f"{base}/applicants/{{id}}", _guard(patch_applicant))
    r.add_put(f"{base}/applicants/{{id}}/wire", _guard(put_wire))
    r.add_get(f"{base}/applicants/{{id}}/wire", _guard(get_wire))
    r.add_delete(f"{base}/applicants/{{id}}/wire", _guard(delete_wire))
    r.add_post(f"{base}/applicants/{{id}}/consents", _guard(set_consent))
    r.add_post(f"{base}/applicants/{{id}}/erase", _guard(erase_applicant))
    r.add_post(f"{base}/applicants/{{id}}/applications", _guard(create_application))
    r.add_get(f"{base}/applications/{{id}}", _guard(get_application))
    r.add_patch(f"{base}/offers/{{id}}", _guard(patch_offer))
    r.add_post(f"{base}/ratelimit", _guard(reset_ratelimit))


async def advance(request: web.Request) -> web.Response:
    body = await _body(request)
    if "hours" not in body:
        raise MutationError("hours is required")
    rates = dict(body.get("rates") or {})
    for key, value in body.items():
        if key not in ("hours", "seed", "rates"):
            rates[key] = value
    seed = body.get("seed")
    out = _store(request).advance(float(body["hours"]), int(seed) if seed is not None else None, rates or None)
    return web.json_response(out)


async def stats(request: web.Request) -> web.Response:
    return web.json_response(_store(request).stats())


async def create_applicants(request: web.Request) -> web.Response:
    body = await _body(request)
    specs = body.get("applicants") if isinstance(body, dict) and "applicants" in body else body
    if isinstance(specs, dict):
        specs = [specs]
    if not isinstance(specs, list) or not all(isinstance(s, dict) for s in specs):
        raise MutationError("expected an applicant spec, a list of specs or {'applicants': [...]}")
    store = _store(request)
    created = store.create_applicants(specs)
    return web.json_response(
        {
            "ids": [a.id for a in created],
            "applicants": [a.as_dict() for a in created],
            "last_event_id": store.ds.journal.last_id,
        },
        status=201,
    )


def _any_applicant(request: web.Request):
    a = _store(request).ds.applicants.get(_id(request))
    if a is None:
        raise web.HTTPNotFound(text=json.dumps({"error": "no such applicant"}), content_type="application/json")
    return a


def _live(request: web.Request):
    a = _any_applicant(request)
    if a.erased:
        raise web.HTTPConflict(text=json.dumps({"error": "applicant was erased"}), content_type="application/json")
    return a


async def get_applicant(request: web.Request) -> web.Response:
    a = _any_applicant(request)
    out = a.as_dict()
    out["registered_iso"] = isoformat_epoch(a.registered)
    return web.json_response(out)


async def patch_applicant(request: web.Request) -> web.Response:
    a = _live(request)
    body = await _body(request)
    if not isinstance(body, dict):
        raise MutationError("expected an object of fields")
    fields, event_id = _store(request).edit_applicant(a, body)
    return web.json_response({"applicant": a.as_dict(), "changed": fields, "event_id": event_id})


def _wire_view(a) -> dict:
    return {
        "id": a.id,
        "wire": a.wire.as_dict() if a.wire is not None else None,
        "key": render.applicant_key(a),
        "record": render.applicant(a, frozenset({"consents", "trackers"})),
    }


async def put_wire(request: web.Request) -> web.Response:
    a = _live(request)
    body = await _body(request)
    _, event_id = _store(request).set_wire(a, body)
    return web.json_response({**_wire_view(a), "event_id": event_id})


async def get_wire(request: web.Request) -> web.Response:
    return web.json_response(_wire_view(_live(request)))


async def delete_wire(request: web.Request) -> web.Response:
    a = _live(request)
    journal = request.query.get("journal", "true").lower() not in ("false", "0", "no")
    event_id = _store(request).clear_wire(a, journal)
    return web.json_response({**_wire_view(a), "event_id": event_id})


async def set_consent(request: web.Request) -> web.Response:
    a = _live(request)
    body = await _body(request)
    if "consent" not in body:
        raise MutationError("consent is required")
    event_id = _store(request).set_consent(a, int(body["consent"]), body.get("decision"))
    return web.json_response({"applicant": a.as_dict(), "event_id": event_id})


async def erase_applicant(request: web.Request) -> web.Response:
    a = _live(request)
    body = await _body(request)
    apps, event_id = _store(request).erase(a, bool(body.get("request_to_be_forgotten", True)))
    return web.json_response({"id": a.id, "applications_purged": apps, "event_id": event_id})


async def create_application(request: web.Request) -> web.Response:
    a = _live(request)
    body = await _body(request)
    store = _store(request)
    app = store.create_application(a, body)
    return web.json_response(
        {"id": app.id, "application": app.as_dict(), "last_event_id": store.ds.journal.last_id}, status=201
    )


async def get_application(request: web.Request) -> web.Response:
    store = _store(request)
    app = store.ds.applications.get(_id(request))
    if app is None:
        return _error(404, "no such application")
    out = app.as_dict()
    out["offer_records"] = [store.ds.offers[o].as_dict() for o in app.offers or ()]
    return web.json_response(out)


async def patch_offer(request: web.Request) -> web.Response:
    store = _store(request)
    body = await _body(request)
    ids = store.edit_offer(_id(request), body)
    return web.json_response({"offer": store.ds.offers[_id(request)].as_dict(), "event_ids": ids})


async def reset_ratelimit(request: web.Request) -> web.Response:
    store = _store(request)
    body = await _body(request)
    if body.get("requests_per_minute") is not None:
        store.limiter.requests_per_minute = int(body["requests_per_minute"])
    store.limiter.reset()
    return web.json_response({"requests_per_minute": store.limiter.requests_per_minute})
