"""Authentication for the Dataverse Web API: MSAL client credentials as a ``requests`` auth, plus tenant discovery.

* Tenant discovery follows Microsoft's own ``ServiceClient``: an unauthenticated GET to the Web API answers
  401 with ``WWW-Authenticate: Bearer authorization_uri=<login host>/<tenant>/oauth2/authorize, ...``.
  Dataverse writes the values unquoted, so the challenge is parsed with a tolerant regex, not an RFC 7235 parser.
* One ``msal.ConfidentialClientApplication`` per provider (in-memory cache): MSAL serves cached tokens until
  five minutes before expiry. When Dataverse still refuses a token (revoked, clock skew), ``invalidate()``
  drops it so the next request fetches a fresh one.
* TLS: ``REQUESTS_CA_BUNDLE``/``CURL_CA_BUNDLE`` override ``Session.verify`` in requests, so MSAL gets an
  HTTP client that passes ``verify=`` on every call.
* Errors never carry the client secret: only the AADSTS code and Entra's description (scrubbed anyway).
"""

from __future__ import annotations

import logging
import re
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

import requests
from requests.auth import AuthBase

from d365.hooks.errors import DynamicsAuthError, DynamicsError

log = logging.getLogger(__name__)

# Hosts of Microsoft's public and national clouds: MSAL validates these itself (instance discovery).
MICROSOFT_LOGIN_HOSTS = frozenset(
    {
        "login.microsoftonline.com",
        "login.microsoftonline.us",
        "login.microsoftonline.de",
        "login.chinacloudapi.cn",
        "login.partner.microsoftonline.cn",
        "login.windows.net",
        "login.microsoft.com",
        "sts.windows.net",
    }
)
DEFAULT_AUTHORITY_HOST = "https://login.microsoftonline.com"

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


@dataclass(frozen=True)
class Authority:
    host: str  # scheme://host[:port] of the token service, no trailing slash
    tenant: str

    @property
    def url(self) -> str:
        return f"{self.host}/{self.tenant}"

    @property
    def is_microsoft(self) -> bool:
        return (urlsplit(self.host).hostname or "").lower() in MICROSOFT_LOGIN_HOSTS


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
    port = f":{parts.port}" if parts.port else ""
    return f"{parts.scheme.lower()}://{host}{port}"


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
    """The ``get``/``post`` interface MSAL expects, verifying TLS against ``verify`` on every call."""

    def __init__(self, verify: str | bool = True, timeout: float = 60.0) -> None:
        self.verify = verify
        self.timeout = timeout
        self._session = requests.Session()
        self._session.trust_env = True  # proxies still honoured; verify is forced per call below

    def _call(self, method: str, url: str, **kwargs: Any) -> requests.Response:
        kwargs["verify"] = self.verify
        kwargs.setdefault("timeout", self.timeout)
        return self._session.request(method, url, **kwargs)

    def get(self, url: str, params: Any = None, headers: Any = None, **kwargs: Any) -> requests.Response:
        return self._call("GET", url, params=params, headers=headers, **kwargs)

    def post(
        self, url: str, params: Any = None, data: Any = None, headers: Any = None, **kwargs: Any
    ) -> requests.Response:
        return self._call("POST", url, params=params, data=data, headers=headers, **kwargs)

    def close(self) -> None:
        self._session.close()


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
    ) -> None:
        if not client_id:
            raise DynamicsAuthError("the connection has no client id (login)", code="MissingClientId")
        if not client_secret:
            raise DynamicsAuthError("the connection has no client secret (password)", code="MissingClientSecret")
        self.client_id = client_id
        self._secret = client_secret
        self.authority = authority
        self.scopes = [f"{resource.rstrip('/')}/.default"]
        self.http_client = VerifiedHttpClient(verify=verify, timeout=timeout)
        self._on_refresh = on_refresh
        self._lock = threading.Lock()
        self._app: Any = None
        self._current: str | None = None  # the token last handed out, to recognise it when refused

    def __repr__(self) -> str:  # never show the secret
        return f"MsalTokenAuth(client_id={self.client_id!r}, authority={self.authority.url!r})"

    def _scrub(self, text: str) -> str:
        return text.replace(self._secret, "***") if self._secret else text

    def _application(self) -> Any:
        import msal

        if self._app is None:
            kwargs: dict[str, Any] = {}
            if not self.authority.is_microsoft:
                # A private token service (the local sandbox): MSAL must not validate it against Microsoft.
                kwargs.update(validate_authority=False, instance_discovery=False)
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
