"""A small client for tests and benchmarks: verified TLS sessions and the sandbox-only admin API."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import requests


class VerifiedSession(requests.Session):
    """A requests session that always verifies against the sandbox CA.

    ``Session.verify`` alone is not enough: requests lets ``REQUESTS_CA_BUNDLE``/``CURL_CA_BUNDLE``
    from the environment override it, so the CA is passed on every request instead.
    """

    def __init__(self, ca_path: str | Path) -> None:
        super().__init__()
        self.ca_path = str(ca_path)

    def request(self, method: str | bytes, url: str | bytes, *args: Any, **kwargs: Any) -> requests.Response:  # type: ignore[override]
        kwargs.setdefault("verify", self.ca_path)
        kwargs.setdefault("timeout", 60)
        return super().request(method, url, *args, **kwargs)


class SandboxClient:
    def __init__(self, info: dict[str, Any]) -> None:
        self.info = info
        self.ca_path = info["ca_bundle"]
        self.admin_url = info["admin"]["url"] + "/_sandbox"
        self.http = VerifiedSession(self.ca_path)

    @classmethod
    def from_state_file(cls, path: str | Path) -> SandboxClient:
        return cls(json.loads(Path(path).read_text()))

    def session(self) -> VerifiedSession:
        return VerifiedSession(self.ca_path)

    # -- generic admin calls -------------------------------------------------------------
    def get(self, path: str, **params: Any) -> Any:
        r = self.http.get(self.admin_url + path, params=params)
        r.raise_for_status()
        return r.json() if r.content else None

    def post(self, path: str, body: Any = None) -> Any:
        r = self.http.post(self.admin_url + path, json=body if body is not None else {})
        r.raise_for_status()
        return r.json() if r.content else None

    def put(self, path: str, body: Any) -> Any:
        r = self.http.put(self.admin_url + path, json=body)
        r.raise_for_status()
        return r.json() if r.content else None

    def delete(self, path: str) -> None:
        r = self.http.delete(self.admin_url + path)
        r.raise_for_status()

    # -- request log, faults, tokens ------------------------------------------------------
    def requests(self, server: str | None = None, since: int = 0, user: str | None = None) -> list[dict[str, Any]]:
        params: dict[str, Any] = {"since": since}
        if server:
            params["server"] = server
        if user:
            params["user"] = user
        return self.get("/requests", **params)["entries"]

    def last_seq(self) -> int:
        return self.get("/requests", since=10**12)["last_seq"]

    def clear_requests(self) -> None:
        self.delete("/requests")

    def add_fault(self, **spec: Any) -> dict[str, Any]:
        return self.post("/faults", spec)

    def clear_faults(self) -> None:
        self.delete("/faults")

    def expire_tokens(self) -> None:
        self.post("/tokens/expire")

    def app_users(self) -> list[dict[str, Any]]:
        """The tenant's app registrations: number, client id, application user id, revoked (no secrets)."""
        return self.get("/apps")["apps"]

    def revoke_app_secret(self, client_id: str) -> dict[str, Any]:
        """Revoke one app's secret now: AADSTS7000215 on its next token request, 401 for the tokens it holds."""
        return self.post(f"/apps/{client_id}/revoke")

    # -- DreamApply data ----------------------------------------------------------------------
    def patch(self, path: str, body: Any) -> Any:
        r = self.http.patch(self.admin_url + path, json=body)
        r.raise_for_status()
        return r.json() if r.content else None

    def edit_applicant(self, applicant_id: int, **fields: Any) -> dict[str, Any]:
        """Change profile fields (``given``, ``phone``, ``citizenship``...); emits ``Applicant was edited``."""
        return self.patch(f"/dreamapply/applicants/{applicant_id}", fields)

    def serve_malformed(self, applicant_id: int, **spec: Any) -> dict[str, Any]:
        """Make the API serve this applicant's record malformed (``set``/``remove``/``replace``/``key``,
        see ``sandbox.data.wire``); emits ``Applicant was edited`` unless ``journal=False``."""
        return self.put(f"/dreamapply/applicants/{applicant_id}/wire", spec)

    def serve_wellformed(self, applicant_id: int) -> dict[str, Any]:
        """Undo ``serve_malformed``; emits ``Applicant was edited``."""
        r = self.http.delete(f"{self.admin_url}/dreamapply/applicants/{applicant_id}/wire")
        r.raise_for_status()
        return r.json()


def pool_connection_id(number: int) -> str:
    """The Airflow connection id of the sandbox's application user ``number`` (2, 3, ...): ``dynamics365_user2``."""
    return f"dynamics365_user{number}"


def airflow_connections(
    info: dict[str, Any], *, dynamics_pool: bool = False, **dreamapply_extra: Any
) -> dict[str, dict[str, Any]]:
    """The Airflow connections (as ``AIRFLOW_CONN_*`` JSON objects) that point the sync at a sandbox.

    The Dynamics ones are marked ``"sandbox": true`` and name the sandbox's Entra ID explicitly
    (``authority_host``): the hooks send a client secret to a token service other than Microsoft's only then.
    A sandbox with extra application users gets one more Dynamics connection per user
    (``AIRFLOW_CONN_DYNAMICS365_USER2``, ...); with ``dynamics_pool`` the default connection names them in its
    ``pool`` extra, so the load spreads over all of them.
    """

    def dynamics(client_id: str, secret: str) -> dict[str, Any]:
        return {
            "conn_type": "dynamics365",
            "host": info["dynamics365"]["org_url"],
            "login": client_id,
            "password": secret,
            "extra": {"ca_bundle": info["ca_bundle"], "authority_host": info["entra"]["login_url"], "sandbox": True},
        }

    entra = info["entra"]
    extra_users = entra.get("extra_app_users") or []
    primary = dynamics(entra["client_id"], entra["client_secret"])
    if dynamics_pool:
        primary["extra"]["pool"] = [pool_connection_id(u["number"]) for u in extra_users]
    conns = {"AIRFLOW_CONN_DYNAMICS365_DEFAULT": primary}
    for user in extra_users:
        conns[f"AIRFLOW_CONN_{pool_connection_id(user['number']).upper()}"] = dynamics(
            user["client_id"], user["client_secret"]
        )
    conns["AIRFLOW_CONN_DREAMAPPLY_DEFAULT"] = {
        "conn_type": "dreamapply",
        "host": info["dreamapply"]["url"],
        "password": info["dreamapply"]["api_key"],
        "extra": {"ca_bundle": info["ca_bundle"], "sandbox": True, **dreamapply_extra},
    }
    return conns
