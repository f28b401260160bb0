"""Incremental extract against the DreamApply sandbox (over verified TLS, through DreamApplyHook)."""

from __future__ import annotations

import json
import re
import threading
from collections.abc import Callable, Iterator
from itertools import pairwise
from typing import Any
from urllib.parse import parse_qs

import pytest
from hypothesis import given
from hypothesis import strategies as st

from d365.hooks.dreamapply import DreamApplyHook
from d365.hooks.errors import DreamApplyAuthError, DreamApplyMalformedAnswer
from d365.pipeline.extract import Cursors, ExtractResult, _ranges, extract, link_id
from d365.pipeline.settings import load_settings
from sandbox import Sandbox
from sandbox.client import SandboxClient, airflow_connections

EVENTS = [
    "Applicant registered",
    "Applicant was collected",
    "Application was created",
    "Application was created by cloning",
    "Application was submitted",
    "Offer was edited: ?",
    "Applicant was deleted",
    "Applicant was edited",
    "Applicant consent was changed",
    "Application was withdrawn",
]
CATALOG_REQUESTS = 7
APPLICANT_KEYS = {
    "applicant_id", "type", "registered", "name_full", "name_given", "name_middle", "name_family", "email",
    "phone", "citizenship", "reference", "matriculation", "consents", "tracker_ids", "tracker_codes",
    "applications", "reason",
}  # fmt: skip
APPLICATION_KEYS = {"id", "status", "created", "revised", "submitted", "academic_term_id", "courses", "offers"}
OFFER_KEYS = {"id", "course_id", "type_id", "type_title", "decision", "inserted", "saved", "confirmed"}


def connect(monkeypatch: pytest.MonkeyPatch, info: dict[str, Any], **overrides: Any) -> None:
    conn = airflow_connections(info)["AIRFLOW_CONN_DREAMAPPLY_DEFAULT"]
    conn.update(overrides)
    monkeypatch.setenv("AIRFLOW_CONN_DREAMAPPLY_DEFAULT", json.dumps(conn))


@pytest.fixture
def private(
    make_sandbox: Callable[..., tuple[Sandbox, SandboxClient]], monkeypatch: pytest.MonkeyPatch
) -> Iterator[tuple[DreamApplyHook, SandboxClient]]:
    """A private 300-applicant sandbox (data changes) without a server quota, and a hook on it."""
    sb, client = make_sandbox(dreamapply_requests_per_minute=1_000_000)
    connect(monkeypatch, sb.info())
    hook = DreamApplyHook(requests_per_minute=0, retry_wait_min=0.01, retry_wait_max=0.05)
    yield hook, client
    hook.close()


@pytest.fixture(scope="module")
def first_load(sandbox: Sandbox) -> tuple[ExtractResult, list[dict[str, Any]]]:
    """A first load of the shared sandbox (read-only) and the DreamApply requests it made."""
    info = sandbox.info()
    client = SandboxClient(info)
    client.post("/dreamapply/ratelimit", {})
    mp = pytest.MonkeyPatch()
    connect(mp, info)
    try:
        hook = DreamApplyHook()
        seq = client.last_seq()
        result = extract(hook, Cursors(), event_names=EVENTS)
        log = client.requests(server="dreamapply", since=seq)
        hook.close()
    finally:
        mp.undo()
    return result, log


def pages(n: int, size: int) -> int:
    """Keyset requests for n items: full pages, plus the short (possibly empty) page that ends the walk."""
    return n // size + 1


