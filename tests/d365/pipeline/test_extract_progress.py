"""The applicant scan's progress lines (``extract_fetch.scan_progress``): pages read of the count DreamApply's
``X-Count`` gives, asked once and only by a scan long enough to report; over TLS against the sandbox."""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Callable
from typing import Any

import pytest

from d365.hooks.dreamapply import DreamApplyHook
from d365.pipeline import extract_fetch
from d365.pipeline.extract import Cursors, extract
from sandbox import Sandbox
from sandbox.client import SandboxClient, airflow_connections

EVENTS = ["Applicant registered", "Application was created", "Applicant was edited"]
PAGE = 50
LINE = re.compile(
    r"extract progress: (?P<done>[\d,]+) of ~(?P<total>[\d,]+) applicants \(\d+%\), page (?P<page>\d+) of "
    r"~(?P<pages>\d+), [\d.,]+ applicants/s, ETA \d+:\d\d:\d\d"
)


@pytest.fixture
def dreamapply(
    make_sandbox: Callable[..., tuple[Sandbox, SandboxClient]], monkeypatch: pytest.MonkeyPatch
) -> tuple[DreamApplyHook, SandboxClient]:
    sb, client = make_sandbox(applicants=400, dreamapply_requests_per_minute=1_000_000)
    monkeypatch.setenv(
        "AIRFLOW_CONN_DREAMAPPLY_DEFAULT", json.dumps(airflow_connections(sb.info())["AIRFLOW_CONN_DREAMAPPLY_DEFAULT"])
    )
    return DreamApplyHook(requests_per_minute=0), client


def _applicant_heads(client: SandboxClient, since: int) -> list[dict[str, Any]]:
    log = client.requests(server="dreamapply", since=since)
    return [e for e in log if e["method"] == "HEAD" and e["path"].endswith("/applicants")]


def test_a_long_scan_logs_pages_read_of_the_x_count(
    dreamapply: tuple[DreamApplyHook, SandboxClient], monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    hook, client = dreamapply
    monkeypatch.setattr(extract_fetch, "PROGRESS_PAGES", 3)
    monkeypatch.setattr(extract_fetch, "PROGRESS_SECONDS", 3600.0)
    caplog.set_level(logging.INFO, logger="d365.pipeline.extract_fetch")
    live = client.get("/dreamapply/stats")["applicants"]
    seq = client.last_seq()
    result = extract(hook, Cursors(), event_names=EVENTS, page_size=PAGE)
    pages = -(-live // PAGE)
    lines = [m for m in caplog.messages if m.startswith("extract progress:")]
    parsed = [LINE.fullmatch(line) for line in lines]
    assert lines and all(parsed), lines
    assert {int(m["total"].replace(",", "")) for m in parsed} == {live}  # X-Count of the scan, ignoring limit
    assert {int(m["pages"]) for m in parsed} == {pages}
    assert [int(m["page"]) for m in parsed] == [*range(3, pages + 1, 3), *([pages] if pages % 3 else [])]
    assert int(parsed[-1]["done"].replace(",", "")) == live == len(result.applicants)
    assert len(_applicant_heads(client, seq)) == 1  # counted once
    personal = [a["email"] for a in result.applicants if a["email"]] + [a["name_family"] for a in result.applicants]
    assert not any(value and value in line for value in personal for line in lines)


def test_a_short_scan_logs_nothing_and_costs_no_count(
    dreamapply: tuple[DreamApplyHook, SandboxClient], caplog: pytest.LogCaptureFixture
) -> None:
    hook, client = dreamapply
    caplog.set_level(logging.INFO, logger="d365.pipeline.extract_fetch")
    seq = client.last_seq()
    extract(hook, Cursors(), event_names=EVENTS, page_size=PAGE)  # 8-9 pages: under the default 10, well under 30 s
    assert not [m for m in caplog.messages if m.startswith("extract progress:")]
    assert _applicant_heads(client, seq) == []


def test_a_failed_count_leaves_the_total_unknown_not_the_scan(
    dreamapply: tuple[DreamApplyHook, SandboxClient], monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    from d365.hooks.errors import DreamApplyMalformedAnswer

    hook, _ = dreamapply

    def no_count(*_: Any) -> int:
        raise DreamApplyMalformedAnswer("no numeric X-Count header on HEAD", status=200, code="NoCount")

    monkeypatch.setattr(hook, "count", no_count)
    monkeypatch.setattr(extract_fetch, "PROGRESS_PAGES", 4)
    caplog.set_level(logging.INFO, logger="d365.pipeline.extract_fetch")
    result = extract(hook, Cursors(), event_names=EVENTS, page_size=PAGE)
    lines = [m for m in caplog.messages if m.startswith("extract progress:")]
    assert lines and lines[0].startswith("extract progress: 200 applicants, page 4, ") and "ETA unknown" in lines[0]
    assert any("the number of applicants to read is unknown" in m for m in caplog.messages)
    assert len(result.applicants) == int(re.match(r"extract progress: ([\d,]+)", lines[-1])[1].replace(",", ""))
