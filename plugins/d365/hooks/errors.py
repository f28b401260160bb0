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


class MalformedAnswer(ApiError):
    """A 2xx answer that is not what the endpoint promises: an HTML page, a JSON error object, an empty or cut
    body, a body in another encoding than it declares, or JSON of the wrong shape (a collection without its
    rows, a map holding non-records).

    Never "no data": a proxy's maintenance page or a half-sent body says nothing about the resource, so the
    read is retried (the hooks do, a bounded number of times) and then fails the task. ``code`` names the
    kind (``HtmlPage``, ``ErrorObject``, ``EmptyBody``, ``InvalidJson``, ``WrongEncoding``, ``WrongShape``);
    the message names the endpoint and the shape, never a body value (it may hold personal data).
    """

    @property
    def retryable(self) -> bool:
        return True


# -- Dynamics 365 ---------------------------------------------------------------------------
class DynamicsError(ApiError):
    service = "Dynamics 365"


class DynamicsMalformedAnswer(DynamicsError, MalformedAnswer):
    """A Dataverse answer with a success status whose body is not the promised JSON (see MalformedAnswer)."""


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


class DynamicsPagingError(DynamicsError):
    """An ``@odata.nextLink`` that cannot be followed: the same page again (a loop) or another origin (it would
    receive the bearer token). Codes ``NextLinkRepeated`` (retryable: a later run may page normally) and
    ``NextLinkForeignOrigin`` (not retryable: refused on principle)."""

    @property
    def retryable(self) -> bool:
        return self.code == "NextLinkRepeated"


class DynamicsConflict(DynamicsError):
    """412 (precondition, duplicate key) or 500 0x80040333 (duplicate detection)."""

    @property
    def retryable(self) -> bool:
        return False


# -- DreamApply ----------------------------------------------------------------------------
class DreamApplyError(ApiError):
    service = "DreamApply"


class DreamApplyMalformedAnswer(DreamApplyError, MalformedAnswer):
    """A DreamApply answer with a success status whose body is not the promised JSON (see MalformedAnswer)."""


class DreamApplyAuthError(DreamApplyError):
    """401: the API key is missing, expired or revoked. Irrecoverable until fixed."""

    @property
    def retryable(self) -> bool:
        return False


# -- Dynamics 365: response → typed error ---------------------------------------------------
DUPLICATE_DETECTED = "0x80040333"  # 500: rule-based duplicate detection hit (not transient)


def parse_retry_after(value: str | None, default: float, cap: float | None = None) -> float:
    """Seconds from a ``Retry-After`` header: ``d365.hooks.throttle.retry_after_seconds`` (capped, nonsense handled)."""
    from d365.hooks.throttle import RETRY_AFTER_MAX_SECONDS, retry_after_seconds

    seconds = retry_after_seconds(value, default=default, cap=RETRY_AFTER_MAX_SECONDS if cap is None else cap)
    return default if seconds is None else seconds


def parse_odata_error(body: object) -> tuple[str, str]:
    """(code, message) from ``{"error": {"code", "message"}}``; empty strings when the body has another shape."""
    if isinstance(body, dict):
        error = body.get("error")
        if isinstance(error, dict):
            return str(error.get("code") or ""), str(error.get("message") or "")
    return "", ""


def dynamics_error_from_response(
    status: int,
    headers: dict[str, str] | None,
    body: object,
    *,
    method: str | None = None,
    path: str | None = None,
    record: str | None = None,
    default_retry_after: float = 5.0,
) -> DynamicsError:
    """Map one Dataverse error answer (a plain response or a ``$batch`` part) to its typed error.

    ``body`` is the parsed JSON (or None / raw text). ``path`` must already be free of the query string.
    """
    code, message = parse_odata_error(body)
    if not message:
        message = f"HTTP {status} without an OData error body"
    kwargs: dict[str, object] = {"status": status, "code": code, "method": method, "path": path, "record": record}
    lower = {k.lower(): v for k, v in (headers or {}).items()}
    if status == 429:
        retry_after = parse_retry_after(lower.get("retry-after"), default_retry_after)
        return DynamicsThrottled(message, retry_after=retry_after, **kwargs)
    if status in (401, 403):
        return DynamicsAuthError(message, **kwargs)  # type: ignore[arg-type]
    if status == 404:
        return DynamicsNotFound(message, **kwargs)  # type: ignore[arg-type]
    if status == 412 or (status == 500 and code.lower() == DUPLICATE_DETECTED):
        return DynamicsConflict(message, **kwargs)  # type: ignore[arg-type]
    if status == 400:
        return DynamicsValidationError(message, **kwargs)  # type: ignore[arg-type]
    return DynamicsError(message, **kwargs)  # type: ignore[arg-type]
