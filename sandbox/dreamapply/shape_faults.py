"""Sandbox-only: answers with the right status and valid JSON but the wrong shape (``/_sandbox/shape-faults``).

The generic fault kinds (``sandbox.faults``) cover answers that are not JSON at all (an HTML page, an empty or
cut body, a wrong encoding, an error object). These two lie in the structure a client walks:

- ``non_records`` (DreamApply): every item of an ID-keyed map (or list) is replaced by its link string
  (``"/api/v9/applicants/12"``); a ``pages`` paginator stays. A client that skips non-objects reads
  "nothing here".
- ``no_value`` (Dataverse): a collection answer without its ``value`` array (``@odata.context`` stays).
  A client that reads ``body.get("value") or []`` sees "no rows".

Rules are matched like fault rules (``server``, ``method``, ``path`` regex searched in the request path) and
fire on every match, or from the ``nth`` match on, at most ``times`` times. ``GET /_sandbox/shape-faults``
lists them with ``matched``/``fired``; the request log entry of a rewritten answer carries
``shape_fault: {"id", "mode", "changed"}`` (``changed`` is False where the answer had nothing to rewrite).

Lives with DreamApply because the generic fault module is not extended for these two; the Dataverse server
mounts the same middleware.
"""

from __future__ import annotations

import itertools
import json
import re
import threading
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web

from sandbox.httpcommon import LOG_EXTRA, SERVER_KEY, STATE_KEY, Handler

MODES = {"non_records": "dreamapply", "no_value": "dataverse"}
_ATTRIBUTE = "_shape_faults"


@dataclass
class ShapeRule:
    mode: str
    server: str = ""
    method: str = "*"
    path: str = ".*"
    nth: int | None = None
    times: int | None = None
    id: int = 0
    matched: int = 0
    fired: int = 0
    _path_re: re.Pattern[str] = field(default=re.compile(".*"), repr=False)

    def __post_init__(self) -> None:
        if self.mode not in MODES:
            raise ValueError(f"unknown shape fault mode {self.mode!r}; one of {sorted(MODES)}")
        self.server = self.server or MODES[self.mode]
        if self.server != MODES[self.mode]:
            raise ValueError(f"mode {self.mode!r} applies to server {MODES[self.mode]!r}")
        self.method = self.method.upper()
        self._path_re = re.compile(self.path)

    def should_fire(self, server: str, method: str, path: str) -> bool:
        if server != self.server or self.method not in ("*", method.upper()) or not self._path_re.search(path):
            return False
        if self.times is not None and self.fired >= self.times:
            return False
        self.matched += 1
        if self.nth is not None and self.matched < self.nth:
            return False
        self.fired += 1
        return True

    def describe(self) -> dict[str, Any]:
        return {k: v for k, v in self.__dict__.items() if not k.startswith("_")}


class ShapeFaults:
    def __init__(self) -> None:
        self._rules: list[ShapeRule] = []
        self._ids = itertools.count(1)
        self._lock = threading.Lock()

    def add(self, spec: dict[str, Any]) -> ShapeRule:
        allowed = {"mode", "server", "method", "path", "nth", "times"}
        unknown = set(spec) - allowed
        if unknown:
            raise ValueError(f"unknown shape fault fields: {sorted(unknown)}")
        rule = ShapeRule(**spec)
        with self._lock:
            rule.id = next(self._ids)
            self._rules.append(rule)
        return rule

    def pick(self, server: str, method: str, path: str) -> ShapeRule | None:
        with self._lock:
            for rule in self._rules:
                if rule.should_fire(server, method, path):
                    return rule
        return None

    def rules(self) -> list[dict[str, Any]]:
        with self._lock:
            return [r.describe() for r in self._rules]

    def clear(self) -> None:
        with self._lock:
            self._rules.clear()


def shape_faults(state: Any) -> ShapeFaults:
    """The sandbox's shape-fault rules (created on first use, shared by every server of one sandbox)."""
    found = getattr(state, _ATTRIBUTE, None)
    if found is None:
        found = ShapeFaults()
        setattr(state, _ATTRIBUTE, found)
    return found


def _rewrite(doc: Any, mode: str) -> tuple[Any, bool]:
    if mode == "no_value":
        if isinstance(doc, dict) and "value" in doc:
            return {k: v for k, v in doc.items() if k != "value"}, True
        return doc, False
    if isinstance(doc, list):
        return [f"/api/v9/items/{item.get('id')}" if isinstance(item, dict) else item for item in doc], bool(doc)
    if isinstance(doc, dict):
        out = {k: (v if k == "pages" or not isinstance(v, dict) else f"/api/v9/items/{k}") for k, v in doc.items()}
        return out, out != doc
    return doc, False


@web.middleware
async def middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Rewrites the real JSON answer of a request a shape-fault rule picks (innermost: after auth)."""
    rule = shape_faults(request.app[STATE_KEY]).pick(request.app[SERVER_KEY], request.method, request.path)
    response = await handler(request)
    if rule is None:
        return response
    changed = False
    if isinstance(response, web.Response) and isinstance(response.body, bytes) and response.status == 200:
        try:
            doc = json.loads(response.body)
        except ValueError:
            doc = None
        if doc is not None:
            new, changed = _rewrite(doc, rule.mode)
            if changed:
                headers = {
                    k: v for k, v in response.headers.items() if k.lower() not in ("content-length", "content-type")
                }
                response = web.Response(
                    status=response.status,
                    body=json.dumps(new, ensure_ascii=False).encode("utf-8"),
                    headers=headers,
                    content_type=response.content_type,
                    charset=response.charset,
                )
    request[LOG_EXTRA]["shape_fault"] = {"id": rule.id, "mode": rule.mode, "changed": changed}
    return response


def register(app: web.Application, prefix: str) -> None:
    """``POST``/``GET``/``DELETE {prefix}/shape-faults`` on the admin server."""
    app.router.add_post(f"{prefix}/shape-faults", _add)
    app.router.add_get(f"{prefix}/shape-faults", _list)
    app.router.add_delete(f"{prefix}/shape-faults", _clear)


async def _add(request: web.Request) -> web.Response:
    try:
        rule = shape_faults(request.app[STATE_KEY]).add(await request.json())
    except (TypeError, ValueError) as exc:
        return web.json_response({"error": str(exc)}, status=400)
    return web.json_response(rule.describe(), status=201)


async def _list(request: web.Request) -> web.Response:
    return web.json_response({"rules": shape_faults(request.app[STATE_KEY]).rules()})


async def _clear(request: web.Request) -> web.Response:
    shape_faults(request.app[STATE_KEY]).clear()
    return web.Response(status=204)
