"""Authentication for the Dataverse Web API: MSAL client credentials as a ``requests`` auth, plus tenant discovery.

* Tenant discovery follows Microsoft's own ``ServiceClient``: an unauthenticated GET to the Web API answers
  401 with ``WWW-Authenticate: Bearer authorization_uri=<login host>/<tenant>/oauth2/authorize, ...``.
  Dataverse writes the values unquoted, so the challenge is parsed with a tolerant regex, not an RFC 7235 parser.
* One ``msal.ConfidentialClientApplication`` per provider (in-memory cache): MSAL serves cached tokens until
  five minutes before expiry. When Dataverse still refuses a token (revoked, clock skew), ``invalidate()``
  drops it so the next request fetches a fresh one.
* TLS: ``REQUESTS_CA_BUNDLE``/``CURL_CA_BUNDLE`` override ``Session.verify`` in requests, so MSAL gets an
  HTTP client that passes ``verify=`` on every call.
* The token endpoint has bad minutes too. MSAL sends a 5xx straight back as an exception (and caches it for the
  ``Retry-After``), so the HTTP client MSAL is given retries 5xx, 429, timeouts and connection resets itself:
  bounded attempts, exponential backoff with jitter or the server's ``Retry-After`` (capped by
  ``throttle.retry_after_seconds``), then a typed, retryable ``TokenServiceUnavailable``. A token request
  that fails for a moment therefore costs seconds inside one task attempt, not an Airflow task retry.
* The client secret goes only to Microsoft. Without an explicit ``authority_host`` the authority (configured
  tenant or the one the 401 challenge names) must be one of Microsoft's login hosts (public and national
  clouds, MSAL's own list), over https, and MSAL validates it. A challenge naming any other host is refused
  before a single request goes there. A custom authority host (a local stand-in of Entra ID) is accepted only
  when given explicitly on a connection marked ``"sandbox": true`` (``d365.hooks.connection_policy``); only
  then is MSAL's authority validation off.
* Errors never carry the client secret: only the AADSTS code and Entra's description (scrubbed anyway).
"""

from __future__ import annotations

import logging
import random
import re
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

import requests
from requests.auth import AuthBase

from d365.hooks.errors import DynamicsAuthError, DynamicsError
from d365.hooks.throttle import RETRY_AFTER_MAX_SECONDS, retry_after_seconds

log = logging.getLogger(__name__)

# Microsoft's login hosts, public and national clouds: MSAL's own list of well-known authority hosts
# (``msal.authority.WELL_KNOWN_AUTHORITY_HOSTS``; a test keeps the two in step). MSAL validates them itself.
MICROSOFT_LOGIN_HOSTS = frozenset(
    {
        "login.microsoftonline.com",  # public cloud
        "login.microsoft.com",
        "login.windows.net",
        "sts.windows.net",
        "login.microsoftonline.us",  # US Government
        "login-us.microsoftonline.com",
        "login.usgovcloudapi.net",
        "login.partner.microsoftonline.cn",  # China (21Vianet)
        "login.chinacloudapi.cn",
        "login.microsoftonline.de",  # Germany (retired)
        "login.sovcloud-identity.fr",  # sovereign clouds
        "login.sovcloud-identity.de",
        "login.sovcloud-identity.sg",
    }
)
DEFAULT_AUTHORITY_HOST = "https://login.microsoftonline.com"
# Token endpoint retries inside one call: attempts in all, backoff base and ceiling (seconds).
TOKEN_ATTEMPTS = 5
TOKEN_BACKOFF_BASE = 0.5
TOKEN_BACKOFF_MAX = 8.0

_AADSTS_RE = re.compile(r"AADSTS(\d+)")


def parse_bearer_challenge(header: str | None) -> dict[str, str]:
    """``authorization_uri``/``resource_id`` (and any other params) of a Bearer challenge; {} if not Bearer.

    Tolerates quoted or bare values, spaces around ``=`` and any key case.
    """
    if not header:
        return {}
    match = re.search(r"(?i)\bbearer\b", header)
    if match is None:
        return {}
    rest = header[match.end() :]
    params: dict[str, str] = {}
    for m in re.finditer(r"""([A-Za-z_][\w-]*)\s*=\s*(?:"([^"]*)"|([^",\s]+))""", rest):
        params.setdefault(m.group(1).lower(), m.group(2) if m.group(2) is not None else m.group(3))
    return params


