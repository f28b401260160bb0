"""Airflow hook for the Dynamics 365 (Dataverse) Web API v9.2: auth, retries, metadata, owners, upserts, $batch.

Connection (type ``dynamics365``): host = Organization URL (with or without scheme), login = application
(client) id, password = client secret, extras ``tenant_id`` (else discovered from the org's 401 challenge),
``authority_host`` (national clouds, or a local token service) and ``ca_bundle`` (PEM to verify TLS against).

Design points (see the Dataverse reference, §1, §2, §5-§7):

* The constructor only stores arguments; everything network-bound happens on first use (``get_conn()``).
* One ``requests.Session`` with a keep-alive pool sized for parallel workers and a cookie jar that rejects
  every cookie: the ``ARRAffinity`` cookie is never sent back, so requests spread over the web servers.
  ``verify=`` is passed on every request (``REQUESTS_CA_BUNDLE`` would override ``Session.verify``).
* Every request passes one ``Throttle`` (``d365.hooks.throttle``) shared by all threads using this hook,
  because limits are per user: a 429 pauses every thread for the server's ``Retry-After`` (plus jitter) and
  halves the concurrency, which then grows back; requests are paced against the window's request and
  execution-time budgets (connection extras ``throttle_window_seconds``, ``throttle_max_requests``,
  ``throttle_max_execution_ms``, ``throttle_safety_margin``, ``max_concurrency``; ``x-ms-dop-hint`` from
  WhoAmI lowers the cap).
* Retries (tenacity): a 429 is resent once the shared pause is over; transient 5xx, timeouts and connection
  errors back off exponentially with jitter but only for idempotent calls (GET/PATCH/PUT/DELETE, or a
  ``$batch`` the caller marks idempotent). A POST create is never resent after it may have reached the server.
* Errors are typed (``d365.hooks.errors``) and carry status, code, method, path (no query string) and the
  caller's record id, never tokens, secrets or request bodies.
"""

from __future__ import annotations

import json
import random
import re
import threading
import time
import uuid
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from http.cookiejar import DefaultCookiePolicy
from typing import Any, NamedTuple
from urllib.parse import quote, unquote, unquote_plus, urljoin, urlsplit

import requests
from airflow.sdk import BaseHook
from requests.adapters import HTTPAdapter
from requests.auth import AuthBase
from tenacity import RetryCallState, Retrying, retry_if_exception, stop_after_attempt

from d365.hooks.answers import Where, odata_collection, odata_entity, read_json
from d365.hooks.connection_policy import check_transport, is_sandbox, verify_from_extra
from d365.hooks.dynamics_auth import (
    DEFAULT_AUTHORITY_HOST,
    Authority,
    MsalTokenAuth,
    TokenServiceUnavailable,
    VerifiedHttpClient,
    authority_from_challenge,
    is_microsoft_login_host,
    normalise_origin,
)
from d365.hooks.dynamics_batch import (
    MAX_BATCH_OPERATIONS,
    BatchOperation,
    BatchResult,
    build_batch,
    map_batch_results,
    parse_batch_response,
)
from d365.hooks.errors import (
    DynamicsAuthError,
    DynamicsConflict,
    DynamicsError,
    DynamicsMalformedAnswer,
    DynamicsNotFound,
    DynamicsPagingError,
    DynamicsThrottled,
    dynamics_error_from_response,
    parse_retry_after,
)
from d365.hooks.throttle import RETRY_AFTER_MAX_SECONDS, Throttle, ThrottleSettings, Ticket

__all__ = [
    "MAX_BATCH_OPERATIONS",
    "AlternateKey",
    "AttributeInfo",
    "BatchOperation",
    "BatchResult",
    "DynamicsConnectionSettings",
    "DynamicsHook",
    "EntityMetadata",
    "UpsertResult",
    "entity_path",
    "key_segment",
    "odata_literal",
]

API_PATH = "/api/data/v9.2/"
IDEMPOTENT_METHODS = frozenset({"GET", "HEAD", "PUT", "PATCH", "DELETE"})
GUID_RE = re.compile(r"^[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}$")
_ENTITY_ID_RE = re.compile(r"\(([0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12})\)\s*$")
# Characters kept literally in query values (OData syntax); everything else (space, &, +, #, non-ASCII) is escaped.
_QUERY_SAFE = "$'(),:/@*=;!"
# Characters kept literally inside a key segment value; the OData quote ' stays readable.
_KEY_SAFE = "'"
ENUM_TYPES = ("Picklist", "State", "Status", "Boolean")
_OPTION_CASTS = {
    "Picklist": "PicklistAttributeMetadata",
    "State": "StateAttributeMetadata",
    "Status": "StatusAttributeMetadata",
}


class _RejectAllCookies(DefaultCookiePolicy):
    """Never store (hence never send back) a cookie: no ARRAffinity stickiness to one web server."""

    def set_ok(self, cookie: Any, request: Any) -> bool:
        return False

    def return_ok(self, cookie: Any, request: Any) -> bool:
        return False


class _NoAuth(AuthBase):
    """Explicitly unauthenticated (``auth=None`` would fall back to the session's auth)."""

    def __call__(self, r: requests.PreparedRequest) -> requests.PreparedRequest:
        r.headers.pop("Authorization", None)
        return r


