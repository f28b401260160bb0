"""DreamApplyHook against the DreamApply sandbox over verified TLS, plus the client-side limiter."""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from d365.hooks.dreamapply import DreamApiKeyAuth, DreamApplyHook
from d365.hooks.errors import DreamApplyAuthError, DreamApplyError, DreamApplyMalformedAnswer
from d365.hooks.rate_limit import SlidingWindowLimiter
from sandbox import Sandbox
from sandbox.client import SandboxClient, airflow_connections

FAST = {"retry_wait_min": 0.01, "retry_wait_max": 0.05}


def set_connection(monkeypatch: pytest.MonkeyPatch, info: dict[str, Any], **overrides: Any) -> None:
    conn = airflow_connections(info)["AIRFLOW_CONN_DREAMAPPLY_DEFAULT"]
    conn.update(overrides)
    monkeypatch.setenv("AIRFLOW_CONN_DREAMAPPLY_DEFAULT", json.dumps(conn))


@pytest.fixture
def hook(sandbox: Sandbox, monkeypatch: pytest.MonkeyPatch) -> Iterator[DreamApplyHook]:
    set_connection(monkeypatch, sandbox.info())
    SandboxClient(sandbox.info()).post("/dreamapply/ratelimit", {})  # a fresh quota window per test
    h = DreamApplyHook(**FAST)
    yield h
    h.close()


def log_since(client: SandboxClient, seq: int) -> list[dict[str, Any]]:
    return client.requests(server="dreamapply", since=seq)


# -- connection, URLs, headers ---------------------------------------------------------------
def test_connection_from_environment(hook: DreamApplyHook, sandbox: Sandbox) -> None:
    ok, message = hook.test_connection()
    assert ok, message
    url = sandbox.info()["dreamapply"]["url"]
    assert hook.instance_url == url
    assert hook.base_url == url + "/api/v9"
    assert hook.url_for("/applicants") == url + "/api/v9/applicants"
    assert hook.url_for("applicants/1") == url + "/api/v9/applicants/1"
    assert hook.url_for("/api/v9/applicants/1/trackers") == url + "/api/v9/applicants/1/trackers"
    with pytest.raises(ValueError, match="another host"):
        hook.url_for("https://evil.example/api/v9/applicants")
    session = hook.get_conn()
    assert session.verify == sandbox.info()["ca_bundle"]
    assert session.headers["Accept"] == "application/json"
    assert isinstance(session.auth, DreamApiKeyAuth)
    assert sandbox.info()["dreamapply"]["api_key"] not in repr(session.auth)
    assert hook.conn_type == "dreamapply" and hook.default_conn_name == "dreamapply_default"


def test_scheme_defaults_to_https_and_api_suffix_is_tolerated(
    sandbox: Sandbox, monkeypatch: pytest.MonkeyPatch
) -> None:
    info = sandbox.info()
    bare = info["dreamapply"]["url"].removeprefix("https://")
    set_connection(monkeypatch, info, host=bare + "/api/v9/")
    h = DreamApplyHook()
    assert h.test_connection()[0]
    assert h.instance_url == info["dreamapply"]["url"]


def test_explicit_ca_bundle_wins_over_environment_and_tls_is_verified(
    sandbox: Sandbox, monkeypatch: pytest.MonkeyPatch
) -> None:
    import certifi

    info = sandbox.info()
    monkeypatch.setenv("REQUESTS_CA_BUNDLE", certifi.where())
    set_connection(monkeypatch, info)
    assert DreamApplyHook().test_connection()[0]
    # Without the sandbox CA the public bundle cannot verify the sandbox certificate: refused, not bypassed.
    set_connection(monkeypatch, info, extra={})
    ok, message = DreamApplyHook(max_retries=0).test_connection()
    assert not ok and "connection failed" in message


# -- collections and paging -------------------------------------------------------------------
def test_get_collection_is_id_keyed(hook: DreamApplyHook) -> None:
    page = hook.get_collection("/applicants", {"limit": 5, "expand": ["consents", "trackers"]})
    assert list(page) == ["1", "2", "3", "4", "5"]
    assert all(item["id"] == int(key) for key, item in page.items())
    assert isinstance(page["1"]["consents"], dict)
    # association maps carry no "id": it is filled in from the key
    trackers = hook.get_collection("/applicants/1/consents")
    assert all(item["id"] == int(key) for key, item in trackers.items())


