"""Test helpers for the DreamApply sandbox: a small API v9 client over verified TLS with the API key."""

from __future__ import annotations

from typing import Any

import requests

from sandbox import Sandbox
from sandbox.client import VerifiedSession
from sandbox.data.journal import EVENT_NAMES

ALL_EVENTS = ",".join(n for n in EVENT_NAMES if n)


class DA:
    """A thin DreamApply client for tests: paths are relative to ``/api/v9``."""

    def __init__(self, sb: Sandbox) -> None:
        self.api = sb.endpoints.dreamapply_api_url
        self.http = VerifiedSession(sb.ca_path)
        self.http.headers["Authorization"] = f'DREAM apikey="{sb.config.dreamapply_api_key}"'

    def get(self, path: str, **params: Any) -> requests.Response:
        return self.http.get(self.api + path, params=params)

    def head(self, path: str, **params: Any) -> requests.Response:
        return self.http.head(self.api + path, params=params)

    def json(self, path: str, **params: Any) -> Any:
        r = self.get(path, **params)
        assert r.status_code == 200, r.text
        return r.json()

    def last_event_id(self) -> int:
        page = self.json("/journal", byEvents=ALL_EVENTS, order="newest-first", limit=1)
        return int(next(iter(page))) if page else 0
