"""The ``dynamics365`` Airflow connection read into settings, with its transport policy applied.

Connection: host = Organization URL (with or without scheme), login = application (client) id, password = client
secret, extras ``tenant_id`` (else discovered from the org's 401 challenge), ``authority_host`` (national clouds, or
a local token service), ``ca_bundle`` (PEM to verify TLS against), ``sandbox``, ``verify`` and
``retry_after_max_seconds``. ``http://``, ``verify: false`` and a non-Microsoft authority are refused unless the
connection is marked ``"sandbox": true`` (``d365.hooks.connection_policy``).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

from d365.hooks.connection_policy import check_transport, is_sandbox, verify_from_extra
from d365.hooks.dynamics_auth import is_microsoft_login_host, normalise_origin
from d365.hooks.errors import DynamicsAuthError
from d365.hooks.throttle import RETRY_AFTER_MAX_SECONDS


@dataclass(frozen=True)
class DynamicsConnectionSettings:
    """What one ``dynamics365`` connection says, checked once; the secret stays out of ``repr``."""

    org_url: str
    client_id: str
    client_secret: str = field(repr=False)
    tenant_id: str | None = None
    authority_host: str | None = None
    ca_bundle: str | None = None
    sandbox: bool = False  # extra "sandbox": true (d365.hooks.connection_policy)
    verify_extra: bool | str | None = None  # extra "verify" (False only honoured on a sandbox connection)
    conn_id: str = "dynamics365_default"
    retry_after_max_seconds: float = RETRY_AFTER_MAX_SECONDS

    @property
    def verify(self) -> str | bool:
        if self.ca_bundle:
            return self.ca_bundle
        return True if self.verify_extra is None else self.verify_extra

    @classmethod
    def from_connection(cls, conn: Any) -> DynamicsConnectionSettings:
        """Settings from an Airflow connection; refuses ``http://``, ``verify: false`` and a non-Microsoft
        ``authority_host`` unless the connection is marked ``"sandbox": true`` (errors name the connection)."""
        if not conn.host:
            raise ValueError(f"connection {conn.conn_id!r} has no host (the Organization URL)")
        extra = conn.extra_dejson or {}
        sandbox = is_sandbox(extra)
        verify_extra = verify_from_extra(extra)
        host = str(conn.host).strip()
        authority_host = str(extra.get("authority_host") or "").strip() or None
        check_transport(
            conn.conn_id,
            urls={"host (Organization URL)": host, "extra authority_host": authority_host},
            verify=verify_extra,
            sandbox=sandbox,
            error=DynamicsAuthError,
        )
        org_url = normalise_origin(host)
        if not sandbox:
            org_url = "https://" + org_url.split("://", 1)[1]  # Dataverse speaks https only
        if conn.port and urlsplit(org_url).port is None:
            org_url = f"{org_url}:{conn.port}"
        authority_origin = normalise_origin(authority_host) if authority_host else None
        if authority_origin and not sandbox and not is_microsoft_login_host(authority_origin):
            raise DynamicsAuthError(
                f"connection {conn.conn_id!r}: the extra authority_host {authority_origin} is not one of "
                "Microsoft's login hosts (public or national cloud); the client secret is not sent there. "
                'A local token service needs the extra "sandbox": true',
                code="UntrustedAuthority",
            )
        cap = extra.get("retry_after_max_seconds")
        return cls(
            org_url=org_url,
            client_id=(conn.login or "").strip(),
            client_secret=conn.password or "",
            tenant_id=(extra.get("tenant_id") or "").strip() or None,
            authority_host=authority_origin,
            ca_bundle=extra.get("ca_bundle") or None,
            sandbox=sandbox,
            verify_extra=verify_extra,
            conn_id=conn.conn_id,
            retry_after_max_seconds=float(cap) if cap not in (None, "") else RETRY_AFTER_MAX_SECONDS,
        )
