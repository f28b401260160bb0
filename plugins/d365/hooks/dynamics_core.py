"""The request core of the Dynamics hook: authentication, retries and the check of every answer.

* Auth: MSAL client credentials (``d365.hooks.dynamics_auth``); the tenant comes from the ``tenant_id`` extra or
  from the organization's 401 challenge; a refused token is dropped from the cache and the call tried once more.
* Retries (tenacity): a 429 is resent once the shared pause is over; transient 5xx, timeouts and connection errors
  back off exponentially with jitter but only for idempotent calls (GET/PATCH/PUT/DELETE, or a ``$batch`` the
  caller marks idempotent). A POST create is never resent after it may have reached the server.
* No answer is data until its shape is checked (``d365.hooks.answers``), inside the retry loop.
* Errors are typed (``d365.hooks.errors``) and carry status, code, method, path (no query string) and the
  caller's record id, never tokens, secrets or request bodies.
"""

from __future__ import annotations

import json
import random
from collections.abc import Callable, Mapping
from typing import Any
from urllib.parse import unquote, urlsplit

import requests
from requests.auth import AuthBase
from tenacity import RetryCallState, Retrying, retry_if_exception, stop_after_attempt

from d365.hooks.answers import Where, odata_collection, read_json
from d365.hooks.dynamics_auth import (
    DEFAULT_AUTHORITY_HOST,
    Authority,
    MsalTokenAuth,
    TokenServiceUnavailable,
    VerifiedHttpClient,
    authority_from_challenge,
)
from d365.hooks.dynamics_connection import DynamicsConnectionBase, NoAuth
from d365.hooks.errors import (
    DynamicsAuthError,
    DynamicsConflict,
    DynamicsError,
    DynamicsMalformedAnswer,
    DynamicsThrottled,
    dynamics_error_from_response,
)

IDEMPOTENT_METHODS = frozenset({"GET", "HEAD", "PUT", "PATCH", "DELETE"})


class DynamicsCore(DynamicsConnectionBase):
    """Authenticated calls with retries and checked answers; the hook's reads and writes build on ``_request``."""

    # Exponential backoff for transient faults: min(backoff_max, backoff_base * 2**(n-1)), half of it jittered.
    backoff_base = 0.5
    backoff_max = 30.0

    def get_conn(self) -> requests.Session:
        """The authenticated session (built once; tenant discovery and MSAL set-up happen here)."""
        if self._session is not None and self._auth is not None:
            return self._session
        with self._init_lock:
            session = self._session_for()
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
                session.auth = self._auth
        return session

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
            session = self._session_for()
            auth = NoAuth()
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
                min(error.retry_after, self.throttle.settings.retry_after_max_seconds),  # the wait that applies
            )
        raise error

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
