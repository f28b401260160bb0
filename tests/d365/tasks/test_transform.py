"""The transform task (``d365.tasks.transform``) against the sandbox: every extracted applicant leaves as a lead
payload or an explained outcome; a catalog that does not match the settings stops the run before any write."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest

from d365.errors import PreflightError
from d365.pipeline.runfiles import EXTRACT_APPLICANTS, EXTRACT_CATALOG, TRANSFORM_LEADS, TRANSFORM_OUTCOMES
from d365.tasks.context import RunContext
from d365.tasks.extract import extract_step
from d365.tasks.preflight import preflight
from d365.tasks.transform import transform_step


def test_every_applicant_leaves_as_a_payload_or_an_outcome(
    connected: Any, run_context: Callable[..., RunContext]
) -> None:
    rc = run_context()
    preflight(rc)
    extract_step(rc)
    out = transform_step(rc)
    extracted = {a["applicant_id"] for a in rc.folder.read_jsonl(EXTRACT_APPLICANTS)}
    leads = {int(r["applicant_id"]) for r in rc.folder.read_jsonl(TRANSFORM_LEADS)}
    outcomes = {int(o["applicant_id"]) for o in rc.folder.read_jsonl(TRANSFORM_OUTCOMES)}
    assert out["leads"] == len(leads) > 0
    assert extracted == leads | outcomes  # nobody lost on the way
    assert all(r["payload_hash"] and r["payload"] for r in rc.folder.read_jsonl(TRANSFORM_LEADS))


def test_a_catalog_that_does_not_match_the_settings_stops_the_run(
    connected: Any, run_context: Callable[..., RunContext]
) -> None:
    rc = run_context()
    preflight(rc)
    extract_step(rc)
    rc.folder.write_json(EXTRACT_CATALOG, {})  # DreamApply knows none of the courses, consents, terms mapped
    with pytest.raises(PreflightError, match="settings do not match DreamApply"):
        transform_step(rc)
    assert rc.folder.read_json(TRANSFORM_LEADS) is None and rc.folder.read_json(TRANSFORM_OUTCOMES) is None


def test_the_transform_log_is_short_and_free_of_great_expectations_noise(
    connected: Any, run_context: Callable[..., RunContext], caplog: pytest.LogCaptureFixture, monkeypatch: Any
) -> None:
    """GX registers its expectations and data sources with hundreds of INFO lines (the log's 213 of 233); held
    at WARNING while it validates. A fresh GX context (the cache emptied) so its set-up runs in this test."""
    import logging

    from d365.pipeline import quality
    from d365.pipeline.runfiles import QUALITY_SUMMARY

    monkeypatch.setattr(quality, "_DEFINITIONS", {})
    rc = run_context()
    preflight(rc)
    extract_step(rc)
    caplog.clear()
    with caplog.at_level(logging.INFO):
        transform_step(rc)
    lines = [r for r in caplog.records if r.levelno >= logging.INFO]
    assert not [r.getMessage() for r in lines if r.name.startswith("great_expectations")]
    assert len(lines) < 40, [r.getMessage()[:80] for r in lines]
    done = [r.getMessage() for r in lines if r.name == "d365.tasks.transform"]
    assert len(done) == 1 and f"({QUALITY_SUMMARY})" in done[0] and "file://" not in done[0]
    assert logging.getLogger("great_expectations").level == logging.NOTSET  # restored after the validation
