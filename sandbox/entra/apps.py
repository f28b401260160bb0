"""The app registrations of the sandbox tenant, each bound to one Dataverse application user.

User 1 is the documented sandbox app (``SandboxConfig.client_id`` / ``client_secret``); ``extra_app_users`` adds
users 2, 3, ... with deterministic client ids and secrets (``sandbox.config.extra_app_user``), so configuration
and tests can name them. Every app's Dataverse ``systemuserid`` (also the ``oid`` claim of its tokens) is a uuid5 of
its client id.

Revoking an app's secret (sandbox-only, ``POST /_sandbox/apps/<client id>/revoke``) stands for an administrator
deleting the secret in Entra ID, or disabling the application user: from then on the token endpoint refuses the
secret with AADSTS7000215, and the tokens the app already holds are refused by Dataverse with 401 (the sandbox's
early-expiry mechanism, ``TokenIssuer.expire_client``). Real Entra ID would let an issued token live until it
expires; the sandbox cuts it off so a test sees the failure at once.
"""

from __future__ import annotations

import threading
import uuid
from dataclasses import dataclass, field

from sandbox.config import SandboxConfig, extra_app_user


def application_user_id(client_id: str) -> str:
    """The ``systemuserid`` of the application user bound to an app registration."""
    return str(uuid.uuid5(uuid.NAMESPACE_URL, f"sandbox-application-user:{client_id}"))


@dataclass(frozen=True)
class AppUser:
    """One app registration and its application user. ``number`` 1 is the primary sandbox app."""

    number: int
    client_id: str
    client_secret: str = field(repr=False)

    @property
    def user_id(self) -> str:
        return application_user_id(self.client_id)

    @property
    def name(self) -> str:
        return "# DreamApply Sync" if self.number == 1 else f"# DreamApply Sync {self.number}"


class AppRegistry:
    """The tenant's app registrations; thread-safe (the admin server revokes while the others serve)."""

    def __init__(self, config: SandboxConfig) -> None:
        apps = [AppUser(1, config.client_id, config.client_secret)]
        apps += [AppUser(n, *extra_app_user(n)) for n in range(2, 2 + max(0, int(config.extra_app_users)))]
        if len({a.client_id for a in apps}) != len(apps):
            raise ValueError("the sandbox's app registrations need distinct client ids")
        self.apps: tuple[AppUser, ...] = tuple(apps)
        self._by_client = {a.client_id: a for a in apps}
        self._revoked: set[str] = set()
        self._lock = threading.Lock()

    @property
    def primary(self) -> AppUser:
        return self.apps[0]

    def get(self, client_id: str) -> AppUser | None:
        return self._by_client.get(client_id)

    def secret_ok(self, app: AppUser, secret: str) -> bool:
        """The secret is the app's and has not been revoked."""
        with self._lock:
            revoked = app.client_id in self._revoked
        return not revoked and secret == app.client_secret

    def revoke(self, client_id: str) -> bool:
        """Revoke the app's secret; False for an unknown client id."""
        if client_id not in self._by_client:
            return False
        with self._lock:
            self._revoked.add(client_id)
        return True

    def revoked(self, client_id: str) -> bool:
        with self._lock:
            return client_id in self._revoked

    def describe(self) -> list[dict[str, object]]:
        """For the admin API: ids and state, never a secret."""
        return [
            {"number": a.number, "client_id": a.client_id, "user_id": a.user_id, "revoked": self.revoked(a.client_id)}
            for a in self.apps
        ]
