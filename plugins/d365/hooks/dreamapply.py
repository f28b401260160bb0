"""DreamApply API v9 hook: connection, auth, TLS, client-side quota, retries and the wire format.

Modelled on ``airflow.providers.http.hooks.http.HttpHook`` (it subclasses it and keeps its request path:
``get_conn`` → ``Session``, ``run_and_check`` sends and calls ``check_response``), with what DreamApply
needs on top (reference: /work/shared/reference/dreamapply-api.md §1):

- Connection (type ``dreamapply``): ``host`` = instance URL (``https://apply.example.edu``; scheme defaults
  to https), ``password`` = API key. Extras: ``requests_per_minute`` (the key's quota, default 180),
  ``ca_bundle`` (PEM path to verify TLS against), ``timeout`` (seconds, or ``[connect, read]``),
  ``retry_after_max_seconds``, ``max_retries`` / ``retry_wait_min`` / ``retry_wait_max`` (retries of transient
  faults and lying answers: default 5, backoff from 5 s up to 60 s; the hook's arguments win);
  ``http://`` and ``verify: false`` are refused unless ``"sandbox": true``.
- Base URL ``<instance>/api/v9``; link strings the API returns (``/api/v9/applicants/1/trackers``) are
  resolved against the instance root. Absolute URLs on another host are refused (the key would leak).
- ``Authorization: DREAM apikey="<key>"`` is added by a ``requests.auth.AuthBase``; the key is never
  logged and never part of an error message (errors carry the status, the path and the body text).
- The session is built once per hook and reused (keep-alive), unlike ``HttpHook.run`` which builds one
  per call; ``ca_bundle`` becomes ``Session.verify`` (an explicit path survives ``REQUESTS_CA_BUNDLE``
  in ``run_and_check``'s ``merge_environment_settings``).
- Quota: a :class:`~d365.hooks.rate_limit.SlidingWindowLimiter` slot is taken before every request,
  HEAD included, so a well-configured client never meets DreamApply's ``429``.
- Retries (tenacity): ``429`` (DreamApply sends no ``Retry-After``: exponential backoff from
  ``retry_wait_min`` up to ``retry_wait_max`` seconds plus jitter; a ``Retry-After`` that does come is honoured,
  capped by the ``retry_after_max_seconds`` extra, default 300 s), ``5xx``, timeouts and connection
  errors. Every call is a GET or HEAD, so replaying is safe. ``401``/``403`` → :class:`DreamApplyAuthError`
  (never retried), other ``4xx`` → :class:`DreamApplyError`.
- Answers are checked before use (``d365.hooks.answers``): a 200 with an HTML page, a JSON error object, an
  empty, cut or wrongly encoded body, a map holding non-records or a HEAD without ``X-Count`` is a
  :class:`DreamApplyMalformedAnswer`, retried like a 5xx and then raised, never read as "no data".
- Counters in :attr:`DreamApplyHook.stats`: requests sent (retries included), retries, throttled (429s
  met), waited_seconds (client-side quota waits), backoff_seconds (sleeps between retries).
"""

from __future__ import annotations

import random
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from typing import Any
from urllib.parse import urljoin, urlsplit

import requests
import tenacity
from airflow.providers.http.hooks.http import HttpHook
from requests.auth import AuthBase

from d365.hooks.answers import Where, id_map, read_json
from d365.hooks.connection_policy import check_transport, is_sandbox, verify_from_extra
from d365.hooks.errors import DreamApplyAuthError, DreamApplyError, DreamApplyMalformedAnswer
from d365.hooks.rate_limit import SlidingWindowLimiter
from d365.hooks.throttle import RETRY_AFTER_MAX_SECONDS, retry_after_seconds

API_PREFIX = "/api/v9"
DEFAULT_REQUESTS_PER_MINUTE = 180
DEFAULT_TIMEOUT: tuple[float, float] = (10.0, 120.0)
ERROR_BODY_CHARS = 300
# Largest ``limit`` DreamApply accepts on /applicants and /applications with ``expand`` (reference §1.6).
EXPAND_PAGE_CAP = 8192