def test_keyset_paging_count_and_request_budget(hook: DreamApplyHook, sandbox: Sandbox) -> None:
    client = SandboxClient(sandbox.info())
    total = hook.count("/applicants")
    assert total == client.get("/dreamapply/stats")["applicants"]
    seq = client.last_seq()
    before = hook.stats["requests"]
    seen: list[int] = []
    for page in hook.iter_collection_pages("/applicants", {"expand": "consents"}, limit=64):
        seen += [int(k) for k in page]
    assert len(seen) == len(set(seen)) == total
    assert seen == sorted(seen)
    pages = -(-total // 64) + (1 if total % 64 == 0 else 0)
    assert hook.stats["requests"] - before == pages
    log = log_since(client, seq)
    assert len(log) == pages
    assert [e["method"] for e in log] == ["GET"] * pages
    # a window of IDs: bySince/byUntil are inclusive, paging continues inside it
    window = [int(k) for p in hook.iter_collection_pages("/applicants", {"bySince": 10, "byUntil": 30}, 4) for k in p]
    assert window == list(range(10, 31))


def test_paginator_follows_next_and_drops_pages(make_sandbox: Callable[..., Any], monkeypatch) -> None:
    sb, client = make_sandbox(applicants=300, dreamapply_requests_per_minute=100_000)
    client.post("/dreamapply/advance", {"hours": 24, "seed": 3, "rates": {"erasures": 0.5}})
    total = client.get("/dreamapply/stats")["purged_resources"]
    assert total > 100  # more than one page of 100
    set_connection(monkeypatch, sb.info())
    h = DreamApplyHook(requests_per_minute=0)
    pages = list(h.iter_paginated("/purged-resources"))
    assert len(pages) == -(-total // 100)
    items = {k: v for p in pages for k, v in p.items()}
    assert "pages" not in items and len(items) == total
    assert {v["type"] for v in items.values()} == {"Applicant", "Application"}
    assert h.count("/purged-resources") == total


def test_head_count_with_filters(hook: DreamApplyHook, sandbox: Sandbox) -> None:
    client = SandboxClient(sandbox.info())
    seq = client.last_seq()
    n = hook.count("/applicants", {"bySince": 1, "byUntil": 10})
    assert n == 10
    (entry,) = log_since(client, seq)
    assert entry["method"] == "HEAD" and "byUntil=10" in entry["query"]


# -- errors ----------------------------------------------------------------------------------
def test_401_is_an_auth_error_without_the_key(
    sandbox: Sandbox, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    info = sandbox.info()
    wrong_key = "wrong-key-that-must-not-leak-0123456789"
    set_connection(monkeypatch, info, password=wrong_key)
    client = SandboxClient(info)
    seq = client.last_seq()
    h = DreamApplyHook(**FAST)
    caplog.set_level(logging.DEBUG)
    with pytest.raises(DreamApplyAuthError) as err:
        h.get_json("/applicants", {"limit": 1})
    assert err.value.status == 401 and not err.value.retryable
    assert wrong_key not in str(err.value) and "/api/v9/applicants" in str(err.value)
    assert wrong_key not in caplog.text and info["dreamapply"]["api_key"] not in caplog.text
    assert len(log_since(client, seq)) == 1  # not retried
    assert h.stats["retries"] == 0
    ok, message = h.test_connection()
    assert not ok and wrong_key not in message


def test_404_and_400_carry_status_path_and_body(hook: DreamApplyHook) -> None:
    with pytest.raises(DreamApplyError) as err:
        hook.get_json("/applicants/99999999")
    assert err.value.status == 404 and err.value.path == "/api/v9/applicants/99999999"
    assert "Applicant not found" in str(err.value)
    with pytest.raises(DreamApplyError) as err:
        hook.get_collection("/applications", {"limit": 1})  # the required year filter is missing
    assert err.value.status == 400 and "byAcademicTermID" in err.value.message
    assert hook.stats["retries"] == 0


def test_5xx_and_connection_resets_are_retried(hook: DreamApplyHook, sandbox: Sandbox) -> None:
    client = SandboxClient(sandbox.info())
    try:
        client.add_fault(kind="status", server="dreamapply", path="/api/v9/academic-years", status=503, times=2)
        assert hook.get_collection("/academic-years")
        assert hook.stats["retries"] == 2
        client.clear_faults()
        client.add_fault(kind="reset", server="dreamapply", path="/api/v9/courses", times=1)
        assert hook.get_collection("/courses")
        assert hook.stats["retries"] == 3
        client.clear_faults()
        client.add_fault(kind="status", server="dreamapply", path="/api/v9/intakes", status=500)
        h = DreamApplyHook(max_retries=2, **FAST)
        with pytest.raises(DreamApplyError) as err:
            h.get_json("/intakes")
        assert err.value.status == 500 and h.stats["requests"] == 3 and h.stats["retries"] == 2
    finally:
        client.clear_faults()


@pytest.mark.slow  # over a second (real Retry-After waits, sleeps or a subprocess): make test runs it
def test_timeouts_are_retried(make_sandbox: Callable[..., Any], monkeypatch: pytest.MonkeyPatch) -> None:
    # a private sandbox: the held request is logged when it finishes, after this test has moved on
    sb, client = make_sandbox(applicants=20)
    info = sb.info()
    set_connection(monkeypatch, info, extra={"ca_bundle": info["ca_bundle"], "timeout": 0.5})
    client.add_fault(kind="timeout", server="dreamapply", path="/api/v9/institutions", seconds=2, times=1)
    h = DreamApplyHook(**FAST)
    assert h.get_collection("/institutions")
    assert h.stats["retries"] == 1
    deadline = time.monotonic() + 10  # let the held request finish before the sandbox stops
    while len(client.requests(server="dreamapply")) < 2 and time.monotonic() < deadline:
        time.sleep(0.1)


# -- quota -----------------------------------------------------------------------------------
@pytest.mark.slow  # over a second (real Retry-After waits, sleeps or a subprocess): make test runs it
def test_server_429_backs_off_and_completes(make_sandbox: Callable[..., Any], monkeypatch) -> None:
    """Server quota 5/min, client limit far higher: the server refuses, the hook backs off and finishes."""
    sb, client = make_sandbox(applicants=20, dreamapply_requests_per_minute=5)
    set_connection(monkeypatch, sb.info())
    stop = threading.Event()

    def next_minute() -> None:  # the server's window ends every 0.5 s instead of every 60 s
        while not stop.wait(0.5):
            client.post("/dreamapply/ratelimit", {})

    ticker = threading.Thread(target=next_minute, daemon=True)
    ticker.start()
    seq = client.last_seq()
    try:
        h = DreamApplyHook(requests_per_minute=1000, max_retries=20, retry_wait_min=0.05, retry_wait_max=0.3)
        results = [h.get_collection(path) for path in ["/academic-years", "/courses", "/applicants/consents"] * 4]
    finally:
        stop.set()
        ticker.join()
    assert all(results)
    log = log_since(client, seq)
    throttled = [e for e in log if e["status"] == 429]
    assert throttled and h.stats["throttled"] == len(throttled)
    assert h.stats["retries"] == len(throttled)
    assert h.stats["requests"] == len(log)
    assert all(e.get("retry_after") is None for e in throttled)  # DreamApply sends no Retry-After


def test_client_limit_keeps_the_server_from_429(make_sandbox: Callable[..., Any], monkeypatch) -> None:
    """Client limit = server quota (5/min): the hook waits instead of being refused.

    Time is simulated on both sides: the limiter's clock is fake, and when it sleeps a minute the
    server's window is reset too (a real minute would have ended it).
    """
    sb, client = make_sandbox(applicants=20, dreamapply_requests_per_minute=5)
    set_connection(monkeypatch, sb.info())
    now = [0.0]

    def sleep(seconds: float) -> None:
        now[0] += seconds
        client.post("/dreamapply/ratelimit", {})

    limiter = SlidingWindowLimiter(5, clock=lambda: now[0], sleep=sleep)
    h = DreamApplyHook(limiter=limiter, max_retries=0)
    seq = client.last_seq()
    for _ in range(12):
        assert h.get_collection("/academic-terms")
    log = log_since(client, seq)
    assert len(log) == 12 and all(e["status"] == 200 for e in log)
    assert h.stats["throttled"] == 0
    assert h.stats["waited_seconds"] >= 120  # two full windows waited for
    assert limiter.waits == 2


def test_quota_from_connection_extra(sandbox: Sandbox, monkeypatch: pytest.MonkeyPatch) -> None:
    info = sandbox.info()
    set_connection(monkeypatch, info, extra={"ca_bundle": info["ca_bundle"], "requests_per_minute": 42})
    h = DreamApplyHook()
    h.get_conn()
    assert h.limiter is not None and h.limiter.requests_per_minute == 42
    h2 = DreamApplyHook(requests_per_minute=7)
    h2.get_conn()
    assert h2.limiter is not None and h2.limiter.requests_per_minute == 7
    h3 = DreamApplyHook()
    set_connection(monkeypatch, info)
    h3.get_conn()
    assert h3.limiter is not None and h3.limiter.requests_per_minute == 180


# -- limiter unit tests ----------------------------------------------------------------------
class FakeTime:
    def __init__(self) -> None:
        self.now = 0.0
        self.sleeps: list[float] = []
        self.lock = threading.Lock()

    def clock(self) -> float:
        with self.lock:
            return self.now

    def sleep(self, seconds: float) -> None:
        with self.lock:
            self.sleeps.append(seconds)
            self.now += seconds


def test_limiter_sliding_window() -> None:
    t = FakeTime()
    lim = SlidingWindowLimiter(3, clock=t.clock, sleep=t.sleep)
    for _ in range(3):
        with lim.slot() as waited:
            assert waited == 0
        t.now += 10
    # slots completed at 0, 10, 20: the 4th waits until 0 + 60
    with lim.slot() as waited:
        assert waited == pytest.approx(30)
    assert t.now == pytest.approx(60)
    # the window now holds 10, 20 and 60 (0 has left it): full, so the 5th waits until 10 + 60
    with lim.slot() as waited:
        assert waited == pytest.approx(10)
    assert t.now == pytest.approx(70)


def test_limiter_counts_in_flight_and_measures_from_completion() -> None:
    t = FakeTime()
    lim = SlidingWindowLimiter(2, clock=t.clock, sleep=t.sleep)
    lim.acquire()
    lim.acquire()
    t.now = 5.0
    lim.release()  # completed at 5 → free at 65, not 60; the other request is still in flight
    assert lim.acquire() == pytest.approx(60)  # one in flight + one completed fill the window of 2
    assert t.now == pytest.approx(65)


def test_limiter_is_thread_safe() -> None:
    t = FakeTime()
    lim = SlidingWindowLimiter(10, clock=t.clock, sleep=t.sleep)
    starts: list[float] = []
    lock = threading.Lock()

    def worker() -> None:
        for _ in range(5):
            with lim.slot(), lock:
                starts.append(t.clock())

    threads = [threading.Thread(target=worker) for _ in range(8)]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    assert len(starts) == 40
    starts.sort()
    # never more than 10 starts in any 60-second window
    for i, s in enumerate(starts):
        assert sum(1 for x in starts[i:] if x < s + 60) <= 10


def test_limiter_disabled() -> None:
    lim = SlidingWindowLimiter(0, sleep=lambda s: pytest.fail("must not sleep"))
    for _ in range(1000):
        with lim.slot():
            pass
    assert lim.waited_seconds == 0


# -- wire helpers ----------------------------------------------------------------------------
def test_wire_helpers() -> None:
    from d365.hooks.answers import Where, id_map
    from d365.hooks.dreamapply import _encode_params

    where = Where(DreamApplyMalformedAnswer, "GET", "/courses")
    assert id_map([], where) == {}  # PHP's empty map
    assert id_map({"pages": {"next": None}, "7": {"a": 1}, "8": {"id": 8}}, where) == {
        "7": {"a": 1, "id": 7},
        "8": {"id": 8},
    }
    assert _encode_params({"byIDs": [3, 1], "s": {2, 1}, "expand": "a,b", "x": None, "f": True, "n": 5}) == [
        ("byIDs", "3,1"), ("s", "1,2"), ("expand", "a,b"), ("f", "true"), ("n", "5")
    ]  # fmt: skip


def test_missing_api_key_is_an_auth_error(sandbox: Sandbox, monkeypatch: pytest.MonkeyPatch) -> None:
    set_connection(monkeypatch, sandbox.info(), password=None)
    with pytest.raises(DreamApplyAuthError, match="no API key"):
        DreamApplyHook().get_json("/ping")


# -- answers are checked before use (a 200 is not yet data) ------------------------------------
LYING_200 = [
    ("html", "HtmlPage"),
    ("json_error", "ErrorObject"),
    ("empty", "EmptyBody"),
    ("cut", "InvalidJson"),
    ("wrong_encoding", "WrongEncoding"),
]
# The first 100 applicants of the seeded sandbox include names outside ASCII, so cp1252 changes their bytes.
APPLICANTS_PAGE = {"limit": 100, "expand": ["consents", "trackers"]}


def fired(client: SandboxClient) -> list[int]:
    return [rule["fired"] for rule in client.get("/faults")["rules"]]


@pytest.mark.parametrize(("kind", "code"), LYING_200)
def test_a_lying_200_is_retried_inside_the_hook(
    hook: DreamApplyHook, sandbox_client: SandboxClient, kind: str, code: str
) -> None:
    expected = hook.get_collection("/applicants", APPLICANTS_PAGE)
    seq = sandbox_client.last_seq()
    sandbox_client.add_fault(kind=kind, server="dreamapply", method="GET", path="^/api/v9/applicants$", times=1)
    retries = hook.stats["retries"]
    assert hook.get_collection("/applicants", APPLICANTS_PAGE) == expected  # the retry read the real page
    assert hook.stats["retries"] == retries + 1
    assert fired(sandbox_client) == [1]
    faulted = [e for e in log_since(sandbox_client, seq) if e.get("fault")]
    assert len(faulted) == 1 and faulted[0]["fault"].get("changed", True), "the fault must have altered the answer"


@pytest.mark.parametrize(("kind", "code"), LYING_200)
def test_a_lying_200_that_persists_is_a_typed_retryable_error_naming_the_path(
    sandbox: Sandbox, sandbox_client: SandboxClient, monkeypatch: pytest.MonkeyPatch, kind: str, code: str
) -> None:
    set_connection(monkeypatch, sandbox.info())
    raw = sandbox_client.get("/dreamapply/applicants/1")
    sandbox_client.add_fault(kind=kind, server="dreamapply", method="GET", path="^/api/v9/applicants$")
    h = DreamApplyHook(max_retries=2, **FAST)
    with pytest.raises(DreamApplyMalformedAnswer) as err:
        h.get_collection("/applicants", {**APPLICANTS_PAGE, "byIDs": [1]})
    assert err.value.code == code and err.value.status == 200 and err.value.retryable
    assert err.value.path == "/api/v9/applicants" and err.value.method == "GET"
    text = str(err.value)
    assert "byIDs" not in text and "limit" not in text  # the path, never the query
    for value in (raw.get("given"), raw.get("family"), raw.get("email")):
        assert not value or value not in text  # no personal data from the body
    assert h.stats["requests"] == 3 and h.stats["retries"] == 2
    assert fired(sandbox_client) == [3]


@pytest.mark.parametrize(
    ("path", "read"),
    [
        ("^/api/v9/journal$", lambda h: h.get_collection("/journal", {"byEvents": ["Applicant was edited"]})),
        ("^/api/v9/purged-resources$", lambda h: list(h.iter_paginated("/purged-resources"))),
        ("^/api/v9/academic-years$", lambda h: h.get_collection("/academic-years")),
    ],
    ids=["journal", "purged-resources", "catalog"],
)
@pytest.mark.parametrize("kind", ["html", "json_error", "empty", "cut"])
def test_every_collection_read_refuses_a_lying_200(
    sandbox: Sandbox,
    sandbox_client: SandboxClient,
    monkeypatch: pytest.MonkeyPatch,
    path: str,
    read: Callable[[DreamApplyHook], Any],
    kind: str,
) -> None:
    set_connection(monkeypatch, sandbox.info())
    sandbox_client.add_fault(kind=kind, server="dreamapply", method="GET", path=path)
    h = DreamApplyHook(max_retries=1, **FAST)
    with pytest.raises(DreamApplyMalformedAnswer) as err:
        read(h)
    assert err.value.retryable and err.value.path == path.strip("^$")
    assert fired(sandbox_client) == [2]


def test_count_without_x_count_is_retried_then_raised(
    hook: DreamApplyHook, sandbox: Sandbox, sandbox_client: SandboxClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    total = hook.count("/applicants")
    sandbox_client.add_fault(kind="html", server="dreamapply", method="HEAD", path="^/api/v9/applicants$", times=1)
    assert hook.count("/applicants") == total and hook.stats["retries"] == 1
    sandbox_client.clear_faults()
    sandbox_client.add_fault(kind="html", server="dreamapply", method="HEAD", path="^/api/v9/applicants$")
    set_connection(monkeypatch, sandbox.info())
    with pytest.raises(DreamApplyMalformedAnswer, match="X-Count") as err:
        DreamApplyHook(max_retries=1, **FAST).count("/applicants")
    assert err.value.method == "HEAD" and err.value.retryable


@pytest.mark.parametrize(
    ("path", "read"),
    [
        ("^/api/v9/applicants$", lambda h: h.get_collection("/applicants", {"limit": 5})),
        ("^/api/v9/purged-resources$", lambda h: list(h.iter_paginated("/purged-resources"))),
    ],
    ids=["applicants", "purged-resources"],
)
def test_a_map_of_non_records_is_not_an_empty_collection(
    make_sandbox: Callable[..., Any],
    monkeypatch: pytest.MonkeyPatch,
    path: str,
    read: Callable[[DreamApplyHook], Any],
) -> None:
    sb, client = make_sandbox(applicants=20)
    set_connection(monkeypatch, sb.info())
    for aid in (3, 4):  # purged-resources must hold items for the fault to have something to garble
        client.post(f"/dreamapply/applicants/{aid}/erase", {"request_to_be_forgotten": True})
    expected = read(DreamApplyHook(**FAST))
    client.post("/shape-faults", {"mode": "non_records", "path": path, "times": 1})
    h = DreamApplyHook(**FAST)
    assert read(h) == expected and h.stats["retries"] == 1  # retried, then the real records
    client.delete("/shape-faults")
    client.post("/shape-faults", {"mode": "non_records", "path": path})
    h = DreamApplyHook(max_retries=1, **FAST)
    with pytest.raises(DreamApplyMalformedAnswer, match="non-record") as err:
        read(h)
    assert err.value.code == "WrongShape" and err.value.retryable
    rules = client.get("/shape-faults")["rules"]
    assert rules[0]["fired"] == 2


def test_id_map_shapes() -> None:
    from d365.hooks.answers import Where, id_map

    where = Where(DreamApplyMalformedAnswer, "GET", "/api/v9/x")
    assert id_map([{"id": 3}], where) == {"3": {"id": 3}}
    for bad in (None, 3, "x", ["/api/v9/applicants/1"], [{"name": "no id"}], {"1": "/api/v9/applicants/1"},
                {"1": {"id": 1}, "2": None}, {"pages": "garbage-but-not-a-paginator"}):  # fmt: skip
        with pytest.raises(DreamApplyMalformedAnswer) as err:
            id_map(bad, where)
        assert err.value.code == "WrongShape" and err.value.path == "/api/v9/x"


def test_retry_settings_from_connection_extras(sandbox: Sandbox, monkeypatch: pytest.MonkeyPatch) -> None:
    info = sandbox.info()
    extra = {**airflow_connections(info)["AIRFLOW_CONN_DREAMAPPLY_DEFAULT"]["extra"], "max_retries": 1}
    set_connection(monkeypatch, info, extra={**extra, "retry_wait_min": 0.01, "retry_wait_max": 0.02})
    h = DreamApplyHook()
    h.get_conn()
    assert (h.max_retries, h.retry_wait_min, h.retry_wait_max) == (1, 0.01, 0.02)
    explicit = DreamApplyHook(max_retries=3)  # an argument wins over the extra
    explicit.get_conn()
    assert (explicit.max_retries, explicit.retry_wait_min) == (3, 0.01)