class _DataverseSession(requests.Session):
    """A session that always verifies against the configured CA and always has a timeout."""

    def __init__(self, verify: str | bool, timeout: float, pool_size: int) -> None:
        super().__init__()
        self.ca_verify = verify
        self.default_timeout = timeout
        self.cookies.set_policy(_RejectAllCookies())
        adapter = HTTPAdapter(pool_connections=4, pool_maxsize=pool_size, max_retries=0)
        self.mount("https://", adapter)
        self.mount("http://", adapter)

    def request(self, method: str | bytes, url: str | bytes, *args: Any, **kwargs: Any) -> requests.Response:  # type: ignore[override]
        kwargs["verify"] = self.ca_verify
        if kwargs.get("timeout") is None:
            kwargs["timeout"] = self.default_timeout
        return super().request(method, url, *args, **kwargs)


# -- URL helpers --------------------------------------------------------------------------------------------
def odata_literal(value: Any) -> str:
    """An OData literal: strings single-quoted with ``'`` doubled, GUIDs/numbers bare, booleans true/false."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, uuid.UUID):
        return str(value)
    if value is None:
        return "null"
    return "'" + str(value).replace("'", "''") + "'"


def key_segment(key: str | uuid.UUID | Mapping[str, Any]) -> str:
    """``(<guid>)`` for a primary key or ``(name='value',...)`` for an alternate key, URL-encoded."""
    if isinstance(key, Mapping):
        if not key:
            raise ValueError("an alternate key needs at least one column")
        parts = []
        for name, value in key.items():
            if value is None:
                raise ValueError(f"alternate key column {name!r} has no value")
            literal = odata_literal(value) if not isinstance(value, uuid.UUID) else str(value)
            parts.append(f"{name.lower()}={quote(literal, safe=_KEY_SAFE)}")
        return "(" + ",".join(parts) + ")"
    text = str(key).strip().strip("{}")
    if not GUID_RE.match(text):
        raise ValueError(f"not a GUID: {key!r} (pass a dict for an alternate key)")
    return f"({text.lower()})"


def entity_path(entity_set: str, key: str | uuid.UUID | Mapping[str, Any]) -> str:
    """``leads(<guid>)`` or ``leads(uni_applicantid='O''Brien')``, relative to the Web API root."""
    return f"{entity_set}{key_segment(key)}"


def _query_string(params: Mapping[str, Any]) -> str:
    return "&".join(f"{name}={quote(str(value), safe=_QUERY_SAFE)}" for name, value in params.items() if value)


def _page_key(url: str) -> tuple[str, str, str]:
    """A page URL compared by meaning: origin, decoded path and decoded query (encodings of one URL differ)."""
    parts = urlsplit(url)
    return normalise_origin(url), unquote(parts.path), unquote_plus(parts.query)


def _guess_primary_id(entity_set: str) -> str:
    # leads → leadid, systemusers → systemuserid; metadata reads replace the guess when available.
    name = entity_set[:-1] if entity_set.endswith("s") else entity_set
    return f"{name}id"


# -- result types -------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class DynamicsConnectionSettings:
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


class UpsertResult(NamedTuple):
    status: int
    entity_id: str | None  # GUID when known (GUID key, representation, or a GUID OData-EntityId)
    created: bool | None  # True 201 / False 200 with return_representation; None for 204
    etag: str | None


@dataclass
class AttributeInfo:
    logical_name: str
    type: str
    max_length: int | None = None
    valid_for_create: bool = True
    valid_for_update: bool = True
    required_level: str = "None"
    options: dict[int, str] | None = None  # Picklist/State/Status/Boolean: value -> label
    format: str | None = None
    date_behavior: str | None = None  # DateTime: UserLocal, DateOnly, TimeZoneIndependent


@dataclass
class EntityMetadata:
    logical_name: str
    entity_set_name: str
    primary_id: str
    primary_name: str | None
    attributes: dict[str, AttributeInfo]


class AlternateKey(NamedTuple):
    schema_name: str
    key_attributes: list[str]
    status: str  # EntityKeyIndexStatus: Pending, InProgress, Active, Failed


def _label(label: Any, language_code: int = 1033) -> str | None:
    if not isinstance(label, dict):
        return None
    user = label.get("UserLocalizedLabel")
    if isinstance(user, dict) and user.get("Label") is not None:
        return str(user["Label"])
    localized = label.get("LocalizedLabels") or []
    for item in localized:
        if item.get("LanguageCode") == language_code:
            return str(item.get("Label"))
    return str(localized[0].get("Label")) if localized else None


# -- the hook -------------------------------------------------------------------------------------------------
class DynamicsHook(BaseHook):
    """Dataverse Web API client for one Airflow connection; safe to share between worker threads."""

    conn_name_attr = "dynamics365_conn_id"
    default_conn_name = "dynamics365_default"
    conn_type = "dynamics365"
    hook_name = "Dynamics 365"

    api_path = API_PATH
    pool_size = 64
    # Exponential backoff for transient faults: min(backoff_max, backoff_base * 2**(n-1)), half of it jittered.
    backoff_base = 0.5
    backoff_max = 30.0
    # Used when a 429 carries no Retry-After.
    default_retry_after = 5.0

    def __init__(
        self,
        dynamics365_conn_id: str = default_conn_name,
        *,
        timeout: float = 120,
        max_retries: int = 6,
        throttle: Mapping[str, Any] | ThrottleSettings | None = None,
    ) -> None:
        super().__init__()
        self.dynamics365_conn_id = dynamics365_conn_id
        self.timeout = float(timeout)
        self.max_retries = int(max_retries)
        self.dop_hint: int | None = None
        self.stats: dict[str, float] = {
            "requests": 0,
            "retries": 0,
            "throttled": 0,
            "throttle_wait_seconds": 0.0,
            "auth_refreshes": 0,
        }
        self._stats_lock = threading.Lock()
        self._init_lock = threading.RLock()
        # Operator-given throttle settings win over connection extras (applied on first use of the settings).
        self._throttle_overrides = throttle
        base = throttle if isinstance(throttle, ThrottleSettings) else ThrottleSettings().updated(throttle)
        self.throttle = Throttle(base)
        self._throttle_configured = False
        self._settings: DynamicsConnectionSettings | None = None
        self._session: _DataverseSession | None = None
        self._auth: MsalTokenAuth | None = None
        self._authority: Authority | None = None
        self._primary_ids: dict[str, str] = {}

    # -- setup ------------------------------------------------------------------------------------------------
    @property
    def settings(self) -> DynamicsConnectionSettings:
        if self._settings is None:
            with self._init_lock:
                if self._settings is None:
                    conn = self.get_connection(self.dynamics365_conn_id)
                    self._settings = DynamicsConnectionSettings.from_connection(conn)
                    self._configure_throttle(conn.extra_dejson or {})
        return self._settings

    def _configure_throttle(self, extras: Mapping[str, Any]) -> None:
        """Throttle budgets from the connection's extras, then the hook's own arguments on top."""
        if self._throttle_configured:
            return
        self._throttle_configured = True
        overrides = self._throttle_overrides
        if isinstance(overrides, ThrottleSettings):
            return
        settings = ThrottleSettings().updated(extras).updated(overrides)
        self.throttle.configure(settings, dop_hint=self.dop_hint)

    @property
    def org_url(self) -> str:
        return self.settings.org_url

    @property
    def web_api_url(self) -> str:
        return self.org_url + self.api_path.rstrip("/")

    def get_conn(self) -> requests.Session:
        """The authenticated session (built once; tenant discovery and MSAL set-up happen here)."""
        if self._session is not None and self._auth is not None:
            return self._session
        with self._init_lock:
            if self._session is None:
                self._session = _DataverseSession(self.settings.verify, self.timeout, self.pool_size)
            if self._auth is None:
                authority = self._resolve_authority()
                s = self.settings
                token_timeout = min(self.timeout, 60.0)
                self._auth = MsalTokenAuth(
                    client_id=s.client_id,
                    client_secret=s.client_secret,
                    authority=authority,
                    resource=s.org_url,
                    verify=s.verify,
                    timeout=token_timeout,
                    on_refresh=lambda: self._bump("auth_refreshes"),
                    conn_id=s.conn_id,
                    # a custom token service only when named explicitly on a sandbox connection
                    custom_authority_host=s.authority_host if s.sandbox else None,
                    discovered=not s.tenant_id,
                    http_client=VerifiedHttpClient(
                        verify=s.verify, timeout=token_timeout, retry_after_max_seconds=s.retry_after_max_seconds
                    ),
                )
                self._session.auth = self._auth
        return self._session

    def _resolve_authority(self) -> Authority:
        """Authority from the tenant_id extra, else from the Bearer challenge of an unauthenticated GET."""
        if self._authority is not None:
            return self._authority
        s = self.settings
        if s.tenant_id:
            self._authority = Authority(host=s.authority_host or DEFAULT_AUTHORITY_HOST, tenant=s.tenant_id)
        else:
            response = self._request("GET", "", authenticate=False, expect_status=401)
            self._authority = authority_from_challenge(
                response.headers.get("WWW-Authenticate"), authority_host=s.authority_host
            )
            self.log.info("Dynamics 365: tenant %s discovered from %s", self._authority.tenant, s.org_url)
        return self._authority

    def close(self) -> None:
        """Release pooled connections (the hook can be used again afterwards)."""
        with self._init_lock:
            if self._session is not None:
                self._session.close()
            if self._auth is not None:
                self._auth.close()
            self._session = None
            self._auth = None

    # -- counters / throttling gate ---------------------------------------------------------------------------
    def _bump(self, name: str, amount: float = 1) -> None:
        with self._stats_lock:
            self.stats[name] = self.stats.get(name, 0) + amount

    def _admit(self) -> Ticket:
        """Pass the shared throttle's gate (Retry-After pause, concurrency, budgets); returns its ticket."""
        ticket = self.throttle.acquire()
        if ticket.waited > 0:
            self._bump("throttle_wait_seconds", ticket.waited)
        return ticket

    def _transmit(
        self,
        session: requests.Session,
        method: str,
        url: str,
        body: bytes | None,
        headers: dict[str, str],
        auth: AuthBase | None,
        ticket: Ticket,
    ) -> requests.Response:
        """The actual HTTP call (one attempt, admitted by the throttle as ``ticket``)."""
        return session.request(method, url, data=body, headers=headers, auth=auth, timeout=self.timeout)

    # -- the request core -------------------------------------------------------------------------------------
    def _url(self, path: str) -> str:
        if path.startswith(("https://", "http://")):
            return path
        return self.org_url + self.api_path + path.lstrip("/")

    def _request(
        self,
        method: str,
        path: str,
        *,
        json_body: Any = None,
        data: bytes | None = None,
        headers: Mapping[str, str] | None = None,
        record: str | None = None,
        idempotent: bool | None = None,
        authenticate: bool = True,
        expect_status: int | None = None,
        multipart_errors: bool = False,
        read: Callable[[requests.Response], None] | None = None,
    ) -> requests.Response:
        """One logical call with retries. Raises a typed ``DynamicsError`` for any error answer.

        ``expect_status``: an error status that is the expected answer (the 401 of tenant discovery).
        ``multipart_errors``: return (do not raise) an error answer with a multipart body (a stopped $batch).
        ``read``: checks (and keeps) the body of each answer inside the retry loop; a
        ``DynamicsMalformedAnswer`` it raises is retried when the call is idempotent (``_request_json``).
        """
        method = method.upper()
        if idempotent is None:
            idempotent = method in IDEMPOTENT_METHODS
        url = self._url(path)
        log_path = unquote(urlsplit(url).path)
        send_headers = {
            "Accept": "application/json",
            "OData-MaxVersion": "4.0",
            "OData-Version": "4.0",
        }
        if method == "GET":
            send_headers["If-None-Match"] = "null"
        body = data
        if json_body is not None:
            body = json.dumps(json_body, ensure_ascii=False, separators=(",", ":")).encode("utf-8")
            send_headers["Content-Type"] = "application/json"
        send_headers.update(headers or {})

        def attempt() -> requests.Response:
            response = self._send(
                method,
                url,
                body,
                send_headers,
                record=record,
                log_path=log_path,
                authenticate=authenticate,
                expect_status=expect_status,
                multipart_errors=multipart_errors,
            )
            if read is not None:
                read(response)
            return response

        retrying = Retrying(
            stop=stop_after_attempt(max(1, self.max_retries + 1)),
            wait=self._wait,
            retry=retry_if_exception(lambda exc: self._should_retry(exc, idempotent)),
            before_sleep=self._before_sleep,
            reraise=True,
        )
        return retrying(attempt)

    def _send(
        self,
        method: str,
        url: str,
        body: bytes | None,
        headers: dict[str, str],
        *,
        record: str | None,
        log_path: str,
        authenticate: bool,
        expect_status: int | None,
        multipart_errors: bool,
    ) -> requests.Response:
        if authenticate:
            session = self.get_conn()
            auth: AuthBase | None = None
        else:
            if self._session is None:
                with self._init_lock:
                    if self._session is None:
                        self._session = _DataverseSession(self.settings.verify, self.timeout, self.pool_size)
            session = self._session
            auth = _NoAuth()
        response = self._send_once(session, method, url, body, headers, auth, record, log_path)
        if response.status_code == 401 and authenticate and self._auth is not None:
            # The token was refused (expired early, revoked): drop it from MSAL's cache and try once more.
            self._auth.invalidate(MsalTokenAuth.token_of(response.request))
            response = self._send_once(session, method, url, body, headers, auth, record, log_path)
        status = response.status_code
        if status < 400 or status == expect_status:
            return response
        content_type = response.headers.get("Content-Type", "")
        if multipart_errors and content_type.lower().startswith("multipart/"):
            return response
        try:
            parsed: Any = response.json() if response.content else None
        except ValueError:
            parsed = None
        error = dynamics_error_from_response(
            status,
            dict(response.headers),
            parsed,
            method=method,
            path=log_path,
            record=record,
            default_retry_after=self.default_retry_after,
        )
        if isinstance(error, DynamicsThrottled):
            self._bump("throttled")  # the throttle already paused every thread (in _send_once)
            self.log.warning(
                "Dynamics 365: throttled (%s) on %s %s, Retry-After %.1f s",
                error.code,
                method,
                log_path,
                error.retry_after,
            )
        raise error

    def _send_once(
        self,
        session: requests.Session,
        method: str,
        url: str,
        body: bytes | None,
        headers: dict[str, str],
        auth: AuthBase | None,
        record: str | None,
        log_path: str,
    ) -> requests.Response:
        ticket = self._admit()
        started = time.monotonic()
        status: int | None = None
        retry_after: float | None = None
        try:
            response = self._transmit(session, method, url, body, headers, auth, ticket)
            status = response.status_code
            if status == 429:
                retry_after = parse_retry_after(
                    response.headers.get("Retry-After"),
                    self.default_retry_after,
                    self.throttle.settings.retry_after_max_seconds,
                )
        except requests.RequestException as exc:
            # The cause's text names the whole URL (urllib3: "Max retries exceeded with url: …?$filter=…"), whose
            # query may hold e-mail addresses: only its type is logged and kept, and the typed error is raised
            # outside this block (``from None``), so no traceback carries the cause.
            if isinstance(exc, requests.Timeout):
                code, what = "Timeout", f"no answer within {self.timeout:.0f} s"
            elif isinstance(exc, requests.ConnectionError):
                code, what = "ConnectionError", "connection failed"
            else:
                code, what = "RequestError", "the request failed"
            cause = type(exc).__name__
            transport = DynamicsError(f"{what} ({cause})", code=code, method=method, path=log_path, record=record)
        else:
            transport = None
        finally:
            # Learning of a 429 and admitting the next request happen under the throttle's lock.
            self.throttle.release(ticket, status, retry_after)
        self._bump("requests")
        if transport is not None:
            self.log.warning("Dynamics 365: %s %s: %s", method, log_path, transport.message)
            raise transport from None
        self.log.debug(
            "Dynamics 365: %s %s -> %s (%.0f ms)",
            method,
            log_path,
            response.status_code,
            (time.monotonic() - started) * 1000,
        )
        return response

    def _should_retry(self, exc: BaseException, idempotent: bool) -> bool:
        if isinstance(exc, DynamicsThrottled):
            # Service protection refuses a request before running it, so even a POST is safe to resend.
            return True
        if isinstance(exc, DynamicsMalformedAnswer):
            return idempotent  # a lying 200 (proxy page, cut body): the request may have run
        if isinstance(exc, DynamicsAuthError | DynamicsConflict) or not isinstance(exc, DynamicsError):
            return False
        if isinstance(exc, TokenServiceUnavailable):
            return False  # the token client already retried it (bounded); the caller or the task retries next
        if exc.status is None and exc.code == "TokenEndpointUnreachable":
            return True  # nothing reached Dataverse
        if exc.status is None or exc.status >= 500:
            return idempotent  # the request may have run: only resend what is safe to repeat
        return False

    def _wait(self, retry_state: RetryCallState) -> float:
        exc = retry_state.outcome.exception() if retry_state.outcome else None
        if isinstance(exc, DynamicsThrottled):
            return 0.0  # the throttle's gate waits the Retry-After (shared by all threads) before the next send
        ceiling = min(self.backoff_max, self.backoff_base * 2 ** (retry_state.attempt_number - 1))
        return ceiling / 2 + random.uniform(0, ceiling / 2)

    def _before_sleep(self, retry_state: RetryCallState) -> None:
        self._bump("retries")
        exc = retry_state.outcome.exception() if retry_state.outcome else None
        if isinstance(exc, DynamicsThrottled):
            wait = self.throttle.paused_for()
        else:
            wait = retry_state.next_action.sleep if retry_state.next_action else 0.0
        self.log.info(
            "Dynamics 365: retry %d after %s (waiting %.2f s)",
            retry_state.attempt_number,
            exc.describe() if isinstance(exc, DynamicsError) else type(exc).__name__,
            wait,
        )

    def _request_json(
        self,
        method: str,
        path: str,
        *,
        shape: Callable[[Any, Where], Any] = lambda body, where: body,
        **kwargs: Any,
    ) -> tuple[requests.Response, Any]:
        """A call whose answer must be JSON of a given ``shape`` (``d365.hooks.answers``), checked inside the
        retry loop: an HTML page, a JSON error object, an empty, cut or wrongly encoded body, or a wrong shape
        is retried like a 5xx (idempotent calls) and then raised as ``DynamicsMalformedAnswer``, never read as
        "no rows"."""
        kept: list[Any] = []

        def read(response: requests.Response) -> None:
            answered = unquote(urlsplit(response.url or "").path)
            where = Where(DynamicsMalformedAnswer, method.upper(), answered, response.status_code)
            kept[:] = [shape(read_json(response.content, response.headers.get("Content-Type"), where), where)]

        response = self._request(method, path, read=read, **kwargs)
        return response, kept[0]

    def _collection(self, path: str, headers: Mapping[str, str] | None = None) -> dict[str, Any]:
        """One page of a collection: an object with a ``value`` list of rows (checked, see ``_request_json``)."""
        return self._request_json("GET", path, shape=odata_collection, headers=headers)[1]

    def _json(self, response: requests.Response) -> Any:
        if not response.content:
            return None
        try:
            return response.json()
        except ValueError:
            return None

    # -- identity / health ------------------------------------------------------------------------------------
    def whoami(self) -> dict[str, Any]:
        """WhoAmI: proves auth end to end and reads ``x-ms-dop-hint`` (recommended parallelism) into ``dop_hint``."""
        response, who = self._request_json(
            "GET", "WhoAmI", shape=lambda body, where: odata_entity(body, where, ("UserId",))
        )
        hint = response.headers.get("x-ms-dop-hint")
        if hint and hint.strip().isdigit():
            self.dop_hint = int(hint.strip())
            self.throttle.configure(dop_hint=self.dop_hint)
        return who

    def test_connection(self) -> tuple[bool, str]:
        """For the Airflow UI's Test button: a WhoAmI round trip."""
        try:
            who = self.whoami()
        except Exception as exc:  # the UI shows the message; never raise from here
            return False, str(exc)
        return True, f"Connected to {self.org_url} as application user {who.get('UserId')}"

    # -- metadata ---------------------------------------------------------------------------------------------
    def _entity_ref(self, logical_name: str) -> str:
        return f"EntityDefinitions(LogicalName={odata_literal(logical_name)})"

    def _get_values(
        self, path: str, params: Mapping[str, Any], *, strong: bool = False, key: str = "LogicalName"
    ) -> list[dict[str, Any]]:
        """The rows of a metadata collection; each must carry ``key`` (what the caller indexes them by)."""
        headers = {"Consistency": "Strong"} if strong else None
        query = _query_string(params)
        page = self._collection(f"{path}?{query}" if query else path, headers)
        rows: list[dict[str, Any]] = page["value"]
        if any(not isinstance(row.get(key), str) for row in rows):
            where = Where(DynamicsMalformedAnswer, "GET", self.api_path + path)
            raise where.fail("WrongShape", f"a metadata row without {key}")
        return rows

    def get_entity_metadata(self, logical_name: str = "lead", *, strong: bool = False) -> EntityMetadata:
        """What the mapping step validates against: types, lengths, writability and option values.

        ``strong`` sends ``Consistency: Strong`` (right after a metadata change, which caches ~30 s otherwise).
        """
        ref = self._entity_ref(logical_name)
        headers = {"Consistency": "Strong"} if strong else None
        select = {"$select": "LogicalName,EntitySetName,PrimaryIdAttribute,PrimaryNameAttribute"}
        entity = self._request_json(
            "GET",
            f"{ref}?{_query_string(select)}",
            headers=headers,
            shape=lambda body, where: odata_entity(body, where, ("LogicalName", "EntitySetName", "PrimaryIdAttribute")),
        )[1]
        attributes: dict[str, AttributeInfo] = {}
        for row in self._get_values(
            f"{ref}/Attributes",
            {"$select": "LogicalName,AttributeType,IsValidForCreate,IsValidForUpdate,RequiredLevel"},
            strong=strong,
        ):
            required = row.get("RequiredLevel")
            attributes[row["LogicalName"]] = AttributeInfo(
                logical_name=row["LogicalName"],
                type=str(row.get("AttributeType") or ""),
                valid_for_create=bool(row.get("IsValidForCreate")),
                valid_for_update=bool(row.get("IsValidForUpdate")),
                required_level=str(required.get("Value")) if isinstance(required, dict) else str(required or "None"),
            )
        for cast, select in (
            ("StringAttributeMetadata", "LogicalName,MaxLength,Format"),
            ("MemoAttributeMetadata", "LogicalName,MaxLength"),
        ):
            for row in self._get_values(
                f"{ref}/Attributes/Microsoft.Dynamics.CRM.{cast}", {"$select": select}, strong=strong
            ):
                info = attributes.get(row["LogicalName"])
                if info is not None:
                    info.max_length = row.get("MaxLength")
                    info.format = row.get("Format") or info.format
        if any(a.type == "DateTime" for a in attributes.values()):
            # A DateOnly column takes "YYYY-MM-DD"; the mapping must know which columns those are.
            for row in self._get_values(
                f"{ref}/Attributes/Microsoft.Dynamics.CRM.DateTimeAttributeMetadata",
                {"$select": "LogicalName,Format,DateTimeBehavior"},
                strong=strong,
            ):
                info = attributes.get(row["LogicalName"])
                if info is not None:
                    behavior = row.get("DateTimeBehavior")
                    info.format = row.get("Format") or info.format
                    info.date_behavior = behavior.get("Value") if isinstance(behavior, dict) else behavior
        for kind, cast in _OPTION_CASTS.items():
            if not any(a.type == kind for a in attributes.values()):
                continue
            for row in self._get_values(
                f"{ref}/Attributes/Microsoft.Dynamics.CRM.{cast}",
                {"$select": "LogicalName", "$expand": "OptionSet($select=Options)"},
                strong=strong,
            ):
                info = attributes.get(row["LogicalName"])
                options = (row.get("OptionSet") or {}).get("Options") or []
                if info is not None:
                    info.options = {int(o["Value"]): _label(o.get("Label")) or str(o["Value"]) for o in options}
        if any(a.type == "Boolean" for a in attributes.values()):
            for row in self._get_values(
                f"{ref}/Attributes/Microsoft.Dynamics.CRM.BooleanAttributeMetadata",
                {"$select": "LogicalName", "$expand": "OptionSet($select=TrueOption,FalseOption)"},
                strong=strong,
            ):
                info = attributes.get(row["LogicalName"])
                option_set = row.get("OptionSet") or {}
                if info is not None:
                    info.options = {
                        int(o["Value"]): _label(o.get("Label")) or str(o["Value"])
                        for o in (option_set.get("FalseOption"), option_set.get("TrueOption"))
                        if isinstance(o, dict)
                    }
        metadata = EntityMetadata(
            logical_name=entity["LogicalName"],
            entity_set_name=entity["EntitySetName"],
            primary_id=entity["PrimaryIdAttribute"],
            primary_name=entity.get("PrimaryNameAttribute"),
            attributes=attributes,
        )
        self._primary_ids[metadata.entity_set_name] = metadata.primary_id
        return metadata

    def alternate_keys(self, logical_name: str = "lead") -> list[AlternateKey]:
        """Alternate keys and their index status: key-addressed upserts fail until the key is ``Active``."""
        rows = self._get_values(
            f"{self._entity_ref(logical_name)}/Keys",
            {"$select": "SchemaName,KeyAttributes,EntityKeyIndexStatus"},
            key="SchemaName",
        )
        return [
            AlternateKey(
                str(r.get("SchemaName")), list(r.get("KeyAttributes") or []), str(r.get("EntityKeyIndexStatus"))
            )
            for r in rows
        ]

    def insert_option_value(
        self,
        entity: str,
        attribute: str,
        label: str,
        value: int | None = None,
        language_code: int = 1033,
        solution: str | None = None,
    ) -> int:
        """Add an option to a local picklist (``InsertOptionValue``); returns the option's value.

        Not idempotent (a POST action): callers check the metadata first. Follow with ``publish_xml``.
        """
        localized = {
            "@odata.type": "Microsoft.Dynamics.CRM.LocalizedLabel",
            "Label": label,
            "LanguageCode": language_code,
            "IsManaged": False,
        }
        body: dict[str, Any] = {
            "EntityLogicalName": entity,
            "AttributeLogicalName": attribute,
            "Value": value,
            "Label": {
                "@odata.type": "Microsoft.Dynamics.CRM.Label",
                "LocalizedLabels": [localized],
                "UserLocalizedLabel": localized,
            },
        }
        if solution:
            body["SolutionUniqueName"] = solution
        headers = {"MSCRM.SolutionUniqueName": solution} if solution else None
        response = self._request("POST", "InsertOptionValue", json_body=body, headers=headers, record=label)
        result = self._json(response) or {}
        if "NewOptionValue" not in result:
            raise DynamicsError("InsertOptionValue answered without NewOptionValue", status=response.status_code)
        return int(result["NewOptionValue"])

    def publish_xml(self, entity: str) -> None:
        """Publish an entity's customizations (forms and views see new options). Safe to repeat."""
        safe = entity.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")
        xml = f"<importexportxml><entities><entity>{safe}</entity></entities></importexportxml>"
        self._request("POST", "PublishXml", json_body={"ParameterXml": xml}, idempotent=True)

    # -- querying ---------------------------------------------------------------------------------------------
    def query(
        self,
        entity_set: str,
        *,
        select: Sequence[str] | None = None,
        filter: str | None = None,
        orderby: str | None = None,
        page_size: int = 5000,
    ) -> Iterator[dict[str, Any]]:
        """Every matching row, page by page (``@odata.nextLink`` followed unchanged, same maxpagesize)."""
        if page_size <= 0:
            raise ValueError("page_size must be positive")
        params = {"$select": ",".join(select) if select else None, "$filter": filter, "$orderby": orderby}
        query = _query_string(params)
        url: str | None = f"{entity_set}?{query}" if query else entity_set
        headers = {"Prefer": f"odata.maxpagesize={page_size}"}
        seen: set[tuple[str, str, str]] = set()
        while url:
            seen.add(_page_key(self._url(url)))
            page = self._collection(url, headers)  # no "value" list: an error, never "no rows"
            yield from page["value"]
            url = self._next_link(page.get("@odata.nextLink"), seen)

    def _next_link(self, link: Any, seen: set[tuple[str, str, str]]) -> str | None:
        """The next page's absolute URL, checked BEFORE it is requested: same origin as the organization
        (scheme, host, port: anything else would receive the bearer token) and not a page already read (a
        server repeating a link would page forever). Errors name the path, never the query (``$filter`` values)."""
        if link is None or link == "":
            return None
        if not isinstance(link, str):
            raise DynamicsPagingError(
                f"@odata.nextLink is {type(link).__name__}, not a URL", code="NextLinkNotAUrl", method="GET"
            )
        absolute = urljoin(self.web_api_url + "/", link.strip())
        parts = urlsplit(absolute)
        try:
            origin = normalise_origin(absolute)
        except ValueError:
            origin = ""
        if origin != normalise_origin(self.org_url):
            shown = origin or "(no host)"
            raise DynamicsPagingError(
                f"@odata.nextLink points to {shown}, outside the organization {self.org_url}; not followed "
                "(it would receive the access token)",
                code="NextLinkForeignOrigin",
                method="GET",
                path=unquote(parts.path),
            )
        if _page_key(absolute) in seen:
            raise DynamicsPagingError(
                "@odata.nextLink repeats a page already read; paging stopped instead of looping",
                code="NextLinkRepeated",
                method="GET",
                path=unquote(parts.path),
            )
        return absolute

    def retrieve(
        self, entity_set: str, key: str | uuid.UUID | Mapping[str, Any], select: Sequence[str] | None = None
    ) -> dict[str, Any] | None:
        """One row by GUID or alternate key; None when it does not exist."""
        query = _query_string({"$select": ",".join(select) if select else None})
        path = entity_path(entity_set, key) + (f"?{query}" if query else "")
        try:
            return self._request_json("GET", path, shape=odata_entity)[1]
        except DynamicsNotFound:
            return None

    def list_systemusers(self, filter: str | None = None, select: list[str] | None = None) -> list[dict[str, Any]]:
        """System users (owner candidates); the caller filters enabled, interactive users as needed."""
        columns = select or [
            "systemuserid",
            "fullname",
            "internalemailaddress",
            "domainname",
            "isdisabled",
            "accessmode",
            "applicationid",
            "azureactivedirectoryobjectid",
        ]
        return list(self.query("systemusers", select=columns, filter=filter))

    def find_systemuser(
        self, *, user_id: str | None = None, email: str | None = None, domainname: str | None = None
    ) -> dict[str, Any] | None:
        """The user with this id, primary email or domain name (all given criteria must match); None if none."""
        clauses = []
        if user_id:
            key_segment(user_id)  # validates the GUID
            clauses.append(f"systemuserid eq {str(user_id).strip('{}').lower()}")
        if email:
            clauses.append(f"internalemailaddress eq {odata_literal(email)}")
        if domainname:
            clauses.append(f"domainname eq {odata_literal(domainname)}")
        if not clauses:
            raise ValueError("find_systemuser needs user_id, email or domainname")
        users = self.list_systemusers(filter=" and ".join(clauses))
        return users[0] if users else None

    # -- writing ----------------------------------------------------------------------------------------------
    def _primary_id(self, entity_set: str) -> str:
        return self._primary_ids.get(entity_set) or _guess_primary_id(entity_set)

    def _strip_key_columns(
        self, entity_set: str, key: str | uuid.UUID | Mapping[str, Any], payload: Mapping[str, Any]
    ) -> dict[str, Any]:
        """The body without the key's columns (Dataverse uses body values over the URL's on create)."""
        names = {k.lower() for k in key} if isinstance(key, Mapping) else {self._primary_id(entity_set).lower()}
        return {k: v for k, v in payload.items() if k.lower() not in names}

    def upsert_operation(
        self,
        entity_set: str,
        key: str | uuid.UUID | Mapping[str, Any],
        payload: Mapping[str, Any],
        *,
        record: str | None = None,
        if_match: str | None = None,
        if_none_match: str | None = None,
    ) -> BatchOperation:
        """The same upsert as ``upsert()``, as a ``$batch`` operation."""
        headers: dict[str, str] = {}
        if if_match:
            headers["If-Match"] = if_match
        if if_none_match:
            headers["If-None-Match"] = if_none_match
        return BatchOperation(
            "PATCH",
            entity_path(entity_set, key),
            self._strip_key_columns(entity_set, key, payload),
            headers or None,
            record,
        )

    def upsert(
        self,
        entity_set: str,
        key: str | uuid.UUID | Mapping[str, Any],
        payload: Mapping[str, Any],
        *,
        record: str | None = None,
        if_match: str | None = None,
        if_none_match: str | None = None,
        return_representation: bool = False,
        suppress_duplicate_detection: bool = True,
    ) -> UpsertResult:
        """PATCH by GUID or alternate key: creates or updates, so it is safe to retry.

        ``if_match="*"`` = update only (404 → DynamicsNotFound); ``if_none_match="*"`` = create only
        (412 → DynamicsConflict). ``return_representation`` tells create (201) from update (200).
        """
        path = entity_path(entity_set, key)
        headers: dict[str, str] = {}
        if if_match:
            headers["If-Match"] = if_match
        if if_none_match:
            headers["If-None-Match"] = if_none_match
        if not suppress_duplicate_detection:
            headers["MSCRM.SuppressDuplicateDetection"] = "false"
        primary_id = self._primary_id(entity_set)
        if return_representation:
            headers["Prefer"] = "return=representation"
            path += "?" + _query_string({"$select": primary_id})
        response = self._request(
            "PATCH", path, json_body=self._strip_key_columns(entity_set, key, payload), headers=headers, record=record
        )
        body = self._json(response) or {}
        entity_id = body.get(primary_id)
        if not entity_id:
            match = _ENTITY_ID_RE.search(response.headers.get("OData-EntityId", ""))
            if match:
                entity_id = match.group(1)
            elif not isinstance(key, Mapping):
                entity_id = str(key).strip("{}").lower()
        created = {201: True, 200: False}.get(response.status_code)
        etag = response.headers.get("ETag") or body.get("@odata.etag")
        return UpsertResult(response.status_code, entity_id, created, etag)

    def create(self, entity_set: str, payload: Mapping[str, Any], *, record: str | None = None) -> str | None:
        """POST a new row; returns its GUID. Never resent after a timeout or reset (it could duplicate the row)."""
        response = self._request("POST", entity_set, json_body=dict(payload), record=record, idempotent=False)
        match = _ENTITY_ID_RE.search(response.headers.get("OData-EntityId", ""))
        return match.group(1) if match else None

    def delete(self, entity_set: str, key: str | uuid.UUID | Mapping[str, Any], *, record: str | None = None) -> bool:
        """Delete a row; False when it was already gone (so a retried DELETE is not an error)."""
        try:
            self._request("DELETE", entity_path(entity_set, key), record=record)
        except DynamicsNotFound:
            return False
        return True

    # -- $batch -----------------------------------------------------------------------------------------------
    def execute_batch(
        self,
        operations: Sequence[BatchOperation],
        *,
        continue_on_error: bool = True,
        changeset_per_operation: bool = False,
        idempotent: bool = True,
    ) -> list[BatchResult]:
        """Run up to 1000 operations in one ``$batch`` request; one result per operation, in order.

        ``idempotent`` (all operations safe to repeat, e.g. upserts) lets a 5xx/timeout resend the whole batch.
        With ``continue_on_error=False`` the batch stops at the first failure: later operations come back with
        ``executed=False`` so the caller can resend them.
        """
        if len(operations) > MAX_BATCH_OPERATIONS:
            raise ValueError(f"a batch holds at most {MAX_BATCH_OPERATIONS} operations, got {len(operations)}")
        if not operations:
            return []
        plan, body = build_batch(operations, changeset_per_operation=changeset_per_operation, api_path=self.api_path)
        headers = {"Content-Type": plan.content_type}
        if continue_on_error:
            headers["Prefer"] = "odata.continue-on-error"
        parsed: list[list[Any]] = []

        def read(answer: requests.Response) -> None:
            # Inside the retry loop: a lying 200 to an idempotent batch is resent like a 5xx (_request_json).
            try:
                parsed[:] = [parse_batch_response(answer.headers.get("Content-Type"), answer.content)]
            except ValueError as exc:
                raise DynamicsMalformedAnswer(
                    f"unreadable $batch answer: {exc}",
                    status=answer.status_code,
                    code="WrongShape",
                    method="POST",
                    path=self.api_path + "$batch",
                ) from None

        response = self._request(
            "POST", "$batch", data=body, headers=headers, idempotent=idempotent, multipart_errors=True, read=read
        )
        parts = parsed[0]
        results = map_batch_results(
            operations,
            plan,
            parts,
            stopped=response.status_code >= 400,
            default_retry_after=self.default_retry_after,
        )
        failed = sum(1 for r in results if r.error is not None)
        skipped = sum(1 for r in results if not r.executed)
        self.log.info(
            "Dynamics 365: $batch of %d -> HTTP %d, %d failed, %d not executed",
            len(operations),
            response.status_code,
            failed,
            skipped,
        )
        return results
