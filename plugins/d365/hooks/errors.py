"""Typed API errors that carry what an operator needs: status, service error code, message, record.

Messages never contain credentials: hooks build them from response bodies and request paths only.
"""

from __future__ import annotations


class ApiError(Exception):
    """An external API answered with an error (or could not be reached)."""

    service = "api"

    def __init__(
        self,
        message: str,
        *,
        status: int | None = None,
        code: str | None = None,
        record: str | None = None,
        method: str | None = None,
        path: str | None = None,
    ) -> None:
        self.status = status
        self.code = code or ""
        self.message = message
        self.record = record
        self.method = method
        self.path = path
        super().__init__(self.describe())

    def describe(self) -> str:
        parts = [self.service]
        if self.status is not None:
            parts.append(f"HTTP {self.status}")
        if self.code:
            parts.append(f"code {self.code}")
        if self.method and self.path:
            parts.append(f"{self.method} {self.path}")
        if self.record:
            parts.append(f"record {self.record}")
        return f"{' | '.join(parts)}: {self.message}"

    @property
    def retryable(self) -> bool:
        """True for faults that a later attempt may not meet (throttling, 5xx, network)."""
        return self.status is None or self.status == 429 or self.status >= 500


# -- Dynamics 365 ---------------------------------------------------------------------------
class DynamicsError(ApiError):
    service = "Dynamics 365"


class DynamicsAuthError(DynamicsError):
    """Token could not be obtained (AADSTS error) or was refused (401/403). Irrecoverable until fixed."""

    @property
    def retryable(self) -> bool:
        return False


class DynamicsThrottled(DynamicsError):
    """429 from service protection; ``retry_after`` seconds as the server asked."""

    def __init__(self, message: str, *, retry_after: float, **kwargs: object) -> None:
        self.retry_after = retry_after
        super().__init__(message, **kwargs)  # type: ignore[arg-type]


class DynamicsValidationError(DynamicsError):
    """400: the record does not fit the table (too long, bad option, unknown column...)."""

    @property
    def retryable(self) -> bool:
        return False


class DynamicsNotFound(DynamicsError):
    @property
    def retryable(self) -> bool:
        return False


class DynamicsConflict(DynamicsError):
    """412 (precondition, duplicate key) or 500 0x80040333 (duplicate detection)."""

    @property
    def retryable(self) -> bool:
        return False


# -- DreamApply ----------------------------------------------------------------------------
class DreamApplyError(ApiError):
    service = "DreamApply"


class DreamApplyAuthError(DreamApplyError):
    """401: the API key is missing, expired or revoked. Irrecoverable until fixed."""

    @property
    def retryable(self) -> bool:
        return False