class DreamApiKeyAuth(AuthBase):
    """Adds ``Authorization: DREAM apikey="<key>"``. Its ``repr`` never shows the key."""

    def __init__(self, api_key: str) -> None:
        self._api_key = api_key

    def __call__(self, r: requests.PreparedRequest) -> requests.PreparedRequest:
        r.headers["Authorization"] = f'DREAM apikey="{self._api_key}"'
        return r

    def __repr__(self) -> str:
        return "DreamApiKeyAuth(<redacted>)"


def _encode_params(params: Mapping[str, Any] | None) -> list[tuple[str, str]]:
    """Query parameters as DreamApply reads them: lists comma-separated, booleans lower-case, None dropped."""
    out: list[tuple[str, str]] = []
    for key, value in (params or {}).items():
        if value is None:
            continue
        if isinstance(value, (set, frozenset)):
            value = sorted(value)
        if isinstance(value, (list, tuple)):
            value = ",".join(str(v) for v in value)
        elif isinstance(value, bool):
            value = "true" if value else "false"
        out.append((key, str(value)))
    return out


def _paginated(body: Any, where: Where) -> tuple[dict[str, dict[str, Any]], int | None]:
    """A ``pages``-paginated collection (e.g. /purged-resources): its items and the next page number."""
    items = id_map(body, where)
    paginator = body.get("pages") if isinstance(body, dict) else None
    if paginator is None:
        return items, None
    if not isinstance(paginator, dict):
        raise where.fail("WrongShape", f"a 'pages' paginator that is {type(paginator).__name__}")
    nxt = paginator.get("next")
    if nxt is None:
        return items, None
    if isinstance(nxt, bool) or not str(nxt).strip().isdigit():
        raise where.fail("WrongShape", "a 'pages' paginator whose 'next' is not a page number")
    return items, int(nxt)


def _max_id(page: Mapping[str, Any]) -> int | None:
    ids = [int(k) for k in page if k.isdigit()]
    return max(ids) if ids else None