# -- first load ------------------------------------------------------------------------------
def test_first_load_extracts_every_applicant_once(first_load, sandbox: Sandbox) -> None:
    result, _ = first_load
    stats = SandboxClient(sandbox.info()).get("/dreamapply/stats")
    ids = [a["applicant_id"] for a in result.applicants]
    assert len(ids) == len(set(ids)) == stats["applicants"] == 300
    assert ids == sorted(ids)
    assert {a["reason"] for a in result.applicants} == {"new"}
    assert result.counts["new"] == 300 and result.counts["changed"] == 0
    assert sum(len(a["applications"]) for a in result.applicants) == stats["applications"]
    assert result.cursors == Cursors(applicant_id=max(ids), journal_event_id=stats["last_event_id"])
    for a in result.applicants:
        assert set(a) == APPLICANT_KEYS
        for app in a["applications"]:
            assert set(app) == APPLICATION_KEYS
            assert all(set(o) == OFFER_KEYS for o in app["offers"])
            assert all(set(c) == {"course_id", "priority", "intake_id"} for c in app["courses"])
    json.dumps(result.applicants)  # JSON-safe


def test_first_load_catalog(first_load) -> None:
    cat = first_load[0].catalog
    assert set(cat) == {"terms", "courses", "consents", "trackers", "offer_types"}
    term = next(iter(cat["terms"].values()))
    assert isinstance(term["year"], int) and term["year_name"] and term["type_name"] and term["start"]
    assert cat["terms"][str(term["id"])] is term
    assert cat["consents"]["1"]["type"] == "Mandatory"
    assert "Unreplied" in cat["offer_types"].values()
    assert all(isinstance(code, str) for code in cat["trackers"].values())
    course = next(iter(cat["courses"].values()))
    assert {"id", "name", "code", "type", "mode"} <= set(course)


def test_first_load_matches_the_sandbox_records(first_load, sandbox: Sandbox) -> None:
    client = SandboxClient(sandbox.info())
    by_id = {a["applicant_id"]: a for a in first_load[0].applicants}
    with_offers = [a for a in by_id.values() if any(app["offers"] for app in a["applications"])]
    with_trackers = [a for a in by_id.values() if a["tracker_ids"]]
    sample = [by_id[1], by_id[150], by_id[300], with_offers[0], with_offers[-1], with_trackers[0]]
    offer_types = first_load[0].catalog["offer_types"]
    for rec in sample:
        raw = client.get(f"/dreamapply/applicants/{rec['applicant_id']}")
        assert rec["email"] == raw["email"] and rec["phone"] == raw["phone"]
        names = (rec["name_given"], rec["name_middle"], rec["name_family"])
        assert names == (raw["given"], raw["middle"], raw["family"])
        assert rec["citizenship"] == raw["citizenship"] and rec["type"] == raw["type"]
        assert rec["registered"] == raw["registered_iso"]
        assert rec["consents"] == {k: v["decision"] for k, v in raw["consents"].items()}
        assert rec["tracker_ids"] == [t["tracker"] for t in raw["trackers"]]
        assert [app["id"] for app in rec["applications"]] == sorted(raw["applications"])
        for app in rec["applications"]:
            raw_app = client.get(f"/dreamapply/applications/{app['id']}")
            assert app["status"] == raw_app["status"] and app["academic_term_id"] == raw_app["academic_term"]
            assert [(c["course_id"], c["intake_id"]) for c in app["courses"]] == [
                (c["course"], c["intake"]) for c in raw_app["courses"]
            ]
            assert [c["priority"] for c in app["courses"]] == list(range(1, len(app["courses"]) + 1))
            raw_offers = {o["id"]: o for o in raw_app["offer_records"]}
            assert [o["id"] for o in app["offers"]] == sorted(raw_offers)
            for offer in app["offers"]:
                raw_offer = raw_offers[offer["id"]]
                assert offer["type_id"] == raw_offer["type_id"]
                assert offer["type_title"] == offer_types[str(raw_offer["type_id"])]
                assert offer["course_id"] == raw_offer["course_id"] and offer["decision"] == raw_offer["decision"]


