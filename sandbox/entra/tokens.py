"""Access tokens as Entra issues them to a confidential client: signed JWTs with aud, tid, appid, exp.

The Dataverse server verifies them here. Tokens can be expired early (sandbox-only control) to test
refresh mid-run: all of them (``expire_all``), or one app's (``expire_client``, when its secret is revoked).
"""

from __future__ import annotations

import secrets
import threading
import time
import uuid
from dataclasses import dataclass
from typing import Any

import jwt


class TokenRejected(Exception):
    """The bearer token is missing, malformed, for another audience, or expired."""

    def __init__(self, reason: str, expired: bool = False) -> None:
        super().__init__(reason)
        self.reason = reason
        self.expired = expired


@dataclass(frozen=True)
class TokenClaims:
    client_id: str
    tenant_id: str
    audience: str
    object_id: str
    issued_at: float
    expires_at: float


class TokenIssuer:
    def __init__(self, tenant_id: str, issuer_url: str, lifetime_seconds: int) -> None:
        self.tenant_id = tenant_id
        self.issuer_url = issuer_url
        self.lifetime_seconds = lifetime_seconds
        self._key = secrets.token_bytes(32)
        self._revoked_before = 0.0
        self._client_revoked_before: dict[str, float] = {}
        self._lock = threading.Lock()
        self.issued = 0

    def issue(self, client_id: str, audience: str, object_id: str) -> tuple[str, int]:
        now = time.time()
        lifetime = self.lifetime_seconds
        claims = {
            "aud": audience,
            "iss": self.issuer_url,
            "iat": now,
            "nbf": int(now),
            "exp": int(now) + lifetime,
            "appid": client_id,
            "oid": object_id,
            "tid": self.tenant_id,
            "jti": uuid.uuid4().hex,
            "ver": "1.0",
        }
        with self._lock:
            self.issued += 1
        return jwt.encode(claims, self._key, algorithm="HS256"), lifetime

    def verify(self, token: str, audience: str) -> TokenClaims:
        try:
            claims: dict[str, Any] = jwt.decode(
                token,
                self._key,
                algorithms=["HS256"],
                audience=[audience, audience.rstrip("/") + "/"],
                options={"require": ["exp", "aud", "appid", "tid"]},
            )
        except jwt.ExpiredSignatureError as exc:
            raise TokenRejected("The token is expired", expired=True) from exc
        except jwt.InvalidAudienceError as exc:
            raise TokenRejected("The token audience is not this organization") from exc
        except jwt.PyJWTError as exc:
            raise TokenRejected("The token could not be validated") from exc
        with self._lock:
            revoked_before = max(self._revoked_before, self._client_revoked_before.get(str(claims["appid"]), 0.0))
        if claims["iat"] <= revoked_before:
            raise TokenRejected("The token is expired", expired=True)
        return TokenClaims(
            client_id=claims["appid"],
            tenant_id=claims["tid"],
            audience=claims["aud"],
            object_id=claims.get("oid", ""),
            issued_at=claims["iat"],
            expires_at=claims["exp"],
        )

    def expire_all(self) -> float:
        """Sandbox-only: every token issued so far stops working now (early expiry)."""
        with self._lock:
            self._revoked_before = time.time()
            return self._revoked_before

    def expire_client(self, client_id: str) -> float:
        """Sandbox-only: every token issued so far to one app stops working now (its secret was revoked)."""
        with self._lock:
            at = self._client_revoked_before[client_id] = time.time()
            return at


def peek_client_id(token: str) -> str | None:
    """The caller's client id without verifying the signature (for the request log and throttling keys)."""
    try:
        return jwt.decode(token, options={"verify_signature": False}).get("appid")
    except jwt.PyJWTError:
        return None
