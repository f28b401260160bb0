"""The ``dynamics365`` Airflow connection read into settings, with its transport policy applied.

Connection: host = Organization URL (with or without scheme), login = application (client) id, password = client
secret, extras ``tenant_id`` (else discovered from the org's 401 challenge), ``authority_host`` (national clouds, or
a local token service), ``ca_bundle`` (PEM to verify TLS against), ``sandbox``, ``verify`` and
``retry_after_max_seconds``. ``http://``, ``verify: false`` and a non-Microsoft authority are refused unless the
connection is marked ``"sandbox": true`` (``d365.hooks.connection_policy``).

Credential pool: the extra ``"pool": ["dynamics365_user2", "dynamics365_user3"]`` names further ``dynamics365``
connections, each an application user of the same organization and tenant with its own secret (masked in the
Airflow UI). Service-protection limits are per user, so the load spreads its batches over them
(``d365.hooks.dynamics_pool``). ``check_pool_member`` refuses a member of another organization or tenant, the
primary's own application user again, or a member that names a pool of its own; errors name the connection id and
the client id, never a secret.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

from d365.hooks.connection_policy import check_transport, is_sandbox, verify_from_extra
from d365.hooks.dynamics_auth import is_microsoft_login_host, normalise_origin
from d365.hooks.errors import DynamicsAuthError, DynamicsError
from d365.hooks.throttle import RETRY_AFTER_MAX_SECONDS


class PoolConfigError(DynamicsError):
    """The ``pool`` extra names connections that cannot share the load (another org or tenant, the same user
    twice, a malformed list). A configuration error: retrying does not help."""

    @property
    def retryable(self) -> bool:
        return False


def parse_pool(conn_id: str, value: Any) -> tuple[str, ...]:
    """The connection ids of the ``pool`` extra: a JSON list of ids (or one comma-separated text); none → ()."""
    if value is None or value == "":
        return ()
    items = value.split(",") if isinstance(value, str) else value
    if not isinstance(items, list | tuple) or not all(isinstance(i, str) for i in items):
        raise PoolConfigError(
            f"connection {conn_id!r}: the extra pool must be a list of Airflow connection ids", code="PoolConfig"
        )
    ids = tuple(i.strip() for i in items if i.strip())
    repeated = sorted({i for i in ids if ids.count(i) > 1})
    if repeated:
        raise PoolConfigError(f"connection {conn_id!r}: the pool names {repeated} more than once", code="PoolConfig")
    if conn_id in ids:
        raise PoolConfigError(
            f"connection {conn_id!r}: the pool names the connection itself; list the other application users only",
            code="PoolConfig",
        )
    return ids


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
    pool: tuple[str, ...] = ()  # extra "pool": connection ids of further application users (same org and tenant)

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
            pool=parse_pool(conn.conn_id, extra.get("pool")),
        )


def check_pool_member(primary: DynamicsConnectionSettings, member: DynamicsConnectionSettings) -> None:
    """Refuse a pool member that cannot carry the primary's load: another organization or tenant, the primary's
    own application user, or a pool of its own. The message names the member's connection and client id."""
    where = f"connection {member.conn_id!r} (client {member.client_id}) in the pool of {primary.conn_id!r}"
    problem = None
    if member.org_url != primary.org_url:
        problem = f"its organization {member.org_url} is not {primary.org_url}"
    elif member.tenant_id and primary.tenant_id and member.tenant_id.lower() != primary.tenant_id.lower():
        problem = f"its tenant {member.tenant_id} is not {primary.tenant_id}"
    elif member.client_id.lower() == primary.client_id.lower():
        problem = "it is the primary's own application user (same client id); list other application users"
    elif member.pool:
        problem = "it names a pool of its own; only the primary connection names the pool"
    if problem:
        raise PoolConfigError(f"{where}: {problem}", code="PoolConfig")