class TokenServiceUnavailable(DynamicsError):
    """The token service kept answering 5xx/429 or could not be reached after the client's own retries.

    Retryable (a later task attempt may find it back); nothing reached Dataverse, so any call may be resent.
    """

    @property
    def retryable(self) -> bool:
        return True


def is_microsoft_login_host(origin: str) -> bool:
    """True for ``https://<one of Microsoft's login hosts>`` (any other scheme or port is not Microsoft's)."""
    parts = urlsplit(origin)
    return (
        parts.scheme == "https"
        and (parts.hostname or "").lower() in MICROSOFT_LOGIN_HOSTS
        and parts.port in (None, 443)
    )


@dataclass(frozen=True)
class Authority:
    host: str  # scheme://host[:port] of the token service, no trailing slash
    tenant: str

    @property
    def url(self) -> str:
        return f"{self.host}/{self.tenant}"

    @property
    def is_microsoft(self) -> bool:
        return is_microsoft_login_host(self.host)


def normalise_origin(url: str, *, default_scheme: str = "https") -> str:
    """``scheme://host[:port]`` (lower-case host, no path, no trailing slash) of a URL or bare host."""
    text = url.strip()
    if "://" not in text:
        text = f"{default_scheme}://{text}"
    parts = urlsplit(text)
    if not parts.hostname:
        raise ValueError(f"not a URL or host name: {url!r}")
    host = parts.hostname.lower()
    if ":" in host:  # IPv6 literal
        host = f"[{host}]"
    scheme = parts.scheme.lower()
    default_port = {"https": 443, "http": 80}.get(scheme)
    port = f":{parts.port}" if parts.port and parts.port != default_port else ""
    return f"{scheme}://{host}{port}"


def authority_from_challenge(header: str | None, authority_host: str | None = None) -> Authority:
    """The MSAL authority named by a Dataverse 401 challenge (``common`` → ``organizations``, as ServiceClient)."""
    params = parse_bearer_challenge(header)
    uri = params.get("authorization_uri")
    if not uri:
        raise DynamicsAuthError(
            "tenant discovery failed: the 401 answer carries no Bearer authorization_uri; set the tenant_id extra",
            status=401,
            code="TenantDiscoveryFailed",
        )
    parts = urlsplit(uri)
    segments = [s for s in parts.path.split("/") if s]
    if not parts.hostname or not segments:
        raise DynamicsAuthError(
            f"tenant discovery failed: cannot read a tenant from authorization_uri {uri!r}",
            status=401,
            code="TenantDiscoveryFailed",
        )
    tenant = segments[0]
    if tenant.lower() == "common":
        tenant = "organizations"
    host = normalise_origin(authority_host) if authority_host else normalise_origin(uri)
    return Authority(host=host, tenant=tenant)


