"""The transport under the Dynamics hook: one pooled, verified session and one throttled attempt per call.

* The constructor only stores arguments; everything network-bound happens on first use.
* One ``requests.Session`` with a keep-alive pool sized for parallel workers and a cookie jar that rejects every
  cookie: the ``ARRAffinity`` cookie is never sent back, so requests spread over the web servers. ``verify=`` is
  passed on every request (``REQUESTS_CA_BUNDLE`` would override ``Session.verify``).
* Every attempt passes one ``Throttle`` (``d365.hooks.throttle``) shared by all threads using the hook, because
  limits are per user (connection extras ``throttle_window_seconds``, ``throttle_max_requests``,
  ``throttle_max_execution_ms``, ``throttle_safety_margin``, ``max_concurrency``; ``x-ms-dop-hint`` from WhoAmI
  lowers the cap).
* A failed attempt keeps only its cause's type: requests/urllib3 put the whole URL (``$filter`` values, e-mail
  addresses) into their messages.

Retries, authentication and answer checks sit on top of this, in ``d365.hooks.dynamics_core``.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Mapping
from http.cookiejar import DefaultCookiePolicy
from typing import Any

import requests
from airflow.sdk import BaseHook
from requests.adapters import HTTPAdapter
from requests.auth import AuthBase

from d365.hooks.dynamics_auth import Authority, MsalTokenAuth
from d365.hooks.dynamics_settings import DynamicsConnectionSettings
from d365.hooks.errors import DynamicsError, parse_retry_after
from d365.hooks.throttle import Throttle, ThrottleSettings, Ticket

API_PATH = "/api/data/v9.2/"
DEFAULT_CONN_ID = "dynamics365_default"


class _RejectAllCookies(DefaultCookiePolicy):
    """Never store (hence never send back) a cookie: no ARRAffinity stickiness to one web server."""

    def set_ok(self, cookie: Any, request: Any) -> bool:
        return False

    def return_ok(self, cookie: Any, request: Any) -> bool:
        return False


class NoAuth(AuthBase):
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


class DynamicsConnectionBase(BaseHook):
    """Connection settings, the shared session and throttle, counters, and one attempt on the wire."""

    api_path = API_PATH
    pool_size = 64
    # Used when a 429 carries no Retry-After.
    default_retry_after = 5.0

    def __init__(
        self,
        dynamics365_conn_id: str = DEFAULT_CONN_ID,
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

    def _session_for(self) -> _DataverseSession:
        """The pooled session, built once (no authentication attached here; see ``get_conn``)."""
        if self._session is None:
            with self._init_lock:
                if self._session is None:
                    self._session = _DataverseSession(self.settings.verify, self.timeout, self.pool_size)
        return self._session

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