class DreamApplyHook(HttpHook):
    """Read-only client of one DreamApply instance (API v9).

    :param dreamapply_conn_id: the ``dreamapply`` connection.
    :param requests_per_minute: client-side quota; default the connection's ``requests_per_minute``
        extra, else 180. ``0`` disables it.
    :param max_retries: retries after the first attempt for 429, 5xx, timeouts and connection errors.
    :param retry_wait_min: first backoff in seconds (also the jitter range); tests make it short.
    :param retry_wait_max: longest backoff in seconds.
    :param limiter: a shared limiter (e.g. one per API key across hooks); overrides ``requests_per_minute``.
    """

    conn_name_attr = "dreamapply_conn_id"
    default_conn_name = "dreamapply_default"
    conn_type = "dreamapply"
    hook_name = "DreamApply"

    def __init__(
        self,
        dreamapply_conn_id: str = default_conn_name,
        *,
        requests_per_minute: int | None = None,
        max_retries: int | None = None,
        retry_wait_min: float | None = None,
        retry_wait_max: float | None = None,
        limiter: SlidingWindowLimiter | None = None,
        method: str = "GET",
    ) -> None:
        super().__init__(method=method, http_conn_id=dreamapply_conn_id)
        self.dreamapply_conn_id = dreamapply_conn_id
        self.requests_per_minute = requests_per_minute
        # Arguments win; else the connection's extras of the same names (read in get_conn); else 5, 5 s, 60 s.
        self._retry_args = {
            name: value
            for name, value in (
                ("max_retries", max_retries), ("retry_wait_min", retry_wait_min), ("retry_wait_max", retry_wait_max)
            )
            if value is not None
        }  # fmt: skip
        self.max_retries = int(max_retries if max_retries is not None else 5)
        self.retry_wait_min = float(retry_wait_min if retry_wait_min is not None else 5.0)
        self.retry_wait_max = float(retry_wait_max if retry_wait_max is not None else 60.0)
        self.limiter = limiter
        self.instance_url = ""
        self.timeout: float | tuple[float, float] = DEFAULT_TIMEOUT
        # A Retry-After (if DreamApply or a proxy sends one) is honoured up to this: extra retry_after_max_seconds.
        self.retry_after_max_seconds = RETRY_AFTER_MAX_SECONDS
        self._session: requests.Session | None = None
        self._setup_lock = threading.Lock()
        self._stats_lock = threading.Lock()
        self.stats: dict[str, float] = {}
        self.reset_stats()

    # -- connection -------------------------------------------------------------------------
    def reset_stats(self) -> None:
        with self._stats_lock:
            self.stats = {"requests": 0, "retries": 0, "throttled": 0, "waited_seconds": 0.0, "backoff_seconds": 0.0}

    def _count(self, key: str, value: float = 1) -> None:
        with self._stats_lock:
            self.stats[key] += value

    def _set_base_url(self, connection: Any) -> None:
        host = (connection.host or "").strip()
        if not host:
            raise DreamApplyError(f"connection {self.dreamapply_conn_id!r} has no host (the instance URL)")
        if "://" not in host:
            host = f"https://{host}"
        parts = urlsplit(host)
        netloc = parts.netloc
        if connection.port and parts.port is None:
            netloc = f"{netloc}:{connection.port}"
        path = parts.path.rstrip("/")
        for suffix in (API_PREFIX, "/api"):  # tolerate an instance URL pasted with the API path
            if path.endswith(suffix):
                path = path[: -len(suffix)]
                break
        self.instance_url = f"{parts.scheme}://{netloc}{path}"
        self.base_url = self.instance_url + API_PREFIX
        self._base_url_initialized = True

    def get_conn(self, headers: dict[Any, Any] | None = None, extra_options: dict[str, Any] | None = None) -> Any:
        """The hook's one ``requests.Session`` (auth, Accept, TLS verification), built on first use."""
        with self._setup_lock:
            if self._session is None:
                connection = self.get_connection(self.dreamapply_conn_id)
                self._set_base_url(connection)
                if not connection.password:
                    raise DreamApplyAuthError(
                        f"connection {self.dreamapply_conn_id!r} has no API key (password)", status=None
                    )
                extra = connection.extra_dejson or {}
                verify = verify_from_extra(extra)
                # the API key travels only over verified https, unless the connection is marked a sandbox
                check_transport(
                    self.dreamapply_conn_id,
                    urls={"host (instance URL)": self.instance_url},
                    verify=verify,
                    sandbox=is_sandbox(extra),
                    error=DreamApplyAuthError,
                )
                session = requests.Session()
                session.auth = DreamApiKeyAuth(connection.password)
                session.headers.update({"Accept": "application/json", "User-Agent": "dreamapply-d365-sync/0.1"})
                ca_bundle = extra.get("ca_bundle")
                if ca_bundle:
                    session.verify = str(ca_bundle)
                elif verify is not None:
                    session.verify = verify
                if extra.get("retry_after_max_seconds") not in (None, ""):
                    self.retry_after_max_seconds = float(extra["retry_after_max_seconds"])
                for name, kind in (("max_retries", int), ("retry_wait_min", float), ("retry_wait_max", float)):
                    if name not in self._retry_args and extra.get(name) not in (None, ""):
                        setattr(self, name, kind(extra[name]))
                timeout = extra.get("timeout")
                if timeout is not None:
                    self.timeout = tuple(timeout) if isinstance(timeout, (list, tuple)) else float(timeout)  # type: ignore[assignment]
                if self.limiter is None:
                    rpm = self.requests_per_minute
                    if rpm is None:
                        rpm = int(extra.get("requests_per_minute") or DEFAULT_REQUESTS_PER_MINUTE)
                    self.limiter = SlidingWindowLimiter(rpm)
                self._session = self._configure_session_from_mount_adapters(session)
            if headers:
                self._session.headers.update(headers)
            return self._session

    def close(self) -> None:
        if self._session is not None:
            self._session.close()
            self._session = None

    # -- URLs -------------------------------------------------------------------------------
    def url_for(self, path: str) -> str:
        """``/applicants`` → ``<base>/applicants``; a link ``/api/v9/...`` → ``<instance root>/api/v9/...``."""
        self.get_conn()
        if "://" in path:
            if urlsplit(path).netloc != urlsplit(self.instance_url).netloc:
                raise ValueError(f"refusing to send the API key to another host: {urlsplit(path).netloc}")
            return path
        if path.startswith("/api/"):
            return urljoin(self.instance_url + "/", path)
        return f"{self.base_url}/{path.lstrip('/')}"

    def url_from_endpoint(self, endpoint: str | None) -> str:
        return self.url_for(endpoint or "")

    # -- sending ----------------------------------------------------------------------------
    def check_response(self, response: requests.Response) -> None:
        """Raise a typed :class:`DreamApplyError` (status, path, body text) for any 4xx/5xx."""
        status = response.status_code
        if status < 400:
            return
        method = response.request.method if response.request is not None else None
        path = urlsplit(response.url or "").path
        body = (response.text or "").strip()
        if len(body) > ERROR_BODY_CHARS:
            body = body[:ERROR_BODY_CHARS] + "…"
        message = body or response.reason or "no body"
        cls = DreamApplyAuthError if status in (401, 403) else DreamApplyError
        error = cls(message, status=status, method=method, path=path)
        if status == 429 or "Retry-After" in response.headers:
            # None (absent or unreadable): the exponential backoff decides
            error.retry_after = retry_after_seconds(  # type: ignore[attr-defined]
                response.headers.get("Retry-After"), default=None, cap=self.retry_after_max_seconds
            )
        raise error

    def _retry_wait(self, retry_state: tenacity.RetryCallState) -> float:
        exc = retry_state.outcome.exception() if retry_state.outcome else None
        asked = getattr(exc, "retry_after", None)
        if asked is not None:  # the server's Retry-After, already capped (throttle.retry_after_seconds)
            return float(asked)
        n = max(retry_state.attempt_number, 1)
        base = min(self.retry_wait_max, self.retry_wait_min * 2 ** (n - 1))
        return min(self.retry_wait_max, base + random.uniform(0, self.retry_wait_min))

    def _backoff_sleep(self, seconds: float) -> None:
        self._count("retries")
        self._count("backoff_seconds", seconds)
        time.sleep(seconds)

    def _before_sleep(self, retry_state: tenacity.RetryCallState) -> None:
        exc = retry_state.outcome.exception() if retry_state.outcome else None
        wait = retry_state.next_action.sleep if retry_state.next_action else 0.0
        self.log.warning(
            "DreamApply request failed (%s); retry %d/%d in %.1f s", exc, retry_state.attempt_number, self.max_retries,
            wait,
        )  # fmt: skip

    @staticmethod
    def _retryable(exc: BaseException) -> bool:
        return isinstance(exc, DreamApplyError) and exc.retryable

    def _send_once(self, method: str, url: str, params: list[tuple[str, str]]) -> requests.Response:
        session = self.get_conn()
        assert self.limiter is not None
        prepped = session.prepare_request(requests.Request(method, url, params=params))
        path = urlsplit(url).path
        with self.limiter.slot() as waited:
            if waited:
                self._count("waited_seconds", waited)
            self._count("requests")
            try:
                return self.run_and_check(
                    session, prepped, {"timeout": self.timeout, "allow_redirects": True, "check_response": True}
                )
            except DreamApplyError as exc:
                if exc.status == 429:
                    self._count("throttled")
                raise
            except requests.Timeout as exc:
                raise DreamApplyError(f"timed out: {type(exc).__name__}", method=method, path=path) from exc
            except requests.ConnectionError as exc:
                raise DreamApplyError(f"connection failed: {type(exc).__name__}", method=method, path=path) from exc

    def _retrying(self) -> tenacity.Retrying:
        return tenacity.Retrying(
            stop=tenacity.stop_after_attempt(self.max_retries + 1),
            wait=self._retry_wait,
            retry=tenacity.retry_if_exception(self._retryable),
            sleep=self._backoff_sleep,
            before_sleep=self._before_sleep,
            reraise=True,
        )

    # -- API --------------------------------------------------------------------------------
    def get_json(
        self, path: str, params: Mapping[str, Any] | None = None, *, shape: Callable[[Any, Where], Any] | None = None
    ) -> Any:
        """The JSON answer of a GET, checked before use (``answers.read_json``; then ``shape`` if given).

        An HTML page, a JSON error object, an empty, cut or wrongly encoded body, or a ``shape`` that does not
        hold is a :class:`DreamApplyMalformedAnswer`: retried like a 5xx inside this call, then raised.
        """
        url = self.url_for(path)
        encoded = _encode_params(params)
        where = Where(DreamApplyMalformedAnswer, "GET", urlsplit(url).path)

        def attempt() -> Any:
            response = self._send_once("GET", url, encoded)
            answer = Where(where.error, where.method, where.path, response.status_code)
            body = read_json(response.content, response.headers.get("Content-Type"), answer)
            return shape(body, answer) if shape is not None else body

        return self._retrying()(attempt)

    def get_collection(self, path: str, params: Mapping[str, Any] | None = None) -> dict[str, dict[str, Any]]:
        """An ID-keyed collection (``pages`` dropped, ``id`` filled in from the key when missing)."""
        return self.get_json(path, params, shape=id_map)

    def iter_collection_pages(
        self, path: str, params: Mapping[str, Any] | None = None, limit: int = EXPAND_PAGE_CAP
    ) -> Iterator[dict[str, dict[str, Any]]]:
        """Keyset pages of an ID-ordered collection: ``bySince=<last id + 1>&limit=<limit>`` until a short page.

        ``params`` may carry a starting ``bySince`` and a ``byUntil``. ``limit`` must not exceed what the
        endpoint returns per page (a silently capped page would look short and end the walk early).
        """
        base = dict(params or {})
        since = base.pop("bySince", None)
        while True:
            query = {**base, "limit": limit}
            if since is not None:
                query["bySince"] = since
            page = self.get_collection(path, query)
            if page:
                yield page
            if len(page) < limit:
                return
            last = _max_id(page)
            if last is None or (since is not None and last + 1 <= int(since)):
                raise DreamApplyError(f"keyset paging did not advance on {path}", path=path)
            since = last + 1

    def iter_paginated(self, path: str, params: Mapping[str, Any] | None = None) -> Iterator[dict[str, dict[str, Any]]]:
        """Pages of a collection with a ``pages`` paginator (e.g. /purged-resources), following ``next``."""
        page = int((params or {}).get("page") or 1)
        base = {k: v for k, v in (params or {}).items() if k != "page"}
        while True:
            items, nxt = self.get_json(path, {**base, "page": page}, shape=_paginated)
            yield items
            if nxt is None or nxt <= page:
                return
            page = nxt

    def count(self, path: str, params: Mapping[str, Any] | None = None) -> int:
        """Items matching the filters, from ``HEAD`` + ``X-Count`` (no body transferred).

        A success without a numeric ``X-Count`` (a proxy's page, say) is a :class:`DreamApplyMalformedAnswer`,
        retried inside this call: a count is never guessed."""
        url = self.url_for(path)
        encoded = _encode_params(params)

        def attempt() -> int:
            response = self._send_once("HEAD", url, encoded)
            value = response.headers.get("X-Count")
            if value is None or not value.strip().isdigit():
                raise DreamApplyMalformedAnswer(
                    "no numeric X-Count header on HEAD",
                    status=response.status_code,
                    code="WrongShape",
                    method="HEAD",
                    path=urlsplit(url).path,
                )
            return int(value)

        return self._retrying()(attempt)

    def test_connection(self) -> tuple[bool, str]:
        """``GET /ping`` with the key: checks URL, TLS and the key in one request."""
        try:
            pong = self.get_json("/ping")
        except Exception as exc:
            return False, str(exc)
        return True, f"Connected to DreamApply API v9 at {self.instance_url} (pong {pong.get('pong')})"