class VerifiedHttpClient:
    """The ``get``/``post`` interface MSAL expects: TLS verified against ``verify`` on every call, and transient
    faults of the token service (5xx, 429, timeouts, connection resets) retried here, before MSAL sees them.

    After ``attempts`` tries it raises ``TokenServiceUnavailable`` (retryable) instead of handing MSAL an answer
    it would turn into an untyped exception. 4xx answers (a wrong secret, an unknown tenant) go back to MSAL at
    once: they are not transient.
    """

    def __init__(
        self,
        verify: str | bool = True,
        timeout: float = 60.0,
        *,
        attempts: int = TOKEN_ATTEMPTS,
        backoff_base: float = TOKEN_BACKOFF_BASE,
        backoff_max: float = TOKEN_BACKOFF_MAX,
        retry_after_max_seconds: float = RETRY_AFTER_MAX_SECONDS,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self.verify = verify
        self.timeout = timeout
        self.attempts = max(1, int(attempts))
        self.backoff_base = backoff_base
        self.backoff_max = backoff_max
        self.retry_after_max_seconds = retry_after_max_seconds
        self._sleep = sleep
        self.stats: dict[str, float] = {"requests": 0, "retries": 0, "wait_seconds": 0.0}
        self._session = requests.Session()
        self._session.trust_env = True  # proxies still honoured; verify is forced per call below

    def _backoff(self, attempt: int) -> float:
        ceiling = min(self.backoff_max, self.backoff_base * 2 ** (attempt - 1))
        return ceiling / 2 + random.uniform(0, ceiling / 2)

    def _call(self, method: str, url: str, **kwargs: Any) -> requests.Response:
        kwargs["verify"] = self.verify
        kwargs.setdefault("timeout", self.timeout)
        origin = normalise_origin(url)
        path = urlsplit(url).path
        for attempt in range(1, self.attempts + 1):
            self.stats["requests"] += 1
            try:
                response = self._session.request(method, url, **kwargs)
            except (requests.Timeout, requests.ConnectionError) as exc:
                fault, status, wait = type(exc).__name__, None, self._backoff(attempt)
            else:
                status = response.status_code
                if status < 500 and status != 429:
                    return response
                fault = f"HTTP {status}{_aadsts_suffix(response)}"
                wait = retry_after_seconds(
                    response.headers.get("Retry-After"),
                    default=self._backoff(attempt),
                    cap=self.retry_after_max_seconds,
                )
                response.close()
            if attempt == self.attempts:
                raise TokenServiceUnavailable(
                    f"token service {origin} still failing after {self.attempts} attempts ({fault})",
                    status=status,
                    code="TokenServiceUnavailable",
                    method=method,
                    path=path,
                ) from None
            wait = wait or 0.0
            self.stats["retries"] += 1
            self.stats["wait_seconds"] += wait
            log.warning(
                "Dynamics 365: token service %s answered %s on %s %s; retry %d/%d in %.2f s",
                origin,
                fault,
                method,
                path,
                attempt,
                self.attempts - 1,
                wait,
            )
            self._sleep(wait)
        raise AssertionError("unreachable")  # pragma: no cover

    def get(self, url: str, params: Any = None, headers: Any = None, **kwargs: Any) -> requests.Response:
        return self._call("GET", url, params=params, headers=headers, **kwargs)

    def post(
        self, url: str, params: Any = None, data: Any = None, headers: Any = None, **kwargs: Any
    ) -> requests.Response:
        return self._call("POST", url, params=params, data=data, headers=headers, **kwargs)

    def close(self) -> None:
        self._session.close()


def _aadsts_suffix(response: requests.Response) -> str:
    """`` AADSTS<n>`` when an Entra error body names its code (never the description: it can echo input)."""
    try:
        body = response.json()
    except ValueError:
        return ""
    codes = body.get("error_codes") if isinstance(body, dict) else None
    if isinstance(codes, list) and codes and isinstance(codes[0], int):
        return f" AADSTS{codes[0]}"
    return ""


def check_authority(authority: Authority, *, conn_id: str, custom_host: str | None, discovered: bool) -> None:
    """Refuse, before any request, an authority the client secret must not be sent to.

    Accepted: one of Microsoft's login hosts over https, or exactly ``custom_host`` (an explicit
    ``authority_host`` on a sandbox connection).
    """
    if authority.is_microsoft or (custom_host is not None and authority.host == custom_host):
        return
    source = (
        "named by the organization's 401 challenge (tenant discovery)" if discovered else "configured for the tenant"
    )
    raise DynamicsAuthError(
        f"connection {conn_id!r}: the token authority {authority.host} {source} is not one of Microsoft's login "
        "hosts; the client secret is not sent there. Set the tenant_id extra (and authority_host for a national "
        'cloud); a local token service needs an explicit authority_host on a connection marked "sandbox": true',
        code="UntrustedAuthority",
    )


class MsalTokenAuth(AuthBase):
    """Adds ``Authorization: Bearer <token>`` from MSAL's client-credentials flow. Thread-safe.

    ``on_refresh`` is called (without arguments) each time a refused token is dropped.
    """

    def __init__(
        self,
        *,
        client_id: str,
        client_secret: str,
        authority: Authority,
        resource: str,
        verify: str | bool = True,
        timeout: float = 60.0,
        on_refresh: Callable[[], None] | None = None,
        conn_id: str = "dynamics365_default",
        custom_authority_host: str | None = None,
        discovered: bool = False,
        http_client: VerifiedHttpClient | None = None,
    ) -> None:
        check_authority(authority, conn_id=conn_id, custom_host=custom_authority_host, discovered=discovered)
        if not client_id:
            raise DynamicsAuthError("the connection has no client id (login)", code="MissingClientId")
        if not client_secret:
            raise DynamicsAuthError("the connection has no client secret (password)", code="MissingClientSecret")
        self.client_id = client_id
        self._secret = client_secret
        self.authority = authority
        self.scopes = [f"{resource.rstrip('/')}/.default"]
        self.http_client = http_client or VerifiedHttpClient(verify=verify, timeout=timeout)
        self._on_refresh = on_refresh
        self._lock = threading.Lock()
        self._app: Any = None
        self._current: str | None = None  # the token last handed out, to recognise it when refused

    def __repr__(self) -> str:  # never show the secret
        return f"MsalTokenAuth(client_id={self.client_id!r}, authority={self.authority.url!r})"

    def _scrub(self, text: str) -> str:
        return text.replace(self._secret, "***") if self._secret else text

    def msal_options(self) -> dict[str, Any]:
        """Authority validation stays on (MSAL's default) for Microsoft's hosts; off only for the explicit custom
        host of a sandbox connection (``check_authority`` admitted nothing else)."""
        if self.authority.is_microsoft:
            return {}
        return {"validate_authority": False, "instance_discovery": False}

    def _application(self) -> Any:
        import msal

        if self._app is None:
            kwargs = self.msal_options()
            try:
                self._app = msal.ConfidentialClientApplication(
                    self.client_id,
                    client_credential=self._secret,
                    authority=self.authority.url,
                    http_client=self.http_client,
                    token_cache=msal.TokenCache(),
                    **kwargs,
                )
            except requests.RequestException as exc:
                raise DynamicsError(
                    f"token service {self.authority.host} unreachable: {type(exc).__name__}",
                    code="TokenEndpointUnreachable",
                ) from None
            except ValueError as exc:  # MSAL: authority metadata unusable
                raise DynamicsAuthError(
                    f"authority {self.authority.url} rejected: {self._scrub(str(exc))}", code="InvalidAuthority"
                ) from None
        return self._app

    def token(self) -> str:
        """A valid access token (MSAL's cache first, the token endpoint when it misses)."""
        with self._lock:
            app = self._application()
            try:
                result = app.acquire_token_for_client(scopes=self.scopes)
            except requests.RequestException as exc:
                raise DynamicsError(
                    f"token service {self.authority.host} unreachable: {type(exc).__name__}",
                    code="TokenEndpointUnreachable",
                ) from None
            if not result or "access_token" not in result:
                result = result or {}
                description = self._scrub(str(result.get("error_description") or result.get("error") or "no token"))
                codes = result.get("error_codes") or []
                match = _AADSTS_RE.search(description)
                if match:
                    code = f"AADSTS{match.group(1)}"
                elif codes:
                    code = f"AADSTS{codes[0]}"
                else:
                    code = str(result.get("error") or "TokenError")
                first_line = description.split(" Trace ID:")[0].strip()
                raise DynamicsAuthError(
                    f"token request for client {self.client_id} at {self.authority.url} failed "
                    f"({result.get('error', 'error')}): {first_line}",
                    code=code,
                )
            source = result.get("token_source", "?")
            if source != "cache":
                log.info("Dynamics 365: token obtained from %s (%s)", self.authority.host, source)
            self._current = result["access_token"]
            return self._current

    def invalidate(self, refused_token: str | None) -> bool:
        """Drop the cached token after Dataverse refused it; True if this call dropped it (once per token)."""
        with self._lock:
            if refused_token is None or refused_token != self._current or self._app is None:
                return False  # another thread already replaced it
            self._app.remove_tokens_for_client()
            self._current = None
        log.info("Dynamics 365: access token refused, fetching a new one")
        if self._on_refresh is not None:
            self._on_refresh()
        return True

    def __call__(self, r: requests.PreparedRequest) -> requests.PreparedRequest:
        r.headers["Authorization"] = f"Bearer {self.token()}"
        return r

    @staticmethod
    def token_of(request: requests.PreparedRequest | None) -> str | None:
        """The bearer token a sent request carried (to pass to ``invalidate``)."""
        if request is None:
            return None
        value = request.headers.get("Authorization", "")
        return value[7:] if value[:7].lower() == "bearer " else None

    def close(self) -> None:
        self.http_client.close()
