"""Test helpers for the Dataverse sandbox: a small Web API client over verified TLS with an MSAL token."""

from __future__ import annotations

import uuid
from typing import Any

import msal
import requests

from sandbox import Sandbox
from sandbox.client import VerifiedSession

ODATA_HEADERS = {"Accept": "application/json", "OData-MaxVersion": "4.0", "OData-Version": "4.0"}


def acquire_token(sb: Sandbox) -> str:
    """An app-only access token for the sandbox org, from MSAL over verified TLS."""
    app = msal.ConfidentialClientApplication(
        sb.config.client_id,
        client_credential=sb.config.client_secret,
        authority=sb.endpoints.authority,
        validate_authority=False,
        instance_discovery=False,
        http_client=VerifiedSession(sb.ca_path),
    )
    result = app.acquire_token_for_client(scopes=[sb.endpoints.org_url + "/.default"])
    assert "access_token" in result, result
    return result["access_token"]


def authed_session(sb: Sandbox) -> VerifiedSession:
    """A verified session that sends a fresh bearer token and the OData headers on every request."""
    http = VerifiedSession(sb.ca_path)
    http.headers.update({"Authorization": f"Bearer {acquire_token(sb)}", **ODATA_HEADERS})
    return http


class WebApi:
    """A thin Dataverse client for tests: base URL, bearer token, JSON helpers."""

    def __init__(self, sb: Sandbox) -> None:
        self.sb = sb
        self.base = sb.endpoints.web_api_url
        self.http = VerifiedSession(sb.ca_path)
        self.token = acquire_token(sb)

    def headers(self, extra: dict[str, str] | None = None) -> dict[str, str]:
        h = {"Authorization": f"Bearer {self.token}", **ODATA_HEADERS}
        h.update(extra or {})
        return h

    def url(self, path: str) -> str:
        return path if path.startswith("https://") else f"{self.base}/{path.lstrip('/')}"

    def request(
        self, method: str, path: str, json: Any = None, headers: dict[str, str] | None = None, **kw: Any
    ) -> requests.Response:
        return self.http.request(method, self.url(path), json=json, headers=self.headers(headers), **kw)

    def get(self, path: str, **kw: Any) -> requests.Response:
        return self.request("GET", path, **kw)

    def post(self, path: str, json: Any = None, **kw: Any) -> requests.Response:
        return self.request("POST", path, json=json, **kw)

    def patch(self, path: str, json: Any = None, **kw: Any) -> requests.Response:
        return self.request("PATCH", path, json=json, **kw)

    def delete(self, path: str, **kw: Any) -> requests.Response:
        return self.request("DELETE", path, **kw)

    def create(self, body: dict[str, Any]) -> str:
        r = self.post("leads", body)
        assert r.status_code == 204, r.text
        return r.headers["OData-EntityId"].rsplit("(", 1)[1].rstrip(")")


def error_of(r: requests.Response) -> tuple[int, str, str]:
    body = r.json()["error"]
    return r.status_code, body["code"], body["message"]


def new_applicant_id() -> str:
    return f"A-{uuid.uuid4().hex[:12]}"