def test_first_load_request_count_grows_with_pages(first_load, sandbox: Sandbox) -> None:
    result, log = first_load
    stats = SandboxClient(sandbox.info()).get("/dreamapply/stats")
    bound = (
        CATALOG_REQUESTS
        + 1  # newest journal event, read first
        + pages(stats["applicants"], 8192)
        + pages(stats["applications"], 8192)
        + max(1, -(-stats["purged_resources"] // 100))
    )
    assert len(log) == result.counts["requests"] <= bound == 11
    assert all(e["status"] == 200 for e in log)
    journal = [e for e in log if e["path"].endswith("/journal")]
    assert len(journal) == 1 and "newest-first" in journal[0]["query"]
    assert log.index(journal[0]) < next(i for i, e in enumerate(log) if e["path"].endswith("/applicants"))


def test_request_count_with_small_pages(private) -> None:
    hook, client = private
    stats = client.get("/dreamapply/stats")
    seq = client.last_seq()
    result = extract(hook, Cursors(), event_names=EVENTS, page_size=50)
    log = client.requests(server="dreamapply", since=seq)
    assert len(result.applicants) == stats["applicants"]
    assert len(log) == CATALOG_REQUESTS + 1 + pages(stats["applicants"], 50) + pages(stats["applications"], 50) + 1


# -- incremental -----------------------------------------------------------------------------
def expected_after_advance(hook: DreamApplyHook, summary: dict[str, Any], years: list[int]) -> set[int]:
    """Applicant IDs the advance summary names, resolved from the wire data (offers/applications → applicant)."""
    app_owner: dict[int, int] = {}
    offer_app: dict[int, int] = {}
    for page in hook.iter_collection_pages("/applications", {"byAcademicYears": years, "expand": "offers"}):
        for key, item in page.items():
            app_owner[int(key)] = link_id(item["applicant"])  # type: ignore[assignment]
            for oid in item["offers"]:
                offer_app[int(oid)] = int(key)
    ids = set(summary["applicants_registered"]) | set(summary["applicants_edited"])
    ids |= {c["applicant"] for c in summary["consents_changed"]}
    ids |= {app_owner[a] for a in summary["applications_created"] + summary["applications_submitted"] if a in app_owner}
    ids |= {app_owner[offer_app[o]] for o in summary["offers_edited"] + summary["offers_decided"] if o in offer_app}
    return ids - set(summary["applicants_erased"])


@pytest.mark.parametrize("seed", [1, 2, 3, 9])
def test_incremental_after_advance(private, seed: int) -> None:
    hook, client = private
    first = extract(hook, Cursors(), event_names=EVENTS)
    summary = client.post("/dreamapply/advance", {"hours": 48, "seed": seed, "rates": {"erasures": 0.01}})
    assert summary["journal"]["count"] > 0
    seq = client.last_seq()
    second = extract(hook, first.cursors, event_names=EVENTS)
    log = client.requests(server="dreamapply", since=seq)

    years = sorted(t["year"] for t in first.catalog["terms"].values())
    expected = expected_after_advance(hook, summary, sorted(set(years)))
    got = {a["applicant_id"]: a["reason"] for a in second.applicants}
    assert set(got) == expected
    assert {i for i, r in got.items() if r == "new"} == set(summary["applicants_registered"]) - set(
        summary["applicants_erased"]
    )
    assert {r for i, r in got.items() if i not in summary["applicants_registered"]} <= {"changed"}
    assert second.cursors.journal_event_id == summary["journal"]["last"]
    # the highest applicant ID seen: a new applicant erased within the same advance is never seen
    live_new = set(summary["applicants_registered"]) - set(summary["applicants_erased"])
    assert second.cursors.applicant_id == max([first.cursors.applicant_id, *live_new])
    assert second.counts["journal_events"] == summary["journal"]["count"]
    assert set(summary["applicants_erased"]) <= set(second.erased_applicant_ids)
    # the fetched state is the current one
    for a in second.applicants[:5]:
        raw = client.get(f"/dreamapply/applicants/{a['applicant_id']}")
        assert a["email"] == raw["email"] and a["consents"] == {k: v["decision"] for k, v in raw["consents"].items()}
    # requests grow with pages, not with the changed applicants
    assert len(log) <= CATALOG_REQUESTS + 1 + 1 + 2 + 1 + 1 + 1  # journal, new, ranges, apps, count, purges
    assert not any(re.search(r"/(applicants|applications)/\d", e["path"]) for e in log)  # no per-record calls

    third = extract(hook, second.cursors, event_names=EVENTS)
    assert third.applicants == [] and third.cursors == second.cursors
    assert third.counts["requests"] == CATALOG_REQUESTS + 2  # catalog, journal page, new-applicant page


def test_single_edit_and_sparse_ranges(private) -> None:
    hook, client = private
    first = extract(hook, Cursors(), event_names=EVENTS)
    for aid, change in [(5, {"phone": "+372 5555 0005"}), (6, {"email": "six@example.org"}), (290, {"notes": "x"})]:
        r = client.http.patch(client.admin_url + f"/dreamapply/applicants/{aid}", json=change)
        r.raise_for_status()
    client.post(f"/dreamapply/applicants/{100}/consents", {"consent": 2, "decision": "Accept"})
    seq = client.last_seq()
    result = extract(hook, first.cursors, event_names=EVENTS, page_size=50)
    assert [(a["applicant_id"], a["reason"]) for a in result.applicants] == [
        (5, "changed"), (6, "changed"), (100, "changed"), (290, "changed")
    ]  # fmt: skip
    assert result.applicants[0]["phone"] == "+372 5555 0005" and result.applicants[1]["email"] == "six@example.org"
    assert result.applicants[2]["consents"]["2"] == "Accept"
    ranges = [e["query"] for e in client.requests(server="dreamapply", since=seq) if e["path"].endswith("/applicants")]
    # the new-applicant scan, then one range per cluster (gaps over the page size split them)
    assert len(ranges) == 1 + 3
    assert _ranges([5, 6, 100, 290], 50) == [(5, 6), (100, 100), (290, 290)]


def test_requested_ids_only(first_load, sandbox: Sandbox, monkeypatch: pytest.MonkeyPatch) -> None:
    info = sandbox.info()
    client = SandboxClient(info)
    client.post("/dreamapply/ratelimit", {})
    connect(monkeypatch, info)
    hook = DreamApplyHook()
    cursors = Cursors(applicant_id=300, journal_event_id=5)
    seq = client.last_seq()
    result = extract(hook, cursors, event_names=EVENTS, applicant_ids=[7, 250, 999_999])
    log = client.requests(server="dreamapply", since=seq)
    assert [(a["applicant_id"], a["reason"]) for a in result.applicants] == [(7, "requested"), (250, "requested")]
    assert result.cursors == cursors and result.cursors is not cursors
    assert result.counts["requested"] == 2 and result.counts["requested_missing"] == 1
    first = {a["applicant_id"]: a for a in first_load[0].applicants}
    assert result.applicants[1] == {**first[250], "reason": "requested"}
    assert len(log) == CATALOG_REQUESTS + 2 + 1  # two ranges (999999 is far away), one applications chunk
    assert not any(e["path"].endswith("/journal") for e in log)


def test_full_resync_and_switches(private) -> None:
    hook, client = private
    first = extract(hook, Cursors(), event_names=EVENTS)
    summary = client.post("/dreamapply/advance", {"hours": 24, "seed": 5, "rates": {"new_applicants": 0.05}})
    assert summary["applicants_registered"]
    only_new = extract(hook, first.cursors, event_names=EVENTS, include_changes=False)
    assert {a["applicant_id"] for a in only_new.applicants} == set(summary["applicants_registered"])
    assert only_new.cursors.journal_event_id == first.cursors.journal_event_id
    only_changes = extract(hook, first.cursors, event_names=EVENTS, include_new=False)
    assert {a["reason"] for a in only_changes.applicants} == {"changed"}
    assert only_changes.cursors.applicant_id == first.cursors.applicant_id
    assert only_changes.cursors.journal_event_id == summary["journal"]["last"]

    resync = extract(hook, Cursors(applicant_id=10**6, journal_event_id=10**6), event_names=EVENTS, full_resync=True)
    stats = client.get("/dreamapply/stats")
    assert len(resync.applicants) == stats["applicants"]
    assert {a["reason"] for a in resync.applicants} == {"resync"}
    top = stats["next_applicant_id"] - 1
    assert resync.cursors == Cursors(applicant_id=top, journal_event_id=stats["last_event_id"])


def test_erasures_are_collected(private) -> None:
    hook, client = private
    first = extract(hook, Cursors(), event_names=EVENTS)
    client.post("/dreamapply/applicants/12/erase", {"request_to_be_forgotten": True})
    client.post("/dreamapply/applicants/13/erase", {"request_to_be_forgotten": False})
    result = extract(hook, first.cursors, event_names=EVENTS)
    assert result.applicants == []
    assert result.erased_applicant_ids == [12]
    assert result.counts["purged_applicants"] == 2
    # no deletion event since: the purged-resources pages are not read again
    again = extract(hook, result.cursors, event_names=EVENTS)
    assert again.erased_applicant_ids == [] and "purged_applicants" not in again.counts


def test_large_incremental_chooses_the_cheaper_application_fetch(
    make_sandbox: Callable[..., tuple[Sandbox, SandboxClient]], monkeypatch: pytest.MonkeyPatch
) -> None:
    sb, client = make_sandbox(applicants=1200, dreamapply_requests_per_minute=1_000_000)
    connect(monkeypatch, sb.info())
    hook = DreamApplyHook(requests_per_minute=0)
    first = extract(hook, Cursors(), event_names=EVENTS)
    client.post("/dreamapply/advance", {"hours": 24, "seed": 9, "rates": {"edits": 0.95}})
    stats = client.get("/dreamapply/stats")
    for page_size, scan in [(8192, True), (100, False)]:
        seq = client.last_seq()
        result = extract(hook, first.cursors, event_names=EVENTS, page_size=page_size)
        assert result.counts["changed"] > 500
        log = [e for e in client.requests(server="dreamapply", since=seq) if e["path"].endswith("/applications")]
        heads = [e for e in log if e["method"] == "HEAD"]
        chunked = [e for e in log if "byApplicantIDs" in e["query"]]
        assert len(heads) == 1
        if scan:  # one page of all applications beats two chunks
            assert not chunked and len(log) == 1 + pages(stats["applications"], page_size)
        else:  # 13 pages of 100 lose to 3 chunks of 500
            assert len(chunked) >= 3 and all(len(e["query"]) < 8000 for e in chunked)
        wanted = {a["applicant_id"] for a in result.applicants}
        assert sum(len(a["applications"]) for a in result.applicants) == sum(
            1
            for p in hook.iter_collection_pages("/applications", {"byAcademicYears": [2024, 2025, 2026, 2027]})
            for item in p.values()
            if link_id(item["applicant"]) in wanted
        )


# -- journal events without an applicant link ---------------------------------------------------
class NoApplicantLinks:
    """A client whose journal items link only the application (as some DreamApply events do)."""

    def __init__(self, hook: DreamApplyHook) -> None:
        self.hook = hook
        self.stats = hook.stats

    def __getattr__(self, name: str) -> Any:
        return getattr(self.hook, name)

    def iter_collection_pages(self, path: str, params: Any = None, limit: int = 8192) -> Iterator[dict[str, Any]]:
        for page in self.hook.iter_collection_pages(path, params, limit):
            if path == "/journal":
                page = {k: {**v, "applicant": None if v["application"] else v["applicant"]} for k, v in page.items()}
            yield page


def test_events_linking_only_an_application(private) -> None:
    hook, client = private
    first = extract(hook, Cursors(), event_names=EVENTS)
    made = client.post("/dreamapply/applicants/40/applications", {"year": 2026, "courses": [1]})
    expected = extract(hook, first.cursors, event_names=EVENTS)
    got = extract(NoApplicantLinks(hook), first.cursors, event_names=EVENTS)
    assert [a["applicant_id"] for a in got.applicants] == [a["applicant_id"] for a in expected.applicants] == [40]
    assert made["id"] in [app["id"] for app in got.applicants[0]["applications"]]


# -- quota and auth through the extract ------------------------------------------------------
@pytest.mark.slow  # over a second (real Retry-After waits, sleeps or a subprocess): make test runs it
def test_extract_completes_through_server_429s(
    make_sandbox: Callable[..., tuple[Sandbox, SandboxClient]], monkeypatch: pytest.MonkeyPatch
) -> None:
    sb, client = make_sandbox(applicants=30, dreamapply_requests_per_minute=5)
    connect(monkeypatch, sb.info())
    stop = threading.Event()

    def next_minute() -> None:  # end the server's one-minute window every 0.5 s
        while not stop.wait(0.5):
            client.post("/dreamapply/ratelimit", {})

    ticker = threading.Thread(target=next_minute, daemon=True)
    ticker.start()
    try:
        hook = DreamApplyHook(requests_per_minute=1000, max_retries=20, retry_wait_min=0.05, retry_wait_max=0.3)
        result = extract(hook, Cursors(), event_names=EVENTS)
    finally:
        stop.set()
        ticker.join()
    assert len(result.applicants) == 30
    assert hook.stats["throttled"] > 0 and hook.stats["retries"] == hook.stats["throttled"]
    assert result.counts["requests"] == 11 + hook.stats["throttled"]


def test_bad_key_is_an_auth_error(sandbox: Sandbox, monkeypatch: pytest.MonkeyPatch) -> None:
    info = sandbox.info()
    connect(monkeypatch, info, password="not-the-key-0123456789")
    with pytest.raises(DreamApplyAuthError) as err:
        extract(DreamApplyHook(), Cursors(), event_names=EVENTS)
    assert "not-the-key-0123456789" not in str(err.value) and err.value.status == 401


def test_arguments_are_checked() -> None:
    with pytest.raises(ValueError, match="page_size"):
        extract(object(), Cursors(), event_names=EVENTS, page_size=10_000)
    with pytest.raises(ValueError, match="event_names"):
        extract(object(), Cursors(), event_names=[])


def test_requested_ids_need_no_event_names(private) -> None:
    hook, _ = private
    result = extract(hook, Cursors(), event_names=[], applicant_ids=[3])
    assert [a["applicant_id"] for a in result.applicants] == [3]


# -- properties of the range grouping --------------------------------------------------------
@given(st.sets(st.integers(min_value=1, max_value=100_000), max_size=300), st.integers(min_value=1, max_value=10_000))
def test_ranges_cover_the_ids_and_split_only_at_large_gaps(ids: set[int], gap: int) -> None:
    ranges = _ranges(ids, gap)
    covered = [i for i in sorted(ids) if any(lo <= i <= hi for lo, hi in ranges)]
    assert covered == sorted(ids)
    assert all(lo in ids and hi in ids and lo <= hi for lo, hi in ranges)
    assert all(b[0] - a[1] > gap for a, b in pairwise(ranges))
    for lo, hi in ranges:  # inside a range, neighbours are at most `gap` apart
        inside = sorted(i for i in ids if lo <= i <= hi)
        assert all(b - a <= gap for a, b in pairwise(inside))


# -- a read that failed never looks like "nothing changed" -------------------------------------
NO_DELETE_EVENT = [e for e in EVENTS if e != "Applicant was deleted"]


def edit(client: SandboxClient, aid: int, change: dict[str, Any]) -> None:
    client.http.patch(client.admin_url + f"/dreamapply/applicants/{aid}", json=change).raise_for_status()


@pytest.mark.parametrize("kind", ["html", "json_error", "empty", "cut"])
def test_a_journal_that_cannot_be_read_fails_the_extract(private, kind: str) -> None:
    hook, client = private
    first = extract(hook, Cursors(), event_names=EVENTS)
    edit(client, 5, {"phone": "+372 5555 0005"})
    hook.max_retries = 1
    client.add_fault(kind=kind, server="dreamapply", method="GET", path="^/api/v9/journal$")
    with pytest.raises(DreamApplyMalformedAnswer):  # never an empty journal: no cursor to move
        extract(hook, first.cursors, event_names=EVENTS)
    assert [r["fired"] for r in client.get("/faults")["rules"]] == [2]


def test_applicants_whose_range_read_fails_are_carried_and_fetched_first_next_run(private) -> None:
    hook, client = private
    first = extract(hook, Cursors(), event_names=EVENTS)
    for aid in (5, 6, 200):
        edit(client, aid, {"phone": f"+372 5555 0{aid:03d}"})
    hook.max_retries = 1
    # the 1st /applicants request is the new-applicant scan; every later one (the ranges) is a maintenance page
    client.add_fault(kind="html", server="dreamapply", method="GET", path="^/api/v9/applicants$", nth=2, times=100)
    failed = extract(hook, first.cursors, event_names=EVENTS, page_size=50)
    assert failed.applicants == []
    assert failed.carried == [5, 6, 200] and failed.counts["carried"] == 3
    assert failed.cursors.journal_event_id > first.cursors.journal_event_id  # safe: the three are carried
    assert client.get("/faults")["rules"][0]["fired"] == 4  # two ranges, each tried twice

    client.clear_faults()
    hook.max_retries = 5
    seq = client.last_seq()
    again = extract(hook, failed.cursors, event_names=EVENTS, page_size=50, carried=failed.carried)
    assert [(a["applicant_id"], a["reason"]) for a in again.applicants] == [
        (5, "carried"),
        (6, "carried"),
        (200, "carried"),
    ]
    assert again.applicants[2]["phone"] == "+372 5555 0200"
    assert again.carried == [] and again.carried_read == [5, 6, 200] and again.counts["carried_read"] == 3
    ranges = [e["query"] for e in client.requests(server="dreamapply", since=seq) if e["path"].endswith("/applicants")]
    assert "byUntil" in ranges[0]  # the carried ranges come before the new-applicant scan


def test_an_applicant_missing_from_the_answer_stays_carried_a_purged_one_does_not(private) -> None:
    hook, client = private
    first = extract(hook, Cursors(), event_names=NO_DELETE_EVENT)
    edit(client, 8, {"phone": "+372 5555 0008"})
    client.post("/dreamapply/applicants/8/erase", {"request_to_be_forgotten": True})  # edited, then purged
    result = extract(hook, first.cursors, event_names=NO_DELETE_EVENT, carried=[10**6])
    assert result.carried == [10**6]  # named earlier, still not in any answer and not purged: kept
    assert 8 not in result.carried and 8 in result.erased_applicant_ids  # gone: handled as an erasure
    assert result.counts["carried"] == 1 and result.carried_read == []


# -- dreamapply.deletion_events: every configured deletion event is an erasure signal --------------------
def journal_event_names(log: list[dict[str, Any]]) -> set[str]:
    """The event names every journal request of ``log`` asked for (``byEvents``)."""
    queries = [parse_qs(e["query"]) for e in log if e["path"].endswith("/journal")]
    assert queries, "no journal request"
    return {name for q in queries for value in q["byEvents"] for name in value.split(",")}


def test_the_default_deletion_event_is_read_though_the_change_events_omit_it(private) -> None:
    hook, client = private
    changes = list(load_settings().dreamapply.journal_events)  # the shipped settings: no deletion event in them
    assert "Applicant was deleted" not in changes
    first = extract(hook, Cursors(), event_names=changes)
    client.post("/dreamapply/applicants/12/erase", {"request_to_be_forgotten": True})
    seq = client.last_seq()
    result = extract(hook, first.cursors, event_names=changes)
    assert "Applicant was deleted" in journal_event_names(client.requests(server="dreamapply", since=seq))
    assert result.erased_applicant_ids == [12] and result.counts["purged_applicants"] == 1
    assert result.applicants == [] and result.carried == []
    # nothing deleted since: the purge list is not read again (the journal can tell)
    again = extract(hook, result.cursors, event_names=changes)
    assert "purged_applicants" not in again.counts and again.erased_applicant_ids == []


def test_a_configured_deletion_event_is_an_erasure_signal_and_the_default_name_is_not_hard_coded(private) -> None:
    hook, client = private
    custom = ["Applicant was edited"]  # a non-default deletion event name the sandbox can emit on demand
    changes = NO_DELETE_EVENT  # it is a change event too: as a deletion event it wins
    assert "Applicant was edited" in changes
    first = extract(hook, Cursors(), event_names=changes, deletion_events=custom)
    edit(client, 5, {"phone": "+372 5555 0005"})  # journal: "Applicant was edited" for 5
    client.post("/dreamapply/applicants/12/erase", {"request_to_be_forgotten": True})  # "Applicant was deleted"
    seq = client.last_seq()
    result = extract(hook, first.cursors, event_names=changes, deletion_events=custom)
    log = client.requests(server="dreamapply", since=seq)
    names = journal_event_names(log)
    assert "Applicant was edited" in names and "Applicant was deleted" not in names
    assert result.applicants == []  # 5 is an erasure signal: never fetched
    assert not [e for e in log if e["path"].endswith("/applicants") and "byUntil" in e["query"]]
    # the configured event came, so the purge list was read; 5 is not in it (yet): carried, so it is read again
    assert result.counts["purged_applicants"] == 1 and result.erased_applicant_ids == [12]
    assert result.carried == [5]

    # an "Applicant was deleted" (not configured now) with no configured event: the purge list is not read
    client.post("/dreamapply/applicants/13/erase", {"request_to_be_forgotten": True})
    again = extract(hook, result.cursors, event_names=changes, deletion_events=custom, carried=result.carried)
    assert [(a["applicant_id"], a["reason"]) for a in again.applicants] == [(5, "carried")]
    assert "purged_applicants" not in again.counts and again.carried == []


def test_without_deletion_events_the_purge_list_is_read_every_run(private) -> None:
    hook, client = private
    first = extract(hook, Cursors(), event_names=NO_DELETE_EVENT, deletion_events=())
    seq = client.last_seq()
    result = extract(hook, first.cursors, event_names=NO_DELETE_EVENT, deletion_events=())
    assert "Applicant was deleted" not in journal_event_names(client.requests(server="dreamapply", since=seq))
    assert result.counts["purged_applicants"] == 0  # the journal cannot tell: read anyway


def test_a_manual_send_keeps_the_carried_it_did_not_read(private) -> None:
    hook, _ = private
    cursors = Cursors(applicant_id=300, journal_event_id=1)
    result = extract(hook, cursors, event_names=EVENTS, applicant_ids=[7], carried=[7, 9])
    assert [a["applicant_id"] for a in result.applicants] == [7]
    assert result.carried == [9] and result.carried_read == [7]


def test_carried_ids_are_kept_in_the_ledger(tmp_path: Any) -> None:
    from d365.pipeline.ledger import Ledger, carried_ids, save_carried

    ledger = Ledger(f"sqlite:///{tmp_path / 'ledger.db'}")
    try:
        assert carried_ids(ledger, "i") == {}
        save_carried(ledger, "i", [5, 6], [], run_id="r1")
        save_carried(ledger, "other", [5], [], run_id="r1")
        save_carried(ledger, "i", [6, 7], [5], run_id="r2")  # 5 read now, 6 again, 7 new
        assert carried_ids(ledger, "i") == {6: 2, 7: 1}
        assert carried_ids(ledger, "other") == {5: 1}
        save_carried(ledger, "i", [], [6, 7], run_id="r3")
        assert carried_ids(ledger, "i") == {}
    finally:
        ledger.dispose()
